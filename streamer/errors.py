"""The exception tree. Every error says what failed, where, and how to fix it."""


class StreamerError(Exception):
    """Base class of every error streamer raises on purpose."""

    exit_code = 1
    # False: restarting the actor cannot help; the supervisor stops the pipeline.
    restartable = True


class ConfigError(StreamerError):
    """The configuration is invalid; the message names the key."""

    exit_code = 2


class ModelLoadError(StreamerError):
    """The model file is missing, malformed, or does not match the features."""

    exit_code = 2


class BrokerError(StreamerError):
    """The Kafka broker could not be reached or refused a request."""


class DeliveryError(StreamerError):
    """The broker did not acknowledge an output record."""


class PipelineStartError(StreamerError):
    """An actor failed while the pipeline was starting."""


class DeadLetterRatioError(StreamerError):
    """The dead-letter circuit breaker tripped: too many records cannot be scored."""

    restartable = False


class UnanswerableRecordError(StreamerError):
    """The broker refused a record's dead letter even as headers only."""

    restartable = False
