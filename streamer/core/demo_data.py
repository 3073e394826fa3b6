"""Synthetic card transactions for the demo generator.

Most events look ordinary; a few are anomalous (large amounts far from home,
bursts of transactions on new accounts) so that the demo model's scores vary.
A small share is deliberately malformed to show the dead-letter topic.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import orjson

MERCHANTS = ("grocery", "fuel", "online", "travel", "electronics", "restaurant", "pharmacy")
MERCHANT_RISK = {
    "grocery": 0.08,
    "fuel": 0.12,
    "online": 0.3,
    "travel": 0.35,
    "electronics": 0.4,
    "restaurant": 0.1,
    "pharmacy": 0.09,
}


def make_event(
    rng: random.Random,
    *,
    anomaly_ratio: float = 0.03,
    amount_scale: float = 1.0,
    drop_feature: str = "",
) -> dict[str, Any]:
    """One transaction as a JSON-ready dict.

    ``amount_scale`` > 1 drifts the amounts up; ``drop_feature`` leaves that field out.
    """
    merchant = rng.choice(MERCHANTS)
    anomalous = rng.random() < anomaly_ratio
    if anomalous:
        amount = round(rng.uniform(400, 3000), 2)
        distance = round(rng.uniform(150, 4000), 1)
        per_hour = rng.randint(4, 12)
        age = rng.randint(1, 60)
    else:
        amount = round(rng.lognormvariate(3.7, 0.7), 2)
        distance = round(abs(rng.gauss(12, 15)), 1)
        per_hour = max(0, int(rng.gauss(1.4, 1.1)))
        age = rng.randint(30, 3000)
    event = {
        "transaction_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "card_id": f"card-{rng.randint(1, 5000):05d}",
        "amount": amount if amount_scale == 1.0 else round(amount * amount_scale, 2),
        "currency": "EUR",
        "merchant_category": merchant,
        "merchant_risk": MERCHANT_RISK[merchant],
        "distance_from_home_km": distance,
        "transactions_last_hour": per_hour,
        "account_age_days": age,
        "event_time": time.time(),
    }
    if drop_feature:
        event.pop(drop_feature, None)
    return event


MALFORMED: tuple[bytes, ...] = (
    b'{"amount": 12.5, "distance_from_home_km": ',  # truncated JSON
    b"\xff\xfe not utf-8",  # not UTF-8
    b"[1, 2, 3]",  # not an object
    b'{"amount": 10.0, "merchant_risk": 0.1}',  # missing features
    b'{"amount": "lots", "distance_from_home_km": 1, "transactions_last_hour": 1, '
    b'"account_age_days": 10, "merchant_risk": 0.1}',  # non-numeric
)


def make_record(
    rng: random.Random,
    *,
    bad_ratio: float = 0.0,
    anomaly_ratio: float = 0.03,
    amount_scale: float = 1.0,
    drop_feature: str = "",
) -> tuple[bytes, bytes]:
    """(key, value) for one record; the key is the card id, so a card's events stay in order."""
    if bad_ratio and rng.random() < bad_ratio:
        return f"card-{rng.randint(1, 5000):05d}".encode(), rng.choice(MALFORMED)
    event = make_event(
        rng, anomaly_ratio=anomaly_ratio, amount_scale=amount_scale, drop_feature=drop_feature
    )
    return event["card_id"].encode(), orjson.dumps(event)
