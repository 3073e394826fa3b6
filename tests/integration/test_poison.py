"""No record can stop the daemon: every input gets exactly one answer, whatever it is (issue 11).

Two tests against the embedded broker, on both backends:

- a poison corpus: one record of each kind that has broken, or could break, a
  consumer (every dead-letter reason, huge values and keys, many headers,
  pathological JSON) between good events, through the real ``streamer run``
  process, which must keep running, answer each record once and exit 0;
- a property test: hypothesis draws a few hundred records mixing valid,
  mutated and arbitrary ones; an in-process pipeline must answer each of
  them exactly once without an actor restart.

The records are produced with a client whose ``max_request_size`` is 32 MiB;
the embedded Tansu broker accepts records of 10 MB and more (20 MB was checked).
"""

from __future__ import annotations

import hashlib
import random
import re
import signal
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streamer.core import dead_letters as reasons
from streamer.core.demo_data import make_event
from streamer.devtools.broker import free_port
from streamer.devtools.verify import TopicDump
from streamer.settings import to_toml
from streamer.topology import Pipeline

from .helpers import (
    BACKENDS,
    PROCESS_TIMEOUT_S,
    Cluster,
    PipelineStarter,
    Produced,
    running_daemon,
    wait_for,
    wait_until_delivered,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# The defaults of kafka.max_request_bytes and kafka.dead_letter_prefix_bytes.
MAX_REQUEST_BYTES = MiB
PREFIX_BYTES = 4096
# What the test's own producer may send: far above any record of the corpus.
PRODUCE_MAX_BYTES = 32 * MiB
SHUTDOWN_BUDGET_S = 15.0
CLOSE_SLACK_S = 12.0

Headers = list[tuple[str, bytes]]

# The python model raises on a batch that holds this amount, and returns NaN for it.
RAISE_AMOUNT = 31337.25
NAN_AMOUNT = 42424.5
MODEL_SOURCE = f'''\
"""A python-kind model for the poison corpus: a logistic score, cursed on two amounts."""
import numpy as np

FEATURES = [
    "amount", "distance_from_home_km", "transactions_last_hour", "account_age_days",
    "merchant_risk",
]


def score(frame):
    amount = frame["amount"].to_numpy(dtype=float)
    if (amount == {RAISE_AMOUNT!r}).any():
        raise ValueError("amount {RAISE_AMOUNT!r} is cursed")
    z = (
        0.02 * amount
        + 0.01 * frame["distance_from_home_km"].to_numpy(dtype=float)
        + 0.3 * frame["transactions_last_hour"].to_numpy(dtype=float)
        - 0.001 * frame["account_age_days"].to_numpy(dtype=float)
        + 2.0 * frame["merchant_risk"].to_numpy(dtype=float)
        - 3.0
    )
    out = 1.0 / (1.0 + np.exp(-z))
    out[amount == {NAN_AMOUNT!r}] = np.nan
    return out


score.features = FEATURES
'''


@dataclass(frozen=True)
class Case:
    """One record of the corpus and the answer it must get.

    ``reason`` None means a prediction. ``value_cut``/``key_cut``: the dead
    letter keeps only a prefix, with the size and SHA-256 headers.
    """

    name: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    reason: str | None = None
    value_cut: bool = False
    key_cut: bool = False
    timestamp_ms: int | None = None


def _event(rng: random.Random, **changes: object) -> dict[str, Any]:
    event = make_event(rng)
    event.update(changes)
    return event


def _json(rng: random.Random, **changes: object) -> bytes:
    return orjson.dumps(_event(rng, **changes))


def _with_literal(rng: random.Random, feature: str, literal: bytes) -> bytes:
    """A valid event whose ``feature`` is ``literal``, verbatim (maybe not JSON at all)."""
    marker = "@@literal@@"
    return _json(rng, **{feature: marker}).replace(b'"' + marker.encode() + b'"', literal)


def _poison(rng: random.Random) -> list[Case]:
    """Every reason of the table in docs/records.md, and each input issue 11 lists."""
    without_age = _event(rng)
    del without_age["account_age_days"]
    deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    many_fields = _event(rng) | {f"field_{i:05d}": i for i in range(50_000)}
    duplicate_ok = _json(rng, amount=12.5)[:-1] + b',"amount":"lots","amount":48.25}'
    duplicate_bad = _json(rng, amount=12.5)[:-1] + b',"amount":"lots"}'
    return [
        # Every reason of the table in docs/records.md.
        Case("empty value", b"", key=b"empty", reason=reasons.EMPTY_VALUE),
        Case("null value (tombstone)", None, key=b"tombstone", reason=reasons.EMPTY_VALUE),
        Case(
            "2 MB value",
            _json(rng, note="x" * 2_000_000),
            key=b"two-mb",
            reason=reasons.OVERSIZED,
            value_cut=True,
        ),
        Case("not utf-8", b"\xff\xfe not utf-8 \xc3\x28", reason=reasons.NOT_UTF8),
        Case("truncated json", _json(rng)[:40], reason=reasons.INVALID_JSON),
        Case("json array", b"[1, 2, 3]", reason=reasons.NOT_OBJECT),
        Case("json string", b'"just a string"', reason=reasons.NOT_OBJECT),
        Case("missing feature", orjson.dumps(without_age), reason=reasons.MISSING_FEATURE),
        Case("null feature", _json(rng, amount=None), reason=reasons.MISSING_FEATURE),
        Case("string feature", _json(rng, amount="lots"), reason=reasons.NON_NUMERIC_FEATURE),
        Case("array feature", _json(rng, amount=[1.0]), reason=reasons.NON_NUMERIC_FEATURE),
        Case("'NaN' string", _json(rng, amount="NaN"), reason=reasons.NON_FINITE),
        Case("'-inf' string", _json(rng, amount="-inf"), reason=reasons.NON_FINITE),
        Case("model raises", _json(rng, amount=RAISE_AMOUNT), reason=reasons.MODEL_ERROR),
        Case("model returns NaN", _json(rng, amount=NAN_AMOUNT), reason=reasons.MODEL_ERROR),
        # A valid event whose 1.2 MB key is copied into its prediction: over 1 MiB.
        Case(
            "1.2 MB key on a valid event",
            _json(rng),
            key=b"k" * 1_200_000,
            reason=reasons.PRODUCE_REJECTED,
            key_cut=True,
        ),
        # The inputs issue 11 lists.
        Case("200 KB key", _json(rng), key=b"K" * 200_000),
        Case("200 KB key on a bad value", b"[]", key=b"Q" * 200_000, reason=reasons.NOT_OBJECT),
        Case(
            "2 MB value with a 200 KB key",
            _json(rng, note="y" * 2_000_000),
            key=b"W" * 200_000,
            reason=reasons.OVERSIZED,
            value_cut=True,
        ),
        Case(
            "2 MB value with a 1.2 MB key",
            _json(rng, note="z" * 2_000_000),
            key=b"E" * 1_200_000,
            reason=reasons.OVERSIZED,
            value_cut=True,
            key_cut=True,
        ),
        Case(
            "100 headers",
            _json(rng),
            headers=[(f"h{i:03d}", b"v" * 100) for i in range(100)],
        ),
        Case("50,000 fields", orjson.dumps(many_fields)),
        Case("json nested 10,000 deep", deep, reason=reasons.INVALID_JSON),
        Case(
            "10 MB string feature",
            _json(rng, amount="9" * 10_000_000),
            reason=reasons.OVERSIZED,
            value_cut=True,
        ),
        # orjson keeps the last of duplicate keys, as Python's json does.
        Case("duplicate keys, the last valid", duplicate_ok),
        Case(
            "duplicate keys, the last a string",
            duplicate_bad,
            reason=reasons.NON_NUMERIC_FEATURE,
        ),
        Case("NaN literal", _with_literal(rng, "amount", b"NaN"), reason=reasons.INVALID_JSON),
        Case(
            "Infinity literal",
            _with_literal(rng, "amount", b"Infinity"),
            reason=reasons.INVALID_JSON,
        ),
        Case(
            "-Infinity literal",
            _with_literal(rng, "distance_from_home_km", b"-Infinity"),
            reason=reasons.INVALID_JSON,
        ),
        Case("400-digit numeric string", _json(rng, amount="7" * 400), reason=reasons.NON_FINITE),
        # Valid JSON beyond a double's range: read as inf (as Python's json reads it), so
        # the feature is not finite, on the fast and the per-record path alike.
        Case(
            "400-digit number literal",
            _with_literal(rng, "amount", b"7" * 400),
            reason=reasons.NON_FINITE,
        ),
        Case("UTF-8 BOM", b"\xef\xbb\xbf" + _json(rng), reason=reasons.INVALID_JSON),
        # Keys and timestamps of any kind.
        Case("binary key", _json(rng), key=b"\xff\x00\xfe\x22\x5c"),
        Case("timestamp 0", _json(rng), timestamp_ms=0),
        Case("timestamp in 2100", _json(rng), timestamp_ms=4_102_444_800_000),
    ]


def _corpus(good: int, seed: int) -> list[Case]:
    """``good`` valid events with each poison record between two of them, in a random order."""
    rng = random.Random(seed)
    cases = [Case(f"good {i}", _json(rng), key=f"card-{i:03d}".encode()) for i in range(good)]
    poison = _poison(rng)
    rng.shuffle(poison)
    step = good // (len(poison) + 1)
    for index, case in enumerate(poison):
        cases.insert((index + 1) * (step + 1), case)
    return cases


def _produce(
    bootstrap_servers: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Headers, int | None]],
    partitions: int = 1,
) -> list[tuple[int, int]]:
    """Produce (key, value, headers, timestamp), record i to partition i % partitions.

    Returns where each record landed: (partition, offset).
    """
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers.split(","),
        acks="all",
        linger_ms=5,
        max_request_size=PRODUCE_MAX_BYTES,
    )
    try:
        futures = [
            producer.send(
                topic,
                key=key,
                value=value,
                headers=headers,
                partition=index % partitions,
                timestamp_ms=timestamp,
            )
            for index, (key, value, headers, timestamp) in enumerate(records)
        ]
        producer.flush(timeout=PROCESS_TIMEOUT_S)
        landed = [future.get(timeout=PROCESS_TIMEOUT_S) for future in futures]
        return [(metadata.partition, metadata.offset) for metadata in landed]
    finally:
        producer.close(timeout=5)


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the daemon's /metrics: name -> sorted labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def dead_letter_counts_of(
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]],
) -> dict[str, float]:
    """The non-zero ``streamer_dead_letters_total`` series by reason."""
    samples = metrics.get("streamer_dead_letters_total", {})
    return {dict(labels)["reason"]: value for labels, value in samples.items() if value}


