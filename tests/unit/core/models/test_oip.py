"""The Open Inference Protocol's pure parts: requests, answers, retries, the breaker, bisection."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np
import orjson
import pytest

from streamer.commands.config import _describe
from streamer.core.models.oip import (
    BadInputError,
    Breaker,
    RetryPolicy,
    ServerRefusedError,
    ServerUnavailableError,
    build_request,
    classify_status,
    error_detail,
    is_transient,
    map_outputs,
    parse_response,
    score_bisecting,
)
from streamer.core.scoring import score_isolating_failures
from streamer.errors import ConfigError, ModelLoadError, ModelServerDownError
from streamer.settings import build_settings, is_secret, remote_headers, secret_values
from streamer.topology.health import TopologySnapshot, readiness

KAFKA = {"input_topic": "in", "output_topic": "out"}


def test_a_batch_is_one_fp64_tensor_whose_json_reads_back_to_the_same_doubles() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(5, 3)) * 1e5
    features[0, 0] = 0.1 + 0.2  # not a short decimal
    body = orjson.loads(build_request(features, ["input-0"], "FP64", ["predict_proba"]))
    (tensor,) = body["inputs"]
    assert tensor["name"] == "input-0"
    assert tensor["shape"] == [5, 3]
    assert tensor["datatype"] == "FP64"
    assert np.array_equal(np.array(tensor["data"]).reshape(5, 3), features)  # exact
    assert body["outputs"] == [{"name": "predict_proba"}]


def test_fp32_sends_each_value_rounded_once_and_named_inputs_become_one_column_each() -> None:
    features = np.array([[0.1, 2.0], [3.0, 4.5]])
    body = orjson.loads(build_request(features, ["a", "b"], "FP32", []))
    assert body["parameters"] == {"content_type": "pd"}
    assert [t["name"] for t in body["inputs"]] == ["a", "b"]
    assert body["inputs"][0]["shape"] == [2]
    # orjson writes a float32 as its own shortest text, which reads back to the same float32.
    assert np.float32(body["inputs"][0]["data"][0]) == np.float32(0.1)
    assert body["inputs"][1]["data"] == [2.0, 4.5]
    assert "outputs" not in body


def answer(*tensors: tuple[str, list[float], list[int]]) -> bytes:
    return orjson.dumps(
        {"outputs": [{"name": n, "shape": s, "datatype": "FP64", "data": d} for n, d, s in tensors]}
    )


def test_an_answer_becomes_a_matrix_of_the_wanted_outputs_in_their_order() -> None:
    body = answer(("predict", [1, 0], [2]), ("predict_proba", [0.2, 0.8, 0.9, 0.1], [2, 2]))
    assert parse_response(body, 2, ["predict_proba"]).tolist() == [[0.2, 0.8], [0.9, 0.1]]
    both = parse_response(body, 2, ["predict", "predict_proba"])
    assert both.tolist() == [[1, 0.2, 0.8], [0, 0.9, 0.1]]
    assert parse_response(body, 2, []).shape == (2, 3)  # all, in the answer's order


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not an inference response"),
        (b'{"outputs": [{"name": "x"}]}', "not 2 rows"),
        (answer(("x", [1.0, 2.0, 3.0], [3])), "not 2 rows"),
        (answer(("y", [1.0, 2.0], [2])), "no output 'x'"),
        (orjson.dumps({"outputs": [{"name": "x", "data": [1.0, float("nan")]}]}), "NaN"),
    ],
)
def test_an_answer_that_is_not_one_row_of_numbers_per_input_is_a_bad_answer(
    body: bytes, match: str
) -> None:
    with pytest.raises(BadInputError, match=match):
        parse_response(body, 2, ["x"])


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (400, "bad_input"),
        (413, "bad_input"),
        (422, "bad_input"),
        (401, "http_4xx"),
        (404, "http_4xx"),
        (429, "http_429"),
        (500, "http_5xx"),
        (503, "http_5xx"),
    ],
)
def test_only_statuses_that_blame_the_input_are_row_level(status: int, outcome: str) -> None:
    assert classify_status(status) == outcome
    assert is_transient(outcome) == (outcome not in ("ok", "bad_input"))


def test_the_error_detail_is_the_servers_message_on_one_line() -> None:
    assert error_detail(b'{"error": "bad\\nrow"}', 400) == "HTTP 400: bad row"
    assert error_detail(b'{"detail": "no"}', 422) == "HTTP 422: no"
    assert error_detail(b"<html>oops</html>", 502) == "HTTP 502: <html>oops</html>"
    assert len(error_detail(b"x" * 1000, 500)) == 300


def test_outputs_are_named_like_a_local_models() -> None:
    assert map_outputs(1, [], "positive").names == ("score",)
    positive = map_outputs(2, ["predict_proba"], "positive")
    assert positive.names == ("score",)
    assert positive.apply(np.array([[0.3, 0.7]])).tolist() == [0.7]
    assert map_outputs(2, ["predict_proba"], "all").names == ("proba_0", "proba_1")
    assert map_outputs(3, ["logits"], "positive").names == ("logits_0", "logits_1", "logits_2")
    assert map_outputs(2, [], "positive").names == ("output_0", "output_1")
    with pytest.raises(ValueError, match="3 classes"):
        map_outputs(3, ["predict_proba"], "positive")
    with pytest.raises(BadInputError, match="answered 3 columns, 2 when loaded"):
        positive.apply(np.zeros((1, 3)))


def test_backoff_doubles_up_to_its_ceiling_with_full_jitter() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0)
    assert [policy.delay(k, lambda: 0.999999) for k in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0], rel=1e-5
    )
    assert policy.delay(3, lambda: 0.0) == 0.0
    assert policy.delay(10_000, lambda: 0.5) == 0.5  # no overflow


def test_the_breaker_opens_after_consecutive_failures_probes_and_closes_on_a_ready_answer() -> None:
    breaker = Breaker(threshold=3, probe_interval_s=1.0)
    assert not breaker.failure(10.0)
    assert not breaker.success()  # an answer resets the count
    assert not breaker.failure(10.0)
    assert not breaker.failure(10.1)
    assert breaker.failure(10.2)  # the third in a row opens it
    assert breaker.is_open
    assert breaker.opened == 1
    assert not breaker.failure(10.3)  # already open: opened once
    assert breaker.probe_in(10.7) == pytest.approx(0.5)
    assert not breaker.probed(11.2, ready=False)
    assert breaker.probe_in(11.5) == pytest.approx(0.7)
    assert breaker.is_open
    assert breaker.probed(12.2, ready=True)
    assert not breaker.is_open
    assert breaker.failures == 0


def run_bisecting(features: np.ndarray, bad: set[float]) -> tuple[list[int], list[float], int]:
    calls = itertools.count()

    async def call(rows: np.ndarray) -> np.ndarray:
        next(calls)
        if any(value in bad for value in rows[:, 0].tolist()):
            msg = "HTTP 400: magic"
            raise BadInputError(msg)
        return rows[:, 0] * 10

    outcome = asyncio.run(score_bisecting(call, features, 1))
    return [p for p, _ in outcome.failed], outcome.predictions.tolist(), next(calls)


def test_bisection_dead_letters_exactly_the_rows_the_server_refuses() -> None:
    features = np.arange(16, dtype=np.float64).reshape(16, 1)
    failed, scores, calls = run_bisecting(features, {3.0, 4.0, 15.0})
    assert failed == [3, 4, 15]
    assert scores == [v * 10 for v in range(16) if v not in (3, 4, 15)]
    assert calls <= 1 + 2 * 3 * 4  # O(bad x log n) requests, not one per row
    assert run_bisecting(features, set())[2] == 1  # a clean batch is one request
    failed, scores, _ = run_bisecting(np.array([[7.0]]), {7.0})
    assert failed == [0]
    assert scores == []


def test_bisection_never_blames_rows_for_an_outage() -> None:
    async def down(rows: np.ndarray) -> np.ndarray:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        asyncio.run(score_bisecting(down, np.zeros((4, 1)), 1))


def test_a_blocking_score_raises_for_an_outage_instead_of_dead_lettering_every_row() -> None:
    class Down:
        output_names = ("score",)

        def predict(self, features: np.ndarray) -> np.ndarray:
            raise ServerUnavailableError("http://m:8080/v2/models/m: connection after 3 attempts")

    with pytest.raises(ServerUnavailableError):
        score_isolating_failures(Down(), np.zeros((4, 1)))  # type: ignore[arg-type]


def test_remote_settings_are_checked_once_with_one_line_naming_the_key() -> None:
    def settings(**model: object) -> object:
        return build_settings({"kafka": KAFKA, "model": {"kind": "remote", **model}}, environ={})

    with pytest.raises(ConfigError, match=r"model.remote_url must be .*STREAMER_MODEL__REMOTE_URL"):
        settings(path="m")
    with pytest.raises(ConfigError, match=r"model\.remote_ca_file=/nope is not a file"):
        settings(remote_url="https://h:1", remote_ca_file="/nope")
    with pytest.raises(ConfigError, match="must not set Authorization"):
        settings(remote_url="http://h:1", remote_headers="Authorization: Bearer x")
    with pytest.raises(ConfigError, match="'Name: value' pairs"):
        settings(remote_url="http://h:1", remote_headers="X-Team fraud")
    with pytest.raises(ConfigError, match=r"model\.max_concurrent_requests must be > 0"):
        settings(remote_url="http://h:1", max_concurrent_requests=0)
    with pytest.raises(ConfigError, match=r"model\.remote_datatype must be one of"):
        settings(remote_url="http://h:1", remote_datatype="INT8")
    good = settings(remote_url="https://h:1", remote_headers="X-Team: fraud; X-Env: prod")
    assert remote_headers("X-Team: fraud; X-Env: prod") == (("X-Team", "fraud"), ("X-Env", "prod"))
    assert good.model_options().remote.tls_verify is True  # type: ignore[attr-defined]


def test_the_bearer_token_comes_from_the_environment_and_is_never_shown() -> None:
    token = "tok-123456789"  # noqa: S105 - a test value, to be masked
    settings = build_settings(
        {"kafka": KAFKA, "model": {"kind": "remote", "path": "m", "remote_url": "http://h:1"}},
        environ={"STREAMER_MODEL__REMOTE_BEARER_TOKEN": token},
    )
    assert settings.model_options().remote.bearer_token == token
    assert is_secret("model.remote_bearer_token")
    assert token in secret_values(settings)  # the log filter masks it
    shown = _describe(settings)
    assert "remote_bearer_token = ***" in shown
    assert token not in shown
    assert token not in repr(settings.model_options())


def test_readiness_is_false_while_the_remote_model_is_unreachable() -> None:
    snapshot = TopologySnapshot(
        alive={"consumer": True, "producer": True},
        restarts={},
        failure=None,
        assigned=True,
        model_loaded=True,
        stopping=False,
        model_reachable=False,
    )
    ok, details = readiness(snapshot)
    assert not ok
    assert details["failing"] == ["model_reachable"]


def test_the_reload_poll_follows_the_metadata_and_ignores_an_outage() -> None:
    from streamer.core.models.base import ModelOptions
    from streamer.core.models.remote import _digest, _poller

    answers: list[object] = [{"name": "m", "versions": ["1"]}]

    class Client:
        model_url = "http://m:8080/v2/models/m"

        def run(self, coroutine: object, timeout_s: float) -> object:
            coroutine.close()  # type: ignore[attr-defined]
            answer = answers[0]
            if isinstance(answer, Exception):
                raise answer
            return answer

        async def get_json(self, url: str) -> object:
            return None

    options = ModelOptions(path="m")
    first = _digest(options, {"name": "m", "versions": ["1"]})
    poll = _poller(Client(), options, first)  # type: ignore[arg-type]
    assert poll() == first
    answers[0] = ConnectionError("down")
    assert poll() == first  # an outage is no redeploy: no reload
    answers[0] = {"name": "m", "versions": ["2"]}
    assert poll() != first  # a redeploy: the reloader loads it


def test_a_breaker_tripped_at_start_is_open_at_once_and_probes_after_an_interval() -> None:
    breaker = Breaker(threshold=3, probe_interval_s=1.0)
    breaker.trip(5.0)
    assert breaker.is_open
    assert breaker.opened == 1
    assert breaker.probe_in(5.0) == pytest.approx(1.0)
    breaker.trip(5.5)  # still down: one outage, probed later
    assert breaker.opened == 1
    assert breaker.probe_in(5.5) == pytest.approx(1.0)
    assert breaker.success()
    assert not breaker.is_open


class _FakeClient:
    """The loader's view of a server: the metadata GET fails with ``error``."""

    model_url = "http://m:8080/v2/models/m"

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.marked: list[str] = []

    def run(self, coroutine: object, timeout_s: float) -> object:
        name = coroutine.__qualname__  # type: ignore[attr-defined]
        coroutine.close()  # type: ignore[attr-defined]
        if name.endswith("get_json"):
            raise self.error
        self.marked.append(name.rsplit(".", 1)[-1])
        return None

    async def get_json(self, url: str) -> object:
        return None

    async def mark_down(self) -> None:
        return None

    async def mark_up(self) -> None:
        return None

    class options:  # noqa: N801 - stands for RemoteOptions
        timeout_s = 1.0


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (ServerUnavailableError("GET ...: connection (refused)"), True),
        (ServerUnavailableError("GET ...: http_5xx (HTTP 503: loading)"), True),
        (ServerRefusedError("GET ...: http_4xx (HTTP 404: model m not found)"), False),
    ],
)
def test_a_server_that_does_not_answer_at_start_is_an_outage_and_a_refusal_is_config(
    monkeypatch: pytest.MonkeyPatch, error: Exception, *, down: bool
) -> None:
    pytest.importorskip("aiohttp")
    import streamer.clients.oip
    from streamer.core.models.base import ModelOptions, RemoteOptions
    from streamer.core.models.remote import WaitingModel, load

    client = _FakeClient(error)
    monkeypatch.setattr(streamer.clients.oip, "client_for", lambda options, path: client)
    options = ModelOptions(kind="remote", path="m", remote=RemoteOptions(url="http://m:8080"))
    with pytest.raises(ModelLoadError) as raised:
        load(options)
    assert isinstance(raised.value, ModelServerDownError) is down
    assert "model 'm' at model.remote_url=http://m:8080" in str(raised.value)
    if down:
        waiting = raised.value.waiting  # type: ignore[attr-defined]
        assert isinstance(waiting, WaitingModel)
        assert (waiting.loaded, waiting.reachable, waiting.spec.names) == (False, False, ())
        assert client.marked == ["mark_down"]  # the breaker gauge shows the outage
    else:
        assert client.marked == []


