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

The package imports nothing itself: the settings read the declarations
without numpy (the import-cost test in tests/unit/core/models checks it).
"""