def _by_source(
    dump: TopicDump,
) -> dict[tuple[int, int], list[tuple[bytes | None, bytes, dict[str, bytes]]]]:
    """Dead letters grouped by the input (partition, offset) their headers name."""
    found: dict[tuple[int, int], list[tuple[bytes | None, bytes, dict[str, bytes]]]] = {}
    for key, value, headers in dump.records.values():
        named = dict(headers)
        source = (int(named["streamer.source.partition"]), int(named["streamer.source.offset"]))
        found.setdefault(source, []).append((key, value or b"", named))
    return found


def _scored_sources(dump: TopicDump) -> Counter[tuple[int, int]]:
    scored: Counter[tuple[int, int]] = Counter()
    for _key, value, _headers in dump.records.values():
        doc = orjson.loads(value or b"null")
        scored[(doc["partition"], doc["offset"])] += 1
    return scored


def _check_cut(
    field_name: str, original: bytes, kept: bytes | None, named: dict[str, bytes], case: Case
) -> None:
    """A cut field keeps a prefix of at most PREFIX_BYTES and names the original's size and hash."""
    assert named.get(f"streamer.{field_name}.truncated") == b"true", (case.name, named.keys())
    assert named[f"streamer.{field_name}.size"] == str(len(original)).encode(), case.name
    assert (
        named[f"streamer.{field_name}.sha256"] == hashlib.sha256(original).hexdigest().encode()
    ), case.name
    assert kept == original[:PREFIX_BYTES], f"{case.name}: the {field_name} is not its prefix"


