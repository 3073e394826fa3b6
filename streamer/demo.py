"""``streamer demo``: the embedded broker, the generator and the pipeline, with a live line."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from types import FrameType

from prometheus_client import CollectorRegistry

from streamer.broker import EmbeddedBroker
from streamer.cli import produce_demo
from streamer.client import ensure_topics
from streamer.core.quantile import histogram_quantile
from streamer.settings import build_settings
from streamer.topology import Pipeline
from streamer.verify import read_topic, reconcile

log = logging.getLogger(__name__)

INPUT, OUTPUT = "transactions", "scores"


def _bucket_counts(registry: CollectorRegistry, name: str) -> list[tuple[float, float]]:
    buckets = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    return sorted(buckets)


class _Progress:
    """Builds the live line from the registry, with rates over the last interval."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.last = (time.monotonic(), 0.0, 0.0)
        self.last_buckets: list[tuple[float, float]] = []

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def dead_letters(self) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "streamer_dead_letters_total":
                    total += sample.value
        return total

    def committed(self) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "streamer_committed_offset":
                    total += sample.value
        return total

    def line(self) -> str:
        now = time.monotonic()
        consumed = self.value("streamer_records_consumed_total")
        produced = self.value("streamer_records_produced_total")
        then, consumed_before, produced_before = self.last
        elapsed = max(1e-6, now - then)
        self.last = (now, consumed, produced)
        buckets = _bucket_counts(self.registry, "streamer_batch_latency_seconds")
        previous = dict(self.last_buckets)
        window = [(le, count - previous.get(le, 0.0)) for le, count in buckets]
        self.last_buckets = buckets
        p99 = histogram_quantile(0.99, window)
        p99_text = "-" if p99 is None else f"{p99 * 1000:.0f}ms"
        return (
            f"in {(consumed - consumed_before) / elapsed:8.0f}/s"
            f"  out {(produced - produced_before) / elapsed:8.0f}/s"
            f"  in-flight {self.value('streamer_in_flight_batches'):3.0f} batches"
            f"  committed {self.committed():9.0f}  dead-lettered {self.dead_letters():5.0f}"
            f"  p99 batch {p99_text:>6}"
        )


def run_demo(*, duration_s: float, rate: float, partitions: int, metrics_port: int) -> int:
    """Run until ``duration_s`` passes (0: until Ctrl-C) and print a summary.

    Returns 0 when no input record is lost and the shutdown was clean.
    """
    stop = threading.Event()
    interrupted = [0]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        interrupted[0] += 1
        if interrupted[0] > 1:
            raise SystemExit(128 + signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with EmbeddedBroker() as broker:
        print(f"embedded Kafka-compatible broker (Tansu) at {broker.bootstrap_servers}", flush=True)
        settings = build_settings(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap_servers,
                    "input_topic": INPUT,
                    "output_topic": OUTPUT,
                    "group_id": "streamer-demo",
                    "session_timeout_s": 6.0,
                    "heartbeat_interval_s": 1.0,
                },
                "metrics": {"port": metrics_port, "host": "127.0.0.1"},
            },
            environ={},
        )
        ensure_topics(
            settings.kafka,
            {INPUT: partitions, OUTPUT: partitions, settings.kafka.dead_letter_topic_name: 1},
        )
        registry = CollectorRegistry()
        pipeline = Pipeline(settings, registry=registry)
        pipeline.start()
        port = pipeline.metrics_port()
        print(f"metrics at http://127.0.0.1:{port}/metrics", flush=True)
        print(
            f"generator: {rate:.0f} transactions/s into '{INPUT}'; predictions go to '{OUTPUT}'."
            f" {'Ctrl-C stops.' if not duration_s else f'Running {duration_s:.0f}s.'}",
            flush=True,
        )
        produced = [0]
        generator_stop = threading.Event()
        generator = threading.Thread(
            target=produce_demo,
            name="generator",
            daemon=True,
            kwargs={
                "bootstrap_servers": broker.bootstrap_servers,
                "topic": INPUT,
                "rate": rate,
                "count": 0,
                "bad_ratio": 0.001,
                "seed": 7,
                "stop": generator_stop,
                "produced": produced,
            },
        )
        generator.start()
        progress = _Progress(registry)
        started = time.monotonic()
        tty = sys.stdout.isatty()
        while not stop.wait(1.0) and pipeline.failure is None:
            line = progress.line()
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            if duration_s and time.monotonic() - started >= duration_s:
                break
        if tty:
            print()
        print(
            "stopping: generator first, then the pipeline drains, flushes and commits ...",
            flush=True,
        )
        generator_stop.set()
        generator.join(timeout=30)
        # Let the pipeline catch up with what the generator wrote, then drain.
        _wait_caught_up(pipeline, registry, produced_total=produced[0], timeout_s=30)
        report = pipeline.stop()
        inputs = read_topic(broker.bootstrap_servers, INPUT)
        outputs = read_topic(broker.bootstrap_servers, OUTPUT)
        dead = read_topic(broker.bootstrap_servers, settings.kafka.dead_letter_topic_name)
        result = reconcile(inputs, outputs, dead)
        elapsed = time.monotonic() - started
        print(
            f"summary: records in {result.inputs}, scored {result.scored}, "
            f"dead-lettered {result.dead_lettered}, duplicates {result.duplicates}, "
            f"lost {len(result.lost)}; "
            f"{result.inputs / elapsed:.0f} records/s over {elapsed:.1f}s; "
            f"shutdown {'clean' if report.exit_code == 0 else 'FAILED: ' + str(report.failure)}",
            flush=True,
        )
        return 0 if not result.lost and report.exit_code == 0 else 1


def _wait_caught_up(
    pipeline: Pipeline, registry: CollectorRegistry, *, produced_total: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pipeline.failure is None:
        consumed = registry.get_sample_value("streamer_records_consumed_total") or 0
        if consumed >= produced_total:
            return
        time.sleep(0.1)
