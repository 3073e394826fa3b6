"""Helpers for the integration tests against the embedded Tansu broker.

Every test gets its own uuid-named topics and consumer group, created
explicitly (Tansu would auto-create a topic on first use otherwise), and every
wait is bounded by :func:`wait_for`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamer.clients.kafka_python import ensure_topics
from streamer.core.features import FeatureSpec
from streamer.core.models import ModelDefaults
from streamer.core.models.linear import LinearModel
from streamer.devtools.broker import EmbeddedBroker
from streamer.devtools.verify import Reconciliation, TopicDump, read_topic, reconcile_topics
from streamer.settings import KafkaSettings, Settings, build_settings
from streamer.topology import Pipeline

T = TypeVar("T")

# A group join takes about half the session timeout on Tansu: ~3 s with these.
SESSION_TIMEOUT_S = 6.0
HEARTBEAT_INTERVAL_S = 1.0
ASSIGN_TIMEOUT_S = 30.0
PROCESS_TIMEOUT_S = 60.0

# (partition, offset) -> (key, value) of every record a test produced.
Produced = dict[tuple[int, int], tuple[bytes | None, bytes]]

# kafka.client values: every delivery, commit and rebalance check runs on each backend.
BACKENDS = [
    pytest.param("kafka-python", id="kafka-python"),
    pytest.param(
        "confluent",
        id="confluent",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("confluent_kafka") is None,
            reason="needs the confluent extra: pip install 'streamer[confluent]'",
        ),
    ),
]


def wait_for(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout_s``.

    ``describe`` adds the state that explains a timeout to the failure message.
    """
    deadline = time.monotonic() + timeout_s
    last: T = condition()
    while not last:
        if time.monotonic() >= deadline:
            context = f"; {describe()}" if describe is not None else ""
            pytest.fail(
                f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r}){context}"
            )
        time.sleep(interval_s)
        last = condition()
    return last


def streamer_command() -> list[str]:
    """The ``streamer`` console script of the interpreter running the tests."""
    return [str(Path(sys.executable).parent / "streamer")]


@contextlib.contextmanager
def running_daemon(
    config: Path,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``streamer run`` in the background; killed (by its pid) if the test leaves it running.

    ``args`` are added to the command line, ``env`` to the environment.
    """
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*streamer_command(), "run", "--config", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class Topics:
    """The uuid-named topics and group of one test."""

    input: str
    output: str
    dead_letter: str
    group: str
    partitions: int


class Cluster:
    """Test-side access to the session broker: topics, settings, produce, read, commits."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.bootstrap_servers = broker.bootstrap_servers

    def new_topics(
        self,
        partitions: int = 4,
        output_partitions: int | None = None,
        *,
        create_input: bool = True,
    ) -> Topics:
        """Create fresh input, output and dead-letter topics and pick a fresh group id."""
        tag = uuid.uuid4().hex[:12]
        topics = Topics(
            input=f"in-{tag}",
            output=f"out-{tag}",
            dead_letter=f"in-{tag}.dlq",
            group=f"group-{tag}",
            partitions=partitions,
        )
        wanted = {topics.output: output_partitions or partitions, topics.dead_letter: 1}
        if create_input:
            wanted[topics.input] = partitions
        ensure_topics(KafkaSettings(bootstrap_servers=self.bootstrap_servers), wanted)
        return topics

    def kafka_section(self, topics: Topics) -> dict[str, Any]:
        """The [kafka] table every test starts from."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "input_topic": topics.input,
            "output_topic": topics.output,
            "group_id": topics.group,
            "client_id": f"streamer-{topics.group}",
            "session_timeout_s": SESSION_TIMEOUT_S,
            "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "bootstrap_timeout_s": 10.0,
        }

    def settings(self, topics: Topics, **sections: dict[str, Any]) -> Settings:
        """Settings for ``topics``; ``sections`` add or override keys per section."""
        document: dict[str, dict[str, Any]] = {
            "kafka": self.kafka_section(topics),
            "metrics": {"enabled": False},
            "shutdown": {"timeout_s": 20.0},
        }
        for section, values in sections.items():
            document.setdefault(section, {}).update(values)
        return build_settings(document, environ={})

    def produce(
        self,
        topic: str,
        records: Iterable[tuple[bytes | None, bytes]],
        partition_of: Callable[[int], int] | None = None,
    ) -> Produced:
        """Produce (key, value) records with acks=all; return where each one landed."""
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            acks="all",
            linger_ms=5,
            batch_size=131072,
        )
        try:
            sent = [
                (
                    key,
                    value,
                    producer.send(
                        topic,
                        key=key,
                        value=value,
                        partition=None if partition_of is None else partition_of(index),
                    ),
                )
                for index, (key, value) in enumerate(records)
            ]
            producer.flush(timeout=PROCESS_TIMEOUT_S)
            produced: Produced = {}
            for key, value, future in sent:
                metadata = future.get(timeout=PROCESS_TIMEOUT_S)
                produced[(metadata.partition, metadata.offset)] = (key, value)
        finally:
            producer.close(timeout=5)
        return produced

    def read(self, topic: str) -> TopicDump:
        """Every record of a topic, from the beginning to its current end (to look at them)."""
        return read_topic(self.bootstrap_servers, topic, timeout_s=PROCESS_TIMEOUT_S)

    def reconcile(self, topics: Topics, client: str | None = None) -> Reconciliation:
        """Stream the test's three topics through the range-based reconciler (the demo's)."""
        return reconcile_topics(
            self.bootstrap_servers,
            topics.input,
            topics.output,
            topics.dead_letter,
            idle_timeout_s=PROCESS_TIMEOUT_S,
            client=client,
        )

    @contextlib.contextmanager
    def committed_reader(self, group: str) -> Iterator[Callable[[str, int], int | None]]:
        """A function (topic, partition) -> the group's committed offset, on one client."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            group_id=group,
            enable_auto_commit=False,
        )
        try:
            yield lambda topic, partition: consumer.committed(
                TopicPartition(topic, partition), timeout_ms=10_000
            )
        finally:
            consumer.close(autocommit=False, timeout_ms=5000)

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int | None]:
        """The group's committed offset of each partition (None: never committed)."""
        with self.committed_reader(group) as committed:
            return {p: committed(topic, p) for p in range(partitions)}


