"""The model in use, and the glue between the reloader (:mod:`.reloader`) and the stages."""

from __future__ import annotations

import contextlib

import pykka

from streamer.core.models import Model, load_configured
from streamer.messages import ModelReloaded, SwapModel
from streamer.settings import Settings
from streamer.topology.reloader import ModelReloader
from streamer.topology.specs import Routes, Stage


class HotReload:
    """Holds the model in use and swaps a reloaded one into the model and preprocessor stages.

    Args:
        settings: The model to load again, and how often to look at its files.
        model: The model to start with.
        routes: The stages' Routes.
    """

    def __init__(self, settings: Settings, model: Model, routes: Routes) -> None:
        self.model = model
        self._settings = settings
        self._routes = routes
        self._metrics: pykka.ActorRef | None = None
        self._reloader: ModelReloader | None = None

    def start(self, metrics: pykka.ActorRef | None) -> None:
        """Start watching the model's files and taking requests; ``metrics`` counts reloads."""
        self._metrics = metrics
        self._reloader = ModelReloader(
            load=lambda: load_configured(self._settings),
            current=lambda: self.model,
            install=self._install,
            notify=self._notify,
            interval_s=self._settings.model.watch_interval_s,
            paths=lambda: self.model.watch_paths,
            poll=self._poll_source,
        )
        self._reloader.start()

    def _poll_source(self) -> object:
        return poll_source(self.model)

    def stop(self) -> None:
        """Stop watching; a reload in progress finishes first."""
        if self._reloader is not None:
            self._reloader.stop()

    def request(self) -> None:
        """Reload in the background (safe from a signal handler: SIGHUP)."""
        if self._reloader is not None:
            self._reloader.request()

    def reload_now(self, reason: str) -> str:
        """Load the configured model again and swap it in; see ``ModelReloader.reload_now``."""
        if self._reloader is None:
            msg = "the pipeline is not running"
            raise RuntimeError(msg)
        return self._reloader.reload_now(reason)

    def _install(self, model: Model) -> None:
        # Restarted actors get self.model; running ones switch between two batches.
        # A batch prepared for the other model's spec is prepared again by the
        # model actor, so the order of these tells does not matter.
        self.model = model
        for stage in (Stage.MODEL, Stage.PREPROCESSOR):
            for ref in self._routes[stage].refs():
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(SwapModel(model))

    def _notify(self, event: ModelReloaded) -> None:
        if self._metrics is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._metrics.tell(event)


def poll_source(model: object) -> object:
    """What the model's source would load now, or None (files are watched by signature).

    An MLflow model loaded through a registry alias answers which version the
    alias names; the reloader loads again when that changes.
    """
    poll = getattr(model, "poll_source", None)
    return poll() if poll is not None else None
