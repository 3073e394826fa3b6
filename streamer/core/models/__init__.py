"""The model kinds that wrap a user's own model: ``sklearn``, ``onnx`` and ``python``.

Each loader returns a :class:`~streamer.core.models.common.ChunkedModel`, which
calls the user's model on fixed-size, freshly allocated chunks so that a row's
prediction never depends on its batch-mates (see ``common.py``).
"""
