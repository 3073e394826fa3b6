"""``make bench``: streamer against the bare client loops, on the embedded broker, in one run.

Every row reads the same preloaded input (JSON card transactions in 4
partitions, no malformed records) and scores it with the demo model; every
measured program runs in a fresh interpreter, one at a time:

(a) floors      the bare single-thread loop of each client library (bare.py)
(b) streamer    `streamer run` with each backend, 1 and 2 worker processes,
                with its ratio to its own backend's floor
(c) latency     end to end (input CreateTime -> output seen by a reader) at
                2,000 / 10,000 / 30,000 records/s, p50 / p95 / p99 / max, for the
                pass-through floor, the floor with 3 thread hops per batch (Pykka
                tells: what streamer's actor shape costs), the bare scoring loop
                and streamer (defaults),
                each row on a fresh broker, every program in its own process
                (latency.py); the broker has the machine's last CPU to itself
                (`--latency-broker-cpus`), the other programs share the rest
(d) memory      peak RSS and RSS growth while a model 5x slower than the
                input holds the pipeline in backpressure (--memory-seconds)
(e) scaling     throughput against preprocessor/model actors and batch size
(f) large       peak RSS with records of 500 KB behind a model 5x slower than the
                input, against the idle daemon and batch.max_in_flight_bytes
(p) peers       with --peers: the same job run by Bytewax 0.21, Quix Streams 3.28 and
                Pathway 0.33 (peers.py, in their own virtual environment), every run's
                output verified, and every row's ratio to the fastest peer
(r) formats     Avro input (through a Schema Registry stand-in) next to JSON, batch 1000
(m) model kinds in process (no broker): prepare + score (+ reason codes, k=3) of
                each kind on the same 30-feature records, against sklearn's row
(h) health      throughput with a drift profile and one challenger (the demo model
                twice) against the same run without, alternating (target: <= 10%)
(s) state       three window features over 1 h keyed by the card id (a count, a sum of
                the amount, a time since last) on a RocksDB state.dir against the same
                job without state, alternating (target: >= 60%); then 1,000,000
                distinct keys: peak RSS against the stateless run (target: <= +200 MB)
                and the restore of their changelog into an empty state.dir (<= 30 s)
(l) labels      delayed labels on (labels.topic co-partitioned with the input, one label
                per 10 records naming it by its source coordinates, produced to its
                partition once the group committed the record; the prediction ledger
                in RocksDB under state.dir) against the same job without labels,
                alternating (target: >= 80%); `--broker-cpus 1` runs the broker and
                the bench on core 1, the daemons on the rest; the 5,000,000-prediction
                ledger alone: benchmarks/ledger.py
(o) remote      model.kind = "remote" against a real MLServer (.venv-oip): streamer's
                records/s against a bare aiohttp loop sending the same batches with the
                same concurrency (oip_floor.py), with and without a 20 ms server delay,
                at max_concurrent_requests 1 and 4; `taskset -c 1 ... --remote-server-cpus 0`
                gives MLServer core 0 and the client side (floor or streamer, and the
                broker) core 1

    .venv/bin/python benchmarks/bench.py                # the full run (about 10 minutes)
    .venv/bin/python benchmarks/bench.py --smoke        # tiny counts, one to two minutes
    .venv/bin/python benchmarks/bench.py --peers        # also (p); creates .peers-venv once

Throughput is the records committed by the group over the time from the first
record consumed to the commit of the last one: start-up and the group join are
not counted, the final commit is.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.core.demo_data import make_record
from streamer.core.models import load_model
from streamer.core.models.linear import LinearModel
from streamer.core.quantile import histogram_quantile
from streamer.devtools.broker import EmbeddedBroker, free_port
from streamer.devtools.verify import read_topic, reconcile_topics
from streamer.settings import to_toml

HERE = Path(__file__).resolve().parent
DEMO_MODEL_FILE = HERE.parent / "streamer" / "core" / "models" / "demo_fraud.json"
BACKENDS = ("kafka-python", "confluent")
PARTITIONS = 4
# Settings of the latency rows (c): the defaults with a shorter fetch wait. Tansu answers
# a fetch only when fetch_max_wait_s is over, even when data arrived before (Apache Kafka
# answers at once), so that wait is latency here. A shorter producer linger made Tansu
# slower, not faster (linger 0: p99 x8). A partial batch does not wait for
# batch.max_wait_s while little is in flight (batch.eager_when_idle).
LATENCY_SETTINGS: dict[str, dict[str, Any]] = json.loads(
    os.environ.get("BENCH_LATENCY_SETTINGS", "{}")
)

# The state rows (s): the issue's three window features over 1 h, keyed by the card id.
STATE_FEATURES = """
[[state.features]]
name = "card_count_1h"
key = "card_id"
agg = "count"
window = "1h"

[[state.features]]
name = "card_amount_sum_1h"
key = "card_id"
agg = "sum"
field = "amount"
window = "1h"

[[state.features]]
name = "card_gap_1h"
key = "card_id"
agg = "time_since_last"
window = "1h"
"""


# --- small helpers -------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric_sum(text: str, name: str, having: str = "") -> float:
    """The sum of a metric's samples (of those whose labels contain ``having``)."""
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith(name)
            and line[len(name) : len(name) + 1] in (" ", "{")
            and having in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram(text: str, name: str, having: str = "") -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, summed over its label sets
    (those whose labels contain ``having``)."""
    counts: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix) and having in line:
            labels, value = line[len(prefix) :].rsplit("} ", 1)
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if bound == "+Inf" else float(bound)
            counts[key] = counts.get(key, 0.0) + float(value)
    return sorted(counts.items())


def proc_status(pid: int, key: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def wait_until(condition: Any, timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s:.0f}s waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(interval_s)


def records(count: int, seed: int = 1) -> Iterator[tuple[bytes | None, bytes]]:
    rng = random.Random(seed)
    for _ in range(count):
        yield make_record(rng, bad_ratio=0.0)


def distinct_card_records(count: int, first: int = 0) -> list[tuple[bytes, bytes]]:
    """``count`` demo records, each of its own card (card ids from ``first``)."""
    out = []
    for index, (_, value) in enumerate(records(count, seed=11)):
        event = orjson.loads(value)
        event["card_id"] = card = f"card-s{first + index:08d}"
        out.append((card.encode(), orjson.dumps(event)))
    return out


def large_records(size: int, count: int = 64, seed: int = 3) -> list[tuple[bytes, bytes]]:
    """``count`` distinct valid events of exactly ``size`` bytes: the demo features and
    a ``padding`` string (which no model reads) that brings each to its size."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        key, value = make_record(rng, bad_ratio=0.0)
        pad = size - len(value) - len(b',"padding":""')
        if pad < 0:
            msg = f"a record of {size} bytes cannot hold an event of {len(value)} bytes"
            raise ValueError(msg)
        out.append((key, value[:-1] + b',"padding":"' + b"x" * pad + b'"}'))
    return out


# --- the broker side -----------------------------------------------------------


