"""Reason codes: the ``model.explain_top_k`` features that pushed each score most.

A model that can explain itself gives, per row, one contribution per feature to
its explained output (TreeSHAP for boosters, coefficient x standardized value
for linear models). This module picks each row's ``k`` largest by absolute
value (ties in column order) and encodes them once per row as the JSON of the
output's ``reasons`` field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson


def top_reasons(contributions: np.ndarray, names: Sequence[str], k: int) -> list[bytes]:
    """One JSON array per row: ``[{"feature": name, "contribution": value}, ...]``.

    The ``k`` entries are the row's largest contributions by absolute value,
    largest first; a tie keeps column order. ``k`` above the feature count gives all.
    """
    rows, width = contributions.shape
    k = min(k, width)
    if rows == 0 or k <= 0:
        return [b"[]"] * rows
    # A stable sort of the negated magnitudes: largest first, ties in column order.
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(contributions, order, axis=1).tolist()
    labels = [orjson.dumps(str(n)) for n in names]
    return [
        b"["
        + b",".join(
            b'{"feature":' + labels[col] + b',"contribution":' + repr(value).encode() + b"}"
            for col, value in zip(columns, values, strict=True)
        )
        + b"]"
        for columns, values in zip(order.tolist(), picked, strict=True)
    ]
