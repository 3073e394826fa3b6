"""Synthetic card transactions for the demo generator.

Most events look ordinary; a few are anomalous (large amounts far from home,
bursts of transactions on new accounts) so that the demo model's scores vary.
A small share is deliberately malformed to show the dead-letter topic.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from dataclasses import dataclass
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
    event, _fraudulent = _event(
        rng,
        anomaly_ratio=anomaly_ratio,
        amount_scale=amount_scale,
        drop_feature=drop_feature,
        clock=clock,
    )
    return event


def _event(
    rng: random.Random,
    *,
    anomaly_ratio: float,
    amount_scale: float,
    drop_feature: str,
    clock: DemoClock | None,
) -> tuple[dict[str, Any], bool]:
    """:func:`make_event`, and whether the generator made the transaction fraudulent."""
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
    return event, anomalous


MALFORMED: tuple[bytes, ...] = (
    b'{"amount": 12.5, "distance_from_home_km": ',  # truncated JSON
    b"\xff\xfe not utf-8",  # not UTF-8
    b"[1, 2, 3]",  # not an object
    b'{"amount": 10.0, "merchant_risk": 0.1}',  # missing features
    b'{"amount": "lots", "distance_from_home_km": 1, "transactions_last_hour": 1, '
    b'"account_age_days": 10, "merchant_risk": 0.1}',  # non-numeric
)


@dataclass(frozen=True, slots=True)
class Transaction:
    """One record of the generator, and what only the generator knows about it."""

    key: bytes
    value: bytes
    transaction_id: str | None
    """None for a deliberately malformed record."""
    fraudulent: bool | None
    """True for the anomalous transactions (the fraud); None for a malformed record."""


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
    made = make_transaction(
        rng,
        bad_ratio=bad_ratio,
        anomaly_ratio=anomaly_ratio,
        amount_scale=amount_scale,
        drop_feature=drop_feature,
        clock=clock,
    )
    return made.key, made.value


def make_transaction(
    rng: random.Random,
    *,
    bad_ratio: float = 0.0,
    anomaly_ratio: float = 0.03,
    amount_scale: float = 1.0,
    drop_feature: str = "",
    clock: DemoClock | None = None,
) -> Transaction:
    """:func:`make_record` with the transaction's id and truth: the same draws, the same record."""
    if bad_ratio and rng.random() < bad_ratio:
        key = f"card-{rng.randint(1, CARDS):05d}".encode()
        return Transaction(key, rng.choice(MALFORMED), None, None)
    event, fraudulent = _event(
        rng,
        anomaly_ratio=anomaly_ratio,
        amount_scale=amount_scale,
        drop_feature=drop_feature,
        clock=clock,
    )
    return Transaction(
        event["card_id"].encode(), orjson.dumps(event), event["transaction_id"], fraudulent
    )


LABEL_SHARE = 0.1
"""The share of the demo's transactions that get a label: one in ten, sampled uniformly, so
that the metrics see the base rate of fraud (a label for every fraud alone would not)."""
LABEL_DELAY_S = (2.0, 5.0)
"""A label comes this long after its transaction was sent: uniform in [low, high] seconds."""


class LabelSchedule:
    """The demo's delayed labels: which transactions get one, when, and the label record.

    A label is ``{"transaction_id": ..., "label": 0 or 1, "labelled_at": epoch ms}``, keyed
    like its transaction (so that it lands on the transaction's partition of a labels topic
    with as many partitions). Its own ``rng`` draws the sample and the delays, so the
    transactions of a seeded generator stay the ones it always made. Times are wall-clock
    seconds: a label's time is compared with its prediction's ``scored_at``, not with the
    simulated event time of :class:`DemoClock`.
    """

    def __init__(
        self,
        rng: random.Random,
        share: float = LABEL_SHARE,
        delay_s: tuple[float, float] = LABEL_DELAY_S,
    ) -> None:
        self._rng = rng
        self.share = share
        self.delay_s = delay_s
        self._pending: list[tuple[float, int, bytes, bytes]] = []
        self._added = 0

    def __len__(self) -> int:
        return len(self._pending)

    def sent(self, transaction: Transaction, now_s: float) -> None:
        """Note a transaction sent at ``now_s``: maybe schedule its label."""
        if transaction.transaction_id is None or transaction.fraudulent is None:
            return  # a malformed record has nothing to label
        if self._rng.random() >= self.share:
            return
        due = now_s + self._rng.uniform(*self.delay_s)
        value = b'{"transaction_id":"%s","label":%d,"labelled_at":%d}' % (
            transaction.transaction_id.encode(),
            int(transaction.fraudulent),
            round(due * 1000),
        )
        self._added += 1  # a tie-break: labels due at once go in the order they were scheduled
        heapq.heappush(self._pending, (due, self._added, transaction.key, value))

    def due(self, now_s: float) -> list[tuple[bytes, bytes]]:
        """The (key, value) of the labels due by ``now_s``, in order; they leave the schedule."""
        out = []
        while self._pending and self._pending[0][0] <= now_s:
            _due, _order, key, value = heapq.heappop(self._pending)
            out.append((key, value))
        return out