class Cluster:
    """Topics, preloading, load generation and group commits on the embedded broker."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaAdminClient

        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self._readers: dict[str, Any] = {}

    def topic(self, prefix: str, partitions: int = PARTITIONS, *, dlq: bool = False) -> str:
        """Create a uuid-named topic (and its '.dlq' topic, for an input)."""
        from kafka.admin import NewTopic

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        wanted = [NewTopic(name, partitions, 1)]
        if dlq:
            wanted.append(NewTopic(f"{name}.dlq", 1, 1))
        self.admin.create_topics(wanted)
        return name

    def delete(self, *names: str) -> None:
        with contextlib.suppress(Exception):
            self.admin.delete_topics(list(names))

    def committed(self, group: str, topic: str) -> int:
        """The group's committed offsets of ``topic``, summed (one client per group)."""
        from kafka import KafkaConsumer, TopicPartition

        reader = self._readers.get(group)
        if reader is None:
            reader = self._readers[group] = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
        total = 0
        for partition in range(PARTITIONS):
            offset = reader.committed(TopicPartition(topic, partition), timeout_ms=5000)
            total += offset or 0
        return total

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset of each partition of ``topic`` (0: none)."""
        from kafka import TopicPartition

        self.committed(group, topic)  # opens the group's reader
        reader = self._readers[group]
        return {
            partition: reader.committed(TopicPartition(topic, partition), timeout_ms=5000) or 0
            for partition in range(PARTITIONS)
        }

    def read_all(self, topic: str) -> Iterator[tuple[bytes | None, bytes]]:
        """(key, value) of every record of ``topic``, from its beginning to its end."""
        for key, value, _headers in read_topic(self.bootstrap, topic).records.values():
            yield key, value or b""

    def forget(self, group: str) -> None:
        reader = self._readers.pop(group, None)
        if reader is not None:
            reader.close(autocommit=False, timeout_ms=2000)

    def _producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "queue.buffering.max.messages": 1_000_000,
                "partitioner": "murmur2_random",
            }
        )

    def preload(
        self, topic: str, count: int, values: Sequence[tuple[bytes | None, bytes]] | None = None
    ) -> None:
        """Produce ``count`` demo records, or ``count`` records cycling through ``values``."""
        producer = self._producer()
        chosen = (
            records(count) if values is None else (values[i % len(values)] for i in range(count))
        )
        for index, (key, value) in enumerate(chosen):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
            if index % 10_000 == 0:
                producer.poll(0)
        producer.flush(120)

    def generate(
        self,
        topic: str,
        rate: float,
        seconds: float,
        stop: threading.Event | None = None,
        values: Sequence[tuple[bytes | None, bytes]] | None = None,
    ) -> int:
        """Produce ``rate`` records/s for ``seconds`` (no callback per record), demo
        records or ``values`` in turn."""
        from latency import produce_at_rate  # benchmarks/ is on the path (a script)

        values = values or list(records(20_000, seed=2))
        return produce_at_rate(
            self._producer(), topic, values, rate, seconds, pause_s=0.002, stop=stop
        )


# --- streamer as a process ---------------------------------------------------------


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    ratio: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Streamer:
    """``streamer run`` (``--workers N``) in a subprocess, with its config file and log."""

    def __init__(
        self,
        workdir: Path,
        bootstrap: str,
        backend: str,
        input_topic: str,
        output_topic: str,
        *,
        workers: int = 1,
        session_timeout_s: float = 6.0,
        sections: dict[str, dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
        extra_toml: str = "",
        group: str = "",
    ) -> None:
        self.group = group or f"bench-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        document: dict[str, dict[str, Any]] = {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "client": backend,
                "input_topic": input_topic,
                "output_topic": output_topic,
                "dead_letter_topic": f"{input_topic}.dlq",
                "group_id": self.group,
                "session_timeout_s": session_timeout_s,
                "heartbeat_interval_s": 1.0,
            },
            "metrics": {"port": self.port, "host": "127.0.0.1"},
            "model": {"watch_interval_s": 0.0},
        }
        for section, values in (sections or {}).items():
            document.setdefault(section, {}).update(values)
        tag = uuid.uuid4().hex[:6]
        config = workdir / f"streamer-{tag}.toml"
        config.write_text(to_toml(document) + extra_toml)
        self.log_path = workdir / f"streamer-{tag}.log"
        command = [sys.executable, "-m", "streamer", "run", "--config", str(config)]
        command += ["--log-level", "WARNING"]
        if workers > 1:
            command += ["--workers", str(workers)]
        self._log = self.log_path.open("wb")
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**clean_env, **(env or {})},
            start_new_session=True,
        )
        if DAEMON_CPUS is not None:
            # At once: the interpreter starts its threads (which inherit it) much later.
            pin_threads(self.process.pid, DAEMON_CPUS)

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.port}/metrics")[1]

    def consumed(self) -> float:
        return metric_sum(self.metrics(), "streamer_records_consumed_total")

    def ready(self) -> bool:
        self._check_alive()
        return http_get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            msg = f"streamer exited with {self.process.returncode}; see {self.log_path}"
            raise RuntimeError(msg)

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class LabelFeeder:
    """(l) Produces each chosen record's label to its partition once the group committed it.

    The label names its record by source coordinates (``topic``, ``partition``,
    ``offset``), with a 0/1 value and ``labelled_at`` (now). Its own thread and
    clients: the bench's readers are not thread-safe.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        input_topic: str,
        labels_topic: str,
        chosen: Sequence[tuple[int, int]],
    ) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.input_topic = input_topic
        self.labels_topic = labels_topic
        self.waiting: dict[int, list[int]] = {}
        for partition, offset in sorted(chosen):
            self.waiting.setdefault(partition, []).append(offset)
        # Each label's document but its time, made before the run: the feeder shares the
        # 2 cores with the daemon and the broker, and a dict and an orjson.dumps per label
        # cost the bench process about 2 us a label of that (measured with BenchCpu).
        rng = random.Random(10)
        topic = orjson.dumps(input_topic).decode()
        self._documents = {
            (partition, offset): (
                f'{{"topic":{topic},"partition":{partition},"offset":{offset},'
                f'"label":{rng.randrange(2)},"labelled_at":'
            ).encode()
            for partition, offsets in self.waiting.items()
            for offset in offsets
        }
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="label-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def done(self) -> bool:
        return not any(self.waiting.values())

    def _run(self) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition

        # Not a member of the group (no subscribe): it only reads the group's commits, all
        # partitions in one request. The feeder shares the 2 cores with the daemon and the
        # broker in the run with labels only: a kafka-python committed() per partition every
        # 0.1 s cost the bench process about 0.7 us per record of the run.
        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
            }
        )
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        tps = [TopicPartition(self.input_topic, partition) for partition in self.waiting]
        try:
            while not self._stop.is_set() and not self.done():
                commits = {
                    tp.partition: max(tp.offset, 0) for tp in reader.committed(tps, timeout=5)
                }
                for partition, offsets in self.waiting.items():
                    committed = commits.get(partition, 0)
                    ready = 0
                    while ready < len(offsets) and offsets[ready] < committed:
                        ready += 1
                    # One time for the labels sent together: they are sent in the same ms.
                    labelled_at = b"%d}" % int(time.time() * 1000)
                    produce, documents = producer.produce, self._documents
                    for offset in offsets[:ready]:
                        document = documents.pop((partition, offset)) + labelled_at
                        produce(self.labels_topic, document, None, partition)
                    del offsets[:ready]
                    self.sent += ready
                producer.poll(0)
                self._stop.wait(0.1)
            producer.flush(30)
        finally:
            reader.close()


class BenchCpu:
    """The bench process's and the broker's CPU per record from a run's first record to
    its last commit.

    In (l) the label feeder's thread runs in the run with labels only, on the 2 cores
    the daemon and the broker share: its cost is the bench's, and the rows say it. The
    broker (the embedded one, ``broker_pid``) carries the labels topic and the ledger's
    changelog in that run too: on 2 cores its extra CPU is taken from the daemon's rate.
    """

    def __init__(self, records: int, broker_pid: int = 0) -> None:
        self.records = records
        self.broker_pid = broker_pid
        self.per_record: dict[str, list[float]] = {"without": [], "with": []}
        self.broker_per_record: dict[str, list[float]] = {"without": [], "with": []}
        self._from = 0.0
        self._broker_from = 0.0

    def start(self, _process: object) -> None:
        self._from = time.process_time()
        self._broker_from = self._broker_seconds()

    def stop(self, name: str) -> None:
        spent = time.process_time() - self._from
        self.per_record[name].append(spent / self.records * 1e6)
        if self.broker_pid:
            broker = self._broker_seconds() - self._broker_from
            self.broker_per_record[name].append(broker / self.records * 1e6)

    def _broker_seconds(self) -> float:
        from latency import cpu_seconds  # benchmarks/ is on the path (a script)

        return cpu_seconds(self.broker_pid) if self.broker_pid else 0.0

    def note(self) -> str:
        notes = []
        for what, values in (("bench", self.per_record), ("broker", self.broker_per_record)):
            pairs = list(zip(values["without"], values["with"], strict=False))
            if pairs:
                per_run = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs)
                notes.append(f"{what} CPU without/with {per_run} us/record")
        return "; ".join(notes)


