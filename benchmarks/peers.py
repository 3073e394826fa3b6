"""The peers of ``make bench --peers``: the same job for Bytewax, Quix Streams and Pathway.

Each job reads the preloaded input topic, scores every record with the same
logistic regression as streamer's demo model (its JSON file, passed with
``--model``: standardize the features with the fitted mean and std, then the
sigmoid of bias + x . weights), writes ``{"key", "offset", "score"}`` for each
record to the output topic, and stops once ``--count`` records are done. Each
is written the way its docs show:

- ``bytewax-map``: ``KafkaSource`` -> ``op.map`` (one record at a time, plain
  floats) -> ``KafkaSink``. Bytewax's Kafka source assigns the partitions
  itself (no consumer group) and stores no offsets in Kafka: it snapshots them
  in its own recovery store, off here (as in its docs' examples). ``tail=False``
  ends the flow at the end of the topic.
- ``bytewax-batch``: the same with ``op.flat_map_batch`` over each batch the
  source emits, scored with numpy.
- ``quix``: an ``Application`` in a consumer group, a ``StreamingDataFrame``
  with the JSON deserializer, ``.apply`` to score, ``.to_topic``; quix commits
  every ``commit_interval`` (5 s) and when it stops, after flushing its producer.
- ``quix-batch``: the same source into a ``BatchingSink`` whose ``write``
  scores each batch with numpy and produces it (flushed before quix commits).
- ``pathway``: ``pw.io.kafka.read`` (JSON with a schema of the five features
  and the card id, ``with_metadata`` for the offset) -> a ``pw.udf`` scoring
  one record with plain floats -> ``pw.io.kafka.write`` (JSON, keyed by the
  card id). Pathway keeps its offsets in its own persistence (off here): no
  commits. Its ``mode="static"`` would end the job at the end of the topic, but
  it takes the end from the broker's ListOffsets, which Tansu answers with the
  base offset of the last batch + 1 (about 0.5% of the records were never
  read). So the job streams, a ``pw.io.subscribe`` follows the count of scored
  rows (a ``reduce``), and once ``--count`` are done a signal stops ``pw.run``,
  whose Kafka writer flushes its producer as it closes.
- ``pathway-batch``: the same with ``pw.udf(max_batch_size=1000)``, numpy
  over each batch of arguments Pathway passes.

It runs in the peers' own virtual environment (they pin other client versions
than streamer: Quix Streams 3.28 requires confluent-kafka 2.12), so it imports
nothing from streamer. It prints one JSON line: records/s from the first record
scored to the end of the job (the last produce acknowledged, and for quix the
final commit), and the CPU the process used over that time (all its threads,
as a percentage of one core).

    /work/peers-venv/bin/python benchmarks/peers.py --system quix --bootstrap 127.0.0.1:9092 \\
        --topic in --output out --count 200000 --model streamer/core/models/demo_fraud.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson


class Model:
    """The demo logistic regression, per record (plain floats) and per batch (numpy)."""

    def __init__(self, path: str) -> None:
        doc = json.loads(Path(path).read_text())
        self.names: list[str] = doc["features"]
        self.mean = np.array(doc["mean"], dtype=np.float64)
        self.std = np.array(doc["std"], dtype=np.float64)
        self.weights = np.array(doc["weights"], dtype=np.float64)
        self.bias = float(doc["bias"])
        self._terms = list(zip(self.names, doc["mean"], doc["std"], doc["weights"], strict=True))

    def one(self, doc: dict[str, Any]) -> float:
        logit = self.bias
        for name, mean, std, weight in self._terms:
            logit += (float(doc[name]) - mean) / std * weight
        return 1.0 / (1.0 + math.exp(-logit))

    def many(self, docs: list[dict[str, Any]]) -> list[float]:
        x = np.array([[d[n] for n in self.names] for d in docs], dtype=np.float64)
        return self._scores(x)

    def many_columns(self, columns: Any) -> list[float]:
        """Scores of a batch given as one sequence per feature, in the model's order."""
        return self._scores(np.array(columns, dtype=np.float64).T)

    def _scores(self, x: np.ndarray) -> list[float]:
        x = (x - self.mean) / self.std
        scores: list[float] = (1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias)))).tolist()
        return scores


