"""RecordColumns: a partition's polled records, one list per field."""

from __future__ import annotations

from dataclasses import dataclass

from streamer.core.records import RecordColumns


@dataclass(frozen=True)
class Row:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def columns(offsets: list[int]) -> RecordColumns:
    return RecordColumns(
        list(offsets), [b"k%d" % o for o in offsets], [b"v%d" % o for o in offsets], list(offsets)
    )


class TestRecordColumns:
    def test_record_objects_become_one_list_per_field_in_order(self) -> None:
        rows = [Row(4, b"a", b"x", 40), Row(5, None, None, -1)]
        assert RecordColumns.of(rows) == RecordColumns([4, 5], [b"a", None], [b"x", None], [40, -1])

    def test_take_removes_the_head_and_extend_appends_the_tail(self) -> None:
        records = columns([0, 1, 2, 3])
        head = records.take(3)
        assert head == columns([0, 1, 2])
        assert records == columns([3])
        records.extend(columns([4, 5]))
        assert records == columns([3, 4, 5])
        assert len(records) == 3

    def test_empty_has_no_records(self) -> None:
        assert len(RecordColumns.empty()) == 0
