"""Throughput of the pipeline with real models: scikit-learn and ONNX, on the embedded broker.

Trains a StandardScaler + LogisticRegression pipeline and a 100-tree
RandomForest on scikit-learn's breast cancer data (30 features, no download),
saves them with joblib (and converts them with skl2onnx), preloads the same
events into one topic, and runs the full pipeline over them once per model.

    .venv/bin/python benchmarks/models.py --records 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streamer.clients.kafka_python import ensure_topics
from streamer.devtools.broker import EmbeddedBroker
from streamer.settings import KafkaSettings, build_settings
from streamer.topology import Pipeline


def train(directory: Path) -> dict[str, dict[str, Any]]:
    from skl2onnx import to_onnx

    frame, target = load_breast_cancer(return_X_y=True, as_frame=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
            frame, target
        )
        forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(frame, target)
    features = ",".join(frame.columns)
    # The floor: the JSON-weights kind on the same 30 features (no model cost to speak of).
    linear = directory / "linear.json"
    linear.write_bytes(
        orjson.dumps(
            {
                "features": list(frame.columns),
                "mean": frame.mean().tolist(),
                "std": frame.std(ddof=0).tolist(),
                "weights": logreg.steps[-1][1].coef_[0].tolist(),
                "bias": float(logreg.steps[-1][1].intercept_[0]),
            }
        )
    )
    models: dict[str, dict[str, Any]] = {"linear (JSON weights)": {"model": {"path": str(linear)}}}
    for name, estimator in (("LogisticRegression", logreg), ("RandomForest 100", forest)):
        path = directory / f"{name.split()[0]}.joblib"
        joblib.dump(estimator, path)
        models[f"sklearn {name}"] = {"model": {"kind": "sklearn", "path": str(path)}}
        models[f"sklearn {name}, chunk_rows 0"] = {
            "model": {"kind": "sklearn", "path": str(path), "chunk_rows": 0}
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onx = to_onnx(
                estimator,
                frame.to_numpy()[:1].astype(np.float32),
                options={"zipmap": False},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
        onnx_path = directory / f"{name.split()[0]}.onnx"
        onnx_path.write_bytes(onx.SerializeToString())
        models[f"onnx {name}"] = {
            "model": {"kind": "onnx", "path": str(onnx_path)},
            "preprocess": {"features": features},
        }
    return models


def preload(bootstrap: str, topic: str, count: int) -> None:
    frame, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    names = list(frame.columns)
    rng = np.random.default_rng(1)
    rows = frame.to_numpy()[rng.integers(0, len(frame), count)]
    rows *= rng.normal(1.0, 0.03, size=rows.shape)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=262144
    )
    for i, row in enumerate(rows.tolist()):
        producer.send(
            topic, key=f"r{i}".encode(), value=orjson.dumps(dict(zip(names, row, strict=True)))
        )
    producer.flush(timeout=300)
    producer.close(timeout=5)


def streamer_run(
    bootstrap: str, topic: str, count: int, sections: dict[str, Any]
) -> tuple[float, float | None]:
    out = f"bench-out-{uuid.uuid4().hex[:6]}"
    ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), {out: 4})
    settings = build_settings(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "input_topic": topic,
                "output_topic": out,
                "group_id": f"streamer-{uuid.uuid4().hex[:8]}",
                "session_timeout_s": 6.0,
                "heartbeat_interval_s": 1.0,
            },
            "batch": {"max_records": 1000},
            "metrics": {"enabled": False},
            **sections,
        },
        environ={},
    )
    registry = CollectorRegistry()
    pipeline = Pipeline(settings, registry=registry)
    pipeline.start()
    started = None
    try:
        while True:
            consumed = registry.get_sample_value("streamer_records_consumed_total") or 0
            if consumed and started is None:
                started = time.perf_counter()
            if sum(pipeline.consumer_status().watermarks.values()) >= count:
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        pipeline.stop()
    labels = {"stage": "model"}
    total = registry.get_sample_value("streamer_stage_duration_seconds_sum", labels)
    batches = registry.get_sample_value("streamer_stage_duration_seconds_count", labels)
    per_batch = total / batches if total is not None and batches else None
    return count / elapsed, per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--only", default="", help="run the models whose name contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        models = train(Path(tmp))
        bootstrap = broker.bootstrap_servers
        topic = f"bench-in-{uuid.uuid4().hex[:6]}"
        ensure_topics(
            KafkaSettings(bootstrap_servers=bootstrap),
            {topic: args.partitions, f"{topic}.dlq": 1},
        )
        preload(bootstrap, topic, args.records)
        rows = [
            (name, streamer_run(bootstrap, topic, args.records, sections))
            for name, sections in models.items()
            if args.only.lower() in name.lower()
        ]
    print(
        f"\n{args.records} records of 30 features, {args.partitions} partitions, embedded broker,"
    )
    print("2 preprocessors, 2 model actors, batch 1000, model.chunk_rows 1000 unless noted")
    print(f"{'model':<42} {'records/s':>10} {'model stage ms/batch':>21}")
    for name, (rate, per_batch) in rows:
        shown = f"{per_batch * 1000:.2f}" if per_batch is not None else "-"
        print(f"{name:<42} {rate:>10.0f} {shown:>21}")


if __name__ == "__main__":
    main()