# --- the measurements --------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, bootstrap: str, workdir: Path, broker_pid: int = 0
    ) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.broker_pid = broker_pid
        """The embedded broker's process (0: a broker of ``--bootstrap``, not measured)."""
        self.workdir = workdir
        self.cluster = Cluster(bootstrap)
        self.rows: list[Row] = []
        self._changelog = ""  # (s): the changelog topic of the last stateful run
        # (b)'s one-worker default rate of each backend: in a smoke run, (h)'s run
        # without profile or challenger is the same run, so it is not run twice.
        self._one_worker: dict[str, float] = {}
        self.input = ""

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def streamer(self, backend: str, input_topic: str, output: str, **kwargs: Any) -> Streamer:
        return Streamer(
            self.workdir,
            self.bootstrap,
            backend,
            input_topic,
            output,
            session_timeout_s=self.args.session_timeout,
            **kwargs,
        )

    def throughput(
        self,
        backend: str,
        target: int,
        *,
        input_topic: str = "",
        probe: Any = None,
        check: bool = True,
        on_first: Any = None,
        **kwargs: Any,
    ) -> tuple[float, int]:
        """Run streamer over the preloaded topic (or ``input_topic``) until ``target``
        records are committed; ``probe(process)``, if given, runs then, before the stop.
        ``check=False``: a group that an earlier run's commits carry has no outputs to
        reconcile the earlier records with. ``on_first(process)``, if given, runs once the
        first record is consumed (the start-up is over)."""
        input_topic = input_topic or self.input
        output = self.cluster.topic("bench-out")
        process = self.streamer(backend, input_topic, output, **kwargs)
        try:
            wait_until(lambda: process.consumed() > 0 or process._check_alive(), 120, "a record")
            if on_first is not None:
                on_first(process)
            started = time.perf_counter()
            wait_until(
                lambda: (
                    self.cluster.committed(process.group, input_topic) >= target
                    or process._check_alive()
                ),
                600,
                f"{target} committed records",
                interval_s=0.05,
            )
            elapsed = time.perf_counter() - started
            if probe is not None:
                probe(process)
        finally:
            code = process.stop()
            try:
                if check:
                    self.check_delivery(process.group, output, input_topic)
            finally:
                self.cluster.forget(process.group)
                self.cluster.delete(output)
        return target / elapsed, code

    def check_delivery(self, group: str, output: str, input_topic: str = "") -> None:
        """After a run: every input below the group's commits was answered (as the demo checks).

        Read after the process stopped, so the measured time does not include it.
        """
        input_topic = input_topic or self.input
        committed = self.cluster.committed_offsets(group, input_topic)
        result = reconcile_topics(
            self.bootstrap, input_topic, output, f"{input_topic}.dlq", committed=committed
        )
        self.log(f"    reconciled below the commits: {result.line()}")
        if result.lost:
            msg = f"streamer lost {result.lost} committed records: {result.lost_ranges[:5]}"
            raise RuntimeError(msg)

    def bare(self, backend: str) -> float:
        """One run of the bare loop over the preloaded topic, in a fresh interpreter."""
        output = self.cluster.topic("bench-out")
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "bare.py"),
                    "--backend",
                    backend,
                    "--bootstrap",
                    self.bootstrap,
                    "--topic",
                    self.input,
                    "--output",
                    output,
                    "--count",
                    str(self.args.records),
                    "--session-ms",
                    str(int(self.args.session_timeout * 1000)),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
        finally:
            self.cluster.delete(output)
        rate: float = json.loads(result.stdout.strip().splitlines()[-1])["records_per_s"]
        return rate

    def throughputs(self) -> dict[str, float]:
        """(a) and (b): floors and pipelines; returns each backend's one-worker default rate.

        The floor and streamer's one-worker default alternate ``--repeat`` times
        and their medians are compared, since this machine's noise (about 15%)
        is larger than the differences that matter.
        """
        tuned = {"batch": {"max_records": 5000, "max_in_flight": 8}}
        variants = [
            (n, v) for n, v in (("defaults", {}), ("tuned", tuned)) if n in self.args.variants
        ]
        notes = {
            "defaults": "batch 1000, 1x1 actors",
            "tuned": "batch 5000, in-flight 8, 1x1 actors",
        }
        best: dict[str, float] = {}
        for backend in self.args.backends:
            floors: list[float] = []
            ones: list[float] = []
            codes: list[int] = []
            for run in range(self.args.repeat):
                self.log(f"(a) bare {backend} loop, run {run + 1} of {self.args.repeat}")
                floors.append(self.bare(backend))
                if variants and variants[0][0] == "defaults" and 1 in self.args.workers:
                    self.log(f"(b) streamer {backend}, defaults, 1 worker, run {run + 1}")
                    rate, code = self.throughput(backend, self.args.records)
                    ones.append(rate)
                    codes.append(code)
            floor = float(np.median(floors))
            self.rows.append(
                Row("a", f"bare {backend} loop (floor)", floor, "records/s", 1.0, _spread(floors))
            )
            measured: dict[tuple[str, int], float] = {}
            if ones:
                measured[("defaults", 1)] = float(np.median(ones))
                self._pipeline_row(backend, "defaults", 1, measured, floor, notes, codes, ones)
            # The smoke run checks that each path runs: two workers on one backend suffice.
            smoke_one = self.args.smoke and backend != self.args.scaling_backend
            for label, sections in variants:
                for workers in [1] if smoke_one else self.args.workers:
                    if (label, workers) in measured:
                        continue
                    self.log(f"(b) streamer {backend}, {label}, {workers} worker(s)")
                    rate, code = self.throughput(
                        backend, self.args.records, workers=workers, sections=sections
                    )
                    measured[(label, workers)] = rate
                    self._pipeline_row(backend, label, workers, measured, floor, notes, [code])
            if ("defaults", 1) in measured:
                best[backend] = measured[("defaults", 1)]
        self._one_worker = best
        return best

    def _pipeline_row(
        self,
        backend: str,
        label: str,
        workers: int,
        measured: dict[tuple[str, int], float],
        floor: float,
        notes: dict[str, str],
        codes: list[int],
        runs: list[float] | None = None,
    ) -> None:
        rate = measured[(label, workers)]
        note = notes[label]
        if runs is not None and len(runs) > 1:
            note += f"; {_spread(runs)}"
        one = measured.get((label, 1))
        if workers > 1 and one:
            note += f"; {rate / one:.2f}x one worker"
        note += f"; exit {','.join(str(c) for c in sorted(set(codes)))}"
        self.rows.append(
            Row(
                "b",
                f"streamer {backend}, {workers} worker{'s' if workers > 1 else ''}",
                rate,
                "records/s",
                rate / floor if floor else None,
                note,
                {"workers": workers, "backend": backend, "variant": label},
            )
        )

    def latency(self) -> None:
        """(c) At fixed rates: the pass-through floor, the bare scoring loop, streamer.

        Each row on a fresh broker (unless --bootstrap), the system under test, the
        generator and the reader each in its own process (benchmarks/latency.py).
        """
        import latency  # benchmarks/ is on the path when bench.py runs as a script

        systems = _latency_systems(self.args.latency_backends)
        names = {
            "passthrough": "pass-through floor",
            "passthrough-kafka-python": "kafka-python pass-through",
            "handoffs": f"floor + {latency.HANDOFFS} thread hops",
            "handoffs-kafka-python": f"kafka-python pass-through + {latency.HANDOFFS} thread hops",
            "scoring": "bare scoring loop",
            "streamer-kafka-python": "streamer kafka-python",
            "streamer-confluent": "streamer confluent",
        }
        seconds = self.args.latency_seconds
        rounds = self.args.latency_rounds
        for rate in self.args.latency_rates:
            # Each system's (p50, p99) minus the floor's of the same round, round by round.
            distances: dict[str, list[tuple[float, float]]] = {}
            for run in range(rounds):
                measured = self._latency_round(latency, systems, names, rate, seconds)
                for system, distance in measured.items():
                    distances.setdefault(system, []).append(distance)
                if rounds > 1:
                    self.log(f"(c) {rate:,.0f} records/s, round {run + 1} of {rounds} done")
            if rounds > 1:
                for system, rows in distances.items():
                    self.rows.append(_latency_summary(names[system], rate, rows))

    def _latency_round(
        self,
        latency: Any,
        systems: list[str],
        names: dict[str, str],
        rate: float,
        seconds: float,
    ) -> dict[str, tuple[float, float]]:
        """One row of each system at ``rate``, the floor first.

        Returns each system's (p50, p99) minus the floor's of this round.
        """
        nan = float("nan")
        alone = self.args.latency_broker_cpus
        floor: dict[str, Any] = {}
        client_floor: dict[str, Any] = {}
        distances: dict[str, tuple[float, float]] = {}
        for system in systems:
            self.log(f"(c) {names[system]}, {rate:,.0f} records/s for {seconds:g}s")
            result = latency.measure(
                system,
                rate,
                seconds,
                bootstrap=self.args.bootstrap,
                settings=LATENCY_SETTINGS if system.startswith("streamer") else None,
                session_ms=int(self.args.session_timeout * 1000),
                # The broker on a CPU of its own, as on its own hardware in production: where
                # it shared the cores, the floor's own p99 moved by up to 162 ms between the
                # rounds of one rate (docs/performance.md). The systems share theirs with the
                # generator and the reader.
                broker_cpus=alone or self.args.broker_cpus,
                broker_alone=alone is not None,
            )
            if system == "passthrough":
                floor = result
            elif system == "passthrough-kafka-python":
                client_floor = result
            own = client_floor if system == "streamer-kafka-python" else {}
            self.rows.append(_latency_row(names[system], rate, result, floor, own))
            if floor and system != "passthrough":
                distances[system] = (
                    result.get("p50", nan) - floor.get("p50", nan),
                    result.get("p99", nan) - floor.get("p99", nan),
                )
            if system.startswith("streamer") and result["exposition"]:
                self._stage_rows(result["exposition"], f"{names[system]}, {rate:,.0f}/s")
        return distances

    def _stage_rows(self, exposition: str, label: str) -> None:
        """Where a record's time goes, from streamer's own histograms (ms: mean / p95).

        CreateTime -> acknowledged is ``end_to_end``; dispatch -> acknowledged is
        ``batch_latency``, so their difference is the fetch and the micro-batch
        wait; inside a batch, the preprocess, model and produce stages (the time
        the produce call takes), and the rest of ``batch_latency`` is inbox
        queueing plus the wait for the broker's acknowledgement.
        """
        parts = []
        means = {}
        for what, name, having in (
            ("end to end", "streamer_end_to_end_latency_seconds", ""),
            ("dispatch->ack", "streamer_batch_latency_seconds", ""),
            ("preprocess", "streamer_stage_duration_seconds", 'stage="preprocess"'),
            ("model", "streamer_stage_duration_seconds", 'stage="model"'),
            ("produce", "streamer_stage_duration_seconds", 'stage="produce"'),
        ):
            buckets = histogram(exposition, name, having)
            count = buckets[-1][1] if buckets else 0.0
            total = 0.0
            for line in exposition.splitlines():
                if line.startswith(name + "_sum") and having in line:
                    total += float(line.rsplit(" ", 1)[1])
            mean = 1000 * total / count if count else float("nan")
            means[what] = mean
            p95 = 1000 * (histogram_quantile(0.95, buckets) or float("nan"))
            parts.append(f"{what} {mean:.1f}/{p95:.1f}")
        stages = means["preprocess"] + means["model"] + means["produce"]
        queued = means["dispatch->ack"] - stages
        self.rows.append(
            Row(
                "c",
                f"streamer's stages, {label}",
                means["end to end"] - means["dispatch->ack"],
                "ms",
                None,
                "fetch+batching (mean e2e - dispatch->ack); ms mean/p95: "
                + ", ".join(parts)
                + f"; inboxes+ack wait (mean) {queued:.1f}",
                {"means_ms": means},
            )
        )

    def memory(self) -> None:
        for backend in self.args.memory_backends:
            self._memory(backend, rate=5000.0, seconds=self.args.memory_seconds)

    def _memory(self, backend: str, rate: float, seconds: float) -> None:
        self.log(f"(d) memory, {backend}, model 5x slower than {rate:.0f} records/s, {seconds:g}s")
        topic = self.cluster.topic("bench-mem", dlq=True)
        output = self.cluster.topic("bench-mem-out")
        process = self.streamer(
            backend,
            topic,
            output,
            sections={
                "model": {
                    "kind": "python",
                    "path": f"{HERE / 'slow_model.py'}:predict",
                    "workers": 1,
                    "chunk_rows": 0,
                },
                "preprocess": {"standardize": False},
            },
            env={"BENCH_SECONDS_PER_ROW": str(5.0 / rate)},
        )
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        peak = 0
        status = ""

        def sample(pid: int) -> None:
            started = time.monotonic()
            while not stop.wait(1.0):
                samples.append((time.monotonic() - started, proc_status(pid, "VmRSS")))

        try:
            wait_until(process.ready, 120, "streamer to be ready")
            sampler = threading.Thread(target=sample, args=(process.process.pid,), daemon=True)
            sampler.start()
            self.cluster.generate(topic, rate, seconds)
            stop.set()
            sampler.join()
            peak = proc_status(process.process.pid, "VmHWM")
            status = process.metrics()
        finally:
            stop.set()
            code = process.stop()
            self.cluster.delete(topic, f"{topic}.dlq", output)
        # Warm-up: until the credits (batch.max_in_flight) and the client's
        # buffers are full, which takes about 16 s at the slow model's pace.
        warm = min(30.0, 0.25 * seconds)
        after = [rss for t, rss in samples if t >= warm] or [rss for _, rss in samples]
        growth = (after[-1] - after[0]) / 2**20 if after else float("nan")
        first = samples[0][1] / 2**20 if samples else float("nan")
        lag = metric_sum(status, "streamer_consumer_lag")
        paused = metric_sum(status, "streamer_paused_partitions")
        note = (
            f"{seconds:g}s; RSS {first:.0f} MB at 1 s; lag at end {lag:,.0f}, "
            f"paused partitions {paused:.0f}; exit {code}"
        )
        self.rows.append(Row("d", f"peak RSS, {backend}", peak / 2**20, "MB", None, note))
        self.rows.append(
            Row(
                "d",
                f"RSS growth from {warm:g}s to the end, {backend}",
                growth,
                "MB",
                None,
                note,
                {"rss_mb": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in samples]},
            )
        )

    def large(self) -> None:
        args = self.args
        for backend in args.large_backends:
            self._large(
                backend,
                count=args.large_records,
                size=args.large_bytes,
                cap=args.large_cap,
                rate=args.large_rate,
                model_env={"BENCH_SECONDS_PER_ROW": str(5.0 / args.large_rate)},
                seconds=args.large_records / args.large_rate,
                label=f"{args.large_bytes // 1000} KB at {args.large_rate:g}/s, model 5x slower",
            )
        # Issue 11's scenario: 3,000 preloaded records of 400 KB, a model that
        # sleeps 0.2 s a call, 60 s, the default cap.
        for backend in args.issue_backends:
            self._large(
                backend,
                count=3000,
                size=400_000,
                cap=0,
                rate=0.0,
                model_env={"BENCH_SECONDS_PER_ROW": "0", "BENCH_SECONDS_PER_CALL": "0.2"},
                seconds=60.0,
                label="400 KB x 3000 preloaded, 0.2 s a batch",
            )

    def _large(
        self,
        backend: str,
        *,
        count: int,
        size: int,
        cap: int,
        rate: float,
        model_env: dict[str, str],
        seconds: float,
        label: str,
    ) -> None:
        """Peak RSS of the daemon while records of ``size`` bytes wait for a slow model.

        The daemon starts on an empty topic; its RSS once idle (the model loaded,
        the group joined) is the baseline. Then ``count`` records are produced,
        at ``rate`` records/s or (rate 0) as fast as the broker takes them, and
        the run lasts ``seconds`` from the first one. ``cap`` is
        batch.max_in_flight_bytes (0: the default).
        """
        from streamer.settings import BatchSettings

        limit = cap or BatchSettings().max_in_flight_bytes
        self.log(
            f"(f) large records, {backend}, {count} x {size:,} B, "
            f"cap {limit / 2**20:g} MiB, {label}"
        )
        topic = self.cluster.topic("bench-large", dlq=True)
        output = self.cluster.topic("bench-large-out")
        sections: dict[str, dict[str, Any]] = {
            "model": {
                "kind": "python",
                "path": f"{HERE / 'slow_model.py'}:predict",
                "workers": 1,
                "chunk_rows": 0,
            },
            "preprocess": {"standardize": False},
        }
        if cap:
            sections["batch"] = {"max_in_flight_bytes": cap}
        process = self.streamer(backend, topic, output, sections=sections, env=model_env)
        watch = _Watch(process)
        try:
            wait_until(process.ready, 120, "streamer to be ready")
            watch.idle()
            watch.start()
            if rate > 0:
                self.cluster.generate(topic, rate, seconds, values=large_records(size))
            else:
                self.cluster.preload(topic, count, large_records(size))
            time.sleep(max(0.0, watch.started + seconds - time.monotonic()))
            watch.finish()
        finally:
            watch.stop.set()
            code = process.stop()
            self.cluster.delete(topic, f"{topic}.dlq", output)
        mib = 2**20
        overhead = (watch.peak - watch.baseline - limit) / mib
        gauge_max = max(watch.gauge, default=0.0)
        scored = metric_sum(watch.status, "streamer_records_produced_total")
        note = (
            f"{count} x {size // 1000} KB, {label}, {seconds:g}s; cap {limit / mib:g} MiB, "
            f"idle {watch.baseline / mib:.0f} MiB; scored {scored:,.0f}; exit {code}"
        )
        extra = {
            "backend": backend,
            "records": count,
            "record_bytes": size,
            "cap_bytes": limit,
            "baseline_mib": round(watch.baseline / mib, 1),
            "peak_hwm_mib": round(watch.peak / mib, 1),
            "peak_sampled_mib": round(max(watch.rss, default=0) / mib, 1),
            "overhead_mib": round(overhead, 1),
            "in_flight_bytes_max_mib": round(gauge_max / mib, 1),
            "consumed": metric_sum(watch.status, "streamer_records_consumed_total"),
            "scored": scored,
            "rss_mib": [round(r / mib, 1) for r in watch.rss[::10]],
        }
        self.rows.append(
            Row("f", f"peak RSS, {backend}", watch.peak / mib, "MiB", None, note, extra)
        )
        self.rows.append(
            Row(
                "f",
                f"peak - idle - cap, {backend}",
                overhead,
                "MiB",
                None,
                f"in-flight gauge max {gauge_max / mib:.1f} MiB; sampled RSS max "
                f"{extra['peak_sampled_mib']:.0f} MiB; exit {code}",
                extra,
            )
        )

    def scaling(self) -> None:
        backend = self.args.scaling_backend
        for actors in self.args.actors:
            self.log(f"(e) {backend}, {actors} preprocessors and {actors} models, batch 1000")
            rate, code = self.throughput(
                backend,
                self.args.records,
                sections={"preprocess": {"workers": actors}, "model": {"workers": actors}},
            )
            self.rows.append(
                Row(
                    "e",
                    f"{actors}x{actors} actors, batch 1000",
                    rate,
                    "records/s",
                    None,
                    f"{backend}; exit {code}",
                )
            )
        for size in self.args.batch_sizes:
            target = min(self.args.records, max(2_000, size * 200))
            self.log(f"(e) {backend}, batch {size}, {target} records")
            rate, code = self.throughput(backend, target, sections={"batch": {"max_records": size}})
            self.rows.append(
                Row(
                    "e",
                    f"batch {size}, 1x1 actors",
                    rate,
                    "records/s",
                    None,
                    f"{backend}, {target} records; exit {code}",
                )
            )

    def peers(self) -> None:
        """(p): each peer's job over the preloaded input, ``--repeat`` rounds, medians.

        The peers alternate within each round (the machine's load moves between
        rounds). Every run is verified: each input record answered once, with
        the demo model's score. Then every throughput row of (a) and (b) again,
        with its ratio to the fastest peer.
        """
        python = peers_python(self.args.peers_python)
        expected = self._expected_scores()
        notes = {
            "bytewax-map": "Bytewax 0.21.1, op.map per record; no consumer group, no commits",
            "bytewax-batch": "Bytewax 0.21.1, flat_map_batch + numpy; no group, no commits",
            "quix": "Quix Streams 3.28.1, StreamingDataFrame.apply + to_topic; group, commits",
            "quix-batch": "Quix Streams 3.28.1, BatchingSink + numpy; group, commits",
            "pathway": "Pathway 0.33.0, pw.udf per record; no commits",
            "pathway-batch": "Pathway 0.33.0, pw.udf(max_batch_size=1000) + numpy; no commits",
        }
        results: dict[str, list[dict[str, float]]] = {s: [] for s in self.args.peer_systems}
        for run in range(self.args.repeat):
            for system in self.args.peer_systems:
                self.log(f"(p) peer {system}, run {run + 1} of {self.args.repeat}")
                results[system].append(self._peer(python, system, expected))
        rates: dict[str, float] = {}
        for system, runs in results.items():
            per_run = [r["records_per_s"] for r in runs]
            rates[system] = float(np.median(per_run))
            cpu = float(np.median([r["cpu_percent"] for r in runs]))
            note = f"{notes[system]}; CPU {cpu:.0f}% of one core; verified; {_spread(per_run)}"
            self.rows.append(Row("p", f"peer {system}", rates[system], "records/s", None, note))
        fastest = max(rates.values(), default=0.0)
        for row in self.rows:
            if row.section == "p":
                row.ratio = row.value / fastest if fastest else None
        for row in [r for r in self.rows if r.section in "ab" and r.unit == "records/s"]:
            self.rows.append(
                Row(
                    "p",
                    row.name.replace(" (floor)", ""),
                    row.value,
                    "records/s",
                    row.value / fastest if fastest else None,
                    f"x the fastest peer; {row.note}",
                )
            )

    def _expected_scores(self) -> dict[str, list[float]]:
        """Each key's demo-model scores over the preloaded input, sorted: what a peer must write."""
        model = load_model("linear", str(DEMO_MODEL_FILE))
        assert isinstance(model, LinearModel)
        keys: list[str] = []
        rows: list[list[float]] = []
        for key, value in self.cluster.read_all(self.input):
            doc = orjson.loads(value)
            keys.append((key or b"").decode())
            rows.append([float(doc[name]) for name in model.spec.names])
        standardized = (np.array(rows) - model.spec.mean) / model.spec.std
        expected: dict[str, list[float]] = {}
        for key, score in zip(keys, model.predict(standardized).tolist(), strict=True):
            expected.setdefault(key, []).append(score)
        for scores in expected.values():
            scores.sort()
        return expected

    def _peer(self, python: str, system: str, expected: dict[str, list[float]]) -> dict[str, float]:
        output = self.cluster.topic("bench-peer-out")
        try:
            result = subprocess.run(
                [
                    python,
                    str(HERE / "peers.py"),
                    "--system",
                    system,
                    "--bootstrap",
                    self.bootstrap,
                    "--topic",
                    self.input,
                    "--output",
                    output,
                    "--count",
                    str(self.args.records),
                    "--model",
                    str(DEMO_MODEL_FILE),
                    "--session-ms",
                    str(int(self.args.session_timeout * 1000)),
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
                cwd=self.workdir,
            )
            if result.returncode != 0:
                msg = f"peer {system} exited with {result.returncode}: {result.stderr[-2000:]}"
                raise RuntimeError(msg)
            problems = peer_answer_problems(expected, self.cluster.read_all(output))
            if problems:
                msg = f"peer {system} answered wrongly: {'; '.join(problems)}"
                raise RuntimeError(msg)
        finally:
            self.cluster.delete(output)
        measured: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
        return measured

    def health(self) -> None:
        """(h) Model health's cost: drift monitoring plus one challenger (the demo model again).

        Runs with and without alternate ``--repeat`` times over the same preloaded
        topic, on the same broker, and their medians are compared.
        """
        backend = self.args.scaling_backend
        train = self.workdir / "profile-train.jsonl"
        with train.open("wb") as handle:
            for _, value in records(2_000 if self.args.smoke else 20_000, seed=7):
                handle.write(value + b"\n")
        profile = self.workdir / "profile.json"
        subprocess.run(
            [sys.executable, "-m", "streamer", "profile", str(train), "-o", str(profile)],
            check=True,
            capture_output=True,
        )
        challenger_topic = self.cluster.topic("bench-challenger")
        monitored = {"monitoring": {"profile_path": str(profile)}}
        challenger = f'[[challenger]]\nname = "demo-again"\noutput_topic = "{challenger_topic}"\n'
        variants = {
            "no profile, no challenger": ({}, ""),
            "profile only": (monitored, ""),
            "profile + 1 challenger": (monitored, challenger),
            "profile + challenger, no outputs": (
                monitored,
                '[[challenger]]\nname = "demo-again"\n',
            ),
        }
        if self.args.smoke:  # each path once: the two without outputs add no new code path
            del variants["profile only"], variants["profile + challenger, no outputs"]
        rates: dict[str, list[float]] = {name: [] for name in variants}
        codes: list[int] = []
        if self.args.smoke and backend in self._one_worker:  # the same run as (b)'s
            rates["no profile, no challenger"].append(self._one_worker[backend])
            del variants["no profile, no challenger"]
        for run in range(self.args.repeat):
            for name, (sections, extra) in variants.items():
                self.log(f"(h) {backend}, {name}, run {run + 1} of {self.args.repeat}")
                rate, code = self.throughput(
                    backend, self.args.records, sections=sections, extra_toml=extra
                )
                rates[name].append(rate)
                codes.append(code)
        self.cluster.delete(challenger_topic)
        base = float(np.median(rates["no profile, no challenger"]))
        exits = ",".join(str(c) for c in sorted(set(codes)))
        for name, runs in rates.items():
            rate = float(np.median(runs))
            note = _spread(runs)
            if rate != base and base:
                note += f"; cost {1 - rate / base:.1%}"
            self.rows.append(
                Row(
                    "h",
                    f"{backend}, {name}",
                    rate,
                    "records/s",
                    rate / base if base else None,
                    f"{note}; exit {exits}",
                )
            )

    def state(self) -> None:
        """(s) Three window features per card over 1 h, on RocksDB, against no state.

        With and without alternate ``--repeat`` times over the preloaded topic and
        their medians are compared. Then, with ``--state-keys`` distinct cards: the
        daemon's peak RSS with and without state, and the restore of that state's
        changelog by a second daemon of the same group with an empty state.dir.
        """
        backend = self.args.state_backend
        rates: dict[str, list[float]] = {"without": [], "with": []}
        cpu_us: dict[str, list[float]] = {"without": [], "with": []}
        changelog_per_record: list[float] = []
        codes: list[int] = []

        def probes(name: str) -> dict[str, Any]:
            # The daemon's CPU per input record from its first record to the last commit
            # (without its start-up), less noisy than the wall time on a shared machine; and
            # its changelog records.
            from latency import cpu_seconds  # benchmarks/ is on the path (a script)

            at_first: list[float] = []

            def first(process: Streamer) -> None:
                at_first.append(cpu_seconds(process.process.pid))

            def measure(process: Streamer) -> None:
                seconds = cpu_seconds(process.process.pid) - at_first[-1]
                cpu_us[name].append(seconds / self.args.records * 1e6)
                if name == "with":
                    sent = metric_sum(process.metrics(), "streamer_state_changelog_records_total")
                    changelog_per_record.append(sent / self.args.records)

            return {"on_first": first, "probe": measure}

        for run in range(self.args.repeat):
            self.log(f"(s) {backend}, without state, run {run + 1} of {self.args.repeat}")
            rate, code = self.throughput(backend, self.args.records, **probes("without"))
            rates["without"].append(rate)
            codes.append(code)
            self.log(f"(s) {backend}, 3 state features, run {run + 1} of {self.args.repeat}")
            rate, code = self.throughput(
                backend, self.args.records, **probes("with"), **self._stateful("run")
            )
            rates["with"].append(rate)
            codes.append(code)
            self.cluster.delete(self._changelog)
        per = "/".join(f"{c:.2f}" for c in changelog_per_record)
        self._paired_rows(
            "s",
            backend,
            {"without": "no state", "with": "3 features, RocksDB"},
            rates,
            cpu_us,
            codes,
            cpu_what="daemon CPU after its start",
            with_note=f"{per} changelog records per record; target >= 0.60",
        )
        if self.args.state_keys:
            self._state_keys(backend, self.args.state_keys)

    def _cpu_probe(self, into: list[float]) -> Any:
        """A probe that appends the daemon's CPU per input record at the last commit (its
        start-up included): less noisy than the wall time on a shared machine."""

        def probe(process: Streamer) -> None:
            from latency import cpu_seconds  # benchmarks/ is on the path (a script)

            seconds = cpu_seconds(process.process.pid)
            into.append(seconds / self.args.records * 1e6)

        return probe

    def _stateful(self, tag: str, group: str = "") -> dict[str, Any]:
        """The arguments of a run with the three features, a fresh store and changelog."""
        self._changelog = f"bench-changelog-{uuid.uuid4().hex[:8]}"
        state_dir = self.workdir / f"state-{tag}-{uuid.uuid4().hex[:6]}"
        state: dict[str, Any] = {"dir": str(state_dir), "changelog_topic": self._changelog}
        if self.args.state_changelog_interval is not None:
            state["changelog_interval_s"] = self.args.state_changelog_interval
        return {
            "sections": {"state": state},
            "extra_toml": STATE_FEATURES,
            "group": group,
        }

    def _state_keys(self, backend: str, keys: int) -> None:
        """Peak RSS with ``keys`` distinct cards, with and without state; then a restore."""
        topic = self.cluster.topic("bench-state-keys", dlq=True)
        self.log(f"(s) preloading {keys:,} records of distinct cards")
        self.cluster.preload(topic, keys, distinct_card_records(keys))
        peaks: dict[str, float] = {}

        def peak(name: str) -> Any:
            def probe(process: Streamer) -> None:
                peaks[name] = proc_status(process.process.pid, "VmHWM") / 2**20

            return probe

        group = f"bench-state-{uuid.uuid4().hex[:8]}"
        self.log(f"(s) {backend}, {keys:,} distinct cards, without state")
        plain, code1 = self.throughput(backend, keys, input_topic=topic, probe=peak("without"))
        self.log(f"(s) {backend}, {keys:,} distinct cards, 3 state features")
        stateful = self._stateful("keys", group)
        changelog = self._changelog
        rate, code2 = self.throughput(
            backend, keys, input_topic=topic, probe=peak("with"), **stateful
        )
        note = (
            f"{keys:,} distinct cards; {plain:,.0f} and {rate:,.0f} records/s; exit {code1},{code2}"
        )
        self.rows.append(Row("s", "peak RSS, no state", peaks["without"], "MB", None, note))
        self.rows.append(
            Row(
                "s",
                "peak RSS, 3 features, RocksDB",
                peaks["with"],
                "MB",
                None,
                f"+{peaks['with'] - peaks['without']:,.0f} MB (target <= +200); {note}",
            )
        )
        # One more record per partition, so that the second daemon's every partition
        # has a batch to cut, and restores before it.
        producer = self.cluster._producer()
        extra = distinct_card_records(PARTITIONS, first=keys)
        for partition, (key, value) in enumerate(extra):
            producer.produce(topic, value, key, partition=partition)
        producer.flush(30)
        restored: dict[str, float] = {}

        def restore_probe(process: Streamer) -> None:
            text = process.metrics()
            restored["seconds"] = metric_sum(text, "streamer_state_restore_seconds")
            restored["records"] = metric_sum(text, "streamer_state_restore_records_total")
            restored["keys"] = metric_sum(text, "streamer_state_keys")

        self.log(f"(s) {backend}, restoring {keys:,} keys into an empty state.dir")
        state_dir = self.workdir / f"state-restore-{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        _, code3 = self.throughput(
            backend,
            keys + PARTITIONS,
            input_topic=topic,
            probe=restore_probe,
            sections={"state": {"dir": str(state_dir), "changelog_topic": changelog}},
            extra_toml=STATE_FEATURES,
            group=group,
            check=False,
        )
        wall = time.perf_counter() - started
        self.cluster.delete(topic, f"{topic}.dlq", changelog)
        self.rows.append(
            Row(
                "s",
                f"restore of {keys:,} keys' changelog",
                restored.get("seconds", float("nan")),
                "s",
                None,
                f"sum of streamer_state_restore_seconds over {PARTITIONS} partitions "
                f"(target <= 30); {restored.get('records', 0):,.0f} changelog records, "
                f"{restored.get('keys', 0):,.0f} keys after; start to last commit "
                f"{wall:.1f} s; exit {code3}",
            )
        )

    def labels(self) -> None:
        """(l) Scoring with delayed labels on, against the same job without, alternating.

        With labels, the daemon records each champion prediction in its partition's
        ledger (RocksDB under a fresh state.dir) and sends the ledger's changes to the
        ledger changelog with the outputs; one record in ``--label-every`` gets a label
        naming it by its source coordinates, produced to its partition by a
        :class:`LabelFeeder` as soon as the group committed the record (a label read
        before its record was scored would join nothing: a preloaded labels topic
        would measure ``unmatched`` labels, not joins). The medians are compared.
        """
        backend = self.args.state_backend
        every = self.args.label_every
        coordinates = sorted(read_topic(self.bootstrap, self.input).records)
        rng = random.Random(23)
        chosen = [at for at in coordinates if rng.randrange(every) == 0]
        rates: dict[str, list[float]] = {"without": [], "with": []}
        cpu_us: dict[str, list[float]] = {"without": [], "with": []}
        codes: list[int] = []
        joined: list[float] = []

        bench_cpu = BenchCpu(self.args.records, self.broker_pid)

        def daemon_cpu(name: str) -> Any:
            daemon = self._cpu_probe(cpu_us[name])

            def probe(process: Streamer) -> None:
                bench_cpu.stop(name)
                daemon(process)

            return probe

        for run in range(self.args.repeat):
            self.log(f"(l) {backend}, without labels, run {run + 1} of {self.args.repeat}")
            rate, code = self.throughput(
                backend, self.args.records, probe=daemon_cpu("without"), on_first=bench_cpu.start
            )
            rates["without"].append(rate)
            codes.append(code)
            self.log(f"(l) {backend}, {len(chosen):,} labels, run {run + 1} of {self.args.repeat}")
            labels_topic = self.cluster.topic("bench-labels")
            group = f"bench-labels-{uuid.uuid4().hex[:8]}"
            feeder = LabelFeeder(self.bootstrap, group, self.input, labels_topic, chosen)
            counted: dict[str, float] = {}

            def count_joined(
                process: Streamer,
                counted: dict[str, float] = counted,
                feeder: LabelFeeder = feeder,
            ) -> None:
                daemon_cpu("with")(process)

                # The last labels follow the last commit: give them a moment to be joined.
                def settled() -> bool:
                    text = process.metrics()
                    counted["joined"] = metric_sum(text, "streamer_labels_total", 'result="joined"')
                    counted["all"] = metric_sum(text, "streamer_labels_total")
                    return feeder.done() and counted["all"] >= len(chosen)

                with contextlib.suppress(TimeoutError):
                    wait_until(settled, 30, "every label read", interval_s=0.2)

            state_dir = self.workdir / f"labels-{uuid.uuid4().hex[:6]}"
            feeder.start()
            try:
                rate, code = self.throughput(
                    backend,
                    self.args.records,
                    probe=count_joined,
                    on_first=bench_cpu.start,
                    group=group,
                    sections={
                        "state": {"dir": str(state_dir)},
                        "labels": {"topic": labels_topic, "time_field": "labelled_at"},
                    },
                )
            finally:
                feeder.stop()
            rates["with"].append(rate)
            codes.append(code)
            joined.append(counted.get("joined", 0.0))
            self.log(
                f"    labels joined {counted.get('joined', 0):,.0f} of {len(chosen):,} "
                f"(read {counted.get('all', 0):,.0f})"
            )
            self.cluster.delete(labels_topic, f"{group}.{self.input}.ledger-changelog")
            shutil.rmtree(state_dir, ignore_errors=True)
        labelled = f"{len(chosen):,} labels, joined " + "/".join(f"{j:,.0f}" for j in joined)
        labelled += f"; {bench_cpu.note()}"
        self._paired_rows(
            "l",
            backend,
            {"without": "no labels", "with": "labels, ledger on RocksDB"},
            rates,
            cpu_us,
            codes,
            cpu_what="daemon CPU",
            with_note=f"target >= 0.80; {labelled}",
        )

    def _paired_rows(
        self,
        section: str,
        backend: str,
        labels: dict[str, str],
        rates: dict[str, list[float]],
        cpu_us: dict[str, list[float]],
        codes: list[int],
        *,
        cpu_what: str,
        with_note: str,
    ) -> None:
        """The rows of a with/without section ((s), (l)): each median, its ratio to the run
        without, the daemon's CPU per record, and the "with" row's own note."""
        base = float(np.median(rates["without"]))
        exits = ",".join(str(c) for c in sorted(set(codes)))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        for name, label in labels.items():
            rate = float(np.median(rates[name]))
            cpu = "/".join(f"{c:.1f}" for c in cpu_us[name])
            note = f"{_spread(rates[name])}; {cpu_what} {cpu} us/record"
            if name == "with":
                note += f"; {with_note}"
            self.rows.append(
                Row(
                    section,
                    f"{backend}, 1 worker, {label}",
                    rate,
                    "records/s",
                    rate / base if base else None,
                    f"{note}; exit {exits}; load {load}",
                )
            )

    def run(self) -> None:
        if self.args.peers and "p" not in self.args.sections:
            self.args.sections += "p"
        if "p" in self.args.sections:
            # First, so that a broken peers environment fails before the long rows.
            peers_python(self.args.peers_python)
        if any(s in self.args.sections for s in "aephsl"):
            self.input = self.cluster.topic("bench-in", dlq=True)
            self.log(f"preloading {self.args.records} records into {PARTITIONS} partitions")
            self.cluster.preload(self.input, self.args.records)
        # In this order; (r) is the last of the broker rows: it reads topics of its own.
        sections = {
            "a": self.throughputs,
            "p": self.peers,
            "c": self.latency,
            "d": self.memory,
            "e": self.scaling,
            "f": self.large,
            "h": self.health,
            "s": self.state,
            "l": self.labels,
            "r": self.formats,
            "m": self.model_kinds,
            "o": self.remote,
        }
        for section, measure in sections.items():
            if section in self.args.sections:
                measure()

    def formats(self) -> None:
        """(r) Avro input at batch 1000 next to JSON, on the same backend, in the same run.

        The Avro records are the same demo events, written by confluent-kafka's
        AvroSerializer against the test Schema Registry stand-in (tests/), which
        the daemon asks once per schema id.
        """
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        from tests.schema_registry_standin import SchemaRegistryStandIn

        count = self.args.records
        json_values = list(records(20_000, seed=5))
        with SchemaRegistryStandIn() as registry:
            serialize = AvroSerializer(SchemaRegistryClient({"url": registry.url}), _DEMO_AVRO)
            ctx = SerializationContext("bench", MessageField.VALUE)
            avro_values = [(k, serialize(orjson.loads(v), ctx)) for k, v in json_values]
            registry_format = {"input": "avro", "registry_url": registry.url}
            for backend in self.args.format_backends:
                rates: dict[str, float] = {}
                for name, values, fmt in (
                    ("json", json_values, {"input": "json"}),
                    ("avro", avro_values, registry_format),
                ):
                    self.input = self.cluster.topic(f"bench-{name}", dlq=True)
                    self.cluster.preload(self.input, count, values)
                    self.log(f"(r) {name} input, {backend}, batch 1000")
                    sections = {"batch": {"max_records": 1000}, "format": fmt}
                    rate, code = self.throughput(backend, count, sections=sections)
                    rates[name] = rate
                    ratio = rate / rates["json"]
                    note = f"{len(values[0][1])} B/record, exit {code}"
                    self.rows.append(
                        Row(
                            "r",
                            f"{name} input, {backend}, batch 1000",
                            rate,
                            "records/s",
                            ratio,
                            note,
                        )
                    )
                    self.cluster.delete(self.input, f"{self.input}.dlq")

    def model_kinds(self) -> None:
        """(m) Each model kind's cost per record, in process, on the same records.

        A logistic-regression pipeline, a 100-round XGBoost and LightGBM booster
        (depth 3 / 7 leaves) and the same sklearn pipeline through an MLflow
        directory score the breast-cancer features in batches of 1,000 with the
        code the model actor runs; reason codes (k=3) are timed on top.
        """
        rows = _model_kind_rates(self.workdir, 1_000 if self.args.smoke else 200_000)
        base = rows.get("sklearn", 0.0)
        for name, rate in rows.items():
            self.rows.append(Row("m", name, rate, "records/s", rate / base if base else None))

    def remote(self) -> None:
        """(o) The remote kind against the floor of a bare client loop, on one MLServer.

        MLServer serves the tests' scikit-learn pipeline twice: as it is, and
        behind a fixed 20 ms (asynchronous) delay, where the server's latency
        dominates and concurrency should multiply the throughput. Batches of 100
        records, one FP64 tensor each, predict_proba; the server shares the cores.
        """
        sys.path.insert(0, str(HERE.parent))
        from streamer.devtools.oip_server import OipServer, ensure_venv
        from tests import model_zoo as zoo

        count = self.args.remote_records
        venv = ensure_venv(HERE.parent)
        model_file = zoo.save_joblib(zoo.estimator("logreg"), self.workdir / "logreg.joblib")
        models = {"logreg": (model_file, {}), "logreg-slow": (model_file, {"delay_s": 0.02})}
        values = zoo.record_values(zoo.records(count))
        self.input = self.cluster.topic("bench-remote", dlq=True)
        self.cluster.preload(
            self.input, count, [(f"r{i}".encode(), v) for i, v in enumerate(values)]
        )
        backend = self.args.remote_backend
        features = {"features": ",".join(zoo.feature_names())}
        batch = {"max_records": 100}
        self.log("(o) streamer with the same model in process (kind sklearn), for reference")
        local = {"kind": "sklearn", "path": str(model_file)}
        rate, code = self.throughput(
            backend, count, sections={"model": local, "preprocess": features, "batch": batch}
        )
        note = f"{backend}, batch 100, exit {code}: the pipeline's own ceiling on these records"
        self.rows.append(Row("o", "streamer, same model in process", rate, "records/s", None, note))
        own: dict[str, float] = {}
        with OipServer(venv, self.workdir / "mlserver", models) as server:
            if self.args.remote_server_cpus:
                cpus = {int(c) for c in self.args.remote_server_cpus.split(",")}
                pin_threads(server.pid, cpus)
                client = sorted(os.sched_getaffinity(0))
                self.log(f"(o) MLServer pinned to CPUs {sorted(cpus)}, the client side to {client}")
            for model, concurrency in (("logreg", 4), ("logreg-slow", 1), ("logreg-slow", 4)):
                label = f"{model}, {concurrency} in flight"
                remote = {
                    "kind": "remote",
                    "path": model,
                    "remote_url": server.url,
                    "outputs": "predict_proba",
                    "max_concurrent_requests": concurrency,
                }
                sections = {"model": remote, "preprocess": features, "batch": batch}
                floors, rates = [], []
                # Alternating runs, best of each: other load on the cores only slows a run down.
                for run in range(self.args.repeat):
                    self.log(f"(o) bare client loop, {label} ({run + 1}/{self.args.repeat})")
                    floors.append(self._oip_floor(server.url, model, count, concurrency))
                    self.log(f"(o) streamer remote, {label} ({run + 1}/{self.args.repeat})")
                    rate, code = self.throughput(backend, count, sections=sections)
                    rates.append(rate)
                floor, rate = max(floors), max(rates)
                own[label] = rate
                self.rows.append(
                    Row("o", f"floor: bare aiohttp loop, {label}", floor, "records/s", None,
                        _best(floors))
                )  # fmt: skip
                note = f"{_best(rates)}; exit {code}"
                if model == "logreg-slow" and concurrency == 4:
                    base = own["logreg-slow, 1 in flight"]
                    note += f"; {rate / base:.2f}x itself at 1 in flight"
                self.rows.append(
                    Row("o", f"streamer remote, {label}", rate, "records/s", rate / floor, note)
                )
        self.cluster.delete(self.input, f"{self.input}.dlq")

    def _oip_floor(self, url: str, model: str, count: int, concurrency: int) -> float:
        command = [sys.executable, str(HERE / "oip_floor.py"), "--url", url, "--model", model]
        command += ["--records", str(count), "--batch", "100", "--concurrency", str(concurrency)]
        done = subprocess.run(command, capture_output=True, check=True, timeout=600)
        rate: float = json.loads(done.stdout)["records_per_s"]
        return rate


