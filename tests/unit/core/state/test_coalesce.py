"""CoalescedChangelog: each key once per flush with its newest value, meta last; the bound."""

from __future__ import annotations

import itertools

from streamer.core.state.changelog import CoalescedChangelog, Flush
from streamer.core.state.codec import META_KEY


def gathered() -> CoalescedChangelog:
    ids = itertools.count(7)
    return CoalescedChangelog(lambda: next(ids))


def test_a_flush_holds_each_key_once_with_its_newest_value_and_the_newest_meta_last() -> None:
    log = gathered()
    log.add([(b"k1", b"a1"), (b"s4", b"run"), (META_KEY, b"m4")], 0, now=10.0)
    log.add([(b"k2", b"b1"), (b"k1", b"a2"), (META_KEY, b"m9")], 5, now=10.4)
    log.add([(b"k2", None), (b"k3", b"c1"), (META_KEY, b"m12")], 10, now=10.9)
    assert not log.due(10.9, 1.0)
    assert log.due(11.0, 1.0)  # an interval after the first change gathered
    flush = log.take()
    assert flush == Flush(
        7,
        ((b"k1", b"a2"), (b"s4", b"run"), (b"k2", None), (b"k3", b"c1"), (META_KEY, b"m12")),
        0,
    )
    assert log.take() is None  # nothing gathered since
    assert not log.gathered


def test_the_durable_bound_is_the_first_offset_not_acknowledged_in_a_flush() -> None:
    log = gathered()
    assert log.durable_from() is None
    log.add([(b"k1", b"a1"), (META_KEY, b"m4")], 0, now=0.0)
    log.add([(b"k1", b"a2"), (META_KEY, b"m9")], 5, now=0.1)
    assert log.durable_from() == 0  # gathered
    first = log.take()
    assert first is not None
    assert log.durable_from() == 0  # sent, not acknowledged
    log.add([(b"k2", b"b1"), (META_KEY, b"m14")], 10, now=0.2)
    second = log.take()
    assert second is not None
    assert second.covers_from == 10
    assert log.unacknowledged() == [first, second]
    assert log.acknowledged(second.flush_id)  # acknowledged out of order: still bound by first
    assert log.durable_from() == 0
    assert log.acknowledged(first.flush_id)
    assert log.durable_from() is None
    assert not log.acknowledged(first.flush_id)  # once


def test_changes_of_no_batch_carry_the_last_meta_and_bind_no_offset() -> None:
    log = gathered()
    log.add([(b"k1", b"a1"), (META_KEY, b"m4")], 0, now=0.0)
    first = log.take()
    assert first is not None
    log.acknowledged(first.flush_id)
    # Forgotten served runs (a commit): their own meta; no input offset depends on them.
    log.add([(b"s4", None), (META_KEY, b"m4-served-from-5")], None, now=1.0)
    assert log.durable_from() is None
    forgotten = log.take()
    assert forgotten is not None
    assert forgotten.changes == ((b"s4", None), (META_KEY, b"m4-served-from-5"))
    assert forgotten.covers_from is None


def test_everything_not_acknowledged_in_order_for_a_rebuilt_store() -> None:
    log = gathered()
    log.add([(b"k1", b"a1"), (META_KEY, b"m4")], 0, now=0.0)
    log.take()
    log.add([(b"k1", b"a2"), (META_KEY, b"m9")], 5, now=0.1)
    assert log.everything() == [
        (b"k1", b"a1"),
        (META_KEY, b"m4"),
        (b"k1", b"a2"),
        (META_KEY, b"m9"),
    ]
