"""Quantiles from Prometheus-style histogram buckets."""

from __future__ import annotations

import math


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Estimate a quantile from (upper bound, cumulative count) pairs, like PromQL does.

    Returns None when the histogram is empty. Within a bucket the value is
    interpolated linearly; a quantile in the ``+Inf`` bucket returns the
    largest finite bound.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            span = count - lower_count
            if span <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / span
        lower_bound, lower_count = bound, count
    return lower_bound
