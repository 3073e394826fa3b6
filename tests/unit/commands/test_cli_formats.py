"""check-config and the [format] settings: one-line errors, masked registry credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.settings import build_settings, secret_values

GOOD = '[kafka]\ninput_topic = "events"\noutput_topic = "scores"\n'


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMER_"):
            monkeypatch.delenv(name)


def _check(tmp_path: Path, text: str, *args: str) -> int:
    path = tmp_path / "streamer.toml"
    path.write_text(GOOD + text)
    return main(["check-config", str(path), *args])


def test_show_masks_the_basic_auth_and_the_bearer_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMER_FORMAT__REGISTRY_BEARER_TOKEN", "")
    text = '[format]\ninput = "avro"\nregistry_url = "http://r:8081"\n'
    text += 'registry_basic_auth = "svc:s3cret-pass"\n'
    assert _check(tmp_path, text, "--show") == 0
    out = capsys.readouterr().out
    assert "registry_basic_auth = ***" in out
    assert "s3cret-pass" not in out
    assert "input = 'avro'" in out


def test_the_secrets_are_given_to_the_log_mask() -> None:
    settings = build_settings(
        {
            "kafka": {"input_topic": "a", "output_topic": "b"},
            "format": {
                "input": "avro",
                "registry_url": "http://r",
                "registry_basic_auth": "svc:pw-12345",
            },
        }
    )
    assert "svc:pw-12345" in secret_values(settings)
    assert "pw-12345" in secret_values(settings)
    assert "pw-12345" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ('[format]\ninput = "avro"\n', "format.registry_url is required for format.input = 'avro'"),
        ('[format]\ninput = "xml"\n', "format.input must be one of 'json', 'avro'"),
        ('[format]\noutput = "avro"\n', "format.registry_url is required for format.output"),
        ('[format]\noutput = "protobuf"\n', "format.output must be one of 'json', 'avro'"),
        (
            '[format]\ninput = "avro"\nregistry_url = "registry:8081"\n',
            "format.registry_url must be http:// or https:// URLs, got 'registry:8081'",
        ),
        (
            '[format]\nregistry_url = "http://r"\nregistry_basic_auth = "a:b"\n'
            'registry_bearer_token = "t0ken-abcdef"\n',
            "format.registry_basic_auth and format.registry_bearer_token: set one",
        ),
        (
            '[format]\nregistry_basic_auth = "no-colon-secret"\n',
            "format.registry_basic_auth must be 'user:password' (the value is not shown)",
        ),
        (
            '[format]\nregistry_ca_location = "/nonexistent/ca.pem"\n',
            "format.registry_ca_location: file /nonexistent/ca.pem does not exist",
        ),
        ("[format]\nregistry_cache_size = 0\n", "format.registry_cache_size must be > 0"),
        (
            '[preprocess.paths]\namount = ""\n',
            "preprocess.paths.amount must be a dotted path like 'payment.amount'",
        ),
    ],
)
def test_bad_format_settings_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, start: str
) -> None:
    assert _check(tmp_path, text) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"streamer: config error: {start}"), err
    assert "no-colon-secret" not in err
    assert "t0ken-abcdef" not in err


def test_paths_from_the_environment_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build_settings(
        {"kafka": {"input_topic": "a", "output_topic": "b"}},
        environ={"STREAMER_PREPROCESS__PATHS": '{"amount": "payment.amount"}'},
    )
    assert settings.preprocess.paths == {"amount": "payment.amount"}
