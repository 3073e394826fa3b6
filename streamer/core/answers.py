"""Every record gets exactly one answer: what follows when the broker refuses one.

A record's answer is its prediction or its dead letter. When the client or the
broker refuses an answer for that record alone (too large, an invalid record),
the next answer in this ladder is sent instead, until one is accepted:

    prediction  --refused-->  dead letter 'produce_rejected' (the original bytes, cut to fit)
    dead letter --refused-->  the same dead letter as headers only (no key, empty value)
    headers only --refused--> unanswerable: supervision.on_unanswerable decides

Pure code: the producer actor sends what these functions return.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamer.core.features import PRODUCE_REJECTED
from streamer.core.output import Headers, dead_letter_headers, fit_dead_letter, minimal_dead_letter


class Form(enum.Enum):
    """Which rung of the ladder an answer is on."""

    PREDICTION = "prediction"
    DEAD_LETTER = "dead_letter"
    HEADERS_ONLY = "headers_only"


@dataclass(frozen=True, slots=True)
class Answer:
    """One record to send for input row ``row`` of a batch."""

    row: int
    form: Form
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None
    reason: str = ""
    detail: str = ""
    stage: str = ""
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a dead letter says about where its record came from, and the size limits."""

    topic: str
    partition: int
    offsets: Sequence[int]
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]
    model_version: str
    failed_at: str
    dead_letter_topic: str
    max_bytes: int
    prefix_bytes: int


def dead_letter(context: SourceContext, row: int, reason: str, detail: str, stage: str) -> Answer:
    """The dead letter of input row ``row``: its original key and value, cut to fit."""
    headers = dead_letter_headers(
        reason=reason,
        detail=detail,
        stage=stage,
        topic=context.topic,
        partition=context.partition,
        offset=context.offsets[row],
        model_version=context.model_version,
        failed_at=context.failed_at,
    )
    fitted = fit_dead_letter(
        context.keys[row],
        context.values[row] or b"",
        headers,
        max_bytes=context.max_bytes,
        prefix_bytes=context.prefix_bytes,
    )
    return Answer(
        row=row,
        form=Form.DEAD_LETTER,
        topic=context.dead_letter_topic,
        key=fitted.key,
        value=fitted.value,
        headers=fitted.headers,
        reason=reason,
        detail=detail,
        stage=stage,
        truncated=fitted.truncated,
    )


def next_answer(context: SourceContext, refused: Answer, error: str) -> Answer | None:
    """The answer to send after ``refused`` was refused with ``error``; None when none is left."""
    if refused.form is Form.PREDICTION:
        detail = f"the client or the broker refused the prediction: {error}"
        return dead_letter(context, refused.row, PRODUCE_REJECTED, detail, "produce")
    if refused.form is Form.DEAD_LETTER:
        detail = f"{refused.detail}; the dead letter was refused ({error}), sent as headers only"
        headers = dead_letter_headers(
            reason=refused.reason,
            detail=detail,
            stage=refused.stage,
            topic=context.topic,
            partition=context.partition,
            offset=context.offsets[refused.row],
            model_version=context.model_version,
            failed_at=context.failed_at,
        )
        minimal = minimal_dead_letter(
            context.keys[refused.row], context.values[refused.row] or b"", headers
        )
        return Answer(
            row=refused.row,
            form=Form.HEADERS_ONLY,
            topic=context.dead_letter_topic,
            key=minimal.key,
            value=minimal.value,
            headers=minimal.headers,
            reason=refused.reason,
            detail=detail,
            stage=refused.stage,
            truncated=minimal.truncated,
        )
    return None


@dataclass(slots=True)
class Tally:
    """What one batch's answers came to, for the metrics once the batch is acknowledged."""

    produced: int
    dead_letters: Counter[str]
    truncated: int = 0
    unanswerable: list[Answer] = field(default_factory=list)

    def replaced(self, refused: Answer, following: Answer | None) -> None:
        """``following`` is sent instead of ``refused`` (None: the record is unanswerable)."""
        if refused.form is Form.PREDICTION:
            self.produced -= 1
        else:
            self.dead_letters[refused.reason] -= 1
            self.truncated -= refused.truncated
        if following is None:
            self.unanswerable.append(refused)
            return
        self.dead_letters[following.reason] += 1
        self.truncated += following.truncated
