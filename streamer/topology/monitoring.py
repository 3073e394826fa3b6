"""What the topology does for model health: the drift monitor and the challengers.

The logic is pure and lives in :mod:`streamer.core.monitoring`; this module
builds it from the settings, before anything starts (a bad profile or
challenger is a configuration error, exit 2), and runs the challengers' life:
load, start, reload and stop, as the topology does for the stages.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from prometheus_client import CollectorRegistry

from streamer.actors.challenger import ChallengerActor, LedgerLink
from streamer.actors.metrics import ChallengerCollector, DriftCollector
from streamer.actors.routing import ChallengerLink, Teller
from streamer.clients import ProducerFactory
from streamer.core.models import Model, load_model
from streamer.core.monitoring.agreement import Agreement, PendingSlots
from streamer.core.monitoring.drift import DriftMonitor
from streamer.core.monitoring.profile import check_profile, load_profile
from streamer.errors import ConfigError, ModelLoadError
from streamer.messages import ModelReloaded, SwapModel
from streamer.settings import ChallengerSettings, Settings
from streamer.topology.hot_reload import HotReload, tell_quietly

log = logging.getLogger(__name__)


def drift_monitor(
    settings: Settings, model: Model, registry: CollectorRegistry
) -> DriftMonitor | None:
    """The drift monitor of ``[monitoring]``, its gauges registered; None without a profile.

    Raises:
        ConfigError: The profile cannot be read, or its features are not the model's.
    """
    monitor = build_monitor(settings, model)
    if monitor is not None:
        registry.register(DriftCollector(monitor))
    return monitor


def build_monitor(settings: Settings, model: Model) -> DriftMonitor | None:
    """The drift monitor of ``[monitoring]``, or None without a profile.

    Raises:
        ConfigError: The profile cannot be read, or its features are not the model's.
    """
    monitoring = settings.monitoring
    if not monitoring.profile_path:
        return None
    try:
        profile = load_profile(monitoring.profile_path)
        check_profile(
            profile, model.spec.names, f"monitoring.profile_path={monitoring.profile_path}"
        )
    except (ModelLoadError, ValueError) as exc:
        msg = f"config error: {exc}"
        raise ConfigError(msg) from None
    monitor = DriftMonitor(
        profile, window_records=monitoring.window_records, window_s=monitoring.window_s
    )
    monitor.set_scaling(*input_scaling(settings, model))
    monitor.model_version = model.version
    return monitor


def input_scaling(settings: Settings, model: Model) -> tuple[Any, Any]:
    """(mean, std) when the model's input is standardized by the preprocessor, else (None, None)."""
    spec = model.spec
    if settings.preprocess.standardize and spec.standardize:
        return spec.mean, spec.std
    return None, None


class Challengers:
    """The ``[[challenger]]`` models: loaded with the champion, run beside the supervision.

    Each challenger is one actor outside the supervision (it can never stop the
    rest), with its own :class:`HotReload`; the model actors reach it through its
    :class:`ChallengerLink`. The terminator stops the actors after the stages
    (:attr:`refs`), once the model actors no longer send to them.

    Raises:
        ModelLoadError: A challenger cannot be loaded (exit 2, before anything starts).
    """

    def __init__(
        self, settings: Settings, producer_factory: ProducerFactory, registry: CollectorRegistry
    ) -> None:
        self._settings = settings
        self._producer_factory = producer_factory
        self._registry = registry
        # Challengers load like the champion, so a bad one stops the start (exit 2).
        self._models = [(c, load_challenger(settings, c)) for c in settings.challengers]
        self.links: tuple[ChallengerLink, ...] = ()
        self._reloads: list[HotReload] = []

    def start(
        self, monitor: DriftMonitor | None, producer: Teller | None = None
    ) -> tuple[ChallengerLink, ...]:
        """Start one actor and one hot reload per challenger; register their metrics.

        With ``labels.topic`` set, each challenger tells ``producer`` (the
        producer's route) its delivered scores, for the prediction ledger.
        """
        s = self._settings
        edges = monitor.profile.score.edges if monitor is not None else None
        links = []
        for challenger, model in self._models:
            slots = PendingSlots(challenger.max_pending_batches)
            agreement = Agreement(s.monitoring.threshold, edges, s.monitoring.window_records)
            ledger = (
                LedgerLink(producer, challenger.name, s.labels.score_field)
                if producer is not None and s.labels.topic
                else None
            )
            ref = ChallengerActor.start(
                model,
                challenger.output_topic,
                slots,
                agreement,
                s.kafka,
                self._producer_factory,
                s.preprocess,
                s.batch,
                s.format,
                ledger=ledger,
            )
            link = ChallengerLink(challenger.name, model, ref, slots, agreement)
            links.append(link)
            reload = HotReload(
                model,
                load=functools.partial(load_challenger, s, challenger),
                swap=functools.partial(_swap, link),
                interval_s=s.model.watch_interval_s,
            )
            reload.start(functools.partial(_log_reload, challenger.name))
            self._reloads.append(reload)
            log.info(
                "challenger %s (%s %s) scores in the shadow into %s",
                challenger.name,
                model.name,
                model.version,
                challenger.output_topic,
            )
        if links:
            self._registry.register(ChallengerCollector(links))
        self.links = tuple(links)
        return self.links

    def refs(self) -> list[Any]:
        """The challenger actors, for the terminator to stop."""
        return [link.ref for link in self.links]

    def request_reload(self) -> None:
        """Reload every challenger in the background (safe from a signal handler)."""
        for reload in self._reloads:
            reload.request()

    def stop_reloading(self) -> None:
        """Stop watching the challengers' sources (their actors stop with the stages)."""
        for reload in self._reloads:
            reload.stop()


def _swap(link: ChallengerLink, model: Model) -> None:
    link.model = model
    tell_quietly(link.ref, SwapModel(model))


def _log_reload(name: str, event: ModelReloaded) -> None:
    log.info("challenger %s reload: %s", name, event.result)


# The [model] keys a [[challenger]] table has too, as the loader's messages name them.
_CHAMPION_KEY = re.compile(
    r"(?<![\w/.])model\.(kind|path|version|method|probabilities|outputs|chunk_rows)\b"
)


def load_challenger(settings: Settings, challenger: ChallengerSettings) -> Model:
    """Load one ``[[challenger]]`` model; its errors name the challenger's keys, not [model]'s.

    Raises:
        ModelLoadError: As the champion's loader, with ``challenger <name>:`` in front.
    """
    try:
        return load_model(challenger.kind, challenger.path, settings.challenger_options(challenger))
    except ModelLoadError as exc:
        detail = str(exc).removeprefix(f"{ModelLoadError.prefix}: ")
        detail = _CHAMPION_KEY.sub(r"challenger.\1", detail)
        if challenger.remote_url:  # its own server, not the champion's
            detail = detail.replace("model.remote_url=", "challenger.remote_url=")
        msg = f"challenger {challenger.name!r}: {detail}"
        raise ModelLoadError(msg) from exc
