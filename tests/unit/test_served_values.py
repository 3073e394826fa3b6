"""ServedValues: a batch's served features as one float64 block, the rows served none apart."""

from __future__ import annotations

import math

import numpy as np

from streamer.messages import ServedValues


def test_a_row_served_none_is_told_apart_from_a_served_nan() -> None:
    values = ServedValues.of([(1.0, math.nan), None, (-0.0, math.inf)], 2)
    assert values.absent == {1}
    assert len(values) == 3
    assert values.row(1) is None
    first = values.row(0)
    assert first is not None
    assert first[0] == 1.0
    assert math.isnan(first[1])  # a value, not a rejection
    assert np.isnan(values.matrix[1]).all()
    rows = values.rows()
    assert rows[1] is None
    assert rows[2] == (-0.0, math.inf)
    assert math.copysign(1.0, rows[2][0]) == -1.0  # the same doubles: -0.0 stays -0.0


def test_the_tail_of_a_batch_keeps_its_rows_and_moves_the_absent_ones() -> None:
    values = ServedValues.of([None, (1.0,), None, (3.0,)], 1)
    tail = values.tail(1)
    assert tail.rows() == [(1.0,), None, (3.0,)]
    assert tail.absent == {1}
    assert values.tail(3).rows() == [(3.0,)]
    assert values.tail(3).absent == frozenset()
