"""Logging: plain text by default, JSON lines with ``--log-format json``.

Both formats mask every secret registered with :func:`hide_secrets` (the SASL
password), in the message and in a traceback alike, as a last line of defence:
the code never logs a secret on purpose.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time

import orjson

MASK = "***"
# Shorter values would mask ordinary words in every line; no real password is that short.
MIN_SECRET_LENGTH = 4

# Pykka names an actor's thread "<ActorClass>-<n>", e.g. "ConsumerActor-3".
_ACTOR_THREAD = re.compile(r"^(?P<actor>[A-Za-z_]\w*Actor)-\d+$")
# Keys a log call may pass with ``extra=`` that the JSON lines carry.
EXTRA_KEYS = ("actor", "topic", "partition", "offset", "partitions", "batch_id")

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def hide_secrets(*values: str) -> None:
    """Mask these values in every log line from now on (empty or tiny values are ignored)."""
    global _secrets  # noqa: PLW0603 - one process-wide set, read by every handler
    with _secrets_lock:
        wanted = set(_secrets) | {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
        # Longest first, so that a secret containing another is masked whole.
        _secrets = tuple(sorted(wanted, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def actor_name(record: logging.LogRecord) -> str | None:
    """The actor a record was logged from: ``extra={"actor": ...}`` or the actor thread's class."""
    explicit = getattr(record, "actor", None)
    if explicit:
        return str(explicit)
    match = _ACTOR_THREAD.match(record.threadName or "")
    return match["actor"] if match else None


class TextFormatter(logging.Formatter):
    """``time level thread logger: message``, with secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(threadName)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, actor, message, and extras.

    ``actor`` is the actor class (``ConsumerActor``) when the line comes from an
    actor's thread; ``topic``, ``partition``, ``offset`` and the other
    :data:`EXTRA_KEYS` appear when the log call passes them with ``extra=``.
    """

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": redact(record.getMessage()),
        }
        actor = actor_name(record)
        if actor is not None:
            doc["actor"] = actor
        for key in EXTRA_KEYS:
            if key != "actor" and hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


_format = "text"


def final_line(text: str) -> str:
    """The command's last line on stderr (``streamer: config error: ...``), in the log's format.

    Text mode: ``text`` itself. JSON mode: one JSON object like the log lines,
    so that a log pipeline parses every line of stderr.
    """
    if _format != "json":
        return redact(text)
    record = logging.LogRecord("streamer", logging.ERROR, __file__, 0, text, None, None)
    record.threadName = "main"
    return JsonFormatter().format(record)


def _log_uncaught(*exc_info: object) -> None:
    logging.getLogger("streamer").critical("uncaught exception", exc_info=exc_info)  # type: ignore[arg-type]


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("streamer").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    logging.getLogger("streamer").warning(
        "%s: %r",
        unraisable.err_msg or "exception ignored",
        unraisable.object,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),  # type: ignore[arg-type]
    )


class CancelledRefreshFilter(logging.Filter):
    """Drops kafka-python's ERROR for a metadata request that its own close cancelled.

    kafka-python 3 logs "Metadata refresh: failed Cancelled" at ERROR when a client
    closes (a shutdown, a rebalance's reader) while a refresh is in flight: nothing
    failed, and an operator alerting on ERROR lines would be woken by every stop.
    Any other failed refresh is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if record.levelno < logging.ERROR or not str(record.msg).startswith(
            "Metadata refresh: failed"
        ):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and "cancel" in f"{type(args[0]).__name__} {args[0]}".lower())


class ClosedTransportReadFilter(logging.Filter):
    """Drops kafka-python's traceback for a read that raced its own connection's close.

    kafka-python 3.0 closes a connection (a bootstrap connection once the cluster is
    known, a client's close) from one thread while its I/O thread may already be
    past the check of its read loop: the read then finds no socket and is logged at
    ERROR with a traceback ("Error receiving network data closing socket"), though
    the connection was being closed anyway and nothing was in flight on it. A
    receive error on a connection that is still open is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if record.levelno < logging.ERROR or "Error receiving network data" not in str(record.msg):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        is_closing = getattr(args[0], "is_closing", None) if args else None
        return not (callable(is_closing) and is_closing() is True)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once, on stderr.

    In JSON mode, what Python would print on stderr itself goes through the
    log too: an uncaught exception (main thread or any other), an unraisable
    one, and warnings, so that every line of stderr is one JSON object.
    """
    global _format  # noqa: PLW0603 - one process-wide format, read by final_line
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    json_mode = fmt == "json"
    sys.excepthook = _log_uncaught if json_mode else sys.__excepthook__
    threading.excepthook = _log_uncaught_in_thread if json_mode else threading.__excepthook__
    sys.unraisablehook = _log_unraisable if json_mode else sys.__unraisablehook__
    logging.captureWarnings(json_mode)
    root.setLevel(level.upper())
    # kafka-python logs every reconnect attempt at WARNING/ERROR; ours say it once, clearly.
    logging.getLogger("kafka").setLevel(
        max(logging.WARNING, root.level) if level.upper() != "DEBUG" else logging.DEBUG
    )
    # kafka-python 3 warns whenever its I/O thread waited over 100 ms for the GIL
    # ("Task ... ran for 0.15s"). With the actor threads busy that is routine and
    # harmless (heartbeats are seconds apart); it would flood the log of a busy daemon.
    if level.upper() != "DEBUG":
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    for name, kind in (
        ("kafka.cluster", CancelledRefreshFilter),
        ("kafka.net.transport", ClosedTransportReadFilter),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    threading.current_thread().name = "main"
