"""Hot reload: watch the model file, load a new version in the background, swap it in.

A :class:`ModelReloader` runs one daemon thread. It wakes on a request (SIGHUP)
or every ``model.watch_interval_s`` to compare the watched files' inode, size
and modification times. A change is acted on once it has stayed the same for one
more interval, so that a file being copied in place is not read half written
(writing a new file and renaming it over the old one is still the safe way).

The new model is loaded completely on this thread, including a test
prediction, before anything sees it. Only then does ``install`` hand it to the
actors, which switch between two batches. A failed load keeps the old model,
logs why, and reports ``ModelReloaded(result="failure")``. A file that changed
but holds the same bytes (a ``touch``) reports ``"unchanged"``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from streamer.core.models import Model
from streamer.messages import ModelReloaded

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int, int, int] | tuple[str], ...]

SUCCESS = "success"
UNCHANGED = "unchanged"
FAILURE = "failure"
RESULTS = (SUCCESS, UNCHANGED, FAILURE)


def file_signature(paths: Sequence[Path]) -> Signature:
    """(path, inode, size, mtime_ns, ctime_ns) per file; (path,) for one that cannot be read.

    The inode catches a file renamed over the old one even within one tick of
    the file system's clock.
    """
    out: list[tuple[str, int, int, int, int] | tuple[str]] = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            out.append((str(path),))
        else:
            out.append((str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    return tuple(out)


def _same_content(old: Model, new: Model) -> bool:
    return (
        bool(old.digest)
        and old.digest == new.digest
        and (
            old.name,
            old.version,
            old.output_names,
        )
        == (new.name, new.version, new.output_names)
    )


class ModelReloader:
    """Reloads the model on request or when its files change; see the module docstring.

    Args:
        load: Loads the configured model from scratch (raises on failure).
        current: Returns the model in use.
        install: Hands a loaded model to the actors.
        notify: Receives the outcome of every reload (for the metrics actor).
        interval_s: How often to look at the files; 0 only reloads on request.
        paths: Returns the files to watch (they may change with the model).
        poll: Returns what would load now (a registry alias's version); a change
            reloads like a changed file. It must not raise.
    """

    def __init__(
        self,
        load: Callable[[], Model],
        current: Callable[[], Model],
        install: Callable[[Model], None],
        notify: Callable[[ModelReloaded], None],
        interval_s: float,
        paths: Callable[[], Sequence[Path]],
        poll: Callable[[], object] = lambda: None,
    ) -> None:
        self._load = load
        self._current = current
        self._install = install
        self._notify = notify
        self._interval_s = interval_s
        self._paths = paths
        self._poll = poll
        self._requested = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the watcher thread, comparing with the files as they are now."""
        initial = self._signature()
        self._thread = threading.Thread(
            target=self._run, args=(initial,), name="model-reloader", daemon=True
        )
        self._thread.start()

    def request(self) -> None:
        """Ask for a reload (safe from a signal handler); it runs on the watcher thread."""
        self._requested.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the watcher thread; a reload in progress finishes first."""
        self._stopping.set()
        self._requested.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def reload_now(self, reason: str) -> str:
        """Load and install a new model at once; returns one of :data:`RESULTS`."""
        with self._lock:
            old = self._current()
            try:
                new = self._load()
            except Exception as exc:  # a failed reload must never stop the pipeline
                error = " ".join(str(exc).split()) or type(exc).__name__
                log.error(  # noqa: TRY400 - the message is the whole story
                    "model reload (%s) failed; still scoring with %s %s: %s",
                    reason,
                    old.name,
                    old.version,
                    error,
                )
                self._notify(ModelReloaded(FAILURE, old.name, old.version, error))
                return FAILURE
            if _same_content(old, new):
                log.info("model reload (%s): %s %s is unchanged", reason, old.name, old.version)
                self._notify(ModelReloaded(UNCHANGED, old.name, old.version))
                return UNCHANGED
            self._install(new)
            log.info(
                "model reloaded (%s): %s %s -> %s %s",
                reason,
                old.name,
                old.version,
                new.name,
                new.version,
            )
            self._notify(ModelReloaded(SUCCESS, new.name, new.version))
            return SUCCESS

    def _run(self, last: tuple[Signature, object]) -> None:
        timeout = self._interval_s if self._interval_s > 0 else None
        pending: tuple[Signature, object] | None = None
        while True:
            requested = self._requested.wait(timeout)
            if self._stopping.is_set():
                return
            if requested:
                self._requested.clear()
                self._guarded("SIGHUP or request")
                last, pending = self._signature(), None
                continue
            seen = self._signature()
            if seen == last:
                pending = None
            elif seen == pending:
                self._guarded("model source changed")
                last, pending = self._signature(), None
            else:
                pending = seen

    def _signature(self) -> tuple[Signature, object]:
        return file_signature(self._paths()), self._poll()

    def _guarded(self, reason: str) -> None:
        try:
            self.reload_now(reason)
        except Exception:  # install or notify failed: keep watching
            log.exception("model reload (%s) failed unexpectedly", reason)
