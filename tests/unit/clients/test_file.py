"""The file backend: reading rows as records, and choosing it like any other backend."""

from __future__ import annotations

import io
from pathlib import Path

import orjson

from streamer.clients.file import FileConsumer, FileSink, FileSource, csv_values, file_backend
from streamer.settings import KafkaSettings


def write_csv(path: Path, rows: int) -> Path:
    path.write_text("id,amount\n" + "".join(f"r{i},{i}.5\n" for i in range(rows)))
    return path


class TestReading:
    def test_the_consumer_reads_no_more_rows_than_a_poll_asks_for(self, tmp_path: Path) -> None:
        source = FileSource(write_csv(tmp_path / "input.csv", 25), "csv")
        consumer = FileConsumer(source, ("in", "out", "rej"))
        assigned: list[list[tuple[str, int]]] = []
        consumer.subscribe("in", assigned.append, lambda _tps: None)
        polled = consumer.poll(0, 10)
        assert assigned == [[("in", 0)]]
        assert polled[("in", 0)].offsets == list(range(10))
        assert source.rows_read == 10
        assert not source.eof
        assert consumer.highwater(("in", 0)) == 10
        consumer.pause([("in", 0)])
        assert consumer.poll(0, 10) == {}
        source.close()

    def test_csv_cells_become_numbers_strings_or_absent_and_long_rows_stay_raw(self) -> None:
        text = io.StringIO("a,b,c\n1.5,x,\n1,2,3,4\n inf ,2\n")
        rows = list(csv_values(text, None))
        assert rows[0] == (None, orjson.dumps({"a": 1.5, "b": "x"}))
        assert rows[1] == (None, b"1,2,3,4")
        assert rows[2] == (None, orjson.dumps({"a": " inf ", "b": 2.0}))


class TestBackend:
    def test_every_consumer_reads_the_same_file_and_every_producer_is_the_sink(
        self, tmp_path: Path
    ) -> None:
        source = FileSource(write_csv(tmp_path / "in.csv", 5), "csv")
        sink = FileSink(tmp_path / "out.csv", tmp_path / "rej.csv", "csv", ("out", "rej"))
        backend = file_backend(source, sink)
        settings = KafkaSettings(input_topic="in", output_topic="out", dead_letter_topic="rej")
        first, second = backend.consumer(settings, 10), backend.consumer(settings, 10)
        assert first.existing_topics() == {"in", "out", "rej"}
        first.subscribe("in", lambda _tps: None, lambda _tps: None)
        second.subscribe("in", lambda _tps: None, lambda _tps: None)
        assert first.poll(0, 3)[("in", 0)].offsets == [0, 1, 2]
        assert second.poll(0, 3)[("in", 0)].offsets == [3, 4]
        assert backend.producer(settings) is sink
        assert backend.name == "file"
        sink.finish()
        source.close()