def peer_answer_problems(
    expected: dict[str, list[float]], answers: Iterator[tuple[bytes | None, bytes]]
) -> list[str]:
    """What is wrong with a peer's output topic, given each key's sorted expected scores.

    An answer is a JSON document with a ``score`` and the input's key, in the
    document (``key``) or as the message key (quix per record writes only the
    score). Each key must get as many answers as it has inputs, with the same
    scores (to 1e-9: numpy and plain floats may sum in another order).
    """
    got: dict[str, list[float]] = {}
    for message_key, value in answers:
        doc = orjson.loads(value)
        key = doc.get("key") or (message_key or b"").decode()
        got.setdefault(key, []).append(float(doc["score"]))
    problems: list[str] = []
    total_expected = sum(len(scores) for scores in expected.values())
    total_got = sum(len(scores) for scores in got.values())
    if total_got != total_expected:
        problems.append(f"{total_got} answers to {total_expected} records")
    wrong = [
        key
        for key in expected.keys() | got.keys()
        if len(expected.get(key, [])) != len(got.get(key, []))
        or not np.allclose(sorted(got.get(key, [])), expected.get(key, []), rtol=1e-9, atol=0)
    ]
    if wrong:
        problems.append(f"{len(wrong)} keys with missing, extra or wrong scores, e.g. {wrong[:3]}")
    return problems


