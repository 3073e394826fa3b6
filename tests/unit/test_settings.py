"""Settings: defaults, TOML file, environment and CLI overrides, and one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from streamer.core.models import KINDS, METHODS, PROBABILITY_MODES, ModelOptions
from streamer.errors import ConfigError
from streamer.settings import (
    BatchSettings,
    KafkaSettings,
    MetricsSettings,
    ModelSettings,
    PreprocessSettings,
    Settings,
    ShutdownSettings,
    build_settings,
    field_docs,
    load_settings,
    read_toml,
    to_toml,
)

TOPICS = {"kafka": {"input_topic": "events", "output_topic": "scores"}}


def with_topics(**sections: dict[str, Any]) -> dict[str, Any]:
    """A file document with the two required topics plus ``sections``."""
    doc: dict[str, Any] = {"kafka": dict(TOPICS["kafka"])}
    for name, table in sections.items():
        doc.setdefault(name, {}).update(table)
    return doc


def config_error(**kwargs: Any) -> str:
    """The message of the ConfigError that build_settings raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        build_settings(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    return message


class TestDefaults:
    def test_only_the_topics_are_required_and_everything_else_has_a_default(self) -> None:
        settings = build_settings(TOPICS)
        assert settings == Settings(
            kafka=KafkaSettings(input_topic="events", output_topic="scores"),
            batch=BatchSettings(),
            preprocess=PreprocessSettings(),
            model=ModelSettings(),
            metrics=MetricsSettings(),
            shutdown=ShutdownSettings(),
        )
        assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
        assert settings.batch.max_records == 1000
        assert settings.batch.max_wait_s == 0.05
        assert settings.preprocess.missing == "dlq"
        assert settings.model.kind == "linear"
        assert settings.shutdown.timeout_s == 30.0

    def test_the_dead_letter_topic_defaults_to_the_input_topic_plus_dlq(self) -> None:
        assert build_settings(TOPICS).kafka.dead_letter_topic_name == "events.dlq"
        settings = build_settings(with_topics(kafka={"dead_letter_topic": "bad"}))
        assert settings.kafka.dead_letter_topic_name == "bad"

    def test_settings_are_frozen(self) -> None:
        settings = build_settings(TOPICS)
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.batch.max_records = 5  # type: ignore[misc]

    def test_every_option_has_a_type_and_a_one_line_doc(self) -> None:
        for section in (KafkaSettings, BatchSettings, PreprocessSettings, ModelSettings):
            for name, type_name, _default, doc in field_docs(section):
                # preprocess.paths is the one table: [preprocess.paths].
                assert type_name in {"str", "int", "float", "bool", "dict"}, name
                assert doc, f"{section.__name__}.{name} has no doc"
                assert "\n" not in doc

    def test_the_sasl_password_is_not_in_the_repr(self) -> None:
        settings = build_settings(with_topics(kafka={"sasl_password": "hunter2"}))
        assert "hunter2" not in repr(settings)


class TestSources:
    def test_a_toml_file_sets_values(self, tmp_path: Path) -> None:
        path = tmp_path / "streamer.toml"
        path.write_text(
            '[kafka]\ninput_topic = "events"\noutput_topic = "scores"\n'
            'bootstrap_servers = "kafka-1:9092,kafka-2:9092"\n'
            "[batch]\nmax_records = 250\nmax_wait_s = 1\n"
            '[preprocess]\nmissing = "impute"\nstandardize = false\n'
        )
        settings = load_settings(path, environ={})
        assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
        assert settings.batch.max_records == 250
        assert settings.batch.max_wait_s == 1.0
        assert isinstance(settings.batch.max_wait_s, float)
        assert settings.preprocess.missing == "impute"
        assert settings.preprocess.standardize is False

    def test_the_environment_overrides_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "streamer.toml"
        path.write_text(
            '[kafka]\ninput_topic = "events"\noutput_topic = "scores"\n'
            'bootstrap_servers = "from-file:9092"\n'
        )
        settings = load_settings(
            path, environ={"STREAMER_KAFKA__BOOTSTRAP_SERVERS": "from-env:9092"}
        )
        assert settings.kafka.bootstrap_servers == "from-env:9092"

    def test_load_settings_reads_os_environ_by_default(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPIC", "env-events")
        monkeypatch.setenv("STREAMER_KAFKA__OUTPUT_TOPIC", "env-scores")
        settings = load_settings(None)
        assert (settings.kafka.input_topic, settings.kafka.output_topic) == (
            "env-events",
            "env-scores",
        )

    def test_environment_values_are_parsed_to_the_option_type(self) -> None:
        settings = build_settings(
            TOPICS,
            {
                "STREAMER_BATCH__MAX_RECORDS": " 250 ",
                "STREAMER_BATCH__MAX_WAIT_S": "0.25",
                "STREAMER_PREPROCESS__STANDARDIZE": "off",
                "STREAMER_METRICS__ENABLED": "TRUE",
                "STREAMER_MODEL__PATH": " /models/m.json",
            },
        )
        assert settings.batch.max_records == 250
        assert settings.batch.max_wait_s == 0.25
        assert settings.preprocess.standardize is False
        assert settings.metrics.enabled is True
        assert settings.model.path == " /models/m.json"

    def test_unrelated_environment_variables_are_ignored(self) -> None:
        settings = build_settings(TOPICS, {"PATH": "/bin", "STREAMER_DEBUG": "1"})
        assert settings == build_settings(TOPICS)

    def test_cli_overrides_win_over_the_environment_and_none_is_ignored(self) -> None:
        settings = build_settings(
            TOPICS,
            {"STREAMER_BATCH__MAX_RECORDS": "250", "STREAMER_KAFKA__GROUP_ID": "env-group"},
            {"batch.max_records": 42, "kafka.group_id": None},
        )
        assert settings.batch.max_records == 42
        assert settings.kafka.group_id == "env-group"


class TestErrors:
    @pytest.mark.parametrize(
        ("servers", "named"),
        [
            ("", "kafka.bootstrap_servers is empty"),
            ("kafka", "entry 'kafka' is not host:port"),
            ("kafka:port", "entry 'kafka:port' is not host:port"),
            ("kafka:9092,", "entry '' is not host:port"),
            ("kafka:70000", "entry 'kafka:70000' is not host:port"),
        ],
    )
    def test_empty_or_malformed_bootstrap_servers_are_refused(
        self, servers: str, named: str
    ) -> None:
        message = config_error(
            file_values=with_topics(kafka={"bootstrap_servers": servers}), environ={}
        )
        assert message.startswith("config error: kafka.bootstrap_servers"), message
        assert named in message

    def test_bootstrap_servers_accept_hosts_and_bracketed_ipv6(self) -> None:
        document = with_topics(kafka={"bootstrap_servers": "a:9092, 10.0.0.1:9093,[::1]:9094"})
        assert build_settings(document, environ={}).kafka.bootstrap_servers

    def test_a_metrics_port_beyond_65535_is_refused(self) -> None:
        message = config_error(file_values=with_topics(metrics={"port": 70000}), environ={})
        assert message == "config error: metrics.port must be at most 65535, got 70000"

    def test_a_non_integer_environment_value_names_the_key(self) -> None:
        message = config_error(file_values=TOPICS, environ={"STREAMER_BATCH__MAX_RECORDS": "abc"})
        assert message == (
            "config error: batch.max_records must be int, got 'abc' "
            "(set by the environment variable STREAMER_BATCH__MAX_RECORDS)"
        )

    def test_a_non_boolean_environment_value_names_the_key(self) -> None:
        message = config_error(file_values=TOPICS, environ={"STREAMER_METRICS__ENABLED": "maybe"})
        assert message == (
            "config error: metrics.enabled must be bool, got 'maybe' "
            "(set by the environment variable STREAMER_METRICS__ENABLED)"
        )

    def test_an_unknown_section_in_the_file_is_named(self) -> None:
        message = config_error(file_values=with_topics(bogus={"x": 1}))
        assert message.startswith("config error: unknown section [bogus] (known sections: kafka,")

    def test_an_unknown_section_in_the_environment_is_named(self) -> None:
        message = config_error(file_values=TOPICS, environ={"STREAMER_BOGUS__X": "1"})
        assert message == (
            "config error: unknown section 'bogus' in environment variable STREAMER_BOGUS__X"
        )

    def test_a_section_that_is_not_a_table_is_named(self) -> None:
        message = config_error(file_values={**TOPICS, "batch": 5})
        assert message == "config error: batch must be a table like [batch], got 5"

    @pytest.mark.parametrize(
        ("file_values", "environ", "key"),
        [
            (with_topics(kafka={"bootstrap_server": "x"}), {}, "kafka.bootstrap_server"),
            (TOPICS, {"STREAMER_BATCH__MAX_RECORD": "5"}, "batch.max_record"),
        ],
    )
    def test_an_unknown_key_is_named_with_the_known_keys(
        self, file_values: dict[str, Any], environ: dict[str, str], key: str
    ) -> None:
        message = config_error(file_values=file_values, environ=environ)
        assert message.startswith(f"config error: unknown key {key} (known keys in [")
        assert "max_records" in message or "bootstrap_servers" in message

    @pytest.mark.parametrize(
        ("section", "key", "value", "expected"),
        [
            ("batch", "max_records", "100", "batch.max_records must be int, got str '100'"),
            ("batch", "max_records", 2.5, "batch.max_records must be int, got float 2.5"),
            ("batch", "max_records", True, "batch.max_records must be int, got bool True"),
            ("batch", "max_wait_s", "1", "batch.max_wait_s must be float, got str '1'"),
            ("kafka", "group_id", 7, "kafka.group_id must be str, got int 7"),
            ("metrics", "enabled", 1, "metrics.enabled must be bool, got int 1"),
            ("kafka", "commit_early", "no", "kafka.commit_early must be bool, got str 'no'"),
            ("model", "path", ["a"], "model.path must be str, got list ['a']"),
        ],
    )
    def test_a_value_of_the_wrong_type_is_named(
        self, section: str, key: str, value: object, expected: str
    ) -> None:
        message = config_error(file_values=with_topics(**{section: {key: value}}))
        assert message == f"config error: {expected}"

    @pytest.mark.parametrize(
        ("section", "key", "value", "choices"),
        [
            ("kafka", "auto_offset_reset", "newest", "'earliest', 'latest'"),
            ("preprocess", "missing", "ignore", "'dlq', 'drop', 'impute'"),
            (
                "model",
                "kind",
                "tree",
                "'linear', 'sklearn', 'onnx', 'python', 'xgboost', 'lightgbm', 'mlflow', 'remote'",
            ),
            (
                "model",
                "method",
                "proba",
                "'auto', 'predict', 'predict_proba', 'decision_function', 'score_samples'",
            ),
            ("model", "probabilities", "some", "'positive', 'all'"),
            (
                "kafka",
                "security_protocol",
                "TLS",
                "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL'",
            ),
        ],
    )
    def test_a_value_outside_its_choices_is_named(
        self, section: str, key: str, value: str, choices: str
    ) -> None:
        message = config_error(file_values=with_topics(**{section: {key: value}}))
        assert message == f"config error: {section}.{key} must be one of {choices}, got {value!r}"

    @pytest.mark.parametrize(
        ("section", "key", "value"),
        [
            ("batch", "max_records", 0),
            ("batch", "max_in_flight", -1),
            ("batch", "max_record_bytes", 0),
            ("preprocess", "workers", 0),
            ("model", "workers", 0),
            ("kafka", "session_timeout_s", 0.0),
            ("kafka", "max_poll_records", 0),
            ("shutdown", "timeout_s", -5.0),
        ],
    )
    def test_a_non_positive_value_is_named(self, section: str, key: str, value: object) -> None:
        message = config_error(file_values=with_topics(**{section: {key: value}}))
        assert message == f"config error: {section}.{key} must be > 0, got {value!r}"

    @pytest.mark.parametrize(
        ("section", "key", "value"),
        [
            ("batch", "max_wait_s", -0.5),
            ("kafka", "linger_s", -1.0),
            ("kafka", "commit_interval_s", -1.0),
            ("metrics", "port", -1),
            ("model", "chunk_rows", -1),
            ("model", "watch_interval_s", -1.0),
        ],
    )
    def test_a_negative_value_is_named(self, section: str, key: str, value: object) -> None:
        message = config_error(file_values=with_topics(**{section: {key: value}}))
        assert message == f"config error: {section}.{key} must be >= 0, got {value!r}"

    @pytest.mark.parametrize(
        ("key", "owned"),
        [("kind", KINDS), ("method", METHODS), ("probabilities", PROBABILITY_MODES)],
    )
    def test_the_model_choices_are_those_of_the_models_package(
        self, key: str, owned: tuple[str, ...]
    ) -> None:
        for value in owned:
            # A remote model needs its server (checked in test_oip.py).
            server = {"remote_url": "http://models:8080"} if value == "remote" else {}
            model = build_settings(with_topics(model={key: value, **server})).model
            assert getattr(model, key) == value

    def test_the_model_options_are_the_model_and_preprocess_keys_with_lists_split(self) -> None:
        settings = build_settings(
            with_topics(
                model={"kind": "onnx", "path": "m.onnx", "outputs": " label , probabilities,"},
                preprocess={"features": "a, b", "missing": "impute", "standardize": False},
            )
        )
        assert settings.model_options() == ModelOptions(
            kind="onnx",
            path="m.onnx",
            outputs=("label", "probabilities"),
            features=("a", "b"),
            standardize=False,
            missing="impute",
        )

    def test_zero_is_allowed_where_it_means_something(self) -> None:
        settings = build_settings(
            with_topics(
                batch={"max_wait_s": 0}, metrics={"port": 0}, kafka={"commit_interval_s": 0}
            )
        )
        assert (settings.batch.max_wait_s, settings.metrics.port) == (0.0, 0)
        assert settings.kafka.commit_interval_s == 0.0

    @pytest.mark.parametrize(
        ("source", "key"),
        [
            ({"environ": {"STREAMER_SHUTDOWN__TIMEOUT_S": "nan"}}, "shutdown.timeout_s"),
            ({"environ": {"STREAMER_BATCH__MAX_WAIT_S": "nan"}}, "batch.max_wait_s"),
            (
                {"file_values": with_topics(kafka={"commit_interval_s": float("nan")})},
                "kafka.commit_interval_s",
            ),
        ],
        ids=["env-positive", "env-non-negative", "file-positive"],
    )
    def test_a_nan_duration_is_refused(self, source: dict[str, Any], key: str) -> None:
        message = config_error(**{"file_values": TOPICS, **source})
        assert key in message

    @pytest.mark.parametrize("key", ["input_topic", "output_topic"])
    def test_a_missing_topic_is_named_with_how_to_set_it(self, key: str) -> None:
        doc = {"kafka": {k: v for k, v in TOPICS["kafka"].items() if k != key}}
        message = config_error(file_values=doc)
        assert message == (
            f"config error: kafka.{key} is required "
            f"(set it in the [kafka] table or STREAMER_KAFKA__{key.upper()})"
        )

    def test_a_blank_topic_counts_as_missing(self) -> None:
        message = config_error(file_values=with_topics(kafka={"input_topic": "  "}))
        assert message.startswith("config error: kafka.input_topic is required")

    @pytest.mark.parametrize(
        ("kafka", "expected"),
        [
            (
                {"heartbeat_interval_s": 10.0},
                "kafka.heartbeat_interval_s must be below kafka.session_timeout_s (10.0 >= 10.0)",
            ),
            (
                {"sasl_mechanism": "PLAIN"},
                "kafka.sasl_mechanism is set but kafka.security_protocol is not SASL_*",
            ),
            (
                {"output_topic": "events"},
                "kafka.output_topic must differ from the input and dead-letter topics",
            ),
            (
                {"dead_letter_topic": "scores"},
                "kafka.output_topic must differ from the input and dead-letter topics",
            ),
            (
                {"dead_letter_topic": "events"},
                "kafka.dead_letter_topic must differ from kafka.input_topic",
            ),
        ],
    )
    def test_inconsistent_keys_are_named(self, kafka: dict[str, Any], expected: str) -> None:
        message = config_error(file_values=with_topics(kafka=kafka))
        assert message == f"config error: {expected}"

    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"
        with pytest.raises(ConfigError) as info:
            load_settings(path, environ={})
        assert str(info.value) == f"config error: file {path} does not exist"

    def test_a_file_that_is_not_toml_is_named_in_one_line(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.toml"
        path.write_text("[kafka\ninput_topic = 'x'\n")
        with pytest.raises(ConfigError) as info:
            load_settings(path, environ={})
        message = str(info.value)
        assert message.startswith(f"config error: {path} is not valid TOML: ")
        assert "\n" not in message

    def test_config_errors_exit_with_code_2(self) -> None:
        assert ConfigError.exit_code == 2


class TestToToml:
    def test_a_written_document_reads_back_the_same_and_builds_the_same_settings(
        self, tmp_path: Path
    ) -> None:
        document = {
            "kafka": {
                "input_topic": 'in "quoted" \\ back\tslash',
                "output_topic": "out-é",
                "session_timeout_s": 6.0,
            },
            "batch": {"max_records": 250, "eager_when_idle": False},
        }
        path = tmp_path / "streamer.toml"
        path.write_text(to_toml(document), encoding="utf-8")

        assert read_toml(path) == document
        settings = build_settings(read_toml(path))
        assert settings.kafka.input_topic == 'in "quoted" \\ back\tslash'
        assert settings.batch.max_records == 250
        assert settings.batch.eager_when_idle is False