def _check_dead_letter(
    case: Case, key: bytes | None, value: bytes, named: dict[str, bytes], topic: str, offset: int
) -> None:
    assert named["streamer.reason"].decode() == case.reason, (case.name, named["streamer.error"])
    assert named["streamer.source.topic"].decode() == topic
    assert named["streamer.error"], case.name
    if case.reason == reasons.PRODUCE_REJECTED:  # the client's own words, either backend's
        assert re.search(rb"too.?large", named["streamer.error"], re.IGNORECASE), named
    stage = {reasons.MODEL_ERROR: "model", reasons.PRODUCE_REJECTED: "produce"}
    assert named["streamer.stage"].decode() == stage.get(case.reason or "", "preprocess")
    if case.value_cut:
        _check_cut("value", case.value or b"", value, named, case)
    else:
        assert "streamer.value.truncated" not in named, case.name
        assert value == (case.value or b""), f"{case.name}: the value was not kept whole"
    if case.key_cut:
        assert case.key is not None
        _check_cut("key", case.key, key, named, case)
    else:
        assert "streamer.key.truncated" not in named, case.name
        assert key == case.key, f"{case.name}: the key was not kept whole"
    size = len(key or b"") + len(value) + sum(len(n) + len(v) for n, v in named.items())
    assert size <= MAX_REQUEST_BYTES, f"{case.name}: a dead letter of {size} bytes"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(240)
