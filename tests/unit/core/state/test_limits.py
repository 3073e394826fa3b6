"""How large a key's state may grow: the worst case fits one changelog record, and the rule.

A record that would give its key one entry more than ``max_entries_per_key``,
or whose key or text field is longer than ``max_text_bytes``, is dead-lettered
as ``state_too_large`` and changes nothing; the offline command refuses the
same records and so computes the same values.
"""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from streamer.core.state.codec import decode_key_state, encode_key_state, key_state_key
from streamer.core.state.declared import parse_features
from streamer.core.state.layout import MAX_TIME_US, build_layout
from streamer.core.state.limits import entries_that_fit, entry_bytes, fixed_bytes, record_bytes
from streamer.core.state.store import MemoryStore
from streamer.core.state.windows import PartitionState, StateInput
from streamer.errors import ConfigError
from streamer.settings import build_settings
from streamer.statefile import StateApplier, layout_of

HOUR_MS = 3_600_000
COUNT = {"name": "n", "key": "card", "agg": "count", "window": "1h", "time": "ts"}
SUM = {"name": "s", "key": "card", "agg": "sum", "field": "x", "window": "1h", "time": "ts"}
SHOPS = {
    "name": "shops", "key": "card", "agg": "distinct_count", "field": "shop", "window": "1h",
    "time": "ts",
}  # fmt: skip


def engine(tables: list[dict[str, object]], lateness_ms: int = 0, **limits: int) -> PartitionState:
    layout = build_layout(parse_features(tables), lateness_ms * 1000, **limits)
    return PartitionState(layout, MemoryStore(), "t", 0)


def outcomes(state: PartitionState, docs: list[dict[str, object]], first: int = 0) -> list:
    applied = state.apply(StateInput(first + i, None, None, d) for i, d in enumerate(docs))
    return [(o.values, o.reason) if o is not None else None for o in applied.outcomes]


def entries(state: PartitionState, card: str, group: int = 0) -> list[int]:
    raw = state.store.get(key_state_key(group, card.encode()))
    assert raw is not None
    return decode_key_state(raw).times


