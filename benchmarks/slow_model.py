"""The model of the memory run (``make bench`` row d): it sleeps a fixed time per row.

``model.kind = "python"`` loads ``predict``. With ``BENCH_SECONDS_PER_ROW`` at
1 ms and one model actor it scores 1000 records/s, five times less than the
5000 records/s that the benchmark produces, so backpressure must hold the
pipeline's memory flat while the lag grows in the broker.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

SECONDS_PER_ROW = float(os.environ.get("BENCH_SECONDS_PER_ROW", "0.001"))


def predict(frame: Any) -> np.ndarray:
    time.sleep(len(frame) * SECONDS_PER_ROW)
    return np.full(len(frame), 0.5)


predict.features = [  # type: ignore[attr-defined]
    "amount",
    "distance_from_home_km",
    "transactions_last_hour",
    "account_age_days",
    "merchant_risk",
]
