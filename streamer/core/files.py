"""Reading the files that settings name (model weights, fitted statistics), with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streamer.errors import ModelLoadError


def read_file(key: str, path: str | Path) -> bytes:
    """The bytes of the file that the setting ``key`` names.

    Raises:
        ModelLoadError: The file cannot be read; the message names the setting.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read {key}={path}: {exc.strerror}"
        raise ModelLoadError(msg) from None


def json_object(raw: bytes, where: str, holding: str = "") -> dict[str, Any]:
    """``raw`` parsed as a JSON object; ``holding`` ends the message when it is another value.

    Raises:
        ModelLoadError: ``raw`` is not JSON, or not a JSON object.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"{where} is not valid JSON: {exc}"
        raise ModelLoadError(msg) from None
    if not isinstance(doc, dict):
        msg = f"{where} must hold a JSON object{holding}"
        raise ModelLoadError(msg)
    return doc