class Clock:
    """The wall and CPU time of the first record scored."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.cpu_started = 0.0

    def tick(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()

    def result(self, count: int) -> dict[str, float]:
        """Records/s and CPU % (of one core) from the first record scored to now."""
        now = time.perf_counter()
        elapsed = now - (self.started if self.started is not None else now)
        if elapsed <= 0:
            return {"records_per_s": 0.0, "cpu_percent": 0.0}
        cpu = time.process_time() - self.cpu_started
        return {"records_per_s": count / elapsed, "cpu_percent": 100.0 * cpu / elapsed}


def bytewax_job(args: argparse.Namespace, model: Model, *, batch: bool) -> dict[str, float]:
    from bytewax import operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    clock = Clock()
    brokers = [args.bootstrap]
    flow = Dataflow("peer")
    source = KafkaSource(
        brokers,
        [args.topic],
        tail=False,
        add_config={"fetch.queue.backoff.ms": "10", "enable.partition.eof": "true"},
    )
    stream = op.input("in", flow, source)

    def score_one(message: Any) -> KafkaSinkMessage[bytes | None, bytes]:
        clock.tick()
        value = orjson.dumps(
            {
                "key": message.key,
                "offset": message.offset,
                "score": model.one(orjson.loads(message.value)),
            },
            default=bytes.decode,
        )
        return KafkaSinkMessage(message.key, value)

    def score_batch(messages: list[Any]) -> list[KafkaSinkMessage[bytes | None, bytes]]:
        clock.tick()
        scores = model.many([orjson.loads(m.value) for m in messages])
        return [
            KafkaSinkMessage(
                m.key,
                orjson.dumps({"key": m.key, "offset": m.offset, "score": s}, default=bytes.decode),
            )
            for m, s in zip(messages, scores, strict=True)
        ]

    if batch:
        scored = op.flat_map_batch("score", stream, score_batch)
    else:
        scored = op.map("score", stream, score_one)
    sink_config = {"linger.ms": "5", "acks": "all", "enable.idempotence": "true"}
    op.output("out", scored, KafkaSink(brokers, args.output, add_config=sink_config))
    run_main(flow)
    return clock.result(args.count)


def quix_job(args: argparse.Namespace, model: Model, *, batch: bool) -> dict[str, float]:
    from confluent_kafka import Producer
    from quixstreams import Application
    from quixstreams.sinks import BatchingSink, SinkBatch

    clock = Clock()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"peer-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        consumer_extra_config={
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": args.session_ms,
            "heartbeat.interval.ms": 1000,
        },
        producer_extra_config={"linger.ms": 5},
        auto_create_topics=False,
        state_dir=tempfile.mkdtemp(prefix="peer-quix-state-"),
    )
    source = app.topic(args.topic, value_deserializer="json", key_deserializer="bytes")
    sdf = app.dataframe(source)

    if batch:

        class ScoringSink(BatchingSink):
            """Scores and produces each batch; quix flushes sinks before it commits."""

            def __init__(self) -> None:
                super().__init__()
                self._producer = Producer(
                    {"bootstrap.servers": args.bootstrap, "linger.ms": 5, "acks": "all"}
                )

            def setup(self) -> None:
                return None

            def write(self, batch: SinkBatch) -> None:
                items = list(batch)
                scores = model.many([item.value for item in items])
                for item, score in zip(items, scores, strict=True):
                    value = orjson.dumps(
                        {"key": item.key, "offset": item.offset, "score": score},
                        default=bytes.decode,
                    )
                    self._producer.produce(args.output, value, item.key)
                    self._producer.poll(0)
                self._producer.flush()

        # The sink writes at each checkpoint: the clock starts at the first record.
        sdf = sdf.update(lambda _value: clock.tick())
        sdf.sink(ScoringSink())
    else:
        target = app.topic(args.output, value_serializer="json", key_serializer="bytes")

        def score(value: dict[str, Any]) -> dict[str, Any]:
            clock.tick()
            return {"score": model.one(value)}

        sdf = sdf.apply(score)
        sdf.to_topic(target)
    app.run(count=args.count, timeout=30.0)
    return clock.result(args.count)


# Pathway hands what its reader has read to the engine every autocommit_duration_ms
# (1,500 by default). The clock starts at the first record scored, so with the
# default up to 1.5 s of reading would fall before it; at 100 ms the whole
# process was also faster here (5.4-6.2 s against 7.1-8.7 s for 200k records).
PATHWAY_MINIBATCH_MS = 100


def pathway_job(args: argparse.Namespace, model: Model, *, batch: bool) -> dict[str, float]:
    import pathway as pw

    clock = Clock()
    # The features and the card id (the input's key) are plain columns; the
    # names are the input's own, so no json_field_paths are needed.
    schema = pw.schema_from_types(card_id=str, **dict.fromkeys(model.names, float))
    source = pw.io.kafka.read(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"peer-pathway-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": str(args.session_ms),
            "fetch.queue.backoff.ms": "10",
        },
        args.topic,
        format="json",
        schema=schema,
        with_metadata=True,
        autocommit_duration_ms=PATHWAY_MINIBATCH_MS,
    )
    features = [source[name] for name in model.names]
    if batch:

        @pw.udf(max_batch_size=1000, deterministic=True)
        def score(*columns: list[float]) -> list[float]:
            clock.tick()
            return model.many_columns(columns)

    else:

        @pw.udf(deterministic=True)
        def score(*values: float) -> float:
            clock.tick()
            return model.one(dict(zip(model.names, values, strict=True)))

    scored = source.select(
        key=source.card_id,
        offset=source._metadata["offset"].as_int(),
        score=score(*features),
    )
    pw.io.kafka.write(
        scored,
        {"bootstrap.servers": args.bootstrap, "linger.ms": "5", "acks": "all"},
        args.output,
        format="json",
        key=scored.key,
    )
    # The engine counts the scored rows: Python sees one update per minibatch,
    # not a callback per row.
    done = {"rows": 0}

    def count_rows(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            done["rows"] = row["rows"]

    def stop_when_done(time: int) -> None:
        if done["rows"] >= args.count:
            os.kill(os.getpid(), signal.SIGUSR1)

    totals = scored.reduce(rows=pw.reducers.count())
    pw.io.subscribe(totals, on_change=count_rows, on_time_end=stop_when_done)
    signal.signal(signal.SIGUSR1, _raise_done)
    with contextlib.suppress(AllScored):
        pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    return clock.result(args.count)


class AllScored(Exception):  # noqa: N818 (a signal to stop, not an error)
    """Raised by the SIGUSR1 handler to stop ``pw.run`` once every record is scored."""


def _raise_done(signum: int, frame: Any) -> None:
    raise AllScored


JOBS: dict[str, Callable[[argparse.Namespace, Model], dict[str, float]]] = {
    "bytewax-map": lambda a, m: bytewax_job(a, m, batch=False),
    "bytewax-batch": lambda a, m: bytewax_job(a, m, batch=True),
    "quix": lambda a, m: quix_job(a, m, batch=False),
    "quix-batch": lambda a, m: quix_job(a, m, batch=True),
    "pathway": lambda a, m: pathway_job(a, m, batch=False),
    "pathway-batch": lambda a, m: pathway_job(a, m, batch=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--system", choices=sorted(JOBS), required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--session-ms", type=int, default=6000)
    args = parser.parse_args()
    print(json.dumps(JOBS[args.system](args, Model(args.model))))


if __name__ == "__main__":
    main()
