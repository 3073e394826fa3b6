"""Typed, frozen settings, read and validated once at start.

Sources, lowest to highest precedence: defaults, the TOML file, environment
variables ``STREAMER_<SECTION>__<KEY>``, and CLI flags. Every error is one line
that names the key (``kafka.input_topic``) and leads to exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.core.models import KINDS, METHODS, PROBABILITY_MODES, ModelOptions, RemoteOptions
from streamer.core.state.declared import RECORD_KEY, StateFeature, parse_features
from streamer.core.state.limits import entries_that_fit, record_bytes
from streamer.errors import ConfigError

ENV_PREFIX = "STREAMER_"


def _doc(
    text: str,
    *,
    choices: tuple[str, ...] | None = None,
    positive: bool = False,
    non_negative: bool = False,
    **kwargs: Any,
) -> Any:
    """A field with its one-line doc and the constraints that :func:`_check_value` applies."""
    metadata = {"doc": text, "choices": choices, "positive": positive, "non_negative": non_negative}
    return field(metadata=metadata, **kwargs)


@dataclass(frozen=True)
class KafkaSettings:
    """Where to read, where to write, and how the Kafka clients behave."""

    bootstrap_servers: str = _doc("Comma-separated host:port list.", default="127.0.0.1:9092")
    client: str = _doc(
        "Kafka client library: 'kafka-python' (pure Python) or 'confluent' (librdkafka, "
        "several times faster; pip install 'streamer[confluent]').",
        default="kafka-python",
    )
    input_topic: str = _doc("Topic of JSON events to score (required).", default="")
    output_topic: str = _doc("Topic that receives one prediction per event (required).", default="")
    dead_letter_topic: str = _doc(
        "Topic for records that cannot be scored; empty means '<input_topic>.dlq'.", default=""
    )
    group_id: str = _doc("Consumer group id.", default="streamer")
    client_id: str = _doc("Client id reported to the broker.", default="streamer")
    auto_offset_reset: str = _doc(
        "Where a group with no committed offset starts: 'earliest' or 'latest'.",
        default="earliest",
    )
    session_timeout_s: float = _doc("Group session timeout.", default=10.0)
    heartbeat_interval_s: float = _doc("Group heartbeat interval.", default=3.0)
    max_poll_interval_s: float = _doc("Longest gap between polls before eviction.", default=300.0)
    max_poll_records: int = _doc("Most records one poll returns.", default=5000)
    fetch_max_wait_s: float = _doc(
        "Longest the broker holds a fetch for more data. Apache Kafka answers as soon as data "
        "is there, so this only paces the fetches of idle partitions; Tansu holds every fetch "
        "this long, data or not, so it is latency on every hop there (docs/performance.md).",
        default=0.005,
    )
    linger_s: float = _doc("Producer batching delay.", default=0.005)
    producer_batch_bytes: int = _doc("Producer batch size per partition.", default=131072)
    max_request_bytes: int = _doc(
        "Largest record the producer sends (kafka-python max_request_size, librdkafka "
        "message.max.bytes); keep it at or below the broker's message.max.bytes. A larger "
        "output becomes a 'produce_rejected' dead letter; a larger dead letter is cut.",
        default=1048576,
    )
    dead_letter_prefix_bytes: int = _doc(
        "When a dead letter would be larger than max_request_bytes, its value (and, if still "
        "too large, its key) is cut to at most this many leading bytes; 0 keeps none. "
        "Headers then give the original size and SHA-256.",
        default=4096,
    )
    delivery_timeout_s: float = _doc("Give up on an output record after this long.", default=120.0)
    bootstrap_timeout_s: float = _doc(
        "How long a client waits for the broker at start.", default=30.0
    )
    commit_interval_s: float = _doc(
        "Time between two offset commits while the watermark advances (kafka.commit_early "
        "commits sooner). After a crash the records acknowledged since the last commit are "
        "scored again, beside the work in flight. 0 commits after every poll that advanced the "
        "watermark (a few hundred commits a second), which the broker serves beside every "
        "record's fetch and produce (docs/performance.md).",
        default=1.0,
    )
    commit_early: bool = _doc(
        "Also commit before commit_interval_s is over: once the watermark passed a full "
        "in-flight window since the last commit (batch.max_in_flight x batch.max_records "
        "records, or batch.max_in_flight_bytes), and at once when the pipeline is quiet "
        "(nothing in flight or buffered, no record for batch.max_wait_s), so that a crash "
        "scores again at most twice what the in-flight window holds. false commits on the "
        "interval only (docs/delivery.md).",
        default=True,
    )
    security_protocol: str = _doc(
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", default="PLAINTEXT"
    )
    sasl_mechanism: str = _doc("PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is on.", default="")
    sasl_username: str = _doc("SASL user name.", default="")
    sasl_password: str = _doc("SASL password; never logged.", default="", repr=False)
    propagate_headers: str = _doc(
        "Input headers copied, bytes unchanged, to each record's output and dead letter: "
        "comma-separated names (or a TOML list), '*' for all, '' for none.",
        default="traceparent",
    )

    @property
    def dead_letter_topic_name(self) -> str:
        """The dead-letter topic, defaulted from the input topic."""
        return self.dead_letter_topic or f"{self.input_topic}.dlq"


@dataclass(frozen=True)
class BatchSettings:
    """How records become micro-batches, and how many may be in flight."""

    max_records: int = _doc("Most records in one micro-batch.", default=1000)
    max_wait_s: float = _doc("Longest a partial micro-batch waits for more records.", default=0.05)
    max_in_flight: int = _doc(
        "Most batches between consume and commit; above it partitions are paused.", default=16
    )
    max_in_flight_bytes: int = _doc(
        "Most bytes of record keys and values between consume and commit; above it partitions "
        "are paused, and a micro-batch is cut at max_in_flight_bytes / max_in_flight bytes. "
        "A single larger record still passes, alone. The consumer's fetch budget is 1/16 of it "
        "(1 to 50 MiB).",
        default=67108864,
    )
    max_record_bytes: int = _doc("Larger values are dead-lettered as 'oversized'.", default=1048576)
    eager_when_idle: bool = _doc(
        "Send partial micro-batches at once while fewer than max_in_flight/4 batches wait in "
        "the stages (not yet produced) and fewer than max_in_flight/2 are in flight, instead "
        "of waiting max_wait_s: a quiet stream is scored without the wait, a busy one still "
        "fills its batches.",
        default=True,
    )


@dataclass(frozen=True)
class PreprocessSettings:
    """Decoding, validation and fixed-statistics standardization."""

    workers: int = _doc(
        "Number of preprocessor actors. They share the GIL: more than 1 only adds hops "
        "(docs/performance.md); use run --workers N processes for more cores.",
        default=1,
    )
    missing: str = _doc(
        "Missing or invalid feature: 'dlq' (dead-letter it), 'drop' (count and skip) "
        "or 'impute' (use the fitted mean).",
        default="dlq",
    )
    standardize: bool = _doc(
        "Standardize with fitted statistics: the linear model's own, or stats_path for the "
        "other kinds (a model that scales inside, e.g. a Pipeline with a StandardScaler, gets "
        "raw values).",
        default=True,
    )
    features: str = _doc(
        "Comma-separated feature names; empty means the model's own (linear file, sklearn "
        "feature_names_in_, ONNX input names) or the stats file's. Checked against the model.",
        default="",
    )
    stats_path: str = _doc(
        "JSON file of fitted mean and std per feature (from `streamer fit-stats`); empty means "
        "none (the linear model carries its own).",
        default="",
    )
    paths: dict[str, Any] = _doc(  # noqa: RUF009 - a default_factory, not a shared dict
        "Table [preprocess.paths] of feature name = path into the record ('payment.amount', "
        "or a list of keys for keys that contain dots); a dotted feature name is a path "
        "without it.",
        default_factory=dict,
    )


@dataclass(frozen=True)
class FormatSettings:
    """The record formats read and written, and the Schema Registry (docs/formats.md)."""

    input: str = _doc(
        "Input record format: 'json' (a JSON object per record), or 'avro', 'protobuf' or "
        "'json_schema' in the Confluent wire format (schema id in each record).",
        default="json",
        choices=("json", "avro", "protobuf", "json_schema"),
    )
    output: str = _doc(
        "Output record format: 'json', or 'avro' (Confluent wire format; the schema is "
        "registered, or looked up, under output_subject).",
        default="json",
        choices=("json", "avro"),
    )
    output_subject: str = _doc(
        "Subject of the Avro output schema; empty means TopicNameStrategy: "
        "'<kafka.output_topic>-value'.",
        default="",
    )
    registry_url: str = _doc(
        "Schema Registry URL(s), comma-separated; required for the registry formats.",
        default="",
    )
    registry_basic_auth: str = _doc(
        "Schema Registry basic auth as 'user:password'; never logged.", default="", repr=False
    )
    registry_bearer_token: str = _doc(
        "Schema Registry bearer token (instead of basic auth); never logged.",
        default="",
        repr=False,
    )
    registry_ca_location: str = _doc(
        "CA certificate file (PEM) to verify an https Schema Registry; empty: the system's.",
        default="",
    )
    registry_cache_size: int = _doc(
        "Most schema ids whose parsed schema is kept; each is fetched once.",
        default=1000,
        positive=True,
    )
    registry_timeout_s: float = _doc(
        "Timeout of one Schema Registry request.", default=10.0, positive=True
    )
    registry_retry_s: float = _doc(
        "While the Schema Registry is unreachable, ask again after this long (records whose "
        "schema is not cached wait; none is dead-lettered for it).",
        default=1.0,
        positive=True,
    )


@dataclass(frozen=True)
class ModelSettings:
    """Which model scores the batches."""

    kind: str = _doc(
        "Model kind: 'linear' (JSON weights), 'sklearn' (joblib or pickle file), 'onnx' "
        "(onnxruntime), 'python' (a callable taking a DataFrame), 'xgboost' (.json/.ubj "
        "booster), 'lightgbm' (model.txt), 'mlflow' (a model directory or models:/, runs:/ "
        "URI) or 'remote' (an Open Inference Protocol server: model.remote_url).",
        default="linear",
        choices=KINDS,
    )
    path: str = _doc(
        "Model file; for kind 'python', 'package.module:callable' or 'file.py:callable'; for "
        "kind 'remote', the model's name on the server, or 'name/versions/<v>'; "
        "empty means the packaged demo model (linear).",
        default="",
    )
    workers: int = _doc(
        "Number of model actors. Raise it for a model that releases the GIL while it "
        "predicts (onnxruntime, a large numpy or sklearn model); a light model is fastest with 1.",
        default=1,
        positive=True,
    )
    name: str = _doc(
        "Model name in every output and in streamer_model_info; empty means the linear file's "
        "'name', else the file or callable name.",
        default="",
    )
    version: str = _doc(
        "Model version; empty means the linear file's 'version', else the first 12 hex digits "
        "of the file's SHA-256.",
        default="",
    )
    method: str = _doc(
        "sklearn output: 'auto' (predict_proba when the model has it, else predict), "
        "'predict', 'predict_proba', 'decision_function' or 'score_samples'.",
        default="auto",
        choices=METHODS,
    )
    probabilities: str = _doc(
        "Class probabilities (sklearn predict_proba, ONNX 'probabilities'): 'positive' (one "
        "'score', the last class of a binary model) or 'all' (one 'proba_<class>' per class).",
        default="positive",
        choices=PROBABILITY_MODES,
    )
    outputs: str = _doc(
        "ONNX: comma-separated outputs to write, one field each; empty means 'probabilities' "
        "when the model has it, else its first output. Remote: the output tensors to ask for "
        "(e.g. 'predict_proba' for MLServer's scikit-learn runtime); empty: the server's default.",
        default="",
    )
    chunk_rows: int = _doc(
        "Rows per model call (sklearn, onnx, python): batches are cut and padded to exactly "
        "this many, so that no prediction depends on the batch size; 0 passes batches as "
        "they are.",
        default=1000,
        non_negative=True,
    )
    watch_interval_s: float = _doc(
        "How often to check the model file for a change to hot-reload; 0 disables (SIGHUP "
        "still reloads).",
        default=1.0,
        non_negative=True,
    )
    explain_top_k: int = _doc(
        "Reason codes: each output's 'reasons' lists the k features with the largest "
        "contributions (TreeSHAP for xgboost/lightgbm, coefficient x standardized value for "
        "linear and linear sklearn pipelines); 0 is off.",
        default=0,
        non_negative=True,
    )
    tracking_uri: str = _doc(
        "MLflow tracking/registry URI for kind 'mlflow' with a models:/ or runs:/ path; empty "
        "means MLFLOW_TRACKING_URI. With models:/name@alias the alias is polled every "
        "watch_interval_s and a moved alias hot-reloads.",
        default="",
    )
    remote_url: str = _doc(
        "Kind 'remote': the Open Inference Protocol (V2) server, 'http(s)://host:port' "
        "(KServe, MLServer, Triton); a remote challenger uses it unless it names its own.",
        default="",
    )
    remote_headers: str = _doc(
        "Kind 'remote': extra HTTP headers, 'Name: value' pairs separated by ';' (not "
        "Authorization: use remote_bearer_token).",
        default="",
    )
    remote_bearer_token: str = _doc(
        "Kind 'remote': sent as 'Authorization: Bearer <token>'; best set from the environment "
        "(STREAMER_MODEL__REMOTE_BEARER_TOKEN); never shown nor logged.",
        default="",
        repr=False,
    )
    remote_tls_verify: bool = _doc(
        "Kind 'remote': verify an https server's certificate (turn off only for tests).",
        default=True,
    )
    remote_ca_file: str = _doc(
        "Kind 'remote': CA certificate file (PEM) to verify an https server; empty: the system's.",
        default="",
    )
    remote_timeout_s: float = _doc(
        "Kind 'remote': one request's timeout; a timed-out request is retried.",
        default=10.0,
        positive=True,
    )
    max_concurrent_requests: int = _doc(
        "Kind 'remote': batches in flight to the server at once (per model, shared by the "
        "model actors); keep batch.max_in_flight above it.",
        default=4,
        positive=True,
    )
    remote_datatype: str = _doc(
        "Kind 'remote': the input tensor's type, 'FP64' (exact) or 'FP32'.",
        default="FP64",
        choices=("FP64", "FP32"),
    )
    remote_backoff_initial_s: float = _doc(
        "Kind 'remote': first retry's backoff ceiling (doubling, full jitter) after a "
        "connection error, a timeout, 429 or 5xx.",
        default=0.1,
        positive=True,
    )
    remote_backoff_max_s: float = _doc(
        "Kind 'remote': the largest retry backoff.", default=5.0, positive=True
    )
    remote_breaker_failures: int = _doc(
        "Kind 'remote': consecutive failed requests that open the circuit breaker: the pipeline "
        "pauses (readiness false) until the model's ready endpoint answers.",
        default=3,
        positive=True,
    )
    remote_probe_interval_s: float = _doc(
        "Kind 'remote': how often an open breaker asks the model's ready endpoint.",
        default=1.0,
        positive=True,
    )


@dataclass(frozen=True)
class SupervisionSettings:
    """Restarts of failed actors and the dead-letter circuit breaker."""

    max_restarts: int = _doc(
        "Most actor restarts within restart_window_s; one more stops the pipeline (exit 1).",
        default=5,
    )
    restart_window_s: float = _doc("The window of max_restarts.", default=60.0)
    backoff_initial_s: float = _doc(
        "Delay before the first restart; doubles each time.", default=0.2
    )
    backoff_max_s: float = _doc("Longest delay before a restart.", default=5.0)
    dead_letter_max_ratio: float = _doc(
        "Stop (exit 1) when dead letters exceed this share of the last window; 1 disables.",
        default=0.5,
    )
    dead_letter_window_records: int = _doc(
        "Records in the dead-letter ratio window (judged once it is full).", default=1000
    )
    broker_retry_s: float = _doc(
        "Retry interval while the broker is unreachable at start (0: fail at once).", default=5.0
    )
    on_unanswerable: str = _doc(
        "A record whose dead letter the broker refuses even in its minimal form (headers "
        "only): 'stop' (exit 1 naming its offset; nothing is committed past it) or 'skip' "
        "(commit past it, count it in streamer_records_unanswerable_total, log it at ERROR).",
        default="stop",
    )


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint."""

    enabled: bool = _doc("Serve /metrics over HTTP.", default=True)
    host: str = _doc("Address the metrics server binds.", default="0.0.0.0")  # noqa: S104
    port: int = _doc("Port of /metrics; 0 picks a free port.", default=9400)