def test_a_remote_challenger_uses_the_champions_server_or_its_own_with_its_own_keys() -> None:
    token = "champion-token-1"  # noqa: S105 - test values
    own_token = "challenger-token-2"  # noqa: S105

    def settings(champion: dict[str, object], *challengers: dict[str, object]) -> Any:
        return build_settings(
            {"kafka": KAFKA, "model": champion, "challenger": list(challengers)}, environ={}
        )

    champion = {"kind": "remote", "path": "m", "remote_url": "https://a:1",
                "remote_headers": "X-Team: fraud", "remote_bearer_token": token,
                "remote_timeout_s": 3.0}  # fmt: skip
    same = {"name": "same", "kind": "remote", "path": "c"}
    own = {"name": "own", "kind": "remote", "path": "c", "remote_url": "http://b:2",
           "remote_headers": "X-Team: risk", "remote_bearer_token": own_token,
           "remote_tls_verify": False}  # fmt: skip
    built = settings(champion, same, own)
    inherited = built.challenger_options(built.challengers[0]).remote
    assert inherited == built.model_options().remote  # the champion's server and keys
    separate = built.challenger_options(built.challengers[1]).remote
    assert (separate.url, separate.headers, separate.bearer_token, separate.tls_verify) == (
        "http://b:2", (("X-Team", "risk"),), own_token, False
    )  # fmt: skip
    assert separate.timeout_s == 3.0  # the champion's timeouts, retries and breaker
    assert own_token in secret_values(built)
    assert own_token not in repr(built.challengers[1])
    # A local champion: only a challenger without its own server needs model.remote_url.
    local = {"kind": "linear"}
    assert settings(local, own).challengers[0].remote_url == "http://b:2"
    with pytest.raises(ConfigError, match=r"^config error: model\.remote_url must be"):
        settings(local, same)
    with pytest.raises(ConfigError, match=r"challenger 'own': challenger\.remote_url must be"):
        settings(local, {**own, "remote_url": "b:2"})
    with pytest.raises(ConfigError, match=r"challenger 'own': challenger\.remote_ca_file=/no "):
        settings(local, {**own, "remote_url": "https://b:2", "remote_ca_file": "/no"})
    with pytest.raises(ConfigError, match="'Name: value' pairs"):
        settings(local, {**own, "remote_headers": "X-Team risk"})
    with pytest.raises(ConfigError, match=r"challenger 'same': .* set remote_url too"):
        settings(champion, {**same, "remote_bearer_token": own_token})
    with pytest.raises(ConfigError, match=r"challenger 'lin': .* not 'linear'; remove them"):
        settings(champion, {"name": "lin", "kind": "linear", "remote_url": "http://b:2"})
