"""Dead letters that always fit, the ladder of answers after a refusal, and the rounds (pure)."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.answers import (
    Answer,
    Form,
    Round,
    SourceContext,
    Tally,
    dead_letter,
    first_round,
    next_answer,
    next_round,
)
from streamer.core.output import (
    MAX_ERROR_CHARS,
    OutputGroup,
    dead_letter_headers,
    fit_dead_letter,
    minimal_dead_letter,
    record_size,
)
from streamer.messages import Rejection

MiB = 1024 * 1024


def headers_for(detail: str = "value is 2000000 bytes") -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        reason="oversized",
        detail=detail,
        stage="preprocess",
        topic="events",
        partition=0,
        offset=7,
        model_version="v1",
        failed_at="2026-12-02T00:00:00.000Z",
    )


def context(keys: list[bytes | None], values: list[bytes | None], **kw: int) -> SourceContext:
    return SourceContext(
        topic="events",
        partition=3,
        offsets=list(range(100, 100 + len(values))),
        keys=keys,
        values=values,
        model_version="v1",
        failed_at="2026-12-02T00:00:00.000Z",
        dead_letter_topic="events.dlq",
        max_bytes=kw.get("max_bytes", MiB),
        prefix_bytes=kw.get("prefix_bytes", 4096),
    )


class TestFitDeadLetter:
    def test_a_dead_letter_that_fits_is_unchanged(self) -> None:
        headers = headers_for()
        fitted = fit_dead_letter(b"k", b"x" * 1000, headers, max_bytes=MiB, prefix_bytes=16)
        assert (fitted.key, fitted.value, fitted.headers, fitted.truncated) == (
            b"k",
            b"x" * 1000,
            headers,
            False,
        )

    def test_a_2_mb_value_is_cut_to_the_prefix_with_its_size_and_hash(self) -> None:
        value = b'{"pad":"' + b"y" * 2_000_000 + b'"}'
        fitted = fit_dead_letter(b"key-7", value, headers_for(), max_bytes=MiB, prefix_bytes=4096)
        header = dict(fitted.headers)
        assert fitted.value == value[:4096]
        assert fitted.key == b"key-7"
        assert fitted.truncated
        assert header["streamer.reason"] == b"oversized"
        assert header["streamer.value.size"] == str(len(value)).encode()
        assert header["streamer.value.sha256"] == hashlib.sha256(value).hexdigest().encode()
        assert header["streamer.value.truncated"] == b"true"
        assert "streamer.key.truncated" not in header
        assert record_size(fitted.key, fitted.value, fitted.headers) <= MiB

    def test_a_prefix_of_zero_keeps_no_value_bytes(self) -> None:
        fitted = fit_dead_letter(
            None, b"z" * (2 * MiB), headers_for(), max_bytes=MiB, prefix_bytes=0
        )
        assert fitted.value == b""
        assert dict(fitted.headers)["streamer.value.size"] == str(2 * MiB).encode()

    def test_a_key_too_large_on_its_own_is_cut_too(self) -> None:
        key = b"k" * (2 * MiB)
        fitted = fit_dead_letter(key, b"{}", headers_for(), max_bytes=MiB, prefix_bytes=100)
        header = dict(fitted.headers)
        assert fitted.key == key[:100]
        assert header["streamer.key.size"] == str(len(key)).encode()
        assert header["streamer.key.sha256"] == hashlib.sha256(key).hexdigest().encode()
        assert record_size(fitted.key, fitted.value, fitted.headers) <= MiB

    def test_a_small_value_stays_whole_beside_a_key_too_large_on_its_own(self) -> None:
        # The produce_rejected dead letter of a valid event with a 1.2 MB key (issue 11):
        # it once lost its 300-byte value, which was marked truncated though it fit.
        key, value = b"k" * 1_200_000, b'{"amount": 12.5, "pad": "' + b"p" * 270 + b'"}'
        fitted = fit_dead_letter(key, value, headers_for(), max_bytes=MiB, prefix_bytes=4096)
        header = dict(fitted.headers)
        assert fitted.value == value
        assert "streamer.value.truncated" not in header
        assert "streamer.value.size" not in header
        assert fitted.key == key[:4096]
        assert header["streamer.key.truncated"] == b"true"
        assert fitted.truncated
        assert record_size(fitted.key, fitted.value, fitted.headers) <= MiB

    def test_a_value_within_the_prefix_is_cut_further_only_when_it_must_be(self) -> None:
        fitted = fit_dead_letter(
            b"k" * 3000, b"v" * 3000, headers_for(), max_bytes=5000, prefix_bytes=4096
        )
        header = dict(fitted.headers)
        assert fitted.key == b"k" * 3000, (
            "the key is within the prefix and fits once the value is cut"
        )
        assert fitted.value != b"v" * 3000
        assert (b"v" * 3000).startswith(fitted.value)
        assert header["streamer.value.size"] == b"3000"
        assert "streamer.key.truncated" not in header
        assert record_size(fitted.key, fitted.value, fitted.headers) <= 5000

    @settings(max_examples=200, deadline=None)
    @given(
        key_size=st.one_of(st.none(), st.integers(0, 3 * MiB)),
        value_size=st.integers(0, 3 * MiB),
        max_bytes=st.integers(4096, 2 * MiB),
        prefix_bytes=st.integers(0, MiB),
    )
    def test_every_dead_letter_fits_and_keeps_at_most_the_prefix_when_cut(
        self, key_size: int | None, value_size: int, max_bytes: int, prefix_bytes: int
    ) -> None:
        key = None if key_size is None else b"k" * key_size
        value = b"v" * value_size
        fitted = fit_dead_letter(
            key, value, headers_for(), max_bytes=max_bytes, prefix_bytes=prefix_bytes
        )
        assert record_size(fitted.key, fitted.value, fitted.headers) <= max_bytes
        header = dict(fitted.headers)
        if fitted.truncated:
            assert len(fitted.value) <= prefix_bytes
            assert value.startswith(fitted.value)
            assert key is None or key.startswith(fitted.key or b"")
        else:
            assert (fitted.key, fitted.value) == (key, value)
        # Only a field that was cut says so, and a field that says so was cut.
        assert ("streamer.value.truncated" in header) == (fitted.value != value)
        assert ("streamer.key.truncated" in header) == (fitted.key != key)
        assert fitted.truncated == (fitted.value != value or fitted.key != key)

    def test_a_long_error_is_cut_in_its_header(self) -> None:
        header = dict(headers_for("e" * 10_000_000))
        assert len(header["streamer.error"]) == MAX_ERROR_CHARS
        assert header["streamer.error"].endswith(b"...")

    def test_the_minimal_form_has_no_key_and_no_value_but_their_sizes_and_hashes(self) -> None:
        minimal = minimal_dead_letter(b"key", b"value", headers_for())
        header = dict(minimal.headers)
        assert (minimal.key, minimal.value) == (None, b"")
        assert header["streamer.value.size"] == b"5"
        assert header["streamer.key.sha256"] == hashlib.sha256(b"key").hexdigest().encode()


class TestTheLadderOfAnswers:
    def test_a_refused_prediction_becomes_a_produce_rejected_dead_letter_of_the_input(
        self,
    ) -> None:
        ctx = context([b"k0", b"k1"], [b'{"a": 1}', b'{"a": 2}'])
        prediction = Answer(1, Form.PREDICTION, "scores", b"k1", b'{"score": 0.5}', None)

        answer = next_answer(ctx, prediction, "MessageSizeTooLargeError: 2000000 bytes")

        assert answer is not None
        header = dict(answer.headers or [])
        assert (answer.form, answer.topic, answer.key, answer.value) == (
            Form.DEAD_LETTER,
            "events.dlq",
            b"k1",
            b'{"a": 2}',
        )
        assert header["streamer.reason"] == b"produce_rejected"
        assert header["streamer.stage"] == b"produce"
        assert header["streamer.source.offset"] == b"101"
        assert b"MessageSizeTooLargeError: 2000000 bytes" in header["streamer.error"]

    def test_a_refused_dead_letter_is_sent_once_more_as_headers_only_then_nothing(self) -> None:
        ctx = context([b"k0"], [b"not json"])
        first = dead_letter(ctx, 0, "invalid_json", "value is not valid JSON", "preprocess")

        minimal = next_answer(ctx, first, "KafkaError: INVALID_RECORD")

        assert minimal is not None
        header = dict(minimal.headers or [])
        assert (minimal.form, minimal.key, minimal.value) == (Form.HEADERS_ONLY, None, b"")
        assert header["streamer.reason"] == b"invalid_json"
        assert header["streamer.value.size"] == b"8"
        assert b"sent as headers only" in header["streamer.error"]
        assert next_answer(ctx, minimal, "KafkaError: INVALID_RECORD") is None

    def test_the_tally_moves_each_record_to_its_final_answer(self) -> None:
        ctx = context([b"k0", b"k1"], [b"{}", b"x"])
        tally = Tally(produced=1, dead_letters=Counter({"invalid_json": 1}))
        prediction = Answer(0, Form.PREDICTION, "scores", b"k0", b"{}", None)
        rejected = next_answer(ctx, prediction, "too large")
        assert rejected is not None
        tally.replaced(prediction, rejected)
        letter = dead_letter(ctx, 1, "invalid_json", "bad", "preprocess")
        minimal = next_answer(ctx, letter, "refused")
        tally.replaced(letter, minimal)
        assert minimal is not None
        tally.replaced(minimal, None)

        assert tally.produced == 0
        assert +tally.dead_letters == Counter({"produce_rejected": 1})
        assert [a.row for a in tally.unanswerable] == [1]


def predictions(rows: list[int]) -> list[bytes]:
    return [b'{"offset":%d}' % (100 + row) for row in rows]


class TestRounds:
    def test_a_batch_without_dead_letters_is_one_group_of_predictions_and_no_answers(
        self,
    ) -> None:
        keys: list[bytes | None] = [b"k0", b"k1", b"k2"]
        ctx = context(keys, [b"{}"] * 3)
        sent = first_round(ctx, "scores", [0, 1, 2], predictions([0, 1, 2]), ())
        assert sent == Round([OutputGroup("scores", predictions([0, 1, 2]), keys)], [0, 1, 2], None)
        assert sent.groups[0].keys is keys, "the common case copies no key"
        assert sent.answer_at(1, keys) == Answer(
            1, Form.PREDICTION, "scores", b"k1", b'{"offset":101}', None
        )

    def test_dropped_rows_get_nothing_and_the_keys_follow_the_predictions(self) -> None:
        ctx = context([b"k0", b"k1", b"k2"], [b"{}"] * 3)
        sent = first_round(ctx, "scores", [0, 2], predictions([0, 2]), ())
        assert sent.groups == [OutputGroup("scores", predictions([0, 2]), [b"k0", b"k2"])]
        assert sent.rows == [0, 2]

    def test_predictions_and_dead_letters_go_in_runs_of_one_topic_in_input_order(self) -> None:
        values: list[bytes | None] = [b"{}", b"nope", b"x", b"{}", b"{}", b"[]"]
        ctx = context([f"k{i}".encode() for i in range(6)], values)
        rejections = (
            Rejection(5, "not_object", "a list", "preprocess"),
            Rejection(1, "invalid_json", "bad", "preprocess"),
            Rejection(2, "invalid_json", "bad", "preprocess"),
        )
        sent = first_round(ctx, "scores", [0, 3, 4], predictions([0, 3, 4]), rejections)
        assert [(g.topic, len(g)) for g in sent.groups] == [
            ("scores", 1),
            ("events.dlq", 2),
            ("scores", 2),
            ("events.dlq", 1),
        ]
        assert sent.rows == [0, 1, 2, 3, 4, 5]
        assert sent.answers is not None
        assert [a.form for a in sent.answers] == [
            Form.PREDICTION,
            Form.DEAD_LETTER,
            Form.DEAD_LETTER,
            Form.PREDICTION,
            Form.PREDICTION,
            Form.DEAD_LETTER,
        ]
        assert sent.groups[0].headers is None
        letters = sent.groups[1]
        assert list(letters.values) == [b"nope", b"x"]
        assert letters.headers is not None
        assert dict(letters.headers[0])["streamer.source.offset"] == b"101"
        assert sent.answer_at(5, ctx.keys).reason == "not_object"

    def test_the_next_round_holds_the_next_answer_of_each_refused_record(self) -> None:
        ctx = context([b"k0", b"k1", b"k2"], [b"{}", b"nope", b"{}"])
        rejections = (Rejection(1, "invalid_json", "bad", "preprocess"),)
        sent = first_round(ctx, "scores", [0, 2], predictions([0, 2]), rejections)
        tally = Tally(produced=2, dead_letters=Counter({"invalid_json": 1}))

        following, unanswerable = next_round(ctx, sent, [(1, "too large"), (2, "refused")], tally)

        assert unanswerable == []
        assert following is not None
        assert following.rows == [1, 2]
        assert following.answers is not None
        assert [a.form for a in following.answers] == [Form.HEADERS_ONLY, Form.DEAD_LETTER]
        (group,) = following.groups
        assert (group.topic, list(group.keys)) == ("events.dlq", [None, b"k2"])
        assert group.headers is not None
        assert dict(group.headers[1])["streamer.reason"] == b"produce_rejected"
        assert (tally.produced, +tally.dead_letters) == (
            1,
            Counter({"invalid_json": 1, "produce_rejected": 1}),
        )

    def test_a_record_refused_even_as_headers_only_is_unanswerable_with_its_last_error(
        self,
    ) -> None:
        ctx = context([b"k0", b"k1"], [b"nope", b"{}"])
        sent = first_round(
            ctx, "scores", [1], predictions([1]), (Rejection(0, "invalid_json", "bad", "x"),)
        )
        tally = Tally(produced=1, dead_letters=Counter({"invalid_json": 1}))
        minimal, _ = next_round(ctx, sent, [(0, "refused")], tally)
        assert minimal is not None

        following, unanswerable = next_round(ctx, minimal, [(0, "refused again")], tally)

        assert following is None
        assert [(a.row, a.form, error) for a, error in unanswerable] == [
            (0, Form.HEADERS_ONLY, "refused again")
        ]
        assert [a.row for a in tally.unanswerable] == [0]

    def test_the_first_unanswered_row_is_the_lowest_of_the_failed_sends_or_0_when_unknown(
        self,
    ) -> None:
        sent = Round([], [4, 2, 7], None)
        assert sent.first_row([0, 2]) == 4
        assert sent.first_row([2, 1]) == 2
        assert sent.first_row([2, -1]) == 0
