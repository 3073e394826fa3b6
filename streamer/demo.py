"""``streamer demo``: the embedded broker, the generator and the pipeline, with a live line."""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from streamer.clients import backend
from streamer.core.demo_data import LABEL_SHARE, DemoClock, LabelSchedule
from streamer.core.quantile import histogram_quantile
from streamer.devtools.broker import EmbeddedBroker
from streamer.devtools.verify import DEFAULT_IDLE_TIMEOUT_S, reconcile_topics
from streamer.generator import DemoLabels, produce_demo
from streamer.settings import KafkaSettings, Settings, build_settings
from streamer.signals import GracefulSignals
from streamer.topology import Pipeline, ShutdownReport

log = logging.getLogger(__name__)

INPUT, OUTPUT = "transactions", "scores"
LABELS = "labels"
"""The demo's labels topic: the generator's verdicts on a sample of its transactions, keyed
like them and as many partitions, joined to the predictions by ``transaction_id``."""
# `streamer profile` of the demo model over 50000 generated transactions (its "source").
DEMO_PROFILE = Path(__file__).parent / "core" / "models" / "demo_fraud.profile.json"
DRIFT_PSI = 0.2
DEMO_STATE_FEATURE = {
    "name": "transactions_last_hour",
    "key": "card_id",
    "agg": "count",
    "window": "1h",
    "time": "ts",
    "include_current": True,
}
"""The demo model's ``transactions_last_hour``: the card's transactions in the last hour of
event time, this one included, computed by streamer (docs/state.md)."""
MISSING_ALARM = 0.05
ASSIGN_WAIT_S = 60.0


def _bucket_counts(registry: CollectorRegistry, name: str) -> list[tuple[float, float]]:
    buckets = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    return sorted(buckets)


class _Scrape(CollectorRegistry):
    """One ``collect()`` of a registry, read many times.

    A line's figures come from one scrape: each ``collect()`` of the registry may
    compute the label quality report again (when labels joined since the last one).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(auto_describe=False)
        self._metrics = list(registry.collect())

    def collect(self) -> Iterator[Metric]:
        """The metrics of the one scrape."""
        return iter(self._metrics)


class _Progress:
    """Builds the live line from the registry, with rates over the last interval."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = self.registry = registry
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
        """The input's committed offsets, summed (the labels topic's are not transactions)."""
        return _input_committed(self.registry)

    def line(self) -> str:
        self.registry = _Scrape(self._source)
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
            f"  keys in state {self.state_keys():6.0f}" + self.worst_psi() + self.quality()
        )

    def quality(self) -> str:
        """``  precision 0.912 recall 0.874``: the champion's, over the labelled window."""
        found = champion_quality(self.registry)
        return "  " + found.short() if found.records else "  no labels joined yet"

    def state_keys(self) -> float:
        """Keys in the state of every partition (``streamer_state_keys``)."""
        return sum(
            sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.name == "streamer_state_keys"
        )

    def worst_psi(self) -> str:
        """``  worst PSI amount 0.012``: the feature that drifted most, over the window."""
        feature, value = worst_feature_psi(self.registry)
        return f"  worst PSI {feature} {value:.3f}" if feature else ""


@dataclass(frozen=True)
class ChampionQuality:
    """The champion's precision and recall over the labelled window, from the registry."""

    model: str
    version: str
    records: int
    precision: float | None
    recall: float | None

    def short(self) -> str:
        """``precision 0.912 recall 0.874`` (``-`` for an undefined one)."""
        return f"precision {_figure(self.precision)} recall {_figure(self.recall)}"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def champion_quality(registry: CollectorRegistry) -> ChampionQuality:
    """The ``streamer_model_quality`` of the model in use (``streamer_model_info``), if any."""
    name = version = ""
    quality: dict[str, float] = {}
    records = 0.0
    samples = [sample for metric in registry.collect() for sample in metric.samples]
    for sample in samples:
        if sample.name == "streamer_model_info":
            name, version = sample.labels.get("name", ""), sample.labels.get("version", "")
    for sample in samples:
        labels = sample.labels
        if labels.get("model") != name or labels.get("version") != version:
            continue
        if sample.name == "streamer_model_quality":
            quality[labels["metric"]] = sample.value
        elif sample.name == "streamer_model_quality_records":
            records = sample.value
    return ChampionQuality(
        name, version, int(records), quality.get("precision"), quality.get("recall")
    )


