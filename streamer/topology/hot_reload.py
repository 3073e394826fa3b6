"""One model in use (the champion or a challenger), and the glue from its reloader to its actors.

The watching and loading are :class:`~streamer.topology.reloader.ModelReloader`'s;
a :class:`HotReload` says what to load and where a loaded model goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pykka

from streamer.core.models import Model
from streamer.messages import ModelReloaded, SwapModel
from streamer.topology.heap import thaw
from streamer.topology.reloader import ModelReloader
from streamer.topology.specs import Routes, Stage


class HotReload:
    """Holds one model in use and swaps a reloaded one into the actors that score with it.

    Args:
        model: The model to start with.
        load: Loads the configured model again (raises on failure).
        swap: Hands a loaded model to the actors (after :attr:`model` is set).
        interval_s: How often to look at the model's files (``model.watch_interval_s``).
    """

    def __init__(
        self,
        model: Model,
        load: Callable[[], Model],
        swap: Callable[[Model], None],
        interval_s: float,
    ) -> None:
        self.model = model
        self._load = load
        self._swap = swap
        self._interval_s = interval_s
        self._reloader: ModelReloader | None = None

    def start(self, notify: Callable[[ModelReloaded], None]) -> None:
        """Start watching the model's source and taking requests; ``notify`` hears each outcome."""
        self._reloader = ModelReloader(
            load=self._load,
            current=self._current,
            install=self._install,
            notify=notify,
            interval_s=self._interval_s,
            paths=self._watch_paths,
            poll=self._poll_source,
        )
        self._reloader.start()

    def _current(self) -> Model:
        return self.model

    def _watch_paths(self) -> tuple[Path, ...]:
        return self.model.watch_paths

    def _poll_source(self) -> object:
        # The model in use answers: a registry alias moves with it.
        return self.model.poll_source()

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
        self.model = model
        self._swap(model)
        thaw()  # the model replaced may be garbage in cycles


def swap_into_stages(routes: Routes, model: Model) -> None:
    """The champion's swap: every model and preprocessor actor switches between two batches.

    Restarted actors get the pipeline's model in use. A batch prepared for the
    other model's spec is prepared again by the model actor, so the order of
    these tells does not matter.
    """
    for stage in (Stage.MODEL, Stage.PREPROCESSOR):
        for ref in routes[stage].refs():
            tell_quietly(ref, SwapModel(model))


def tell_quietly(ref: pykka.ActorRef | None, message: object) -> None:
    """Tell ``ref`` (if any) ``message``; a dead actor has nothing to hear."""
    if ref is not None:
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(message)
