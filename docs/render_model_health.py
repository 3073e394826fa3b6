"""Render docs/images/model-health.png: the Model health row's queries, on real Prometheus data.

Grafana cannot be installed where these docs are written, so this script runs
the dashboard's own PromQL against a real Prometheus (Debian's ``prometheus``)
that scrapes a real pipeline on the embedded broker, and plots the results with
matplotlib (a doc-generation tool, not a dependency of streamer):

    PYTHONPATH=. python docs/render_model_health.py

The pipeline runs the demo model with a profile of 20000 demo transactions and
one challenger (the demo model with its bias raised by 1.5). The feed sends
reference transactions for 30 s, then transactions whose ``amount`` is 2.5x.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib as mpl
import orjson
import yaml
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamer.clients.kafka_python import ensure_topics
from streamer.core.demo_data import make_event, make_record
from streamer.devtools.broker import EmbeddedBroker
from streamer.httpserver import free_port
from streamer.settings import KafkaSettings, build_settings
from streamer.topology import Pipeline

mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamer.json"
OUT = ROOT / "docs" / "images" / "model-health.png"
REFERENCE_S = 30
DRIFT_S = 45
RATE = 300  # records per second
VARIABLES = {"$__rate_interval": "15s", "$instance": ".*", "$job": "streamer"}
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def panel_queries() -> dict[str, list[tuple[str, str]]]:
    """Model-health panel title -> [(legend, PromQL)], variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = {}
    for panel in dashboard["panels"]:
        if panel["id"] < 12:
            continue
        targets = []
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            targets.append((target["legendFormat"], expr))
        out[panel["title"]] = targets
    return out


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
    with DIRECT.open(f"{url}/api/v1/query_range?{params}", timeout=10) as response:
        doc = json.loads(response.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def feed(bootstrap: str, topic: str, stop: threading.Event, drift_at: float) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    rng = random.Random(5)
    while not stop.wait(0.1):
        scale = 2.5 if time.monotonic() >= drift_at else 1.0
        for _ in range(RATE // 10):
            key, value = make_record(rng, amount_scale=scale)
            producer.send(topic, key=key, value=value)
    producer.flush(timeout=10)
    producer.close(timeout=5)


def label(legend: str, metric: dict[str, str]) -> str:
    for key, value in metric.items():
        legend = legend.replace("{{" + key + "}}", value)
    return legend


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="model-health-"))
    train = work / "train.jsonl"
    rng = random.Random(11)
    train.write_bytes(b"".join(orjson.dumps(make_event(rng)) + b"\n" for _ in range(20_000)))
    profile = work / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "streamer", "profile", str(train), "-o", str(profile)], check=True
    )
    demo = json.loads((ROOT / "streamer/core/models/demo_fraud.json").read_text())
    challenger = work / "challenger.json"
    challenger.write_text(json.dumps({**demo, "version": "biased", "bias": demo["bias"] + 1.5}))
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        ensure_topics(kafka, {"tx": 2, "scores": 2, "tx.dlq": 1, "scores.challenger": 2})
        settings = build_settings(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap_servers,
                    "input_topic": "tx",
                    "output_topic": "scores",
                },
                "metrics": {"host": "127.0.0.1", "port": 0},
                "monitoring": {"profile_path": str(profile), "window_records": 3000},
                "challenger": [
                    {"name": "biased", "output_topic": "scores.challenger", "path": str(challenger)}
                ],
            },
            environ={},
        )
        pipeline = Pipeline(settings, registry=CollectorRegistry())
        pipeline.start()
        port = pipeline.metrics_port()
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {"job_name": "streamer", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ]
        )
        stop = threading.Event()
        start = time.time()
        drift_at = time.monotonic() + REFERENCE_S
        feeder = threading.Thread(
            target=feed, args=(broker.bootstrap_servers, "tx", stop, drift_at)
        )
        feeder.start()
        time.sleep(REFERENCE_S + DRIFT_S)
        stop.set()
        feeder.join()
        end = time.time()
        url = f"http://127.0.0.1:{prom_port}"
        results = {
            title: [(legend, query_range(url, expr, start, end)) for legend, expr in targets]
            for title, targets in panel_queries().items()
        }
        prometheus.terminate()
        prometheus.wait(timeout=10)
        pipeline.stop()
    plot(results, start, REFERENCE_S)
    print(f"wrote {OUT}")


def plot(
    results: dict[str, list[tuple[str, list[dict[str, Any]]]]], start: float, drift: int
) -> None:
    titles = [
        "Feature PSI over time",
        "Missing and out-of-range ratio",
        "Score distribution vs reference",
        "Score PSI",
        "Challenger agreement",
        "Challenger latency p99 and score delta p50",
    ]
    figure, axes = plt.subplots(3, 2, figsize=(14, 11))
    for axis, title in zip(axes.flat, titles, strict=True):
        for legend, series in results[title]:
            if title == "Score distribution vs reference":
                continue
            for one in series:
                xs = [float(t) - start for t, _ in one["values"]]
                ys = [float(v) for _, v in one["values"]]
                axis.plot(xs, ys, label=label(legend, one["metric"]))
        if title == "Score distribution vs reference":
            for legend, series in results[title]:
                points = sorted(
                    (float(s["metric"]["le"]), float(s["values"][-1][1]))
                    for s in series
                    if s["metric"]["le"] != "+Inf"
                )
                axis.step(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    where="post",
                    label=legend.split(" ")[0] + " (end of run)",
                )
            axis.set_xlabel("score bin edge (le)")
        else:
            axis.axvline(drift, color="grey", linestyle="--", linewidth=1)
            axis.set_xlabel("seconds (dashed: amount x2.5 from here)")
        axis.set_title(title)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle("Model health row, from a real Prometheus (rendered with matplotlib)")
    figure.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=80)


if __name__ == "__main__":
    main()