def labels_by_result(registry: CollectorRegistry) -> dict[str, float]:
    """``streamer_labels_total`` summed over the partitions, by result."""
    totals: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "streamer_labels_total":
                result = sample.labels["result"]
                totals[result] = totals.get(result, 0.0) + sample.value
    return totals


def worst_feature_psi(registry: CollectorRegistry) -> tuple[str, float]:
    """(feature, PSI) of the highest ``streamer_feature_psi``; ('', 0.0) without any."""
    worst = ("", 0.0)
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "streamer_feature_psi" and sample.value >= worst[1]:
                worst = (sample.labels["feature"], sample.value)
    return worst


def run_demo(
    *,
    duration_s: float,
    rate: float,
    partitions: int,
    metrics_port: int,
    summary_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    drift: str = "",
    drift_after_s: float = 30.0,
) -> int:
    """Run until ``duration_s`` passes (0: until Ctrl-C) and print a summary.

    The pipeline measures drift against the demo model's packaged profile;
    ``drift`` ('amount' or 'missing') makes the generator drift after
    ``drift_after_s`` seconds, and the summary says which feature drifted.

    The summary gives up when reading the topics back makes no progress for
    ``summary_timeout_s``, or on Ctrl-C; it then says so in one line.

    Returns 0 when no input record is lost and the shutdown was clean.
    """
    stop = threading.Event()
    signals = GracefulSignals(lambda _signum: stop.set(), on_second=_exit, announce=None)
    signals.install()
    with EmbeddedBroker() as broker:
        print(f"embedded Kafka-compatible broker (Tansu) at {broker.bootstrap_servers}", flush=True)
        settings = _settings(broker.bootstrap_servers, metrics_port)
        backend(settings.kafka.client).ensure_topics(
            settings.kafka,
            {
                INPUT: partitions,
                OUTPUT: partitions,
                LABELS: partitions,
                settings.kafka.dead_letter_topic_name: 1,
            },
        )
        registry = CollectorRegistry()
        pipeline = Pipeline(settings, registry=registry)
        pipeline.start()
        _announce(pipeline, rate, duration_s)
        # Transactions sent before the consumer has its partitions wait in the topic,
        # and their labels, 2-5 s later, could come before their predictions: those
        # would join nothing (unmatched).
        _wait_assigned(pipeline, stop)
        generator = _Generator(settings.kafka, rate, drift, drift_after_s)
        started = time.monotonic()
        _show_progress(pipeline, registry, stop, duration_s, started)
        print(
            "stopping: generator first, then the pipeline drains, flushes and commits ...",
            flush=True,
        )
        produced = generator.stop()
        # Let the pipeline catch up with what the generator wrote, then drain.
        _wait_caught_up(pipeline, registry, produced_total=produced, timeout_s=30)
        # Every transaction answered: its prediction is in the ledger, its label may come.
        _wait_committed(pipeline, registry, produced_total=produced, timeout_s=30)
        generator.release_labels()
        _wait_labels_counted(pipeline, registry, sent=generator.labels.sent, timeout_s=10)
        scrape = _Scrape(registry)
        drifted = _drift_line(scrape)
        quality = _quality_line(scrape, generator.labels.sent)
        report = pipeline.stop()
        print(drifted, flush=True)
        print(quality, flush=True)
        with signals.interrupting():
            return _summary(
                broker.bootstrap_servers,
                settings.kafka.dead_letter_topic_name,
                report,
                started=started,
                idle_timeout_s=summary_timeout_s,
            )


def _exit(signum: int) -> None:
    """A second Ctrl-C: leave through the broker's cleanup, with 128+N."""
    raise SystemExit(128 + signum)


def _settings(bootstrap_servers: str, metrics_port: int) -> Settings:
    return build_settings(
        {
            "kafka": {
                "bootstrap_servers": bootstrap_servers,
                "input_topic": INPUT,
                "output_topic": OUTPUT,
                "group_id": "streamer-demo",
                "session_timeout_s": 6.0,
                "heartbeat_interval_s": 1.0,
            },
            "metrics": {"port": metrics_port, "host": "127.0.0.1"},
            "monitoring": {"profile_path": str(DEMO_PROFILE), "window_records": 5000},
            # The generator leaves the card's activity to streamer: a declared feature.
            "state": {"features": [DEMO_STATE_FEATURE]},
            # The generator's verdicts on a sample of its transactions (docs/labels.md).
            "labels": {
                "topic": LABELS,
                "id_field": "transaction_id",
                "time_field": "labelled_at",
                "window_records": 5000,
            },
        },
        environ={},
    )