@dataclass(frozen=True)
class MonitoringSettings:
    """Model health: live drift against a reference profile (docs/model-health.md)."""

    profile_path: str = _doc(
        "Reference profile from `streamer profile`; empty disables the drift gauges. Its "
        "features must be the model's (exit 2 otherwise).",
        default="",
    )
    window_records: int = _doc(
        "The drift gauges cover the last this many records.", default=10000, positive=True
    )
    window_s: float = _doc(
        "When > 0, the drift gauges also forget records older than this.",
        default=0.0,
        non_negative=True,
    )
    threshold: float = _doc(
        "The decision threshold on the score (challenger flip rate).", default=0.5
    )


@dataclass(frozen=True)
class ChallengerSettings:
    """One ``[[challenger]]`` table: a shadow model scored after the champion.

    The model keys mean what they mean in ``[model]``; the features and
    standardization are the champion's ``[preprocess]`` ones.
    """

    name: str = _doc(
        "Challenger name in its outputs and metric labels (required, unique).", default=""
    )
    output_topic: str = _doc(
        "Topic of the challenger's predictions; empty writes none (agreement metrics only, "
        "which costs the champion less: docs/model-health.md).",
        default="",
    )
    kind: str = _doc("Model kind, as model.kind.", default="linear", choices=KINDS)
    path: str = _doc("Model file, as model.path (empty: the packaged demo model).", default="")
    version: str = _doc("Model version, as model.version.", default="")
    method: str = _doc("sklearn output, as model.method.", default="auto", choices=METHODS)
    probabilities: str = _doc(
        "Class probabilities, as model.probabilities.",
        default="positive",
        choices=PROBABILITY_MODES,
    )
    outputs: str = _doc("ONNX outputs, as model.outputs.", default="")
    chunk_rows: int = _doc(
        "Rows per model call, as model.chunk_rows.", default=1000, non_negative=True
    )
    remote_url: str = _doc(
        "Kind 'remote': this challenger's own server; empty uses model.remote_url with the "
        "champion's headers, token and TLS keys. A challenger with its own server gets none of "
        "them: set its remote_headers, remote_bearer_token, remote_tls_verify, remote_ca_file.",
        default="",
    )
    remote_headers: str = _doc(
        "With remote_url: extra HTTP headers, as model.remote_headers.", default=""
    )
    remote_bearer_token: str = _doc(
        "With remote_url: the bearer token, as model.remote_bearer_token; never shown nor logged.",
        default="",
        repr=False,
    )
    remote_tls_verify: bool = _doc(
        "With remote_url: verify an https server's certificate.", default=True
    )
    remote_ca_file: str = _doc(
        "With remote_url: CA certificate file (PEM); empty: the system's.", default=""
    )
    max_pending_batches: int = _doc(
        "Batches waiting for this challenger at most; a batch beyond is skipped (counted in "
        "streamer_challenger_batches_total{result='skipped'}), so a slow challenger never "
        "slows the champion.",
        default=2,
        positive=True,
    )


