"""Per-key window state: declared features, their exact semantics, the store and its restore.

Pure code (no pykka, no Kafka client): the offline command (``streamer
features``) and ``score-file`` apply it in file order, and the unit and
property tests drive it directly. docs/state.md describes the semantics.

- :mod:`~streamer.core.state.declared`: the ``[[state.features]]`` tables.
- :mod:`~streamer.core.state.layout`: features grouped by key and time; reading a record.
- :mod:`~streamer.core.state.windows`: :class:`PartitionState`, applying records.
- :mod:`~streamer.core.state.codec`: the bytes of the store and of its changelog.
- :mod:`~streamer.core.state.store`: the store, in memory or RocksDB (rocksdict).
- :mod:`~streamer.core.state.restore`: local store or changelog, on assignment.
"""

from streamer.core.state.codec import Served
from streamer.core.state.declared import AGGREGATIONS, StateFeature, parse_features
from streamer.core.state.layout import STATE_REASONS, Layout, build_layout
from streamer.core.state.store import MemoryStore, Store
from streamer.core.state.windows import Applied, PartitionState, StateInput, enrich

__all__ = [
    "AGGREGATIONS",
    "STATE_REASONS",
    "Applied",
    "Layout",
    "MemoryStore",
    "PartitionState",
    "Served",
    "StateFeature",
    "StateInput",
    "Store",
    "build_layout",
    "enrich",
    "parse_features",
]