def test_the_daemon_answers_every_poison_record_once_and_exits_0(
    cluster: Cluster, tmp_path: Path, backend: str
) -> None:
    topics = cluster.new_topics(partitions=1)
    cases = _corpus(good=60, seed=11)
    offsets = [
        offset
        for _partition, offset in _produce(
            cluster.bootstrap_servers,
            topics.input,
            [(c.key, c.value, c.headers, c.timestamp_ms) for c in cases],
        )
    ]
    at = dict(zip(offsets, cases, strict=True))
    end = max(offsets) + 1
    assert sorted(offsets) == list(range(end)), "one partition, consecutive offsets"

    model_path = tmp_path / "cursed_model.py"
    model_path.write_text(MODEL_SOURCE)
    port = free_port()
    document: dict[str, dict[str, Any]] = {
        "kafka": {**cluster.kafka_section(topics), "client": backend},
        "model": {"kind": "python", "path": f"{model_path}:score", "watch_interval_s": 0.0},
        "batch": {"max_records": 16},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
        "shutdown": {"timeout_s": SHUTDOWN_BUDGET_S},
    }
    config = tmp_path / "poison.toml"
    config.write_text(to_toml(document))
    log_path = tmp_path / "poison.log"
    expected_dead = Counter(c.reason for c in cases if c.reason is not None)

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    with running_daemon(config, log_path) as daemon:

        def committed() -> int | None:
            assert daemon.poll() is None, f"the daemon exited early:\n{log_tail()}"
            return cluster.committed(topics.group, topics.input, 1)[0]

        wait_for(
            lambda: committed() == end,
            PROCESS_TIMEOUT_S,
            f"the committed offset to reach the end ({end})",
            interval_s=0.25,
            describe=log_tail,
        )

        def dead_letter_counts() -> dict[str, float]:
            return dead_letter_counts_of(_scrape(port))

        # Metrics follow the acknowledgements: let them catch up with the commit.
        wait_for(
            lambda: sum(dead_letter_counts().values()) >= sum(expected_dead.values()),
            10,
            "the dead-letter counters to catch up",
            describe=lambda: f"{dead_letter_counts()} of {dict(expected_dead)}",
        )
        metrics = _scrape(port)
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=SHUTDOWN_BUDGET_S + CLOSE_SLACK_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit after SIGTERM:\n{log_tail()}")
    assert code == 0, log_tail()

    restarts = metrics["streamer_actor_restarts_total"]
    assert restarts, "no streamer_actor_restarts_total series"
    assert set(restarts.values()) == {0.0}, restarts
    assert set(metrics["streamer_actor_failures_total"].values()) == {0.0}
    assert dead_letter_counts_of(metrics) == dict(expected_dead)
    cut = sum(1 for c in cases if c.value_cut or c.key_cut)
    assert metrics["streamer_dead_letters_truncated_total"][()] == cut
    assert cluster.committed(topics.group, topics.input, 1) == {0: end}

    outputs = cluster.read(topics.output)
    dead_letters = _by_source(cluster.read(topics.dead_letter))
    scored = _scored_sources(outputs)
    for offset, case in at.items():
        source = (0, offset)
        if case.reason is None:
            assert scored[source] == 1, f"{case.name} @{offset} scored {scored[source]} times"
            assert source not in dead_letters, f"{case.name} @{offset} was dead-lettered too"
            continue
        answers = dead_letters.get(source, [])
        assert len(answers) == 1, f"{case.name} @{offset} got {len(answers)} dead letters"
        assert source not in scored, f"{case.name} @{offset} was scored too"
        _check_dead_letter(case, *answers[0], topic=topics.input, offset=offset)
    assert set(scored) | set(dead_letters) == {(0, offset) for offset in at}
    assert len(outputs) == sum(1 for c in cases if c.reason is None)


# --- the property test -------------------------------------------------------

