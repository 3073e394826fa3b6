"""Every record gets exactly one answer: what follows when the broker refuses one.

A record's answer is its prediction or its dead letter. When the client or the
broker refuses an answer for that record alone (too large, an invalid record),
the next answer in this ladder is sent instead, until one is accepted:

    prediction  --refused-->  dead letter 'produce_rejected' (the original bytes, cut to fit)
    dead letter --refused-->  the same dead letter as headers only (no key, empty value)
    headers only --refused--> unanswerable: supervision.on_unanswerable decides

A batch's answers leave in rounds, one ``send_batch`` each: the first round
holds every prediction and dead letter, in input order (:func:`first_round`);
each later round holds the next answers of the records refused in the one
before (:func:`next_round`). Pure code: the producer actor sends what these
functions return.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamer.core.dead_letters import PRODUCE_REJECTED
from streamer.core.output import (
    Headers,
    OutputGroup,
    dead_letter_headers,
    fit_dead_letter,
    minimal_dead_letter,
)

if TYPE_CHECKING:
    from streamer.messages import Rejection


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


STATE_FEATURES_HEADER = "streamer.state_features"
"""The dead letter of a record whose state features were computed: them, as JSON."""


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
    # The input headers each row carries to its answer (kafka.propagate_headers), or None.
    carried: Sequence[Headers] | None = None
    # Each row's state features as JSON (state.log_features), or None: its dead letter's
    # ``streamer.state_features`` header.
    state_features: Sequence[bytes | None] | None = None


def dead_letter(context: SourceContext, row: int, reason: str, detail: str, stage: str) -> Answer:
    """The dead letter of input row ``row``: its original key and value, cut to fit."""
    return _letter(context, row, reason, detail, stage, headers_only=False)


def next_answer(context: SourceContext, refused: Answer, error: str) -> Answer | None:
    """The answer to send after ``refused`` was refused with ``error``; None when none is left."""
    if refused.form is Form.PREDICTION:
        detail = f"the client or the broker refused the prediction: {error}"
        return dead_letter(context, refused.row, PRODUCE_REJECTED, detail, "produce")
    if refused.form is Form.DEAD_LETTER:
        detail = f"{refused.detail}; the dead letter was refused ({error}), sent as headers only"
        return _letter(
            context, refused.row, refused.reason, detail, refused.stage, headers_only=True
        )
    return None


def _letter(
    context: SourceContext, row: int, reason: str, detail: str, stage: str, *, headers_only: bool
) -> Answer:
    """Row ``row``'s dead letter: cut to fit, or (``headers_only``) with no key and no value."""
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
    if context.carried is not None:
        headers = [*headers, *context.carried[row]]
    served = None if context.state_features is None else context.state_features[row]
    if served is not None:
        headers.append((STATE_FEATURES_HEADER, served))
    key, value = context.keys[row], context.values[row] or b""
    if headers_only:
        fitted = minimal_dead_letter(key, value, headers)
    else:
        fitted = fit_dead_letter(
            key, value, headers, max_bytes=context.max_bytes, prefix_bytes=context.prefix_bytes
        )
    return Answer(
        row=row,
        form=Form.HEADERS_ONLY if headers_only else Form.DEAD_LETTER,
        topic=context.dead_letter_topic,
        key=fitted.key,
        value=fitted.value,
        headers=fitted.headers,
        reason=reason,
        detail=detail,
        stage=stage,
        truncated=fitted.truncated,
    )


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


@dataclass(frozen=True, slots=True)
class Round:
    """One ``send_batch`` of a batch: its first answers, or those that replace refused ones.

    ``rows[i]`` is the input row that send ``i`` answers. ``answers`` is None
    for a first round without dead letters (every send is a prediction), so
    that the common case builds no object per record.
    """

    groups: list[OutputGroup]
    rows: list[int]
    answers: list[Answer] | None

    def answer_at(self, index: int, keys: Sequence[bytes | None]) -> Answer:
        """The answer of send ``index``; ``keys`` are the batch's input keys."""
        if self.answers is not None:
            return self.answers[index]
        row = self.rows[index]
        group = self.groups[0]  # a first round without answers is one group of predictions
        return Answer(row, Form.PREDICTION, group.topic, keys[row], group.values[index], None)

    def first_row(self, indexes: Sequence[int]) -> int:
        """The first input row among the sends ``indexes``; 0 when one is unknown (-1)."""
        known = [self.rows[i] for i in indexes if i >= 0]
        return min(known) if known and len(known) == len(indexes) else 0


def first_round(
    context: SourceContext,
    output_topic: str,
    valid_rows: list[int],
    encoded: list[bytes],
    rejections: Sequence[Rejection],
) -> Round:
    """A batch's predictions and dead letters as runs of one topic each, in input order.

    ``encoded[i]`` is the prediction of input row ``valid_rows[i]``; each
    rejection becomes the dead letter of its row. Rows in neither (dropped)
    get nothing.
    """
    keys = context.keys
    carried = context.carried
    if not rejections:
        out_keys = keys if len(valid_rows) == len(keys) else [keys[row] for row in valid_rows]
        out_headers = None if carried is None else [carried[row] for row in valid_rows]
        return Round([OutputGroup(output_topic, encoded, out_keys, out_headers)], valid_rows, None)
    answers = [
        Answer(row, Form.PREDICTION, output_topic, keys[row], value, _row_headers(carried, row))
        for row, value in zip(valid_rows, encoded, strict=True)
    ]
    answers += [dead_letter(context, r.index, r.reason, r.detail, r.stage) for r in rejections]
    answers.sort(key=lambda answer: answer.row)
    groups: list[OutputGroup] = []
    for topic, run in itertools.groupby(answers, key=lambda answer: answer.topic):
        items = list(run)
        headers = (
            None if topic == output_topic and carried is None else [a.headers or [] for a in items]
        )
        groups.append(OutputGroup(topic, [a.value for a in items], [a.key for a in items], headers))
    return Round(groups, [a.row for a in answers], answers)


def _row_headers(carried: Sequence[Headers] | None, row: int) -> Headers | None:
    return None if carried is None else carried[row]


def next_round(
    context: SourceContext, sent: Round, refused: Iterable[tuple[int, str]], tally: Tally
) -> tuple[Round | None, list[tuple[Answer, str]]]:
    """What replaces the sends of ``sent`` that were refused, as ``(index, error)`` pairs.

    Returns the round of their next answers (None when none is left to send)
    and the records that are unanswerable now, each with its last refusal;
    ``tally`` follows every record to its new answer.
    """
    following: list[Answer] = []
    unanswerable: list[tuple[Answer, str]] = []
    for index, error in refused:
        before = sent.answer_at(index, context.keys)
        answer = next_answer(context, before, error)
        tally.replaced(before, answer)
        if answer is None:
            unanswerable.append((before, error))
        else:
            following.append(answer)
    if not following:
        return None, unanswerable
    group = OutputGroup(
        context.dead_letter_topic,
        [a.value for a in following],
        [a.key for a in following],
        [a.headers for a in following],
    )
    return Round([group], [a.row for a in following], following), unanswerable
