"""GracefulSignals: the first signal drains, a second one exits, SIGHUP reloads."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from streamer.signals import GracefulSignals


@pytest.fixture(autouse=True)
def _restored_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class TestGracefulSignals:
    def test_the_first_signal_drains_and_the_second_exits(self) -> None:
        calls: list[tuple[str, int]] = []
        signals = GracefulSignals(
            lambda n: calls.append(("first", n)), on_second=lambda n: calls.append(("second", n))
        )
        signals.handle(signal.SIGTERM, None)
        signals.handle(signal.SIGINT, None)
        signals.handle(signal.SIGINT, None)
        assert calls == [
            ("first", signal.SIGTERM),
            ("second", signal.SIGINT),
            ("second", signal.SIGINT),
        ]
        assert signals.received == 3

    def test_the_first_signal_is_announced_with_its_name(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="streamer")
        GracefulSignals(lambda _n: None).handle(signal.SIGTERM, None)
        assert "SIGTERM received: draining (send it again to exit at once)" in caplog.text

    def test_nothing_is_logged_without_an_announcement(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="streamer")
        GracefulSignals(lambda _n: None, announce=None).handle(signal.SIGTERM, None)
        assert caplog.text == ""

    def test_the_default_second_signal_exits_at_once_with_128_plus_n(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        codes: list[int] = []
        monkeypatch.setattr("streamer.signals.os._exit", codes.append)
        signals = GracefulSignals(lambda _n: None)
        signals.handle(signal.SIGINT, None)
        signals.handle(signal.SIGINT, None)
        assert codes == [128 + signal.SIGINT]

    def test_inside_interrupting_the_next_signal_raises_once_and_does_not_count(self) -> None:
        first: list[int] = []
        signals = GracefulSignals(first.append, on_second=lambda _n: None)
        with signals.interrupting():
            with pytest.raises(KeyboardInterrupt):
                signals.handle(signal.SIGINT, None)
            signals.handle(signal.SIGINT, None)
        assert first == [signal.SIGINT]
        assert signals.received == 1

    def test_install_takes_sigterm_and_sigint_and_sighup_only_with_a_reload(self) -> None:
        reloads: list[int] = []
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signals = GracefulSignals(lambda _n: None).install()
        assert signal.getsignal(signal.SIGTERM) == signals.handle
        assert signal.getsignal(signal.SIGINT) == signals.handle
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL

        GracefulSignals(lambda _n: None, on_reload=lambda: reloads.append(1)).install()
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        assert reloads == [1]
