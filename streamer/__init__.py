"""streamer: score Kafka event streams in micro-batches with Pykka actors, at least once."""

__version__ = "0.1.0"