@dataclass(frozen=True)
class StateSettings:
    """Per-key window features: the policy of every ``[[state.features]]`` table (docs/state.md)."""

    allowed_lateness_s: float = _doc(
        "A record whose event time is more than this before the newest time of its key is "
        "dead-lettered as 'late' (the state is unchanged); an earlier out-of-order record is "
        "applied.",
        default=60.0,
        non_negative=True,
    )
    dir: str = _doc(
        "Directory of the RocksDB state stores (pip install 'streamer[state]'); empty keeps "
        "state in memory. `streamer features` puts a file's state in a fresh subdirectory, "
        "deleted at the end.",
        default="",
    )
    key_ttl_s: float = _doc(
        "A key with no record for this long in partition time (the newest event time applied "
        "to the partition) reads as empty and is deleted; 0 means its largest window plus "
        "allowed_lateness_s.",
        default=0.0,
        non_negative=True,
    )
    changelog_topic: str = _doc(
        "Compacted topic that makes the state durable (as many partitions as the input); empty "
        "means '<group_id>.<input_topic>.state-<fingerprint>-changelog', so a new declaration "
        "gets a new, clean changelog.",
        default="",
    )
    changelog_interval_s: float = _doc(
        "How long a partition's state changes are gathered before they go to the changelog, "
        "each key once with its newest value; an input offset is committed only once its "
        "changes are acknowledged there, so commits trail by up to this much. 0 sends each "
        "batch's changes with its answers.",
        default=1.0,
        non_negative=True,
    )
    log_features: bool = _doc(
        "Write the computed state features into each output document (and into the "
        "'streamer.state_features' header of a dead letter whose features were computed).",
        default=False,
    )
    max_entries_per_key: int = _doc(
        "Most window entries one key holds: a record that would add one more is dead-lettered "
        "as 'state_too_large' and the state is unchanged (a key's state is one changelog "
        "record). 0 means the most whose record surely fits kafka.max_request_bytes; a larger "
        "value stops the start (docs/state.md).",
        default=0,
        non_negative=True,
    )
    max_text_bytes: int = _doc(
        "Longest key, and value a distinct_count reads as text, in UTF-8 bytes: a record with "
        "a longer one is dead-lettered as 'state_too_large'.",
        default=256,
        positive=True,
    )


