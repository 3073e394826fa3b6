"""The exception tree: errors format their own prefix."""

from __future__ import annotations

import pytest

from streamer.errors import (
    ActorCrashedError,
    BrokerError,
    ConfigError,
    ModelLoadError,
    StreamerError,
)


def test_a_config_error_says_so_once() -> None:
    assert str(ConfigError("kafka.input_topic is required")) == (
        "config error: kafka.input_topic is required"
    )
    assert str(ConfigError("config error: already said")) == "config error: already said"


def test_a_model_error_keeps_a_message_that_names_its_own_kind() -> None:
    assert str(ModelLoadError("model.json is not JSON")) == "model error: model.json is not JSON"
    assert str(ConfigError("model error: it declares no features")) == (
        "model error: it declares no features"
    )


@pytest.mark.parametrize("error", [BrokerError, ActorCrashedError])
def test_other_errors_carry_no_prefix_and_belong_to_the_tree(
    error: type[StreamerError],
) -> None:
    assert str(error("broker down")) == "broker down"
    assert issubclass(error, StreamerError)


def test_only_configuration_and_model_errors_exit_2() -> None:
    assert (ConfigError.exit_code, ModelLoadError.exit_code, BrokerError.exit_code) == (2, 2, 1)