# The CPUs of the streamer daemons when ``--broker-cpus`` pins the broker (None: any).
DAEMON_CPUS: set[int] | None = None


def pin_broker(broker_pid: int, cpus: set[int]) -> None:
    """Pin the broker and this process to ``cpus``, and the daemons started later to the rest."""
    global DAEMON_CPUS  # noqa: PLW0603 - one setting of the whole run, set once by main
    from latency import pin_apart  # benchmarks/ is on the path (a script)

    try:
        rest = pin_apart(broker_pid, cpus)
    except ValueError as exc:
        msg = f"--broker-cpus: {exc}"
        raise SystemExit(msg) from None
    DAEMON_CPUS = rest
    print(
        f"the broker and the bench on CPUs {sorted(cpus)}, the daemons on {sorted(rest)}",
        file=sys.stderr,
    )


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    from latency import pin_threads as pin  # benchmarks/ is on the path (a script)

    pin(pid, cpus)


def peers_python(chosen: str) -> str:
    """The interpreter of the peers' virtual environment; creates .peers-venv once.

    The peers pin other client versions than streamer (Quix Streams 3.28 needs
    confluent-kafka 2.12), so they get their own environment, installed from
    ``benchmarks/peers-requirements.txt`` (again when that file changed).
    """
    if chosen:
        return chosen
    venv = HERE.parent / ".peers-venv"
    python = venv / "bin" / "python"
    requirements = HERE / "peers-requirements.txt"
    # What the environment was installed from: a peer added later is installed too.
    installed = venv / "installed-requirements.txt"
    if not python.exists():
        print(f"creating {venv} for the peers (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wanted = requirements.read_text()
    if not installed.exists() or installed.read_text() != wanted:
        print(f"installing {requirements.name} into {venv}", file=sys.stderr, flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True
        )
        installed.write_text(wanted)
    return str(python)


class _Watch:
    """The RSS (every 0.1 s) and the in-flight bytes gauge (every 0.5 s) of a daemon."""

    def __init__(self, process: Streamer) -> None:
        self.process = process
        self.pid = process.process.pid
        self.rss: list[int] = []
        self.gauge: list[float] = []
        self.baseline = self.peak = 0
        self.status = ""
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def idle(self) -> None:
        """The baseline: the RSS of the idle daemon (model loaded, group joined)."""
        time.sleep(1.0)
        for _ in range(5):
            self.baseline = max(self.baseline, proc_status(self.pid, "VmRSS"))
            time.sleep(0.1)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join()
        self.peak = proc_status(self.pid, "VmHWM")
        self.status = self.process.metrics()

    def _sample(self) -> None:
        scraped = 0.0
        while not self.stop.wait(0.1):
            self.rss.append(proc_status(self.pid, "VmRSS"))
            now = time.monotonic()
            if now - scraped >= 0.5:
                scraped = now
                self.gauge.append(metric_sum(self.process.metrics(), "streamer_in_flight_bytes"))


def _best(runs: list[float]) -> str:
    return f"best of {len(runs)} runs ({min(runs):,.0f}-{max(runs):,.0f})"


def _spread(runs: list[float]) -> str:
    if len(runs) == 1:
        return "1 run"
    return f"median of {len(runs)} runs, {min(runs):,.0f}-{max(runs):,.0f}"


def _latency_row(
    name: str,
    rate: float,
    result: dict[str, Any],
    floor: dict[str, Any],
    client_floor: dict[str, Any] | None = None,
) -> Row:
    """A row of (c): the p99, with p50, p95, max, the distance to the floor and the CPU.

    ``client_floor``: the pass-through on the row's own client (kafka-python), whose
    distance is given too.
    """
    nan = float("nan")
    p50, p95, p99, top = (result.get(q, nan) for q in ("p50", "p95", "p99", "max"))
    note = f"p50 {p50:.1f}, p95 {p95:.1f}, max {top:.1f}"
    if floor and floor is not result:
        note += (
            f"; floor + {p99 - floor.get('p99', nan):.1f} ms at p99, "
            f"+ {p50 - floor.get('p50', nan):.1f} at p50"
        )
    if client_floor:
        note += (
            f"; its client's pass-through + {p99 - client_floor.get('p99', nan):.1f} ms at "
            f"p99, + {p50 - client_floor.get('p50', nan):.1f} at p50"
        )
    if "p50_first_third" in result:
        # A last third many times the first: the broker fell behind during the row.
        note += (
            f"; p50 first/last third {result['p50_first_third']:.1f}/{result['p50_last_third']:.1f}"
        )
    if "hop1_p50" in result:
        note += f"; p50 hop 1 + system {result['hop1_p50']:.1f}, hop 2 {result['hop2_p50']:.1f}"
    if "layout" in result:
        note += f"; {result['layout']}"
    note += (
        f"; {result['answered']:,}/{result['sent']:,} answered; CPU {result['cpu_system']:.2f} "
        f"core, broker {result['cpu_broker']:.2f}; exit {result['exit']}"
    )
    return Row(
        "c",
        f"{name}, {rate:,.0f}/s, p99",
        p99,
        "ms",
        None,
        note,
        {
            k: result.get(k)
            for k in (
                *("p50", "p95", "p99", "max", "rate", "system", "sent"),
                *("p50_first_third", "p50_last_third", "hop1_p50", "hop2_p50"),
            )
        },
    )


def _latency_summary(name: str, rate: float, distances: list[tuple[float, float]]) -> Row:
    """A system's distance to the floor over the rounds of (c): medians, and each round's.

    One round cannot show a 10 ms target here: from round to round the floor's own p99
    moves by tens of ms. Each round's floor runs just before the system, so the
    difference within a round is what the pipeline adds; its median over the rounds is
    the figure.
    """
    p50s = [p50 for p50, _ in distances]
    p99s = [p99 for _, p99 in distances]
    rounds = ", ".join(f"{p99:+.1f} ({p50:+.1f})" for p50, p99 in distances)
    return Row(
        "c",
        f"{name}, {rate:,.0f}/s, p99 - floor, median of {len(distances)} rounds",
        float(np.median(p99s)),
        "ms",
        None,
        f"p50 - floor median {float(np.median(p50s)):+.1f} ms; per round, p99 (p50): {rounds}",
        {"rate": rate, "p50_minus_floor": p50s, "p99_minus_floor": p99s},
    )


def _settings_note(sections: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{s}.{k}={v}" for s, table in sections.items() for k, v in table.items())


# The demo event as an Avro record, for (r).
_DEMO_AVRO = json.dumps(
    {
        "type": "record",
        "name": "Transaction",
        "namespace": "streamer.bench",
        "fields": [
            {"name": "transaction_id", "type": "string"},
            {"name": "card_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "currency", "type": "string"},
            {"name": "merchant_category", "type": "string"},
            {"name": "merchant_risk", "type": "double"},
            {"name": "distance_from_home_km", "type": "double"},
            {"name": "transactions_last_hour", "type": "int"},
            {"name": "account_age_days", "type": "int"},
            {"name": "event_time", "type": "double"},
        ],
    }
)


def _model_kind_rates(workdir: Path, count: int) -> dict[str, float]:
    """Records/s of prepare + score (+ reasons) per kind; see ``Bench.model_kinds``."""
    import warnings

    import lightgbm as lgb
    import mlflow.sklearn
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from streamer.core.features import prepare_batch
    from streamer.core.models import ModelOptions, load_model
    from streamer.core.scoring import explain, score_isolating_failures

    frame, target = load_breast_cancer(return_X_y=True, as_frame=True)
    names = list(frame.columns)
    directory = workdir / "model-kinds"
    directory.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        pipeline.fit(frame, target)
        import joblib

        joblib.dump(pipeline, directory / "logreg.joblib")
        # Declared requirements: mlflow otherwise infers them in a subprocess (~8 s).
        mlflow.sklearn.save_model(
            pipeline,
            str(directory / "mlflow-logreg"),
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(),
        )
        xgb.train(
            {"max_depth": 3, "objective": "binary:logistic", "nthread": 1},
            xgb.DMatrix(frame, label=target),
            100,
        ).save_model(directory / "xgb.json")
        lgb.train(
            {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1},
            lgb.Dataset(frame, label=target),
            100,
        ).save_model(directory / "lgb.txt")
        linear = {
            "features": names,
            "mean": frame.mean().tolist(),
            "std": frame.std(ddof=0).tolist(),
            "weights": pipeline[-1].coef_[0].tolist(),
            "bias": float(pipeline[-1].intercept_[0]),
        }
        (directory / "linear.json").write_bytes(orjson.dumps(linear))
    rng = np.random.default_rng(5)
    sample = frame.to_numpy()[rng.integers(0, len(frame), 1000)]
    batch = [orjson.dumps(dict(zip(names, row, strict=True))) for row in sample.tolist()]
    kinds = [
        ("linear", "linear", "linear.json", 0),
        ("linear, reasons k=3", "linear", "linear.json", 3),
        ("sklearn", "sklearn", "logreg.joblib", 0),
        ("sklearn, reasons k=3", "sklearn", "logreg.joblib", 3),
        ("mlflow (sklearn flavour)", "mlflow", "mlflow-logreg", 0),
        ("xgboost", "xgboost", "xgb.json", 0),
        ("xgboost, reasons k=3", "xgboost", "xgb.json", 3),
        ("lightgbm", "lightgbm", "lgb.txt", 0),
        ("lightgbm, reasons k=3", "lightgbm", "lgb.txt", 3),
    ]
    rates: dict[str, float] = {}
    for label, kind, file, k in kinds:
        options = ModelOptions(features=tuple(names), explain_top_k=k)
        model = load_model(kind, str(directory / file), options)
        started = time.perf_counter()
        for _ in range(count // len(batch)):
            prepared = prepare_batch(
                batch, model.spec, missing="dlq", standardize=model.spec.standardize,
                max_record_bytes=1 << 20,
            )  # fmt: skip
            score_isolating_failures(model, prepared.features)
            explain(model, prepared.features)
        rates[label] = count / (time.perf_counter() - started)
    return rates


def table(rows: list[Row], args: argparse.Namespace) -> str:
    titles = {
        "a": "(a) floors: bare single-thread loops",
        "b": "(b) streamer, ratio to its own backend's floor",
        "p": "(p) peers on the same job; x floor = ratio to the fastest peer",
        "c": "(c) end-to-end latency (ms) at fixed rates, a fresh broker per row",
        "d": "(d) memory with a model 5x slower than the input",
        "e": "(e) scaling (one worker)",
        "f": "(f) large records: peak RSS against the idle daemon and the byte cap",
        "r": "(r) record formats: Avro input next to JSON, batch 1000 (x floor: x JSON)",
        "m": "(m) model kinds in process, batches of 1000 (x floor: ratio to sklearn's row)",
        "h": "(h) model health: a drift profile and one challenger, against neither",
        "s": "(s) state: three 1 h window features per card on RocksDB, against no state",
        "l": "(l) labels: one label per 10 records, the ledger on RocksDB, against no labels",
        "o": "(o) remote model (MLServer on loopback), x floor: the bare aiohttp loop's",
    }
    lines = [
        f"streamer benchmark, {datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, embedded Tansu broker",
        f"{args.records} JSON records of about 200 B in {PARTITIONS} partitions, demo model",
        "",
        f"{'row':<44} {'value':>12} {'unit':<10} {'x floor':>7}  note",
    ]
    for section, title in titles.items():
        chosen = [r for r in rows if r.section == section]
        if not chosen:
            continue
        lines.append(title)
        for r in chosen:
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
            value = f"{r.value:,.0f}" if r.unit == "records/s" else f"{r.value:,.1f}"
            lines.append(f"  {r.name:<42} {value:>12} {r.unit:<10} {ratio:>7}  {r.note}")
    return "\n".join(lines)


def _large_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--large-records", type=int, default=3000)
    parser.add_argument("--large-bytes", type=int, default=500_000)
    parser.add_argument(
        "--large-cap", type=int, default=0, help="batch.max_in_flight_bytes of (f); 0: the default"
    )
    parser.add_argument(
        "--large-rate", type=float, default=100.0, help="input records/s of (f); the model does 1/5"
    )
    parser.add_argument("--large-backends", default="kafka-python,confluent")
    parser.add_argument(
        "--issue-backends",
        default="kafka-python,confluent",
        help="(f) also runs issue 11's 400 KB scenario on these",
    )


def _peer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run (p): Bytewax, Quix Streams and Pathway, same job",
    )
    parser.add_argument(
        "--peer-systems",
        default="bytewax-map,bytewax-batch,quix,quix-batch,pathway,pathway-batch",
        type=lambda text: [name for name in text.split(",") if name],
    )
    parser.add_argument(
        "--peers-python",
        default=os.environ.get("BENCH_PEERS_PYTHON", ""),
        help="the peers' interpreter (default: .peers-venv, created once)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--workers", default="1,2", help="worker counts for (b)")
    parser.add_argument("--variants", default="defaults,tuned", help="settings for (b)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="alternating runs of each floor and 1-worker row"
    )
    parser.add_argument("--latency-backends", default="kafka-python,confluent")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument(
        "--latency-rates", default="2000,10000,30000", help="the input rates of (c), records/s"
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=1,
        help="rounds of (c), each system after the floor; above 1, medians of the distances",
    )
    parser.add_argument(
        "--latency-broker-cpus",
        default="last",
        help="(c): CPUs each row's fresh broker has to itself, e.g. '1' ('last': the last CPU "
        "of a machine with 2 or more); the generator, the reader and the system under test "
        "share the other CPUs; '': every program of a row on every CPU (with --broker-cpus, "
        "(c) takes that layout instead)",
    )
    parser.add_argument("--memory-seconds", type=float, default=120.0)
    parser.add_argument("--memory-backends", default="kafka-python,confluent")
    parser.add_argument("--scaling-backend", default="confluent")
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--batch-sizes", default="1,10,100,1000,5000")
    parser.add_argument(
        "--sections",
        default="abcdefrmhslo",
        help="which of a-f, r, m, h, s, l and o to run ('a' runs (a) and (b); --peers adds p)",
    )
    parser.add_argument(
        "--state-keys",
        type=int,
        default=1_000_000,
        help="(s): distinct keys of the RSS and restore rows; 0 leaves them out",
    )
    parser.add_argument("--state-backend", default="confluent", help="for (s) and (l)")
    parser.add_argument(
        "--state-changelog-interval",
        type=float,
        default=None,
        help="(s): state.changelog_interval_s of the runs with state (default: the setting's)",
    )
    parser.add_argument(
        "--label-every", type=int, default=10, help="(l): one label per this many records"
    )
    parser.add_argument("--remote-records", type=int, default=20_000, help="for (o)")
    parser.add_argument("--remote-backend", default="confluent", help="for (o)")
    parser.add_argument(
        "--remote-server-cpus",
        default="",
        help="for (o): CPUs to pin MLServer to, e.g. '0' (run bench.py itself under "
        "`taskset -c 1` to give the client side the other core); empty: no pinning",
    )
    parser.add_argument(
        "--broker-cpus",
        default="",
        help="CPUs to pin the embedded broker and the bench process (its readers, generators "
        "and (l)'s label feeder) to, e.g. '1'; the streamer daemons get the other CPUs: the "
        "broker on hardware of its own, as in production, as far as one machine allows; "
        "empty: no pinning",
    )
    parser.add_argument("--format-backends", default="kafka-python,confluent", help="for (r)")
    for more in (_large_arguments, _peer_arguments):
        more(parser)
    parser.add_argument("--session-timeout", type=float, default=6.0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts and few rows: checks that it runs"
    )
    args = parser.parse_args(argv)
    if args.latency_rounds < 1:
        parser.error(f"--latency-rounds must be 1 or more, got {args.latency_rounds}")
    if args.smoke:
        args.records = min(args.records, 3000)
        args.latency_seconds = min(args.latency_seconds, 0.5)  # 1,000 records a (c) row
        args.memory_seconds = min(args.memory_seconds, 2.0)
        args.workers = "1,2"
        args.variants = "defaults"
        args.repeat = 1
        args.latency_backends = "confluent"
        args.latency_rates = "2000"
        args.latency_rounds = 1
        args.memory_backends = "confluent"
        args.session_timeout = 3.0
        args.actors = ""
        args.batch_sizes = "100"
        args.large_records = min(args.large_records, 50)  # 1 s at the rate below
        args.large_rate = min(args.large_rate, 50.0)
        args.large_cap = args.large_cap or 8 * 2**20
        args.large_backends = "confluent"
        args.issue_backends = ""
        args.sections = args.sections.replace("r", "")  # (r) starts two more daemons per backend
        args.sections = args.sections.replace("o", "")  # (o) starts MLServer (and may build it)
        args.sections = args.sections.replace("s", "")  # (s) starts 4+ daemons, RocksDB stores
        args.sections = args.sections.replace("l", "")  # (l) alternates 2 x --repeat daemons
    args.backends = [b for b in args.backends.split(",") if b]
    args.format_backends = [b for b in args.format_backends.split(",") if b]
    args.memory_backends = [b for b in args.memory_backends.split(",") if b]
    args.large_backends = [b for b in args.large_backends.split(",") if b]
    args.issue_backends = [b for b in args.issue_backends.split(",") if b]
    args.latency_backends = [b for b in args.latency_backends.split(",") if b]
    args.latency_rates = [float(x) for x in args.latency_rates.split(",") if x]
    args.variants = [v for v in args.variants.split(",") if v]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.actors = [int(a) for a in args.actors.split(",") if a]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.broker_cpus = {int(c) for c in args.broker_cpus.split(",") if c} or None
    # --broker-cpus pins the whole bench with its broker: (c) then keeps that layout.
    latency_broker_cpus = _latency_broker_cpus(parser, args.latency_broker_cpus)
    args.latency_broker_cpus = None if args.broker_cpus else latency_broker_cpus
    return args


def _latency_systems(backends: list[str]) -> list[str]:
    """(c)'s systems in the order of a round: the floor first, then the probes, then streamer."""
    systems = ["passthrough", "handoffs", "scoring"]
    if "kafka-python" in backends:
        # That backend's own client floor, and the actor shape's hops on it.
        systems += ["passthrough-kafka-python", "handoffs-kafka-python"]
    return systems + [f"streamer-{b}" for b in backends]


def _latency_broker_cpus(parser: argparse.ArgumentParser, text: str) -> set[int] | None:
    """The CPUs of (c)'s brokers, alone (None: shared with every program of a row)."""
    available = sorted(os.sched_getaffinity(0))
    if text == "last":
        return {available[-1]} if len(available) >= 2 else None
    try:
        cpus = {int(c) for c in text.split(",") if c}
    except ValueError:
        parser.error(f"--latency-broker-cpus {text!r}: CPU numbers separated by commas, or 'last'")
    if cpus and not cpus < set(available):
        parser.error(
            f"--latency-broker-cpus {text!r}: the broker needs CPUs among {available} and must "
            "leave one to the others"
        )
    return cpus or None


def main(argv: list[str] | None = None) -> int:
    from latency import exit_on_sigterm  # benchmarks/ is on the path (a script)

    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="streamer-bench-"))
        bootstrap = args.bootstrap
        broker_pid = 0
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            broker_pid = broker.pid
            if args.broker_cpus:
                pin_broker(broker_pid, args.broker_cpus)
        bench = Bench(args, bootstrap, Path(tmp), broker_pid)
        bench.run()
    print(table(bench.rows, args))
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps([r.__dict__ for r in bench.rows], indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