@dataclass(frozen=True)
class ShutdownSettings:
    """Graceful shutdown."""

    timeout_s: float = _doc("Budget to drain, flush, commit and close on SIGTERM.", default=30.0)


@dataclass(frozen=True)
class LabelsSettings:
    """Delayed labels: how a label finds its prediction, and the quality window (docs/labels.md).

    ``streamer run`` consumes ``topic`` (when set) and keeps the prediction
    ledger in ``ledger_topic``; ``streamer evaluate`` reads the rest for a backtest.
    """

    topic: str = _doc(
        "Topic of the labels that `run` consumes; empty: no labels. It must have the input's "
        "partition count, a label on the partition of its record (co-partitioned).",
        default="",
    )
    ledger_topic: str = _doc(
        "Compacted topic that makes the prediction ledger durable (as many partitions as the "
        "input); empty means '<group_id>.<input_topic>.ledger-changelog'.",
        default="",
    )
    id_field: str = _doc(
        "Field path of the id in the label and the scored record ('$key': the record key); "
        "empty joins by the source coordinates (topic, partition, offset) of the outputs.",
        default="",
    )
    value_field: str = _doc(
        "Field of the label's value: 0/1 or true/false (classification), a number (regression).",
        default="label",
    )
    time_field: str = _doc(
        "Field of the label's time (epoch ms or ISO-8601); empty: none, so no label latency "
        "and no horizon check.",
        default="",
    )
    task: str = _doc(
        "What the labels are.", default="classification", choices=("classification", "regression")
    )
    score_field: str = _doc(
        "Field of the output document that holds the score the labels are compared with.",
        default="score",
    )
    horizon_s: float = _doc(
        "A prediction waits this long for its label; a later label is 'past_horizon', and an "
        "unlabelled prediction then counts as expired.",
        default=30 * 86400.0,
        positive=True,
    )
    window_records: int = _doc(
        "The metrics cover the joined records with the latest prediction times, at most this many.",
        default=10000,
        positive=True,
    )
    window_s: float = _doc(
        "When > 0, the metrics also leave out records predicted more than this before the "
        "newest one.",
        default=0.0,
        non_negative=True,
    )
    calibration_buckets: int = _doc(
        "Buckets of equal width in [0, 1] of the calibration histogram.", default=10, positive=True
    )