FEATURES = (
    "amount",
    "distance_from_home_km",
    "transactions_last_hour",
    "account_age_days",
    "merchant_risk",
)
# JSON text put verbatim where a feature's value goes: each one makes the record invalid.
BAD_LITERALS = (b"NaN", b"-Infinity", b"1e400", b"7" * 400, b'"1e999"', b"[", b"{}", b'"\\ud800"')
# Value sizes of a padded valid event: below and above batch.max_record_bytes (1 MiB).
HUGE_SIZES = (300_000, 1_100_000, 2_100_000)


@dataclass(frozen=True)
class Drawn:
    """A drawn record and what is known of its answer: 'scored', a reason, or None (any)."""

    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None
    expect: str | None

    def __repr__(self) -> str:
        # A falsifying example of a few hundred records, some of megabytes: keep it readable.
        def short(data: bytes | None) -> str:
            if data is None or len(data) <= 80:
                return repr(data)
            return f"{data[:60]!r}...({len(data)} bytes)"

        return (
            f"Drawn({self.kind}, key={short(self.key)}, value={short(self.value)}, "
            f"headers={len(self.headers)}, ts={self.timestamp_ms}, expect={self.expect})"
        )


def _valid_event(seed: int) -> dict[str, Any]:
    """The same bytes for the same seed (make_event stamps the wall clock): a stable strategy."""
    return make_event(random.Random(seed)) | {"event_time": 1_764_000_000 + seed % 86_400}


# Valid events are three in ten; the kind of record i is KINDS[(drawn + i) % 10], so that
# even the simplest example (every choice zero) mixes every kind.
KINDS = ("valid", "flip", "brace", "valid", "type", "literal", "valid", "huge", "bytes", "null")


@st.composite
def _values(draw: st.DrawFn, position: int) -> tuple[str, bytes | None, str | None]:
    """(kind, value, expected answer when the key is ordinary: None when it may be any)."""
    kind = KINDS[(draw(st.integers(0, len(KINDS) - 1)) + position) % len(KINDS)]
    event = _valid_event(draw(st.integers(0, 2**32 - 1)))
    value: bytes | None = orjson.dumps(event)
    expect: str | None = None
    if kind == "valid":
        expect = "scored"
    elif kind == "flip":  # a few bytes flipped anywhere
        flipped = bytearray(orjson.dumps(event))
        for _ in range(draw(st.integers(1, 3))):
            flipped[draw(st.integers(0, len(flipped) - 1))] ^= draw(st.integers(1, 255))
        value = bytes(flipped)
    elif kind == "brace":  # the opening or the closing brace dropped, or both
        whole = orjson.dumps(event)
        value = draw(st.sampled_from([whole[1:], whole[:-1], whole[1:-1]]))
        expect = reasons.INVALID_JSON
    elif kind == "type":  # a feature of another JSON type
        event[draw(st.sampled_from(FEATURES))] = draw(
            st.one_of(
                st.none(),
                st.text(max_size=6),
                st.lists(st.integers(-9, 9), max_size=2),
                st.dictionaries(st.text(max_size=2), st.integers(-9, 9), max_size=1),
                st.booleans(),
            )
        )
        value = orjson.dumps(event)
    elif kind == "literal":
        literal = draw(st.sampled_from(BAD_LITERALS))
        value = _with_literal(random.Random(0), draw(st.sampled_from(FEATURES)), literal)
    elif kind == "huge":
        size = draw(st.sampled_from(HUGE_SIZES))
        value = orjson.dumps(event | {"note": "n" * size})
        expect = "scored" if size < MiB else reasons.OVERSIZED
    elif kind == "bytes":
        value = draw(st.binary(max_size=48))
    else:
        value = draw(st.sampled_from([None, b""]))
        expect = reasons.EMPTY_VALUE
    return kind, value, expect


@st.composite
def _record(draw: st.DrawFn, position: int) -> Drawn:
    kind, value, expect = draw(_values(position))
    size = draw(st.integers(0, 99))
    key: bytes | None
    if size < 40:
        key = None
    elif size < 96:
        key = draw(st.binary(max_size=12))
    elif size < 98:
        key = b"K" * 200_000
    else:  # copied into the prediction: over 1 MiB
        key = b"k" * 1_200_000
        if expect == "scored":
            expect = reasons.PRODUCE_REJECTED
    if key is None and value is None:
        key = b""  # a client refuses a record with neither (a tombstone has a key)
    headers: Headers = []
    if draw(st.integers(0, 9)) == 0:
        headers = draw(
            st.lists(
                st.tuples(st.text(st.characters(codec="utf-8"), max_size=6), st.binary(max_size=8)),
                max_size=3,
            )
        )
    timestamp = draw(st.sampled_from([None, None, None, 0, 4_102_444_800_000]))
    return Drawn(kind, key, value, headers, timestamp, expect)


