"""The commands' signal handling: the first SIGTERM or SIGINT drains, a second one exits at once.

``streamer run``, ``score-file``, ``produce-demo``, ``demo`` and the parent of
``run --workers N`` install a :class:`GracefulSignals`; each says what draining
and exiting mean for it. SIGHUP, where given, reloads the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

log = logging.getLogger("streamer")

DRAINING = "draining (send it again to exit at once)"


def exit_now(signum: int) -> None:
    """The default second signal: exit with 128+N at once, without draining."""
    log.warning("second signal: exiting now without draining")
    os._exit(128 + signum)


class GracefulSignals:
    """First SIGTERM/SIGINT calls ``on_first``; a second one calls ``on_second``.

    Both get the signal number. ``announce`` is logged with the first signal's
    name (None: nothing is logged). ``on_reload``, when given, handles SIGHUP.
    """

    def __init__(
        self,
        on_first: Callable[[int], object],
        *,
        on_second: Callable[[int], object] = exit_now,
        on_reload: Callable[[], object] | None = None,
        announce: str | None = DRAINING,
    ) -> None:
        self._on_first = on_first
        self._on_second = on_second
        self._on_reload = on_reload
        self._announce = announce
        self._interrupt = False
        self.received = 0

    def install(self) -> GracefulSignals:
        """Become this process's handler of SIGTERM and SIGINT (and SIGHUP with ``on_reload``)."""
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)
        if self._on_reload is not None:
            signal.signal(signal.SIGHUP, self._reload)
        return self

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        """Handle one SIGTERM or SIGINT."""
        if self._interrupt:
            self._interrupt = False  # once: the caller's own cleanup must not be cut short
            raise KeyboardInterrupt
        self.received += 1
        if self.received == 1:
            if self._announce is not None:
                log.info("%s received: %s", signal.Signals(signum).name, self._announce)
            self._on_first(signum)
        else:
            self._on_second(signum)

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Inside, the next signal raises KeyboardInterrupt (once) and does not count."""
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def _reload(self, _signum: int, _frame: FrameType | None) -> None:
        assert self._on_reload is not None
        self._on_reload()