@dataclass(frozen=True)
class Settings:
    """The whole configuration: one section per stage."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    supervision: SupervisionSettings = field(default_factory=SupervisionSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    format: FormatSettings = field(default_factory=FormatSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    state: StateSettings = field(default_factory=StateSettings)
    labels: LabelsSettings = field(default_factory=LabelsSettings)
    challengers: tuple[ChallengerSettings, ...] = ()
    state_features: tuple[StateFeature, ...] = ()
    """The ``[[state.features]]`` tables, parsed (core/state/declared.py)."""

    def challenger_options(self, challenger: ChallengerSettings) -> ModelOptions:
        """The loader's options for one challenger: its model keys, the champion's preprocessing.

        The champion's ``model.tracking_uri`` stays, so that a challenger may be
        ``models:/name@challenger`` in the same registry; it gives no reason codes.
        A remote challenger uses the champion's server and its headers, token and
        TLS keys, unless it names its own ``remote_url``: then its own keys, so that
        a token is only ever sent to the server it was given for. The timeouts,
        retries, breaker and concurrency are the champion's either way.
        """
        c = challenger
        champion = self.model_options()
        remote = champion.remote
        if c.remote_url:
            remote = dataclasses.replace(
                remote,
                url=c.remote_url,
                headers=remote_headers(c.remote_headers),
                bearer_token=c.remote_bearer_token,
                tls_verify=c.remote_tls_verify,
                ca_file=c.remote_ca_file,
            )
        return dataclasses.replace(
            champion,
            kind=c.kind,
            path=c.path,
            name=c.name,
            version=c.version,
            method=c.method,
            probabilities=c.probabilities,
            outputs=_split_names(c.outputs),
            chunk_rows=c.chunk_rows,
            explain_top_k=0,
            remote=remote,
        )

    def model_options(self) -> ModelOptions:
        """What the model loader reads of ``[model]`` and ``[preprocess]``."""
        m, p = self.model, self.preprocess
        return ModelOptions(
            kind=m.kind,
            path=m.path,
            name=m.name,
            version=m.version,
            method=m.method,
            probabilities=m.probabilities,
            outputs=_split_names(m.outputs),
            chunk_rows=m.chunk_rows,
            features=_split_names(p.features),
            stats_path=p.stats_path,
            standardize=p.standardize,
            missing=p.missing,
            explain_top_k=m.explain_top_k,
            tracking_uri=m.tracking_uri,
            remote=RemoteOptions(
                url=m.remote_url,
                headers=remote_headers(m.remote_headers),
                bearer_token=m.remote_bearer_token,
                tls_verify=m.remote_tls_verify,
                ca_file=m.remote_ca_file,
                timeout_s=m.remote_timeout_s,
                max_concurrent_requests=m.max_concurrent_requests,
                datatype=m.remote_datatype,
                backoff_initial_s=m.remote_backoff_initial_s,
                backoff_max_s=m.remote_backoff_max_s,
                breaker_failures=m.remote_breaker_failures,
                probe_interval_s=m.remote_probe_interval_s,
            ),
        )


def remote_headers(text: str) -> tuple[tuple[str, str], ...]:
    """``model.remote_headers`` ('Name: value; Name: value') as pairs.

    Raises:
        ConfigError: A pair has no name, or sets Authorization.
    """
    pairs = []
    for part in text.split(";"):
        if not part.strip():
            continue
        name, colon, value = part.partition(":")
        name = name.strip()
        if not colon or not name or any(c.isspace() for c in name):
            msg = (
                "model.remote_headers must be 'Name: value' pairs separated by ';', "
                f"got {part.strip()!r}"
            )
            raise ConfigError(msg)
        if name.lower() == "authorization":
            msg = (
                "model.remote_headers must not set Authorization (it would be shown and "
                "logged): put the token in model.remote_bearer_token"
            )
            raise ConfigError(msg)
        pairs.append((name, value.strip()))
    return tuple(pairs)


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


SECTIONS: dict[str, type] = {
    "kafka": KafkaSettings,
    "batch": BatchSettings,
    "preprocess": PreprocessSettings,
    "model": ModelSettings,
    "supervision": SupervisionSettings,
    "metrics": MetricsSettings,
    "shutdown": ShutdownSettings,
    "format": FormatSettings,
    "monitoring": MonitoringSettings,
    "state": StateSettings,
    "labels": LabelsSettings,
}

# The constraints of the options that do not carry them on their field yet (see _doc).
_CHOICES: dict[str, tuple[str, ...]] = {
    "kafka.client": ("kafka-python", "confluent"),
    "kafka.auto_offset_reset": ("earliest", "latest"),
    "kafka.security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "kafka.sasl_mechanism": ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    "preprocess.missing": ("dlq", "drop", "impute"),
    "supervision.on_unanswerable": ("stop", "skip"),
}
_POSITIVE = {
    "batch.max_records",
    "batch.max_in_flight",
    "batch.max_record_bytes",
    "batch.max_in_flight_bytes",
    "kafka.max_request_bytes",
    "preprocess.workers",
    "kafka.max_poll_records",
    "kafka.producer_batch_bytes",
    "kafka.session_timeout_s",
    "kafka.heartbeat_interval_s",
    "kafka.max_poll_interval_s",
    "kafka.delivery_timeout_s",
    "kafka.bootstrap_timeout_s",
    "shutdown.timeout_s",
    "supervision.restart_window_s",
    "supervision.dead_letter_max_ratio",
    "supervision.dead_letter_window_records",
}
_NON_NEGATIVE = {
    "kafka.commit_interval_s",
    "kafka.dead_letter_prefix_bytes",
    "supervision.max_restarts",
    "supervision.backoff_initial_s",
    "supervision.backoff_max_s",
    "supervision.broker_retry_s",
    "batch.max_wait_s",
    "kafka.fetch_max_wait_s",
    "kafka.linger_s",
    "metrics.port",
}
_REQUIRED = ("kafka.input_topic", "kafka.output_topic")


def field_docs(section: type) -> list[tuple[str, str, Any, str]]:
    """Return (name, type, default, doc) for each option of a section, for the reference."""
    hints = typing.get_type_hints(section)
    rows = []
    for f in dataclasses.fields(section):
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append((f.name, hints[f.name].__name__, default, f.metadata.get("doc", "")))
    return rows


_SECRET_KEYS = {
    "kafka.sasl_password",
    "format.registry_basic_auth",
    "format.registry_bearer_token",
    "model.remote_bearer_token",
}


def is_secret(dotted: str) -> bool:
    """True for a key whose value is never shown nor logged (``kafka.sasl_password``, ...)."""
    return dotted in _SECRET_KEYS


def secret_values(settings: Settings) -> tuple[str, ...]:
    """The values of the secret keys, for the log filter to mask (a basic auth's password too)."""
    values = [
        getattr(getattr(settings, section), key)
        for section, _, key in (dotted.partition(".") for dotted in sorted(_SECRET_KEYS))
    ]
    values.append(settings.format.registry_basic_auth.partition(":")[2])
    values.extend(c.remote_bearer_token for c in settings.challengers)
    return tuple(values)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_PARSERS: dict[type, Any] = {
    bool: _parse_bool, int: int, float: float, str: str, dict: json.loads
}  # fmt: skip


def _coerce(key: str, expected: type, value: Any, *, from_text: bool) -> Any:
    """Return ``value`` as ``expected``, or raise ConfigError naming ``key``.

    The value of a secret key is never echoed in the message.
    """
    shown_value = "***" if key in _SECRET_KEYS else repr(value)
    expected = typing.get_origin(expected) or expected  # dict[str, Any] -> dict
    if from_text and isinstance(value, str):
        try:
            return _PARSERS[expected](value.strip() if expected is not str else value)
        except ValueError:  # json.JSONDecodeError is one
            msg = f"{key} must be {expected.__name__}, got {shown_value}"
            raise ConfigError(msg) from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        got = f"{type(value).__name__} {shown_value}"
        msg = f"{key} must be {expected.__name__}, got {got}"
        raise ConfigError(msg)
    return value


def _check_value(key: str, value: Any, constraints: Mapping[str, Any]) -> None:
    """Apply the field's constraints (its ``_doc`` metadata), or else the tables' above."""
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"{key} must be a finite number, got {value!r}"
        raise ConfigError(msg)
    choices = constraints.get("choices")
    if choices is None:
        choices = _CHOICES.get(key)
    if choices is not None and value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        msg = f"{key} must be one of {shown}, got {value!r}"
        raise ConfigError(msg)
    if (constraints.get("positive") or key in _POSITIVE) and value <= 0:
        msg = f"{key} must be > 0, got {value!r}"
        raise ConfigError(msg)
    if (constraints.get("non_negative") or key in _NON_NEGATIVE) and value < 0:
        msg = f"{key} must be >= 0, got {value!r}"
        raise ConfigError(msg)


# section -> key -> (value, the environment variable that set it, or None).
_Merged = dict[str, dict[str, tuple[Any, str | None]]]


def _merge_sources(
    file_values: Mapping[str, Any],
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> _Merged:
    """Collect (value, environment variable or None) per section and key, later sources winning."""
    merged: _Merged = {name: {} for name in SECTIONS}
    for section, table in file_values.items():
        if section not in SECTIONS:
            known = ", ".join(SECTIONS)
            msg = f"unknown section [{section}] (known sections: {known})"
            raise ConfigError(msg)
        if not isinstance(table, Mapping):
            msg = f"{section} must be a table like [{section}], got {table!r}"
            raise ConfigError(msg)
        for key, value in table.items():
            merged[section][key] = (value, None)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in SECTIONS:
            msg = f"unknown section {section!r} in environment variable {name}"
            raise ConfigError(msg)
        merged[section][key] = (value, name)
    for dotted, value in overrides.items():
        if value is not None:
            section, _, key = dotted.partition(".")
            merged[section][key] = (value, None)
    return merged


def _build_section(
    section: str, values: dict[str, tuple[Any, str | None]], cls: type | None = None
) -> Any:
    cls = cls or SECTIONS[section]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, (value, env_name) in values.items():
        dotted = f"{section}.{key}"
        try:
            kwargs[key] = _build_value(dotted, fields, hints, value, from_text=env_name is not None)
        except ConfigError as exc:
            if env_name is None:
                raise
            # The operator looks for the variable, not the key: name it.
            msg = f"{exc} (set by the environment variable {env_name})"
            raise ConfigError(msg) from None
    return cls(**kwargs)


def _build_value(
    dotted: str,
    fields: Mapping[str, dataclasses.Field[Any]],
    hints: Mapping[str, Any],
    value: Any,
    *,
    from_text: bool,
) -> Any:
    section, _, key = dotted.partition(".")
    if key not in fields:
        known = ", ".join(sorted(fields))
        msg = f"unknown key {dotted} (known keys in [{section}]: {known})"
        raise ConfigError(msg)
    if dotted == "kafka.propagate_headers" and isinstance(value, list):
        value = ",".join(str(name) for name in value)
    coerced = _coerce(dotted, hints[key], value, from_text=from_text)
    _check_value(dotted, coerced, fields[key].metadata)
    return coerced


def _check_across_keys(settings: Settings) -> None:
    for dotted in _REQUIRED:
        section, _, key = dotted.partition(".")
        if not getattr(getattr(settings, section), key).strip():
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            msg = f"{dotted} is required (set it in the [{section}] table or {env})"
            raise ConfigError(msg)
    _check_bootstrap_servers(settings.kafka.bootstrap_servers)
    if settings.metrics.port > MAX_PORT:
        msg = f"metrics.port must be at most {MAX_PORT}, got {settings.metrics.port}"
        raise ConfigError(msg)
    if settings.supervision.dead_letter_max_ratio > 1:
        msg = "supervision.dead_letter_max_ratio must be <= 1 (1 disables the breaker)"
        raise ConfigError(msg)
    kafka = settings.kafka
    if kafka.heartbeat_interval_s >= kafka.session_timeout_s:
        msg = (
            "kafka.heartbeat_interval_s must be below kafka.session_timeout_s "
            f"({kafka.heartbeat_interval_s} >= {kafka.session_timeout_s})"
        )
        raise ConfigError(msg)
    if kafka.sasl_mechanism and not kafka.security_protocol.startswith("SASL"):
        msg = "kafka.sasl_mechanism is set but kafka.security_protocol is not SASL_*"
        raise ConfigError(msg)
    if kafka.output_topic in (kafka.input_topic, kafka.dead_letter_topic_name):
        msg = "kafka.output_topic must differ from the input and dead-letter topics"
        raise ConfigError(msg)
    if kafka.dead_letter_topic_name == kafka.input_topic:
        msg = "kafka.dead_letter_topic must differ from kafka.input_topic"
        raise ConfigError(msg)
    _check_format(settings.format)
    _check_paths(settings.preprocess.paths)
    _check_state_features(settings)
    _check_remote(settings)
    _check_labels(settings)


def _check_remote(settings: Settings) -> None:
    """The remote keys, when the champion or a challenger is remote."""
    model = settings.model
    remote_headers(model.remote_headers)  # raises on a malformed pair
    for c in settings.challengers:
        own = (c.remote_url, c.remote_headers, c.remote_bearer_token, c.remote_ca_file)
        if c.kind != "remote" and any(own):
            msg = (
                f"challenger {c.name!r}: remote_url, remote_headers, remote_bearer_token and "
                f"remote_ca_file are for kind 'remote', not {c.kind!r}; remove them"
            )
            raise ConfigError(msg)
        if c.kind == "remote" and c.remote_url:
            where = f"challenger {c.name!r}: challenger.remote_url"
            _check_server(where, c.remote_url, c.remote_ca_file, c.remote_bearer_token)
            remote_headers(c.remote_headers)
        elif c.remote_headers or c.remote_bearer_token or c.remote_ca_file:
            msg = (
                f"challenger {c.name!r}: its remote headers, token and CA file go with its own "
                "remote_url; set remote_url too, or remove them to use the champion's server"
            )
            raise ConfigError(msg)
    champion_server = model.kind == "remote" or any(
        c.kind == "remote" and not c.remote_url for c in settings.challengers
    )
    if champion_server:
        _check_server(
            "model.remote_url", model.remote_url, model.remote_ca_file, model.remote_bearer_token
        )


def _check_server(where: str, url: str, ca_file: str, token: str) -> None:
    """One server's URL, CA file and token; ``where`` names its URL key."""
    prefix = where.rpartition(".")[0] or where
    if not url.startswith(("http://", "https://")):
        msg = (
            f"{where} must be the model server's 'http(s)://host:port' for kind "
            f"'remote', got {url!r}"
        )
        if where == "model.remote_url":
            msg += " (set it in [model] or STREAMER_MODEL__REMOTE_URL)"
        raise ConfigError(msg)
    if ca_file and not Path(ca_file).is_file():
        msg = f"{prefix}.remote_ca_file={ca_file} is not a file; give a PEM CA file"
        raise ConfigError(msg)
    if token and any(c in token for c in "\r\n"):
        msg = f"{prefix}.remote_bearer_token must be one line (the value is not shown)"
        raise ConfigError(msg)


MAX_PORT = 65535


def _check_bootstrap_servers(servers: str) -> None:
    """Each comma-separated entry is host:port with a port in range ([v6]:port for IPv6)."""
    example = "e.g. 'kafka-1:9092,kafka-2:9092'"
    if not servers.strip():
        msg = f"kafka.bootstrap_servers is empty: list the brokers as host:port, {example}"
        raise ConfigError(msg)
    for entry in servers.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
            msg = (
                f"kafka.bootstrap_servers entry {entry.strip()!r} is not host:port "
                f"(a port 1-{MAX_PORT}), in {servers!r}; {example}"
            )
            raise ConfigError(msg)


def _check_format(fmt: FormatSettings) -> None:
    if "avro" in (fmt.input, fmt.output) and not fmt.registry_url.strip():
        key = "format.input" if fmt.input == "avro" else "format.output"
        msg = (
            f"format.registry_url is required for {key} = 'avro' "
            "(set it in the [format] table or STREAMER_FORMAT__REGISTRY_URL)"
        )
        raise ConfigError(msg)
    if fmt.input != "json" and not fmt.registry_url.strip():
        msg = (
            f"format.registry_url is required for format.input = {fmt.input!r} "
            "(set it in the [format] table or STREAMER_FORMAT__REGISTRY_URL)"
        )
        raise ConfigError(msg)
    for url in filter(None, (part.strip() for part in fmt.registry_url.split(","))):
        if not url.startswith(("http://", "https://")):
            msg = f"format.registry_url must be http:// or https:// URLs, got {url!r}"
            raise ConfigError(msg)
    if fmt.registry_basic_auth and fmt.registry_bearer_token:
        msg = (
            "format.registry_basic_auth and format.registry_bearer_token: set one of them, not both"
        )
        raise ConfigError(msg)
    if fmt.registry_basic_auth and ":" not in fmt.registry_basic_auth:
        msg = "format.registry_basic_auth must be 'user:password' (the value is not shown)"
        raise ConfigError(msg)
    if fmt.registry_ca_location and not Path(fmt.registry_ca_location).is_file():
        msg = f"format.registry_ca_location: file {fmt.registry_ca_location} does not exist"
        raise ConfigError(msg)


def _check_paths(paths: Mapping[str, Any]) -> None:
    for name, path in paths.items():
        keys = path.split(".") if isinstance(path, str) else path
        if (
            not isinstance(keys, list | tuple)
            or not keys
            or not all(isinstance(key, str) and key for key in keys)
        ):
            msg = (
                f"preprocess.paths.{name} must be a dotted path like 'payment.amount' or a "
                f"list of keys, got {path!r}"
            )
            raise ConfigError(msg)


def build_settings(
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources into validated Settings.

    Args:
        file_values: The parsed TOML document.
        environ: Environment variables; only ``STREAMER_<SECTION>__<KEY>`` are read.
        overrides: Dotted keys from CLI flags, e.g. ``{"kafka.input_topic": "events"}``;
            ``None`` values are ignored.

    Raises:
        ConfigError: On an unknown key, a wrong type, a bad value or a missing topic.
    """
    document = dict(file_values or {})
    tables = document.pop("challenger", [])
    if environ and CHALLENGERS_ENV in environ:
        tables = _challenger_tables_from_env(environ[CHALLENGERS_ENV])
    challengers = _build_challengers(tables)
    state_features = _state_features(document)
    if environ and STATE_FEATURES_ENV in environ:
        state_features = _state_features_from_env(environ[STATE_FEATURES_ENV])
    merged = _merge_sources(document, environ or {}, overrides or {})
    settings = Settings(
        **{section: _build_section(section, merged[section]) for section in SECTIONS},
        challengers=challengers,
        state_features=state_features,
    )
    _check_across_keys(settings)
    for challenger in challengers:
        if challenger.output_topic in (settings.kafka.input_topic, settings.kafka.output_topic):
            msg = (
                f"challenger.output_topic of {challenger.name!r} must differ from the input "
                "and output topics"
            )
            raise ConfigError(msg)
    return settings


def _state_features(document: dict[str, Any]) -> tuple[StateFeature, ...]:
    """Take the ``[[state.features]]`` tables out of the document's [state] table, parsed."""
    table = document.get("state")
    if not isinstance(table, Mapping) or "features" not in table:
        return ()
    rest = dict(table)
    tables = rest.pop("features")
    document["state"] = rest
    try:
        return parse_features(tables)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_state_features(settings: Settings) -> None:
    for feature in settings.state_features:
        if feature.name in settings.preprocess.paths:
            msg = (
                f"state.features {feature.name!r} is also in [preprocess.paths]: a declared "
                "feature is computed, not read from the record; remove one of them"
            )
            raise ConfigError(msg)
    _check_state_size(settings)


def _check_state_size(settings: Settings) -> None:
    """Every key's state must fit one changelog record (core/state/limits.py)."""
    if not settings.state_features:
        return
    # Here, not at the top: the layout needs numpy, which settings alone must not import.
    from streamer.core.state.layout import build_layout  # noqa: PLC0415

    state, budget = settings.state, settings.kafka.max_request_bytes
    layout = build_layout(settings.state_features, 0)
    for index, group in enumerate(layout.groups):
        names = [
            f.name for f, g in zip(layout.features, layout.feature_group, strict=True) if g == index
        ]
        fit = entries_that_fit(group.numeric, budget, state.max_text_bytes)
        if fit < 1:
            one = record_bytes(group.numeric, 1, state.max_text_bytes)
            msg = (
                f"state.max_text_bytes={state.max_text_bytes}: a key of {', '.join(names)} with "
                f"one entry may take {one} bytes of a changelog record, over "
                f"kafka.max_request_bytes={budget}; lower state.max_text_bytes or raise "
                "kafka.max_request_bytes"
            )
            raise ConfigError(msg)
        if state.max_entries_per_key > fit:
            worst = record_bytes(group.numeric, state.max_entries_per_key, state.max_text_bytes)
            msg = (
                f"state.max_entries_per_key={state.max_entries_per_key}: a key of "
                f"{', '.join(names)} may then take {worst} bytes, over "
                f"kafka.max_request_bytes={budget} (a key's state is one changelog record); "
                f"set it to at most {fit}, or 0, or raise kafka.max_request_bytes (and the "
                "broker's message.max.bytes)"
            )
            raise ConfigError(msg)


STATE_FEATURES_ENV = f"{ENV_PREFIX}STATE_FEATURES"
"""The ``[[state.features]]`` tables as one JSON array (how worker processes receive them)."""


def state_feature_tables(features: Sequence[StateFeature]) -> list[dict[str, Any]]:
    """The ``[[state.features]]`` tables that :func:`parse_features` reads back as ``features``."""
    tables = []
    for feature in features:
        table: dict[str, Any] = {
            "name": feature.name,
            "key": feature.key,
            "agg": feature.agg,
            "window": f"{feature.window_us // 1000}ms"
            if feature.window_us % 1000 == 0
            else feature.window_us / 1_000_000,
            "time": feature.time,
            "include_current": feature.include_current,
            "default": feature.default,
        }
        if feature.field:
            table["field"] = feature.field
        tables.append(table)
    return tables


def _state_features_from_env(text: str) -> tuple[StateFeature, ...]:
    try:
        tables = json.loads(text)
    except ValueError:
        msg = f"{STATE_FEATURES_ENV} must be a JSON array of [[state.features]] tables"
        raise ConfigError(msg) from None
    try:
        return parse_features(tables)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


CHALLENGERS_ENV = f"{ENV_PREFIX}CHALLENGERS"
"""The ``[[challenger]]`` tables as one JSON array (how worker processes receive them)."""


def _challenger_tables_from_env(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        msg = (
            f"{CHALLENGERS_ENV} must be a JSON array of [[challenger]] tables, "
            'like [{"name": "candidate", "path": "/models/candidate.json"}]'
        )
        raise ConfigError(msg) from None


def _build_challengers(tables: Any) -> tuple[ChallengerSettings, ...]:
    """The ``[[challenger]]`` tables, each validated like a section."""
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        msg = "challenger must be an array of tables like [[challenger]]"
        raise ConfigError(msg)
    built = [
        _build_section("challenger", {k: (v, None) for k, v in t.items()}, ChallengerSettings)
        for t in tables
    ]
    names = [c.name for c in built]
    for challenger in built:
        if not challenger.name.strip():
            msg = "challenger.name is required in every [[challenger]] table"
            raise ConfigError(msg)
    if len(set(names)) != len(names):
        msg = f"challenger.name must be unique, got {names}"
        raise ConfigError(msg)
    return tuple(built)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML config file, turning every failure into a one-line ConfigError."""
    config_path = Path(path)
    try:
        with config_path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        msg = f"file {config_path} does not exist"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"{config_path} is not valid TOML: {exc}"
        raise ConfigError(msg) from None


def to_toml(document: Mapping[str, Mapping[str, Any]]) -> str:
    """The TOML text of a config document ({section: {key: value}}), which read_toml reads back.

    Values are strings, numbers and booleans, as in every settings section. A
    JSON string is a valid TOML basic string, escapes included.
    """
    lines: list[str] = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if isinstance(value, bool):
                shown = "true" if value else "false"
            elif isinstance(value, str):
                shown = json.dumps(value)
            else:
                shown = repr(value)
            lines.append(f"{key} = {shown}")
        lines.append("")
    return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the file (if any), the environment and the CLI overrides into Settings."""
    file_values = read_toml(path) if path else {}
    return build_settings(file_values, os.environ if environ is None else environ, overrides)


def _check_labels(settings: Settings) -> None:
    """The ``[labels]`` keys that depend on each other or on other sections."""
    labels = settings.labels
    for key in ("value_field", "score_field"):
        if not getattr(labels, key).strip():
            msg = f"labels.{key} must name a field, got an empty string"
            raise ConfigError(msg)
    if labels.id_field.startswith("$") and labels.id_field != RECORD_KEY:
        msg = (
            f"labels.id_field must be a field path or {RECORD_KEY!r} (the record key), "
            f"got {labels.id_field!r}"
        )
        raise ConfigError(msg)
    if labels.time_field.startswith("$"):
        msg = (
            f"labels.time_field must be a field path of the label, got {labels.time_field!r} "
            "(a label's time is read from the label itself)"
        )
        raise ConfigError(msg)
    kafka = settings.kafka
    taken = {kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic_name}
    taken.update(c.output_topic for c in settings.challengers)
    if labels.topic and labels.topic in taken:
        msg = (
            f"labels.topic {labels.topic!r} must differ from the input, output, dead-letter and "
            "challenger output topics"
        )
        raise ConfigError(msg)
    if labels.ledger_topic and labels.ledger_topic in {*taken, labels.topic}:
        msg = (
            f"labels.ledger_topic {labels.ledger_topic!r} must be a topic of its own (not the "
            "input, output, dead-letter, labels or a challenger output topic)"
        )
        raise ConfigError(msg)
    if labels.ledger_topic and labels.ledger_topic == settings.state.changelog_topic:
        msg = (
            f"labels.ledger_topic {labels.ledger_topic!r} is also state.changelog_topic; "
            "the ledger needs a changelog of its own (set one of them to another topic)"
        )
        raise ConfigError(msg)
