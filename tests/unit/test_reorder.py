"""Restoring per-partition order after the parallel stages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.reorder import Reorderer

# Properties run without a deadline (CI machines vary) and leave no example database.
PROPERTIES = settings(deadline=None, database=None)

TP0 = ("events", 0)
TP1 = ("events", 1)


def test_items_in_order_are_released_at_once() -> None:
    reorderer: Reorderer[str] = Reorderer()
    assert reorderer.push(TP0, 0, "a") == ["a"]
    assert reorderer.push(TP0, 1, "b") == ["b"]
    assert reorderer.waiting == 0


def test_an_early_item_waits_for_every_earlier_sequence_number() -> None:
    reorderer: Reorderer[str] = Reorderer()
    assert reorderer.push(TP0, 2, "c") == []
    assert reorderer.push(TP0, 1, "b") == []
    assert reorderer.waiting == 2
    assert reorderer.push(TP0, 0, "a") == ["a", "b", "c"]
    assert reorderer.waiting == 0


def test_partitions_are_ordered_independently() -> None:
    reorderer: Reorderer[str] = Reorderer()
    assert reorderer.push(TP0, 1, "a1") == []
    assert reorderer.push(TP1, 0, "b0") == ["b0"]
    assert reorderer.push(TP0, 0, "a0") == ["a0", "a1"]


def test_an_already_released_sequence_number_raises() -> None:
    reorderer: Reorderer[str] = Reorderer()
    reorderer.push(TP0, 0, "a")
    with pytest.raises(
        ValueError, match=r"sequence 0 on events/0 was already released \(next is 1\)"
    ):
        reorderer.push(TP0, 0, "again")


def test_a_sequence_number_pushed_twice_while_waiting_raises() -> None:
    reorderer: Reorderer[str] = Reorderer()
    reorderer.push(TP0, 3, "d")
    with pytest.raises(ValueError, match="sequence 3 on events/0 pushed twice"):
        reorderer.push(TP0, 3, "d again")
    assert reorderer.push(TP0, 0, "a") == ["a"]
    assert reorderer.waiting == 1


@st.composite
def interleaved_permutations(draw: st.DrawFn) -> list[tuple[tuple[str, int], int]]:
    """(tp, seq) pushes: a permutation of 0..n-1 per partition, partitions interleaved."""
    pushes = []
    for p in range(draw(st.integers(1, 4))):
        seqs = draw(st.permutations(range(draw(st.integers(0, 30)))))
        pushes.extend((("t", p), seq) for seq in seqs)
    order = draw(st.permutations(range(len(pushes))))
    # Interleave partitions without changing each partition's own (permuted) push order.
    by_tp: dict[tuple[str, int], list[int]] = {}
    for tp, seq in pushes:
        by_tp.setdefault(tp, []).append(seq)
    slots = [pushes[i][0] for i in order]
    cursor = dict.fromkeys(by_tp, 0)
    result = []
    for tp in slots:
        result.append((tp, by_tp[tp][cursor[tp]]))
        cursor[tp] += 1
    return result


@PROPERTIES
@given(pushes=interleaved_permutations(), stale=st.data())
def test_any_permutation_is_released_in_order_exactly_once(
    pushes: list[tuple[tuple[str, int], int]], stale: st.DataObject
) -> None:
    reorderer: Reorderer[tuple[tuple[str, int], int]] = Reorderer()
    released: dict[tuple[str, int], list[int]] = {}
    for tp, seq in pushes:
        for item_tp, item_seq in reorderer.push(tp, seq, (tp, seq)):
            assert item_tp == tp
            released.setdefault(tp, []).append(item_seq)
    expected: dict[tuple[str, int], list[int]] = {}
    for tp, _ in pushes:
        expected[tp] = list(range(sum(1 for t, _ in pushes if t == tp)))
    assert released == {tp: seqs for tp, seqs in expected.items() if seqs}
    assert reorderer.waiting == 0
    if pushes:
        tp, seq = stale.draw(st.sampled_from(pushes))
        with pytest.raises(ValueError, match="already released"):
            reorderer.push(tp, seq, (tp, seq))
