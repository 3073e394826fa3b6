"""What every pipeline actor shares: failure reporting."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka

from streamer.errors import ActorCrashedError
from streamer.messages import ActorFailed

log = logging.getLogger(__name__)

FailureHandler = Callable[[str, BaseException], None]


class PipelineActor(pykka.ThreadingActor):
    """A ThreadingActor that reports its own death.

    Pykka has no supervision: an exception raised while handling a ``tell`` kills
    the actor and calls :meth:`on_failure` (not ``on_stop``). We count it on the
    metrics actor and tell the topology, which then shuts the pipeline down in
    order without committing past the dead actor's work.

    Two gaps in pykka are closed here: a failing ``on_start`` never reaches
    ``on_failure``, and a ``BaseException`` that is not an ``Exception`` stops
    every actor in the process without any hook. Subclasses therefore
    implement :meth:`open` and :meth:`receive` instead of ``on_start`` and
    ``on_receive``.
    """

    kind = "actor"
    # A shutdown that reaches its deadline leaves an actor busy with one long message
    # behind (see the terminator); a daemon thread does not keep the process alive for it.
    use_daemon_thread = True

    def __init__(self, metrics: pykka.ActorRef | None, on_failure: FailureHandler | None) -> None:
        super().__init__()
        self._metrics = metrics
        self._failure_handler = on_failure

    def open(self) -> None:
        """Open clients and load resources, on the actor's own thread."""

    def receive(self, message: object) -> Any:
        """Handle one message."""
        return None

    def on_start(self) -> None:
        """Run :meth:`open`, reporting a failure the way a crash in ``receive`` is."""
        try:
            self.open()
        except BaseException as exc:
            self.on_failure(type(exc), exc, exc.__traceback__)
            raise

    def on_receive(self, message: object) -> Any:
        """Run :meth:`receive`; a BaseException becomes an Exception so that it is reported."""
        try:
            return self.receive(message)
        except Exception:
            raise
        except BaseException as exc:
            msg = f"{self.kind} raised {type(exc).__name__}: {exc}"
            raise ActorCrashedError(msg) from exc

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Count the failure, release resources, and tell the topology."""
        error = exception_value or RuntimeError("unknown failure")
        log.error(
            "%s died: %s: %s",
            self.kind,
            type(error).__name__,
            error,
            exc_info=(exception_type, exception_value, traceback)
            if exception_type and exception_value
            else None,
        )
        if self._metrics is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._metrics.tell(
                    ActorFailed(actor=self.kind, error=f"{type(error).__name__}: {error}")
                )
        try:
            self.release()
        except Exception:  # cleanup must not mask the original failure
            log.exception("%s: cleanup after failure failed", self.kind)
        if self._failure_handler is not None:
            self._failure_handler(self.kind, error)

    def release(self) -> None:
        """Close clients; called from both ``on_stop`` and ``on_failure``."""

    def on_stop(self) -> None:
        """Close clients on a normal stop."""
        self.release()

    def _emit(self, event: object) -> None:
        if self._metrics is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._metrics.tell(event)
