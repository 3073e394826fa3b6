"""The flags that several commands share, and the settings overrides they carry."""

from __future__ import annotations

import argparse
from typing import Any


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``."""
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", default="text", choices=("text", "json"))


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the flags that override one setting each (``dest`` is its key)."""
    parser.add_argument("--config", "-c", help="TOML config file")
    parser.add_argument("--bootstrap-servers", dest="kafka.bootstrap_servers")
    parser.add_argument("--input-topic", dest="kafka.input_topic")
    parser.add_argument("--output-topic", dest="kafka.output_topic")
    parser.add_argument("--dead-letter-topic", dest="kafka.dead_letter_topic")
    parser.add_argument("--group-id", dest="kafka.group_id")
    parser.add_argument("--model-path", dest="model.path")
    parser.add_argument("--metrics-port", dest="metrics.port", type=int)
    parser.add_argument("--max-records", dest="batch.max_records", type=int)
    parser.add_argument("--max-in-flight", dest="batch.max_in_flight", type=int)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags: ``section.key`` -> value, for those given."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}
