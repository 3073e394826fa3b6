"""The loader table of ``streamer.core.models``: one loader per kind, imported when used."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.core.models import KINDS, LOADERS, load_model
from streamer.errors import ModelLoadError


def test_an_unsupported_kind_is_named() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("tree", None)
    assert str(info.value) == (
        "model error: model.kind='tree' is not supported "
        "(supported: 'linear', 'sklearn', 'onnx', 'python', 'xgboost', 'lightgbm', 'mlflow', "
        "'remote')"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_names_a_loader_in_its_own_module(kind: str) -> None:
    module, _, function = LOADERS[kind].partition(":")
    assert module == f"streamer.core.models.{kind}"
    assert callable(getattr(importlib.import_module(module), function))


def test_the_settings_import_the_table_without_numpy_or_a_kind_library() -> None:
    heavy = ("numpy", "pandas", "sklearn", "joblib", "onnxruntime", "onnx")
    probe = (
        "import sys, streamer.settings, streamer.core.models; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("library", ["sklearn", "onnx"])
def test_a_kind_module_named_like_its_library_does_not_hide_it(library: str) -> None:
    kind = importlib.import_module(f"streamer.core.models.{library}")
    real = importlib.import_module(library)
    assert real is not kind
    assert Path(str(real.__file__)).parent != Path(str(kind.__file__)).parent