@st.composite
def _records(draw: st.DrawFn, min_size: int, max_size: int) -> list[Drawn]:
    return [draw(_record(i)) for i in range(draw(st.integers(min_size, max_size)))]


def _pipeline_restarts(registry: Any) -> dict[str, float]:
    return {
        sample.labels["actor"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "streamer_actor_restarts_total"
    }


class DrawnRun:
    """One pipeline for every example of a backend, started on the first example's records.

    The first example is a backlog read at start, the later ones arrive while it runs;
    one pipeline saves a group join and a stop per example. It must stop with exit 0.
    """

    partitions = 2

    def __init__(self, cluster: Cluster, start_pipeline: PipelineStarter, backend: str) -> None:
        self.cluster = cluster
        self.topics = cluster.new_topics(partitions=self.partitions, output_partitions=1)
        self._start_pipeline = start_pipeline
        self._backend = backend
        self.pipeline: Pipeline | None = None
        self.produced: Produced = {}  # every record of every example so far

    def score(self, drawn: list[Drawn]) -> dict[tuple[int, int], Drawn]:
        """Produce ``drawn``; return where each landed once all are answered and committed."""
        landed = _produce(
            self.cluster.bootstrap_servers,
            self.topics.input,
            [(d.key, d.value, d.headers, d.timestamp_ms) for d in drawn],
            partitions=self.partitions,
        )
        at = dict(zip(landed, drawn, strict=True))
        self.produced |= {where: (d.key, d.value or b"") for where, d in at.items()}
        if self.pipeline is None:
            self.pipeline = self._start_pipeline(
                self.cluster.settings(
                    self.topics,
                    kafka={"client": self._backend},
                    batch={"max_records": 64},
                    # The breaker is not under test: most drawn records are dead letters.
                    supervision={"dead_letter_max_ratio": 1.0},
                )
            )
        wait_until_delivered(self.pipeline, self.topics.input, self.produced)
        return at


@pytest.fixture
def drawn_run(
    cluster: Cluster, start_pipeline: PipelineStarter, backend: str
) -> Iterator[DrawnRun]:
    run = DrawnRun(cluster, start_pipeline, backend)
    yield run
    if run.pipeline is not None:
        report = run.pipeline.stop()
        assert report.exit_code == 0, run.pipeline.failure


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(120)
@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a shrink would rerun the broker
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # drawn_run: one pipeline for every example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(drawn=_records(min_size=200, max_size=300))
def test_every_drawn_record_gets_exactly_one_answer_and_no_actor_restarts(
    drawn_run: DrawnRun, drawn: list[Drawn]
) -> None:
    at = drawn_run.score(drawn)
    assert drawn_run.pipeline is not None
    restarts = _pipeline_restarts(drawn_run.pipeline.registry)
    assert restarts, "no streamer_actor_restarts_total series"
    assert set(restarts.values()) == {0.0}, restarts

    cluster, topics = drawn_run.cluster, drawn_run.topics
    scored = _scored_sources(cluster.read(topics.output))
    dead_letters = _by_source(cluster.read(topics.dead_letter))
    unexpected = (set(scored) | set(dead_letters)) - set(drawn_run.produced)
    assert not unexpected, f"answers for records never produced: {sorted(unexpected)[:5]}"
    for where, d in at.items():
        letters = dead_letters.get(where, [])
        answers = scored[where] + len(letters)
        assert answers == 1, f"{d.kind} record at {where} got {answers} answers: {d}"
        if d.expect == "scored":
            assert scored[where] == 1, f"{where}: {letters[0][2]['streamer.error']!r}"
        elif d.expect is not None:
            assert letters, f"{d.kind} record at {where} was scored, expected {d.expect}"
            assert letters[0][2]["streamer.reason"].decode() == d.expect, d.kind
        if letters:
            key, value, named = letters[0]
            for name, original, kept in (("value", d.value or b"", value), ("key", d.key, key)):
                if named.get(f"streamer.{name}.truncated") == b"true":
                    assert original is not None
                    digest = hashlib.sha256(original).hexdigest().encode()
                    assert named[f"streamer.{name}.sha256"] == digest
                    assert named[f"streamer.{name}.size"] == str(len(original)).encode()
                    assert original.startswith(kept or b"")
                else:
                    assert kept == original, f"{where}: the dead letter's {name} was changed"
