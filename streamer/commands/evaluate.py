"""``streamer evaluate``: a backtest's quality metrics, from outputs files and a labels file."""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from streamer.commands.common import add_common
from streamer.errors import ConfigError
from streamer.settings import Settings, build_settings, read_toml

FORMATS = ("csv", "jsonl")
_PLACEHOLDER_TOPICS = {
    "kafka.input_topic": "evaluate.input",
    "kafka.output_topic": "evaluate.output",
}
_SHOWN = {
    "classification": ("precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier"),
    "regression": ("mae", "rmse"),
}


def add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate``."""
    evaluate = sub.add_parser(
        "evaluate",
        help="join a labels file to an outputs file and print each model's quality metrics",
        description=(
            "Join labels to predictions with the [labels] settings and print precision, recall, "
            "F1, ROC and PR AUC, log loss, Brier score (or MAE and RMSE) per model version, and "
            "each challenger against the champion on the records both scored."
        ),
    )
    evaluate.add_argument(
        "outputs",
        nargs="+",
        metavar="OUTPUTS",
        help="JSON Lines files of output documents (the champion's and the challengers' topics)",
    )
    evaluate.add_argument("labels", metavar="LABELS", help="labels: CSV (with a header) or JSONL")
    evaluate.add_argument("--config", "-c", help="TOML config file ([labels], [[challenger]])")
    evaluate.add_argument("--output", "-o", help="write the report as JSON to this file")
    evaluate.add_argument(
        "--labels-format", choices=FORMATS, help="format of LABELS (default: from the name)"
    )
    add_common(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)


def evaluate_settings(config: str | None, environ: dict[str, str] | None = None) -> Settings:
    """The config's settings; the topics it need not name for a backtest get placeholders."""
    document = read_toml(config) if config else {}
    environ = dict(os.environ) if environ is None else environ
    kafka = document.get("kafka", {})
    missing = {
        dotted: name
        for dotted, name in _PLACEHOLDER_TOPICS.items()
        if not (isinstance(kafka, dict) and kafka.get(dotted.partition(".")[2]))
        and f"STREAMER_KAFKA__{dotted.partition('.')[2].upper()}" not in environ
    }
    return build_settings(document, environ, missing)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``streamer evaluate``: print the metrics, and write them with ``--output``."""
    from streamer.core.labels.evaluation import WindowOptions, evaluate  # noqa: PLC0415
    from streamer.core.labels.live import label_spec  # noqa: PLC0415
    from streamer.core.state.declared import RECORD_KEY  # noqa: PLC0415
    from streamer.filemode import detect_format  # noqa: PLC0415

    for path in (*args.outputs, args.labels):
        if not Path(path).is_file():
            msg = f"input file {path} does not exist"
            raise ConfigError(msg)
    labels_format = detect_format(args.labels, args.labels_format)
    settings = evaluate_settings(args.config)
    labels = settings.labels
    spec = label_spec(labels, [c.name for c in settings.challengers])
    window = WindowOptions(
        max_records=labels.window_records,
        max_age_us=round(labels.window_s * 1e6),
        threshold=settings.monitoring.threshold,
        buckets=labels.calibration_buckets,
    )
    by_key = labels.id_field == RECORD_KEY
    report = evaluate(
        _output_records(args.outputs),
        _label_records(args.labels, labels_format, by_key=by_key),
        spec,
        window,
    )
    print("\n".join(describe(report, ", ".join(args.outputs), args.labels)))
    if args.output:
        Path(args.output).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {args.output}")
    return 0


def _loads(value: bytes) -> Any:
    """The JSON value, or None for bytes that are not JSON (read as ``malformed``)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _output_records(paths: list[str]) -> Iterator[tuple[bytes | None, Any]]:
    for path in paths:
        with Path(path).open("rb") as lines:
            for line in lines:
                if line.strip():
                    yield None, _loads(line)


def _label_records(path: str, fmt: str, *, by_key: bool) -> Iterator[tuple[bytes | None, Any]]:
    """``(record key, label)`` per label; with ``$key``, the key is the ``key`` column or field."""
    from streamer.clients.file import csv_values, jsonl_values  # noqa: PLC0415

    if fmt == "jsonl":
        with Path(path).open("rb") as lines:
            for _, key, value in jsonl_values(lines, "key" if by_key else None):
                yield key, _loads(value)
        return
    with Path(path).open(newline="", encoding="utf-8") as text:
        header = next(csv.reader(text), [])
        if by_key and "key" not in header:
            msg = f"labels.id_field = '$key' reads the 'key' column, and {path} has none"
            raise ConfigError(msg)
        text.seek(0)
        for key, value in csv_values(text, "key" if by_key else None):
            yield key, _loads(value)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in counts.items())


def describe(report: dict[str, Any], outputs: str, labels: str) -> list[str]:
    """The report as the lines the command prints."""
    out, lab, predictions = report["outputs"], report["labels"], report["predictions"]
    window = report["window"]
    lines = [
        f"read {out['read']:,} outputs of {outputs}: {out['recorded']:,} predictions"
        + (f", {out['duplicate']:,} duplicate" if out["duplicate"] else "")
        + (f" (rejected: {_counts(out['rejected'])})" if out["rejected"] else ""),
        f"read {lab['read']:,} labels of {labels}: {lab['joined']:,} joined"
        + (f" (not joined: {_counts(lab['rejected'])})" if lab["rejected"] else ""),
        f"unlabelled predictions: {predictions['unlabelled_within_horizon']:,} within the "
        f"horizon, {predictions['expired_unlabelled']:,} expired",
        f"window: {window['records']:,} joined records (at most {window['max_records']:,}"
        + (f", within {window['max_age_s']:g}s" if window["max_age_s"] else "")
        + f"), threshold {window['threshold']:g}",
    ]
    shown = _SHOWN[window["task"]]
    rows = [("model", "version", "records", *shown)]
    rows += [
        (
            f"{m['role']} {m['name']}",
            m["version"],
            f"{m['records']:,}",
            *(_number(m[metric]) for metric in shown),
        )
        for m in window["models"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for c in window["comparisons"]:
        deltas = ", ".join(f"{metric} {_delta(c['deltas'][metric])}" for metric in shown)
        lines.append(
            f"{c['challenger']} {c['challenger_version']} vs {c['champion']} "
            f"{c['champion_version']} on {c['records']:,} records both scored: {deltas}"
        )
    latency = window["label_latency"]
    if latency is not None:
        lines.append(
            f"label latency over {latency['records']:,} labels: mean {latency['mean_s']:g}s, "
            f"p50 {latency['p50_s']:g}s, p95 {latency['p95_s']:g}s, max {latency['max_s']:g}s"
        )
    return lines
