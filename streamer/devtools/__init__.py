"""Tools for the demo, the tests and the benchmarks only: the daemon never imports them.

- :mod:`streamer.devtools.broker`: the embedded Kafka-compatible broker (Tansu).
- :mod:`streamer.devtools.verify`: reads the topics back and reconciles them.
"""
