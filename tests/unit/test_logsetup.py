"""Logs: text by default, JSON lines with the actor and the partition, and no secret anywhere."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from streamer import logsetup
from streamer.cli import main
from streamer.logsetup import JsonFormatter, TextFormatter, hide_secrets, redact, setup_logging
from streamer.settings import build_settings

PASSWORD = "s3cr3t-Pa55word"  # noqa: S105 - a test value, to be masked
SASL_CONFIG = (
    '[kafka]\ninput_topic = "events"\noutput_topic = "scores"\n'
    'security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "svc"\n'
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STREAMER_* variables leak in; the secrets, root logger and thread name are restored."""
    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)
    secrets = logsetup._secrets
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kafka_level = logging.getLogger("kafka").level
    thread_name = threading.current_thread().name
    yield
    logsetup._secrets = secrets
    setup_logging("INFO")  # the text mode's hooks back
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)
    threading.current_thread().name = thread_name


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logsetup.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


class _LoggingActor(pykka.ThreadingActor):
    """Logs one line from its own thread, as the pipeline actors do."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def on_receive(self, message: Any) -> None:
        self._logger.error(
            "batch failed", extra={"topic": "events", "partition": 3, "offset": 1200}
        )


class TestJsonLines:
    def test_a_line_from_an_actor_carries_the_actor_and_topic_partition_offset(self) -> None:
        logger, stream = capture(JsonFormatter())
        ref = _LoggingActor.start(logger)
        try:
            ref.ask("log", timeout=5)
        finally:
            ref.stop(timeout=5)
        doc = json.loads(stream.getvalue())
        assert doc["actor"] == "_LoggingActor"
        assert doc["thread"].startswith("_LoggingActor-")
        assert (doc["topic"], doc["partition"], doc["offset"]) == ("events", 3, 1200)
        assert doc["level"] == "ERROR"
        assert doc["message"] == "batch failed"
        assert doc["time"].endswith("Z")

    def test_a_line_from_another_thread_has_no_actor_unless_given_one(self) -> None:
        logger, stream = capture(JsonFormatter())
        logger.info("plain")
        logger.info("named", extra={"actor": "consumer", "partitions": ["t/0", "t/1"]})
        plain, named = (json.loads(line) for line in stream.getvalue().splitlines())
        assert "actor" not in plain
        assert "topic" not in plain
        assert named["actor"] == "consumer"
        assert named["partitions"] == ["t/0", "t/1"]

    def test_each_record_is_one_line_even_with_a_traceback(self) -> None:
        logger, stream = capture(JsonFormatter())
        try:
            raise ValueError("bad\nvalue")  # noqa: TRY301 - a traceback to format
        except ValueError:
            logger.exception("it failed")
        (line,) = stream.getvalue().splitlines()
        assert "ValueError" in json.loads(line)["exception"]

    def test_the_cli_flag_selects_json_and_the_default_is_text(self) -> None:
        setup_logging("INFO", "json")
        assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
        setup_logging("INFO")
        assert isinstance(logging.getLogger().handlers[0].formatter, TextFormatter)


class TestJsonEverywhere:
    def test_the_final_line_and_an_uncaught_thread_exception_are_json(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        setup_logging("INFO", "json")

        def fail() -> None:
            raise RuntimeError("boom")

        thread = threading.Thread(target=fail, name="some-library")
        thread.start()
        thread.join()
        final = json.loads(logsetup.final_line("streamer: config error: metrics.port ..."))
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert lines[0]["message"] == "uncaught exception in thread some-library"
        assert "RuntimeError: boom" in lines[0]["exception"]
        assert (final["level"], final["message"]) == (
            "ERROR",
            "streamer: config error: metrics.port ...",
        )

    def test_the_text_mode_final_line_is_the_text(self) -> None:
        setup_logging("INFO")
        assert logsetup.final_line("streamer: interrupted") == "streamer: interrupted"


class TestSecrets:
    def test_the_settings_repr_hides_the_sasl_password(self) -> None:
        settings = build_settings(
            {
                "kafka": {
                    "input_topic": "events",
                    "output_topic": "scores",
                    "security_protocol": "SASL_SSL",
                    "sasl_mechanism": "PLAIN",
                    "sasl_password": PASSWORD,
                }
            },
            environ={},
        )
        assert settings.kafka.sasl_password == PASSWORD
        for text in (repr(settings), str(settings), repr(settings.kafka), f"{settings}"):
            assert PASSWORD not in text

    def test_check_config_show_hides_a_password_from_the_environment(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "streamer.toml"
        path.write_text(SASL_CONFIG)
        monkeypatch.setenv("STREAMER_KAFKA__SASL_PASSWORD", PASSWORD)
        assert main(["check-config", str(path), "--show"]) == 0
        out, err = capsys.readouterr()
        assert "sasl_password = ***" in out
        assert "sasl_username = 'svc'" in out
        assert PASSWORD not in out + err

    def test_a_registered_secret_is_masked_in_text_and_json_lines_and_tracebacks(self) -> None:
        hide_secrets(PASSWORD)
        for formatter in (TextFormatter(), JsonFormatter()):
            logger, stream = capture(formatter)
            logger.warning("connecting with %s", PASSWORD)
            try:
                msg = f"auth failed for password={PASSWORD}"
                raise RuntimeError(msg)  # noqa: TRY301 - a traceback to format
            except RuntimeError:
                logger.exception("client error")
            text = stream.getvalue()
            assert PASSWORD not in text
            assert "***" in text

    def test_redact_masks_the_longer_secret_first_and_ignores_tiny_ones(self) -> None:
        hide_secrets("abcd", "abcdefgh", "", "ab")
        assert redact("x abcdefgh y abcd ab") == "x *** y *** ab"

    def test_the_run_command_registers_the_password_before_it_logs_anything(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[str] = []

        class StopHereError(Exception):
            pass

        def fake_pipeline(_settings: object, **_options: object) -> None:
            seen.append(redact(f"password={PASSWORD}"))
            raise StopHereError

        monkeypatch.setattr("streamer.topology.Pipeline", fake_pipeline)
        path = tmp_path / "streamer.toml"
        path.write_text(SASL_CONFIG)
        monkeypatch.setenv("STREAMER_KAFKA__SASL_PASSWORD", PASSWORD)
        assert main(["run", "--config", str(path)]) == 1  # the error ends in one line
        assert seen == ["password=***"]


def test_a_config_error_on_the_password_never_echoes_its_value() -> None:
    from streamer.errors import ConfigError
    from streamer.settings import build_settings

    with pytest.raises(ConfigError) as info:
        build_settings(
            {"kafka": {"input_topic": "a", "output_topic": "b", "sasl_password": 123456789}},
            environ={},
        )
    assert str(info.value) == "config error: kafka.sasl_password must be str, got int ***"


def test_a_metadata_refresh_cancelled_by_the_clients_close_is_not_an_error() -> None:
    import asyncio

    import kafka.errors

    from streamer.logsetup import CancelledRefreshFilter

    keep = CancelledRefreshFilter()

    def record(level: int, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("kafka.cluster", level, __file__, 1, msg, args, None)

    cancelled = asyncio.CancelledError("Cancelled")
    assert not keep.filter(record(logging.ERROR, "Metadata refresh: failed %s", cancelled))
    closed = kafka.errors.Cancelled()  # what kafka-python 3's close gives a request in flight
    assert not keep.filter(record(logging.ERROR, "Metadata refresh: failed %s", closed))
    assert keep.filter(record(logging.ERROR, "Metadata refresh: failed %s", OSError("refused")))
    assert keep.filter(record(logging.ERROR, "something else %s", cancelled))
    assert keep.filter(record(logging.DEBUG, "Metadata refresh: failed %s", cancelled))


def test_a_read_that_raced_its_own_connections_close_leaves_no_traceback() -> None:
    """kafka-python 3.0's read loop can find its socket gone when its connection closes."""
    import socket

    from kafka.net.transport import KafkaTCPTransport

    class Net:  # the transport's event loop, as far as a close uses it
        def unregister_event(self, sock: object, events: int) -> None:
            pass

    class ResetSocket:
        def recv(self, size: int) -> bytes:
            raise ConnectionResetError("reset by peer")

        def getpeername(self) -> tuple[str, int]:
            raise OSError("not connected")  # what the transport's name reads

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    setup_logging("INFO")
    logger = logging.getLogger("kafka.net.transport")
    kept = Kept()
    logger.addHandler(kept)
    left, right = socket.socketpair()
    try:
        transport = KafkaTCPTransport(Net(), left)
        transport.close()
        _, error = transport._sock_recv()  # the read that was already past the loop's check
        assert error is not None
        assert [r for r in kept.records if r.levelno >= logging.ERROR] == []

        still_open = KafkaTCPTransport(Net(), ResetSocket())
        _, error = still_open._sock_recv()  # a connection reset while it is open: kept
        assert error is not None
        (record,) = [r for r in kept.records if r.levelno >= logging.ERROR]
        assert "Error receiving network data" in record.getMessage()
        assert record.exc_info is not None
    finally:
        logger.removeHandler(kept)
        right.close()