class TestWorstCase:
    def test_the_bounds_in_bytes(self) -> None:
        assert entry_bytes([True], 256) == 9 + 9
        assert entry_bytes([True, False], 256) == 9 + 9 + 5 + 256
        assert fixed_bytes(1, 256) == 128 + 2 + 256 + 1 + 9 + 5 + 5 + 5
        assert entries_that_fit([True], 1_048_576, 256) == (1_048_576 - 411) // 18 == 58_231
        assert entries_that_fit([True, False], 1_048_576, 256) == 3_756
        assert entries_that_fit([True], 400, 256) == 0
        assert record_bytes([True], 58_231, 256) <= 1_048_576 < record_bytes([True], 58_232, 256)

    @pytest.mark.parametrize("numeric", [(), (True,), (True, False), (False, False, True)])
    def test_a_key_at_the_cap_with_the_largest_values_fits_a_kafka_record(
        self, numeric: tuple[bool, ...]
    ) -> None:
        budget, text = 65_536, 40
        count = entries_that_fit(numeric, budget, text)
        widest = "\U0001f600" * (text // 4)  # 4 UTF-8 bytes a character: exactly `text` bytes
        times = [-(MAX_TIME_US - 1)] * count  # the integers that take the most bytes
        columns = [[-1.5e300 if n else widest for _ in range(count)] for n in numeric]
        key = key_state_key(0, b"k" * text)
        value = encode_key_state(-(MAX_TIME_US - 1), times, columns)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
        assert size <= record_bytes(numeric, count, text) <= budget
        one_more = encode_key_state(-(MAX_TIME_US - 1), [*times, times[0]], columns)
        assert len(one_more) > len(value)  # the bound is per entry: one more may not fit


class TestEntriesPerKey:
    def test_a_record_over_the_cap_is_refused_and_the_key_is_unchanged(self) -> None:
        state = engine([COUNT, SUM], max_entries_per_key=3)
        docs = [
            {"card": "a", "x": 1.0, "ts": 0},
            {"card": "a", "x": 2.0, "ts": 1000},
            {"card": "a", "x": 4.0, "ts": 2000},
            {"card": "a", "x": 8.0, "ts": 3000},  # a fourth entry: refused
            {"card": "b", "x": 16.0, "ts": 3500},  # another key: its own entries
            {"card": "a", "x": 32.0, "ts": HOUR_MS + 500},  # the entry at 0 has left: room
        ]
        got = outcomes(state, docs)
        assert got == [
            ((1.0, 1.0), ""),
            ((2.0, 3.0), ""),
            ((3.0, 7.0), ""),
            (None, "state_too_large"),
            ((1.0, 16.0), ""),
            ((3.0, 38.0), ""),  # the entries at 1000 and 2000 and itself: not the refused one
        ]
        assert entries(state, "a") == [1_000_000, 2_000_000, (HOUR_MS + 500) * 1000]
        assert state.last_offset == 5

    def test_the_refusal_is_the_same_whatever_the_batching(self) -> None:
        docs = [{"card": "a", "x": float(i), "ts": i * 600_000} for i in range(20)]
        whole = outcomes(engine([COUNT, SUM], max_entries_per_key=4), docs)
        one_by_one = engine([COUNT, SUM], max_entries_per_key=4)
        single = [outcomes(one_by_one, [doc], first=i)[0] for i, doc in enumerate(docs)]
        assert single == whole
        # A record every 10 minutes, 1 h windows: 6 in a window, 4 allowed.
        assert [reason for _values, reason in whole] == (
            ["", "", "", "", "state_too_large", "state_too_large"] * 3
            + ["", ""]
        )  # fmt: skip

    def test_an_out_of_order_key_counts_its_entries_above_the_horizon(self) -> None:
        state = engine([COUNT], lateness_ms=10_000, max_entries_per_key=2)
        docs = [
            {"card": "a", "ts": 5000},
            {"card": "a", "ts": 1000},  # out of order, within the lateness
            {"card": "a", "ts": 3000},  # a third entry: refused
            {"card": "a", "ts": HOUR_MS + 4000},  # the horizon (1h10s) keeps both: refused
            {"card": "a", "ts": HOUR_MS + 12_000},  # the entry at 1000 left the horizon
        ]
        assert outcomes(state, docs) == [
            ((1.0,), ""),
            ((1.0,), ""),  # its window (t - 1h, t] ends before 5000
            (None, "state_too_large"),
            (None, "state_too_large"),
            ((1.0,), ""),  # the entry at 5000 is kept, but out of its window
        ]
        assert entries(state, "a") == [5_000_000, (HOUR_MS + 12_000) * 1000]

    def test_a_record_of_two_keys_is_refused_whole(self) -> None:
        by_shop = {"name": "m", "key": "shop", "agg": "count", "window": "1h", "time": "ts"}
        state = engine([COUNT, by_shop], max_entries_per_key=2)
        docs = [
            {"card": "a", "shop": "s1", "ts": 0},
            {"card": "b", "shop": "s1", "ts": 1},
            {"card": "a", "shop": "s1", "ts": 2},  # shop s1 is full: card a unchanged too
            {"card": "a", "shop": "s2", "ts": 3},
        ]
        assert outcomes(state, docs) == [
            ((1.0, 1.0), ""),
            ((1.0, 2.0), ""),
            (None, "state_too_large"),
            ((2.0, 1.0), ""),
        ]

    def test_a_replay_of_a_refused_record_is_refused_again(self) -> None:
        state = engine([COUNT], max_entries_per_key=1)
        docs = [{"card": "a", "ts": 0}, {"card": "a", "ts": 1}]
        first = outcomes(state, docs)
        assert outcomes(state, docs) == first == [((1.0,), ""), (None, "state_too_large")]


class TestText:
    def test_a_key_or_a_text_longer_than_the_bound_is_refused(self) -> None:
        state = engine([COUNT, SHOPS], max_text_bytes=8)
        docs = [
            {"card": "é" * 4, "shop": "s", "ts": 0},  # 8 bytes: within
            {"card": "é" * 5, "shop": "s", "ts": 1},  # 10 bytes
            {"card": "a", "shop": "123456789", "ts": 2},  # a 9-byte text
            {"card": "a", "shop": 123456789, "ts": 3},  # a number: its text, 9 bytes
            {"card": "a", "shop": "12345678", "ts": 4},
        ]
        assert outcomes(state, docs) == [
            ((1.0, 1.0), ""),
            (None, "state_too_large"),
            (None, "state_too_large"),
            (None, "state_too_large"),
            ((1.0, 1.0), ""),
        ]
        applied = state.apply([StateInput(9, None, None, {"card": "é" * 5, "ts": 5, "shop": "s"})])
        (outcome,) = applied.outcomes
        assert outcome is not None
        assert outcome.detail == (
            "key field 'card' is 10 bytes, more than state.max_text_bytes=8 (a key's state "
            "must fit one changelog record)"
        )

    def test_the_record_key_is_bounded_and_numbers_are_not_texts(self) -> None:
        by_key = {"name": "n", "key": "$key", "agg": "sum", "field": "x", "window": "1h"}
        state = engine([by_key], max_text_bytes=4)
        applied = state.apply(
            [
                StateInput(0, b"abcd", 1, {"x": 123456.0}),
                StateInput(1, b"abcde", 2, {"x": 1.0}),
            ]
        )
        assert [(o.values, o.reason) for o in applied.outcomes if o is not None] == [
            ((123456.0,), ""),
            (None, "state_too_large"),
        ]

    def test_a_batch_read_in_columns_refuses_what_a_record_read_alone_refuses(self) -> None:
        docs = [{"card": f"c{i % 3}" * (i % 5), "shop": "ü" * (i % 7), "ts": i} for i in range(40)]
        docs = [d if d["card"] else {**d, "card": "z"} for d in docs]
        whole = outcomes(engine([COUNT, SHOPS], max_text_bytes=8), docs)
        one_by_one = engine([COUNT, SHOPS], max_text_bytes=8)
        single = [outcomes(one_by_one, [doc], first=i)[0] for i, doc in enumerate(docs)]
        assert single == whole
        refused = [i for i, (_v, reason) in enumerate(whole) if reason]
        assert refused == [
            i for i, d in enumerate(docs) if len(d["card"]) > 8 or len(d["shop"]) * 2 > 8
        ]
        assert refused


def settings_of(**state: object) -> object:
    return build_settings(
        {
            "kafka": {"input_topic": "in", "output_topic": "out", "max_request_bytes": 65_536},
            "state": {"features": [COUNT, SUM, SHOPS], **state},
        },
        environ={},
    )


class TestSettings:
    def test_zero_derives_the_cap_from_the_record_bound(self) -> None:
        (group,) = layout_of(settings_of()).groups
        assert group.max_entries == entries_that_fit((True, False), 65_536, 256) == 233
        assert layout_of(settings_of(max_entries_per_key=100)).groups[0].max_entries == 100
        assert layout_of(settings_of()).max_text_bytes == 256
        # Not in the fingerprint: a changed bound keeps the changelog topic and the state.
        assert (
            layout_of(settings_of()).fingerprint
            == layout_of(settings_of(max_entries_per_key=100, max_text_bytes=64)).fingerprint
        )

    def test_a_cap_that_may_not_fit_stops_the_start_with_one_line(self) -> None:
        with pytest.raises(ConfigError) as caught:
            settings_of(max_entries_per_key=234)
        assert str(caught.value) == (
            "config error: state.max_entries_per_key=234: a key of n, s, shops may then take "
            "65702 bytes, over kafka.max_request_bytes=65536 (a key's state is one changelog "
            "record); set it to at most 233, or 0, or raise kafka.max_request_bytes (and the "
            "broker's message.max.bytes)"
        )
        assert layout_of(settings_of(max_entries_per_key=233)).groups[0].max_entries == 233

    def test_a_text_bound_that_leaves_no_room_stops_the_start(self) -> None:
        message = "^config error: state.max_text_bytes=40000: a key of n, s, shops with one "
        with pytest.raises(ConfigError, match=message + "entry may take 80183 bytes"):
            settings_of(max_text_bytes=40_000)

    def test_the_offline_command_refuses_the_same_records(self) -> None:
        applier = StateApplier(settings_of(max_entries_per_key=2), "in")
        values = [f'{{"card": "a", "x": 1.5, "shop": "s", "ts": {i}}}'.encode() for i in range(3)]
        rows = applier.apply([0, 1, 2], [None] * 3, values, [0] * 3)
        assert [(r.features, r.reason) for r in rows] == [
            ((1.0, 1.5, 1.0), ""),
            ((2.0, 3.0, 1.0), ""),
            ((), "state_too_large"),
        ]
