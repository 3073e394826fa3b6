"""The preparation of a batch with state: the served values placed by name equal the reference.

The reference is what ``score-file`` and ``streamer features`` prepare: each
record's JSON with the features it was served at its top level. The live path
places the served floats into the matrix by name instead; every case here
compares the two bit for bit (features, valid rows, rejections, dropped rows).
"""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from streamer.core.features import FeatureSpec, prepare_batch
from streamer.core.preparation import prepare_source
from streamer.messages import Rejection, ServedValues, SourceBatch
from streamer.settings import PreprocessSettings

STATE = ("n_1h", "sum_1h", "gap_1h")
MAX_BYTES = 1 << 20


def spec(names: tuple[str, ...], *, standardize: bool = True) -> FeatureSpec:
    rng = np.random.default_rng(len(names))
    return FeatureSpec(
        names=names,
        mean=rng.normal(size=len(names)),
        std=rng.uniform(0.5, 3.0, size=len(names)),
        standardize=standardize,
    )


def source(
    values: list[bytes | None],
    served: list[tuple[float, ...] | None],
    rejected: tuple[int, ...] = (),
) -> SourceBatch:
    return SourceBatch(
        batch_id=1,
        topic="tx",
        partition=0,
        seq=0,
        offsets=list(range(len(values))),
        keys=[None] * len(values),
        values=values,
        timestamps_ms=[0] * len(values),
        dispatched_at=0.0,
        state_rejections=tuple(Rejection(i, "late", "", "state") for i in rejected),
        state_names=STATE,
        state_values=ServedValues.of(served, len(STATE)),
    )


def reference(batch: SourceBatch, model: FeatureSpec, missing: str) -> tuple[object, ...]:
    """prepare_batch on each kept record's JSON with its served features (score-file's input)."""
    rejected = {r.index for r in batch.state_rejections}
    kept = [i for i in range(len(batch.values)) if i not in rejected]
    values: list[bytes | None] = []
    for i in kept:
        value, served = batch.values[i], batch.state_values.row(i)
        try:
            doc = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            doc = None
        if served is None or not isinstance(doc, dict):
            values.append(value)
        else:
            values.append(orjson.dumps({**doc, **dict(zip(STATE, served, strict=True))}))
    prepared = prepare_batch(
        values, model, missing=missing, standardize=model.standardize, max_record_bytes=MAX_BYTES
    )
    back = np.asarray(kept, dtype=np.int64)
    return (
        prepared.features.tobytes(),
        back[prepared.valid_rows].tolist(),
        sorted(
            [(kept[p.index], p.reason) for p in prepared.rejected] + [(i, "late") for i in rejected]
        ),
        sorted(kept[p.index] for p in prepared.dropped),
    )


def live(batch: SourceBatch, model: FeatureSpec, missing: str) -> tuple[object, ...]:
    prepared = prepare_source(batch, model, PreprocessSettings(missing=missing), MAX_BYTES)
    return (
        prepared.features.tobytes(),
        prepared.valid_rows.tolist(),
        sorted((r.index, r.reason) for r in prepared.rejections),
        sorted(prepared.dropped_rows),
    )


def records(count: int, seed: int = 5) -> tuple[list[bytes | None], list[tuple[float, ...] | None]]:
    rng = random.Random(seed)
    values: list[bytes | None] = []
    served: list[tuple[float, ...] | None] = []
    for _ in range(count):
        doc = {"card": f"c{rng.randint(1, 9)}", "amount": rng.uniform(-1e3, 1e6) / 7, "risk": 3}
        values.append(orjson.dumps(doc))
        served.append((float(rng.randint(1, 50)), rng.uniform(0, 1e7) / 3, rng.random() * 1e-3))
    return values, served


MODELS = {
    "own and state features, mixed order": ("sum_1h", "amount", "n_1h", "risk", "gap_1h"),
    "own features only": ("amount", "risk"),
    "state features only": ("n_1h", "sum_1h"),
}


@pytest.mark.parametrize("names", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("standardize", [True, False])
def test_clean_batches_equal_the_reference_bit_for_bit(
    names: tuple[str, ...], standardize: bool
) -> None:
    values, served = records(500)
    model = spec(names, standardize=standardize)
    batch = source(values, served)
    assert live(batch, model, "dlq") == reference(batch, model, "dlq")


CASES = {
    "a state rejection": lambda v, s: (v, s, (3, 7)),
    "a value that is not JSON (served nothing)": lambda v, s: (
        [b"not json", *v[1:]],
        [None, *s[1:]],
        (),
    ),
    "a record field named like a state feature (the state wins)": lambda v, s: (
        [v[0][:-1] + b',"n_1h":-5.5}', *v[1:]],
        s,
        (),
    ),
    "a non-finite served value": lambda v, s: (v, [(1.0, float("nan"), 0.0), *s[1:]], ()),
    "a record without an own feature": lambda v, s: ([b'{"card":"x"}', *v[1:]], s, ()),
    "an integer and an exponent in the record": lambda v, s: (
        [b'{"card":"x","amount":9e15,"risk":-0}', *v[1:]],
        s,
        (),
    ),
    "a non-ASCII record": lambda v, s: (
        [b'{"card":"\xc3\xa9","amount":1.5,"risk":2}', *v[1:]],
        s,
        (),
    ),
    "a record large enough that its features could pass the cap": lambda v, s: (
        [b'{"card":"' + b"x" * (MAX_BYTES // 4) + b'","amount":1.0,"risk":1}', *v[1:]],
        s,
        (),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("missing", ["dlq", "drop", "impute"])
def test_batches_with_odd_rows_equal_the_reference(case: object, missing: str) -> None:
    values, served = records(40)
    changed_values, changed_served, rejected = case(values, served)  # type: ignore[operator]
    model = spec(MODELS["own and state features, mixed order"])
    batch = source(changed_values, changed_served, rejected)
    assert live(batch, model, missing) == reference(batch, model, missing)


def test_the_dead_letters_keep_the_original_record() -> None:
    values, served = records(3)
    batch = source([b"[1]", *values[1:]], [None, *served[1:]])
    prepared = prepare_source(batch, spec(("amount", "n_1h")), PreprocessSettings(), MAX_BYTES)
    assert [r.index for r in prepared.rejections] == [0]
    assert prepared.source.values == [b"[1]", *values[1:]]
