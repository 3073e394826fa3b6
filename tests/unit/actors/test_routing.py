"""Route: a stable address for restartable actors."""

from __future__ import annotations

from streamer.actors.routing import Route, Teller
from tests.unit.fakes import start_recorder, sync


def send(to: Teller, message: object) -> None:
    """A stage's side of the protocol: a ref and a Route are both a Teller."""
    to.tell(message)


class TestRoute:
    def test_tells_go_round_robin(self) -> None:
        (a, inbox_a), (b, inbox_b) = start_recorder(), start_recorder()
        route = Route("models", [a, b])
        for i in range(5):
            send(route, i)
        sync(a)
        sync(b)
        assert inbox_a.items() == [0, 2, 4]
        assert inbox_b.items() == [1, 3]

    def test_a_replaced_ref_gets_the_next_messages(self) -> None:
        (old, old_inbox), (new, new_inbox) = start_recorder(), start_recorder()
        route = Route("producer", [old])
        route.replace(0, new)
        assert route.tell("after") is True
        sync(new)
        assert new_inbox.items() == ["after"]
        assert old_inbox.items() == []
        assert route.refs() == [new]

    def test_a_tell_to_a_dead_ref_is_dropped_not_raised(self) -> None:
        ref, inbox = start_recorder()
        ref.stop()
        route = Route("consumer", [ref])
        assert route.tell("lost") is False
        assert inbox.items() == []

    def test_an_empty_route_drops_the_message(self) -> None:
        assert Route("preprocessors").tell("nobody") is False

    def test_refs_is_a_snapshot(self) -> None:
        ref, _ = start_recorder()
        route = Route("models", [ref])
        route.refs().clear()
        assert route.refs() == [ref]
        route.set([])
        assert route.refs() == []

    def test_a_ref_is_a_teller_too(self) -> None:
        ref, inbox = start_recorder()
        send(ref, "direct")
        sync(ref)
        assert inbox.items() == ["direct"]
