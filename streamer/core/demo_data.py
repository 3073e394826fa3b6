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


CARDS = 5000
COMPROMISED_CARDS = 8
"""With ``clock``, the anomalous transactions are the bursts of a few compromised cards."""
EVENT_MS = 1800
"""Event time between two transactions of the demo with state (its simulated clock): 5000
cards making 0.4 transactions an hour each, so that streamer's count of a card's
transactions in the last hour (include_current) is about what the demo model was made for."""


class DemoClock:
    """The simulated event time (epoch ms) of the demo's transactions: ``EVENT_MS`` apart."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.now_ms = int(time.time() * 1000) if start_ms is None else start_ms

    def tick(self) -> int:
        """The next transaction's time."""
        self.now_ms += EVENT_MS
        return self.now_ms


def make_event(
    rng: random.Random,
    *,
    anomaly_ratio: float = 0.03,
    amount_scale: float = 1.0,
    drop_feature: str = "",
    clock: DemoClock | None = None,
) -> dict[str, Any]:
    """One transaction as a JSON-ready dict.

    ``amount_scale`` > 1 drifts the amounts up; ``drop_feature`` leaves that field out.
    With ``clock`` (the demo with state), the event has no ``transactions_last_hour``:
    it has its time ``ts`` (epoch ms) and streamer counts the card's transactions itself.
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
    # The id before the card: without a clock, the same draws in the same order as before
    # the clock existed, so a seeded generator makes the records it always made.
    transaction_id = str(uuid.UUID(int=rng.getrandbits(128)))
    if clock is None:
        card = f"card-{rng.randint(1, CARDS):05d}"
    elif anomalous:
        card = f"card-9{rng.randint(1, COMPROMISED_CARDS):04d}"
    else:
        card = f"card-{rng.randint(1, CARDS):05d}"
    event = {
        "transaction_id": transaction_id,
        "card_id": card,
        "amount": amount if amount_scale == 1.0 else round(amount * amount_scale, 2),
        "currency": "EUR",
        "merchant_category": merchant,
        "merchant_risk": MERCHANT_RISK[merchant],
        "distance_from_home_km": distance,
        "transactions_last_hour": per_hour,
        "account_age_days": age,
        "event_time": time.time(),
    }
    if clock is not None:
        del event["transactions_last_hour"]
        event["ts"] = clock.tick()
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
    clock: DemoClock | None = None,
) -> tuple[bytes, bytes]:
    """(key, value) for one record; the key is the card id, so a card's events stay in order."""
    if bad_ratio and rng.random() < bad_ratio:
        return f"card-{rng.randint(1, CARDS):05d}".encode(), rng.choice(MALFORMED)
    event = make_event(
        rng,
        anomaly_ratio=anomaly_ratio,
        amount_scale=amount_scale,
        drop_feature=drop_feature,
        clock=clock,
    )
    return event["card_id"].encode(), orjson.dumps(event)