def end_offsets(produced: Produced) -> dict[int, int]:
    """The end (next offset) of each partition a fresh topic received ``produced`` in."""
    ends: dict[int, int] = {}
    for partition, offset in produced:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def wait_until_delivered(
    pipeline: Pipeline, topic: str, produced: Produced, timeout_s: float = PROCESS_TIMEOUT_S
) -> None:
    """Wait until the pipeline's commit watermark reached the end of every input partition.

    Only ``topic``'s partitions are compared: the consumer also holds the labels
    topic's when labels are on.
    """
    wanted = {(topic, p): end for p, end in end_offsets(produced).items()}

    def of_topic() -> dict[tuple[str, int], int]:
        watermarks = pipeline.consumer_status().watermarks
        return {tp: offset for tp, offset in watermarks.items() if tp[0] == topic}

    wait_for(
        lambda: of_topic() == wanted,
        timeout_s,
        f"the watermarks to reach {wanted}",
    )


class SlowModel(ModelDefaults):
    """A model that takes ``delay_s`` longer per ``predict`` call than the one it wraps."""

    # No file behind it: nothing to watch, and a reload never counts as unchanged.
    digest = ""
    watch_paths = ()

    def __init__(self, inner: LinearModel, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self.calls = 0
        self.name = inner.name
        self.version = inner.version
        self.spec: FeatureSpec = inner.spec
        self.output_names = inner.output_names

    def predict(self, features: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
        time.sleep(self._delay_s)
        return self._inner.predict(features)


class FlakyModel(ModelDefaults):
    """The demo model; ``crash_calls`` predict calls die with a BaseException (a kill)."""

    # No file behind it: nothing to watch, and a reload never counts as unchanged.
    digest = ""
    watch_paths = ()

    def __init__(self, inner: LinearModel, crash_calls: set[int]) -> None:
        self._inner = inner
        self.name, self.version = inner.name, inner.version
        self.spec, self.output_names = inner.spec, inner.output_names
        self._crash_calls = crash_calls
        self._calls = 0
        self._lock = threading.Lock()

    def predict(self, features: np.ndarray) -> np.ndarray:
        with self._lock:
            self._calls += 1
            crash = self._calls in self._crash_calls
        if crash:
            raise KeyboardInterrupt("model actor killed")
        return self._inner.predict(features)


class GatedModel(ModelDefaults):
    """The demo model, whose ``predict`` blocks until the test opens the gate.

    It keeps the first member's batches in flight, so that the rebalance
    deterministically happens mid-stream (and, with a small max_in_flight,
    while the consumer is paused by backpressure).
    """

    # No file behind it: nothing to watch, and a reload never counts as unchanged.
    digest = ""
    watch_paths = ()

    def __init__(self, inner: LinearModel, gate: threading.Event) -> None:
        self._inner = inner
        self._gate = gate
        self.name = inner.name
        self.version = inner.version
        self.spec: FeatureSpec = inner.spec
        self.output_names = inner.output_names

    def predict(self, features: np.ndarray) -> np.ndarray:
        self._gate.wait(PROCESS_TIMEOUT_S)
        return self._inner.predict(features)


PipelineStarter = Callable[..., Pipeline]


@dataclass(frozen=True)
class DemoRun:
    """What one ``streamer demo`` printed, its exit code and how long it took."""

    done: subprocess.CompletedProcess[str]
    seconds: float
