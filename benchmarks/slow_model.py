"""The model of the memory runs (``make bench`` rows d and f): it sleeps a fixed time.

``model.kind = "python"`` loads ``predict``. It sleeps ``BENCH_SECONDS_PER_CALL``
per call plus ``BENCH_SECONDS_PER_ROW`` per row. With 1 ms a row and one model
actor it scores 1000 records/s, five times less than the 5000 records/s that
row (d) produces, so backpressure must hold the pipeline's memory flat while the
lag grows in the broker.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

SECONDS_PER_ROW = float(os.environ.get("BENCH_SECONDS_PER_ROW", "0.001"))
SECONDS_PER_CALL = float(os.environ.get("BENCH_SECONDS_PER_CALL", "0"))


def predict(frame: Any) -> np.ndarray:
    time.sleep(SECONDS_PER_CALL + len(frame) * SECONDS_PER_ROW)
    return np.full(len(frame), 0.5)


predict.features = [  # type: ignore[attr-defined]
    "amount",
    "distance_from_home_km",
    "transactions_last_hour",
    "account_age_days",
    "merchant_risk",
]