def _drift_line(registry: CollectorRegistry) -> str:
    """``drift: amount drifted (PSI 1.52 > 0.2)``, or that none did, over the last window."""
    feature, value = worst_feature_psi(registry)
    missing = [
        (sample.labels["feature"], sample.value)
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "streamer_feature_missing_ratio" and sample.value > MISSING_ALARM
    ]
    parts = []
    if feature and value > DRIFT_PSI:
        parts.append(f"{feature} drifted (PSI {value:.2f} > {DRIFT_PSI})")
    parts += [f"{name} missing in {ratio:.0%} of the records" for name, ratio in missing]
    if not parts:
        shown = f"worst PSI {feature} {value:.3f}" if feature else "no data yet"
        return f"drift: none over the last window ({shown})"
    return "drift: " + "; ".join(parts) + " over the last window"


def _quality_line(registry: CollectorRegistry, sent: int) -> str:
    """The summary's labels line: sent, joined, why some did not, the champion's quality.

    ``labels: 812 sent, 806 joined (unmatched 6); champion demo 1 over the last 806
    labelled records: precision 0.912 recall 0.874``
    """
    totals = labels_by_result(registry)
    found = champion_quality(registry)
    if not totals:
        return f"labels: {sent} sent, none joined yet"
    joined = totals.pop("joined", 0.0)
    missed = ", ".join(f"{result} {count:.0f}" for result, count in totals.items() if count)
    line = f"labels: {sent} sent, {joined:.0f} joined" + (f" ({missed})" if missed else "")
    if not found.records:
        return line
    return (
        f"{line}; champion {found.model} {found.version} over the last {found.records} "
        f"labelled records: {found.short()}"
    )


def _wait_committed(
    pipeline: Pipeline, registry: CollectorRegistry, *, produced_total: int, timeout_s: float
) -> None:
    """Until the input's committed offsets cover ``produced_total`` records (offsets from 0)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pipeline.failure is None:
        if _input_committed(registry) >= produced_total:
            return
        time.sleep(0.1)


def _input_committed(registry: CollectorRegistry) -> float:
    """The input's committed offsets, summed over its partitions (not the labels topic's)."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "streamer_committed_offset" and sample.labels["topic"] == INPUT
    )


def _wait_assigned(pipeline: Pipeline, stop: threading.Event) -> None:
    """Until the consumer has its partitions, Ctrl-C, a failure or ``ASSIGN_WAIT_S``."""
    deadline = time.monotonic() + ASSIGN_WAIT_S
    while not pipeline.wait_until_assigned(0.1):
        if stop.is_set() or pipeline.failure is not None or time.monotonic() > deadline:
            return


