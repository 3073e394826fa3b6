"""The console script ``streamer.cli:main``; the commands live in :mod:`streamer.commands`."""

from __future__ import annotations

from streamer.commands import build_parser, main

__all__ = ["build_parser", "main"]
