"""The live path's pure parts: a batch's predictions with their identities, a label batch read."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import pytest

from streamer.core.dead_letters import LABEL_DEAD_LETTER_REASONS, REASONS
from streamer.core.labels.join import (
    REGRESSION,
    LabelSpec,
    Output,
    coordinates_identity,
    record_id_identity,
)
from streamer.core.labels.live import (
    LABELS_STAGE,
    ledger_meta,
    ledger_topic_name,
    model_outputs,
    read_label_batch,
    read_label_columns,
    score_column,
)
from streamer.messages import Rejection, SourceBatch


def source(values: list[bytes | None], keys: list[bytes | None]) -> SourceBatch:
    offsets = list(range(100, 100 + len(values)))
    return SourceBatch(0, "tx", 3, 0, offsets, keys, values, [0] * len(values), 0.0)


def test_each_scored_row_gets_its_identity_by_coordinates_key_or_id_field() -> None:
    batch = source([b'{"id": 7}', b'{"id": "a"}', b"not json", b"{}"], [b"k0", None, b"k2", b"k3"])
    rows, scores = [0, 1, 2, 3], [0.1, 0.2, float("nan"), 0.4]
    model = ("m", "1", False)
    by_coordinates = model_outputs(LabelSpec(), batch, rows, scores, model, 5)
    assert by_coordinates == [
        Output(coordinates_identity("tx", 3, 100), False, "m", "1", 0.1, 5),
        Output(coordinates_identity("tx", 3, 101), False, "m", "1", 0.2, 5),
        Output(coordinates_identity("tx", 3, 103), False, "m", "1", 0.4, 5),  # NaN: none
    ]
    by_key = model_outputs(LabelSpec(id_field="$key"), batch, rows, scores, model, 5)
    assert [o.identity for o in by_key] == [record_id_identity(b"k0"), record_id_identity(b"k3")]
    by_id = model_outputs(LabelSpec(id_field="id"), batch, rows, scores, model, 5)
    assert [o.identity for o in by_id] == [record_id_identity(b"7"), record_id_identity(b"a")]


def test_a_label_batch_reads_labels_and_one_dead_letter_per_malformed_label() -> None:
    values = [
        b'{"topic": "tx", "partition": 3, "offset": 100, "label": 1}',
        b"[1]",
        b"{not json",
        b'{"topic": "tx", "partition": 2, "offset": 100, "label": 1}',
        b'{"topic": "tx", "partition": 3, "offset": 101, "label": 2}',
        b'{"topic": "tx", "partition": 3, "label": 0}',
        None,
        b'{"topic": "tx", "partition": 3.0, "offset": 102, "label": false}',
    ]
    read = read_label_batch(list(range(len(values))), [None] * len(values), values, 3, LabelSpec())
    assert [(label.identity, label.value) for label in read.labels] == [
        (coordinates_identity("tx", 3, 100), 1.0),
        (coordinates_identity("tx", 3, 102), 0.0),
    ]
    assert read.offsets == [0, 7]
    assert [(r.index, r.reason, r.stage) for r in read.rejections] == [
        (1, "malformed", LABELS_STAGE),
        (2, "malformed", LABELS_STAGE),
        (3, "misrouted", LABELS_STAGE),
        (4, "wrong_type", LABELS_STAGE),
        (5, "missing_id", LABELS_STAGE),
        (6, "malformed", LABELS_STAGE),
    ]
    assert all(isinstance(r, Rejection) for r in read.rejections)


def test_the_score_is_the_output_named_by_score_field() -> None:
    single = np.array([0.25, 0.5])
    assert score_column(single, ("score",), "score") is single
    assert score_column(single, ("score",), "proba_1") is None
    multi = np.array([[0.75, 0.25], [0.5, 0.5]])
    assert score_column(multi, ("proba_0", "proba_1"), "proba_1").tolist() == [0.25, 0.5]  # type: ignore[union-attr]


def test_the_label_reasons_follow_the_existing_dead_letter_series() -> None:
    assert REASONS[-len(LABEL_DEAD_LETTER_REASONS) :] == LABEL_DEAD_LETTER_REASONS
    assert REASONS.index("state_too_large") == len(REASONS) - len(LABEL_DEAD_LETTER_REASONS) - 1
    assert ledger_topic_name("", "fraud team", "tx") == "fraud_team.tx.ledger-changelog"
    meta = ledger_meta("tx", 3, 7)
    assert (meta.topic, meta.partition, meta.last_offset) == ("tx", 3, 7)


_DRAWN: list[Any] = [
    "tx", "other", "", 0, 1, 2, 3, -1, 3.0, 0.5, True, False, None, [1], "1", 2**60,
    1_796_536_800_000, -(2**52), 2**52, float("nan"),
]  # fmt: skip


@pytest.mark.parametrize(
    "spec", [LabelSpec(), LabelSpec(time_field="at", task=REGRESSION), LabelSpec(time_field="at")]
)
def test_a_label_batch_in_columns_is_the_batch_read_or_left_to_it(spec: LabelSpec) -> None:
    """read_label_columns gives read_label_batch's labels and record offsets, or None.

    Random batches of the common form with a field drawn now and then (another topic,
    partition, type, range), a malformed label, a tombstone: never another label.
    """
    rng = random.Random(23)
    taken = 0
    for _ in range(600):
        values: list[bytes | None] = []
        for offset in range(rng.randrange(1, 6)):
            doc: Any = {"topic": "tx", "partition": 3, "offset": offset, "label": 1, "at": 5}
            if rng.random() < 0.15:
                doc[rng.choice(["topic", "partition", "offset", "label", "at"])] = rng.choice(
                    _DRAWN
                )
            if rng.random() < 0.03:
                del doc[rng.choice(list(doc))]
            value = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
            values.append(rng.choice([None, b"{x", b"[1]"]) if rng.random() < 0.02 else value)
        offsets = list(range(len(values)))
        columns = read_label_columns(values, 3, spec, "tx")
        read = read_label_batch(offsets, [None] * len(values), values, 3, spec, "tx")
        if columns is None:
            continue
        taken += 1
        assert (read.rejections, read.offsets) == ([], offsets)
        assert columns.labels() == read.labels
        assert columns.records == read.record_offsets
        times = [label.time_us for label in read.labels]
        assert columns.times == (times if spec.time_field else None)
    assert taken > 200  # the common form took the columns' way


def test_a_label_batch_of_another_form_is_not_read_in_columns() -> None:
    common = b'{"topic": "tx", "partition": 3, "offset": 1, "label": 1}'
    assert read_label_columns([common], 3, LabelSpec(), "tx") is not None
    assert read_label_columns([common], 3, LabelSpec(id_field="id"), "tx") is None
    assert read_label_columns([common], 3, LabelSpec(value_field="a.b"), "tx") is None
    assert read_label_columns([common], 3, LabelSpec(), "") is None
    assert read_label_columns([common], 2, LabelSpec(), "tx") is None  # misrouted
    assert read_label_columns([common, None], 3, LabelSpec(), "tx") is None