def _wait_labels_counted(
    pipeline: Pipeline, registry: CollectorRegistry, *, sent: int, timeout_s: float
) -> None:
    """Wait until the pipeline counted every label sent (when it counts labels at all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pipeline.failure is None:
        totals = labels_by_result(registry)
        if not totals or sum(totals.values()) >= sent:
            return
        time.sleep(0.1)


def _announce(pipeline: Pipeline, rate: float, duration_s: float) -> None:
    print(f"metrics at http://127.0.0.1:{pipeline.metrics_port()}/metrics", flush=True)
    print(
        f"generator: {rate:.0f} transactions/s into '{INPUT}'; predictions go to '{OUTPUT}';"
        f" labels of one in {round(1 / LABEL_SHARE)} into '{LABELS}', 2-5 s later."
        f" {'Ctrl-C stops.' if not duration_s else f'Running {duration_s:.0f}s.'}",
        flush=True,
    )


def _show_progress(
    pipeline: Pipeline,
    registry: CollectorRegistry,
    stop: threading.Event,
    duration_s: float,
    started: float,
) -> None:
    """The live line, every second, until ``stop``, a failure or the end of ``duration_s``."""
    progress = _Progress(registry)
    tty = sys.stdout.isatty()
    while not stop.wait(1.0) and pipeline.failure is None:
        line = progress.line()
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        if duration_s and time.monotonic() - started >= duration_s:
            break
    if tty:
        print()


class _Generator:
    """The generator thread: a failure ends it with one line, not a thread traceback."""

    def __init__(self, kafka: KafkaSettings, rate: float, drift: str, drift_after_s: float) -> None:
        self._produced = [0]
        # Its own seed: the transactions stay those of seed 7 with or without labels.
        self.labels = DemoLabels(LABELS, LabelSchedule(random.Random(8)))
        self._stop = threading.Event()
        self._drift = (drift, drift_after_s)
        self._thread = threading.Thread(
            target=self._run, args=(kafka, rate), name="generator", daemon=True
        )
        self._thread.start()

    def _run(self, kafka: KafkaSettings, rate: float) -> None:
        try:
            produce_demo(
                kafka,
                INPUT,
                rate=rate,
                count=0,
                bad_ratio=0.001,
                seed=7,
                stop=self._stop,
                produced=self._produced,
                drift=self._drift[0],
                drift_after_s=self._drift[1],
                clock=DemoClock(),
                labels=self.labels,
            )
        except Exception as exc:
            log.error(  # noqa: TRY400 - one line: the demo goes on to stop and summarise
                "generator stopped: %s: %s", type(exc).__name__, exc
            )

    def stop(self) -> int:
        """Stop sending transactions; how many it sent (their last labels wait: below)."""
        self._stop.set()
        deadline = time.monotonic() + 30
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self.labels.transactions_done.wait(0.1):
                break
        return self._produced[0]

    def release_labels(self) -> None:
        """Send the labels still waiting now, and end the generator."""
        self.labels.release.set()
        self._thread.join(timeout=30)


def _count(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return f"{n:.0f}"


class _ReconcileProgress:
    """The ``reconciling: 1.2M of 6.0M records`` line on stderr, rewritten in place on a tty."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = False
        self.read = 0

    def __call__(self, read: int, total: int) -> None:
        self.read = read
        line = f"reconciling: {_count(read)} of {_count(total)} records"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)
        sys.stderr.flush()
        self.shown = True

    def end(self, what: str) -> None:
        if self.tty and self.shown:
            print(file=sys.stderr)
        print(f"reconciling: {what} in {time.monotonic() - self.started:.1f}s", file=sys.stderr)
        sys.stderr.flush()


def _summary(
    bootstrap_servers: str,
    dead_letter_topic: str,
    report: ShutdownReport,
    *,
    started: float,
    idle_timeout_s: float,
) -> int:
    """Read the three topics back, reconcile them by offsets and print the summary line."""
    shutdown = "clean" if report.exit_code == 0 else f"FAILED: {report.failure}"
    print(f"reconciling: reading back {INPUT}, {OUTPUT} and {dead_letter_topic}", file=sys.stderr)
    progress = _ReconcileProgress()
    try:
        result = reconcile_topics(
            bootstrap_servers,
            INPUT,
            OUTPUT,
            dead_letter_topic,
            idle_timeout_s=idle_timeout_s,
            on_progress=progress,
        )
    except KeyboardInterrupt:
        progress.end("interrupted")
        reason = "interrupted"
    except Exception as exc:  # whatever it was, the summary ends in one line
        progress.end("failed")
        reason = " ".join(str(exc).split()) or type(exc).__name__
    else:
        progress.end(f"done, {_count(progress.read)} records")
        elapsed = time.monotonic() - started
        print(
            f"summary: {result.line()}; "
            f"{result.inputs / elapsed:.0f} records/s over {elapsed:.1f}s; shutdown {shutdown}",
            flush=True,
        )
        return 0 if not result.lost and report.exit_code == 0 else 1
    committed = {p: o for (t, p), o in sorted(report.committed.items()) if t == INPUT}
    offsets = ", ".join(f"{p}: {o}" for p, o in committed.items()) or "none"
    print(
        f"summary: not finished ({reason}); the pipeline committed {sum(committed.values())} "
        f"offsets of {INPUT} (partition: offset {offsets}), and every record below them was "
        f"answered; shutdown {shutdown}",
        flush=True,
    )
    return 1


def _wait_caught_up(
    pipeline: Pipeline, registry: CollectorRegistry, *, produced_total: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pipeline.failure is None:
        consumed = registry.get_sample_value("streamer_records_consumed_total") or 0
        if consumed >= produced_total:
            return
        time.sleep(0.1)
