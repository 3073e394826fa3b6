"""Delayed labels: join them to predictions and measure each model's quality, pure.

No pykka, no Kafka client: ``streamer evaluate`` drives it over files, and the
unit and property tests drive it directly. docs/labels.md describes it.

- :mod:`~streamer.core.labels.join`: identities, reading a label and an output.
- :mod:`~streamer.core.labels.ledger`: :class:`PredictionLedger`, over a state store.
- :mod:`~streamer.core.labels.window`: :class:`LabelWindow`, the records the metrics cover.
- :mod:`~streamer.core.labels.metrics`: precision, recall, AUCs, losses, calibration, errors.
- :mod:`~streamer.core.labels.evaluation`: the whole join over sequences of documents.
"""
