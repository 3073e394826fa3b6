"""The only place that starts, wires and stops actors, in Broadway's roles.

- :mod:`~streamer.topology.pipeline`: :class:`Pipeline`, the facade the commands use.
- :mod:`~streamer.topology.specs`: one table of stage specs, keyed by :class:`Stage`:
  how each kind starts and what a restart of it asks of the consumer.
- :mod:`~streamer.topology.supervisor`: the failure queue, the restart policy,
  the epoch and the rewind.
- :mod:`~streamer.topology.terminator`: the numbered shutdown steps.
- :mod:`~streamer.topology.health`: liveness and readiness of a snapshot.
- :mod:`~streamer.topology.preflight`: features, broker and topics, before anything starts.
- :mod:`~streamer.topology.hot_reload`: the model in use and its hot reload.

No actor starts another, and no stage module imports this package.
"""

from streamer.topology.pipeline import Pipeline
from streamer.topology.specs import Stage
from streamer.topology.terminator import ShutdownReport

__all__ = ["Pipeline", "ShutdownReport", "Stage"]
