"""Before any stage starts: features, the metrics port, the broker, the topics."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import cast

import pykka
from prometheus_client import CollectorRegistry

from streamer.actors.metrics import MetricsActor
from streamer.clients import ConsumerFactory
from streamer.clients.base import Backend, ChangelogReader
from streamer.core.labels.live import LEDGER_FINGERPRINT
from streamer.core.models import Model, load_configured
from streamer.core.models.oip import RetryPolicy
from streamer.core.state.declared import RECORD_KEY
from streamer.errors import (
    BrokerError,
    ConfigError,
    ModelServerDownError,
    StoppedBeforeStartError,
)
from streamer.httpserver import HealthProbe, bind_endpoints
from streamer.messages import GetStatus
from streamer.settings import Settings
from streamer.topology.control import ASK_TIMEOUT_S, ask
from streamer.topology.labels import ledger_topic, older_format
from streamer.topology.specs import ChangelogReaders
from streamer.topology.state import changelog_topic_name

log = logging.getLogger(__name__)


def check_features(model: Model) -> None:
    """Raise ConfigError (exit 2) for a model that declares no features."""
    if not model.spec.names:
        msg = f"model error: model {model.name} declares no features"
        raise ConfigError(msg)


def start_metrics(
    settings: Settings,
    registry: CollectorRegistry,
    model: Model,
    *,
    probes: Mapping[str, HealthProbe],
    port_wait_s: float = 0.0,
) -> pykka.ActorRef:
    """Bind the metrics port, then start the metrics actor that serves it.

    The port is bound before any other actor starts: a port in use or out of range
    exits 2, and the probes serve from the first second (a daemon without them
    cannot be watched). A port in use is tried again for ``port_wait_s`` (a worker
    of ``--workers`` waits for its predecessor; see
    :func:`~streamer.httpserver.bind_endpoints`).
    """
    m = settings.metrics
    server = (
        bind_endpoints(m.host, m.port, registry, probes, wait_in_use_s=port_wait_s)
        if m.enabled
        else None
    )
    return MetricsActor.start(
        m,
        registry,
        model.name,
        model.version,
        health=probes["/healthz"],
        readiness=probes["/readyz"],
        server=server,
        labels=settings.labels,
        threshold=settings.monitoring.threshold,
    )


def register_remote_metrics(settings: Settings, registry: CollectorRegistry) -> None:
    """Register the ``streamer_remote_*`` collector when a model or challenger is remote."""
    if "remote" in (settings.model.kind, *(c.kind for c in settings.challengers)):
        from streamer.clients.oip_metrics import RemoteCollector  # noqa: PLC0415

        registry.register(RemoteCollector())


def wait_for_broker(
    settings: Settings, consumer_factory: ConsumerFactory, stop_requested: threading.Event
) -> None:
    """Check the topics; while the broker is unreachable, retry and log (not ready).

    Raises:
        ConfigError: A configured topic does not exist on the broker.
        BrokerError: The broker cannot be reached, and retrying is off.
        StoppedBeforeStartError: A stop was requested while the broker was unreachable.
    """
    retry_s = settings.supervision.broker_retry_s
    attempt = 0
    while True:
        attempt += 1
        try:
            check_topics(settings, consumer_factory, retry_s)
        except BrokerError as exc:
            if retry_s <= 0:
                raise
            if not stop_requested.is_set():
                log.warning(
                    "broker not reachable (attempt %d), retrying in %.0fs: %s",
                    attempt,
                    retry_s,
                    exc,
                )
            if stop_requested.is_set() or stop_requested.wait(retry_s):
                msg = f"stopped while waiting for the broker, before anything was read: {exc}"
                raise StoppedBeforeStartError(msg) from None
        else:
            return


def wait_for_registry(settings: Settings, stop_requested: threading.Event) -> None:
    """For a schema-registry format: retry and log (not ready) until the registry answers.

    Raises:
        StoppedBeforeStartError: A stop was requested while the registry was unreachable.
    """
    if settings.format.input == "json":
        return
    from streamer.clients.registry import RegistrySource  # noqa: PLC0415
    from streamer.core.formats import RegistryUnavailableError  # noqa: PLC0415

    source = RegistrySource(settings.format)
    retry_s = settings.format.registry_retry_s
    attempt = 0
    while True:
        attempt += 1
        try:
            source.check()
        except RegistryUnavailableError as exc:
            log.warning("%s (attempt %d), retrying in %.1fs", exc, attempt, retry_s)
            if stop_requested.wait(retry_s):
                msg = (
                    "stopped while waiting for the schema registry, before anything was "
                    f"read: {exc}"
                )
                raise StoppedBeforeStartError(msg) from None
        else:
            return


def load_or_stand_in(settings: Settings) -> tuple[Model, ModelServerDownError | None]:
    """The configured model; or, when a remote model's server is down, its stand-in and why.

    A server down at start is an outage, not bad configuration: the pipeline
    waits for it behind the probes (not ready, see :func:`wait_for_model_server`)
    instead of exiting 2.
    """
    try:
        return load_configured(settings), None
    except ModelServerDownError as exc:
        return cast("Model", exc.waiting), exc


def wait_for_model_server(
    down: ModelServerDownError, settings: Settings, stop_requested: threading.Event
) -> Model:
    """A remote model's server did not answer at load: load again, with backoff, until it does.

    Readiness is false meanwhile (the stand-in model is neither loaded nor
    reachable) and the breaker gauge is 1. Nothing is read before it loads.

    Raises:
        ModelLoadError: The server answered and the model does not fit (exit 2).
        ConfigError: The model it loaded declares no features.
        StoppedBeforeStartError: A stop was requested while the server was down.
    """
    m = settings.model
    policy = RetryPolicy(m.remote_backoff_initial_s, m.remote_backoff_max_s)
    attempt = 0
    while True:
        # Full jitter around a growing ceiling, never busier than the first backoff.
        delay_s = max(policy.initial_s, policy.delay(attempt, random.random))
        attempt += 1
        log.warning("%s (attempt %d): not ready; trying again in %.1fs", down, attempt, delay_s)
        if stop_requested.wait(delay_s):
            msg = f"stopped while waiting for the model server, before anything was read: {down}"
            raise StoppedBeforeStartError(msg) from None
        try:
            model = load_configured(settings)
        except ModelServerDownError as exc:
            down = exc
        else:
            log.info("model server answers: loaded %s %s", model.name, model.version)
            check_features(model)
            return model


def check_topics(settings: Settings, consumer_factory: ConsumerFactory, timeout_s: float) -> None:
    """Raise ConfigError unless the input, output and dead-letter topics exist.

    A probe consumer asks the broker, waiting at most ``timeout_s`` (when above
    0) instead of the whole ``kafka.bootstrap_timeout_s``.
    """
    k = settings.kafka
    if timeout_s > 0:
        k = dataclasses.replace(
            k, bootstrap_timeout_s=min(k.bootstrap_timeout_s, max(1.0, timeout_s))
        )
    probe = consumer_factory(k, 1)
    try:
        existing = probe.existing_topics()
    finally:
        probe.close()
    wanted = {
        "kafka.input_topic": k.input_topic,
        "kafka.output_topic": k.output_topic,
        "kafka.dead_letter_topic": k.dead_letter_topic_name,
    }
    if settings.labels.topic:
        wanted["labels.topic"] = settings.labels.topic
    for key, topic in wanted.items():
        if topic not in existing:
            msg = (
                f"config error: {key}: topic {topic!r} does not exist on "
                f"{k.bootstrap_servers}; create it first "
                f"(e.g. kafka-topics.sh --create --topic {topic})"
            )
            raise ConfigError(msg)


def state_changelog(
    settings: Settings, backend: Backend | None
) -> Callable[[], ChangelogReader] | None:
    """Check or create the state's changelog topic; how the consumer opens its reader.

    None when no feature is declared, or the backend has no changelog (the
    tests' fake clients): each partition's state then starts from its local
    store.

    Raises:
        ConfigError: The changelog exists with fewer partitions than the input, or is
            not compacted; or the input format is not JSON (the state reads JSON objects).
    """
    if not settings.state_features:
        return None
    check_state_settings(settings)
    if backend is None or backend.changelog_reader is None or backend.ensure_changelog is None:
        return None
    topic = changelog_topic_name(settings)
    backend.ensure_changelog(settings.kafka, topic, settings.kafka.input_topic)
    log.info("state changelog topic: %s", topic, extra={"topic": topic})
    return functools.partial(backend.changelog_reader, settings.kafka, topic)


def changelogs(settings: Settings, backend: Backend | None, model: Model) -> ChangelogReaders:
    """Check or create the state's and the prediction ledger's changelog topics."""
    return ChangelogReaders(
        state_changelog(settings, backend), labels_ledger(settings, backend, model)
    )


def labels_ledger(
    settings: Settings, backend: Backend | None, model: Model
) -> Callable[[], ChangelogReader] | None:
    """Check the labels topic; check or create the ledger changelog; how the producer reads it.

    None when ``labels.topic`` is empty, or the backend has no changelog (the
    tests' fake clients: each partition's ledger then starts from its local store).

    Raises:
        ConfigError: The model has no output named ``labels.score_field``; an id field is read
            from records that are not JSON; the labels topic is missing or has another
            partition count than the input; the ledger changelog has fewer partitions than the
            input or is not compacted.
    """
    labels, k = settings.labels, settings.kafka
    if not labels.topic:
        return None
    if labels.score_field not in model.output_names:
        msg = (
            f"config error: labels.score_field={labels.score_field!r} is not an output of model "
            f"{model.name} (its outputs: {', '.join(model.output_names)}); set labels.score_field "
            "to the output the labels are compared with"
        )
        raise ConfigError(msg)
    if labels.id_field not in ("", RECORD_KEY) and settings.format.input != "json":
        msg = (
            f"config error: labels.id_field={labels.id_field!r} is read from the scored records, "
            f"which are format.input={settings.format.input!r}; join by the record key "
            "(labels.id_field = '$key') or by source coordinates (labels.id_field = '')"
        )
        raise ConfigError(msg)
    if backend is None or backend.partition_counts is None:
        return None
    counts = backend.partition_counts(k)
    wanted = counts.get(k.input_topic, 0)
    if counts.get(labels.topic) != wanted:
        has = (
            f"has {counts[labels.topic]} partitions" if labels.topic in counts else "does not exist"
        )
        msg = (
            f"config error: labels.topic: topic {labels.topic!r} {has}, but the labels must be "
            f"co-partitioned with the input topic {k.input_topic!r} ({wanted} partitions); "
            f"create it with {wanted} partitions and produce each label to its record's partition"
        )
        raise ConfigError(msg)
    if backend.changelog_reader is None or backend.ensure_changelog is None:
        return None
    topic = ledger_topic(settings)
    backend.ensure_changelog(k, topic, k.input_topic, setting="labels.ledger_topic")
    log.info("prediction ledger changelog topic: %s", topic, extra={"topic": topic})
    reader = backend.changelog_reader(k, topic)
    try:
        older = older_format(reader, wanted)
    finally:
        reader.close()
    if older is not None:
        partition, fingerprint = older
        msg = (
            f"config error: labels.ledger_topic: the prediction ledger changelog {topic!r} "
            f"(partition {partition}) is in format {fingerprint!r}, not {LEDGER_FINGERPRINT!r}, "
            "which this version cannot restore; delete that topic and the ledger-* directories "
            "of state.dir (the ledgers start empty), or set labels.ledger_topic to a new topic"
        )
        raise ConfigError(msg)
    return functools.partial(backend.changelog_reader, k, topic)


def check_state_settings(settings: Settings) -> None:
    """Exit 2 before anything starts for declared features the daemon cannot compute.

    Raises:
        ConfigError: The input format is not JSON (the state reads JSON objects), or
            state.log_features asks for the features in Avro outputs (their schema has none).
    """
    if settings.state_features and settings.format.input != "json":
        msg = (
            f"config error: format.input={settings.format.input!r}: [[state.features]] read "
            "JSON objects; use format.input = 'json' or remove the declared features"
        )
        raise ConfigError(msg)
    if settings.state_features and settings.state.log_features and settings.format.output != "json":
        msg = (
            f"config error: state.log_features = true with format.output="
            f"{settings.format.output!r}: the features are logged into JSON outputs only; set "
            "format.output = 'json' or state.log_features = false"
        )
        raise ConfigError(msg)


def wait_until_open(refs: tuple[pykka.ActorRef | None, ...], bootstrap_timeout_s: float) -> None:
    """Wait until each actor has opened its client (``on_start`` runs on the actor's thread)."""
    for ref in refs:
        assert ref is not None
        ask(ref, GetStatus(), timeout=bootstrap_timeout_s + ASK_TIMEOUT_S)
