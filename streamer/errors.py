"""The exception tree. Every error says what failed, where, and how to fix it."""

from __future__ import annotations

import re

# A message that already says what kind of error it is keeps its own words.
_PREFIXED = re.compile(r"[a-z]+ error: ")


class StreamerError(Exception):
    """Base class of every error streamer raises on purpose.

    A subclass with a ``prefix`` formats its own: ``ConfigError("kafka.input_topic
    is required")`` reads ``config error: kafka.input_topic is required``, so no
    caller types the prefix.
    """

    exit_code = 1
    # False: restarting the actor cannot help; the supervisor stops the pipeline.
    restartable = True
    prefix = ""

    def __str__(self) -> str:
        message = super().__str__()
        if not self.prefix or _PREFIXED.match(message):
            return message
        return f"{self.prefix}: {message}"


class ConfigError(StreamerError):
    """The configuration is invalid; the message names the key."""

    exit_code = 2
    prefix = "config error"


class ModelLoadError(StreamerError):
    """The model file is missing, malformed, or does not match the features."""

    exit_code = 2
    prefix = "model error"


class ModelServerDownError(ModelLoadError):
    """A remote model's server did not answer at start (not a configuration error).

    ``waiting`` is a stand-in model (not loaded, not reachable) that the pipeline
    runs with while it waits for the server; a command with no pipeline exits 2.
    """

    def __init__(self, message: str, waiting: object) -> None:
        super().__init__(message)
        self.waiting = waiting


class BrokerError(StreamerError):
    """The Kafka broker could not be reached or refused a request."""


class StoppedBeforeStartError(StreamerError):
    """A stop (SIGTERM, SIGINT) came while still waiting for the broker or registry at start.

    Nothing was read, so nothing is left to commit: the stop asked for is clean (exit 0).
    """

    exit_code = 0


class DeliveryError(StreamerError):
    """The broker did not acknowledge an output record."""


class ActorCrashedError(StreamerError):
    """A BaseException (not an Exception) escaped an actor; wrapped so that it is reported."""


class PipelineStartError(StreamerError):
    """An actor failed while the pipeline was starting."""


class DeadLetterRatioError(StreamerError):
    """The dead-letter circuit breaker tripped: too many records cannot be scored."""

    restartable = False


class UnanswerableRecordError(StreamerError):
    """The broker refused a record's dead letter even as headers only."""

    restartable = False
