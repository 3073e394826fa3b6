"""The restart policy and the dead-letter circuit breaker: pure, clock passed in."""

from __future__ import annotations

from streamer.core.supervision import DeadLetterBreaker, RestartPolicy


class TestRestartPolicy:
    def test_restarts_are_allowed_up_to_the_intensity_with_doubling_backoff(self) -> None:
        policy = RestartPolicy(max_restarts=3, window_s=60, initial_s=0.5, max_s=1.5)
        delays = [policy.on_failure(now=float(t)).delay_s for t in range(3)]
        assert delays == [0.5, 1.0, 1.5]
        refused = policy.on_failure(now=3.0)
        assert refused.restart is False
        assert refused.reason == ("4 failures within 60s exceed supervision.max_restarts=3")

    def test_failures_older_than_the_window_are_forgotten(self) -> None:
        policy = RestartPolicy(max_restarts=2, window_s=10, initial_s=1, max_s=8)
        assert policy.on_failure(0.0).restart
        assert policy.on_failure(5.0).restart
        later = policy.on_failure(14.0)
        assert later.restart is True
        assert later.delay_s == 2.0  # the failure at 5.0 is still inside the window
        assert policy.recent_restarts == 2

    def test_zero_restarts_refuses_the_first_failure(self) -> None:
        assert RestartPolicy(0, 60, 0.1, 1).on_failure(0.0).restart is False


class TestDeadLetterBreaker:
    def test_it_judges_only_a_full_window(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=100)
        assert breaker.record(50, 50) is False  # 100% but only half a window
        assert breaker.record(50, 10) is True  # 60 of 100
        assert breaker.ratio == 0.6

    def test_old_batches_slide_out_of_the_window(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=100)
        assert breaker.record(100, 100) is True
        for _ in range(4):
            breaker.record(100, 0)
        assert breaker.records == 100
        assert breaker.ratio == 0.0

    def test_a_ratio_at_the_threshold_does_not_trip(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=10)
        assert breaker.record(10, 5) is False


class TestBreakerCause:
    def test_the_cause_is_the_dominant_reason_and_field_of_the_window(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=100)
        missing = "feature 'mean_radius' is missing; the records carry 'mean radius'"
        assert not breaker.record(50, 10, [("invalid_json", "not JSON: line 1")] * 10)
        assert breaker.record(50, 50, [("missing_feature", missing)] * 50)
        cause = breaker.cause
        assert cause is not None
        assert (cause.reason, cause.feature, cause.count) == (
            "missing_feature",
            "'mean_radius'",
            50,
        )
        assert str(cause) == (
            "missing_feature 'mean_radius' in 50 of 100 records; the records carry 'mean radius'"
        )

    def test_causes_leave_the_window_with_their_batch(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=100)
        breaker.record(100, 100, [("invalid_json", "not JSON")] * 100)
        breaker.record(100, 100, [("non_finite", "feature 'x' is nan, not finite")] * 100)
        assert str(breaker.cause) == (
            "non_finite 'x' in 100 of 100 records (e.g. feature 'x' is nan, not finite)"
        )

    def test_no_dead_letters_no_cause(self) -> None:
        breaker = DeadLetterBreaker(max_ratio=0.5, window_records=10)
        breaker.record(10, 0)
        assert breaker.cause is None
