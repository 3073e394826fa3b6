"""Logging: plain text by default, JSON lines with ``--log-format json``."""

from __future__ import annotations

import logging
import sys
import threading
import time

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, thread (the actor) and message."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key in ("topic", "partition", "offset", "actor"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-5s %(threadName)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs every reconnect attempt at WARNING/ERROR; ours say it once, clearly.
    logging.getLogger("kafka").setLevel(
        max(logging.WARNING, root.level) if level.upper() != "DEBUG" else logging.DEBUG
    )
    threading.current_thread().name = "main"
