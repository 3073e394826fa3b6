"""How long SIGTERM takes to end ``streamer run`` when the model is slow and the queue deep.

The scenario: a python model at 5 ms a record (slow_model.py), the
default batch settings (1000 records a batch, 16 in flight: about 80 s of work
queued) and the default 30 s budget. It starts the embedded broker, preloads
the input, starts the daemon, sends SIGTERM once the pipeline is saturated and
prints the seconds from SIGTERM to exit and the exit code, per run::

    python benchmarks/shutdown_time.py --runs 3 [--budget 30] [--seconds-per-row 0.005]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer

from streamer.clients.kafka_python import ensure_topics
from streamer.core.demo_data import make_record
from streamer.devtools.broker import EmbeddedBroker
from streamer.settings import KafkaSettings, to_toml

HERE = Path(__file__).parent


def one_run(broker: EmbeddedBroker, workdir: Path, budget_s: float, per_row_s: float) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, output = f"in-{tag}", f"out-{tag}"
    servers = broker.bootstrap_servers
    ensure_topics(
        KafkaSettings(bootstrap_servers=servers), {topic: 4, output: 4, f"{topic}.dlq": 1}
    )
    producer = KafkaProducer(bootstrap_servers=servers.split(","), linger_ms=5)
    rng = random.Random(26)
    for _ in range(40_000):
        key, value = make_record(rng)
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    config = workdir / f"{tag}.toml"
    config.write_text(
        to_toml(
            {
                "kafka": {
                    "bootstrap_servers": servers,
                    "input_topic": topic,
                    "output_topic": output,
                    "group_id": f"g-{tag}",
                },
                "model": {"kind": "python", "path": f"{HERE / 'slow_model.py'}:predict"},
                "preprocess": {"standardize": False},
                "metrics": {"enabled": False},
                "shutdown": {"timeout_s": budget_s},
            }
        )
    )
    log_path = workdir / f"{tag}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "streamer"), "run", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BENCH_SECONDS_PER_ROW": str(per_row_s)},
        )
    try:
        deadline = time.monotonic() + 120
        while "partitions assigned" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not start; see {log_path}")
            time.sleep(0.2)
        time.sleep(10.0)  # the consumer fills max_in_flight at once; let the model work a while
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=600)
        seconds = time.monotonic() - started
        print(f"budget {budget_s:.0f}s: SIGTERM to exit {seconds:.2f}s, exit {code}")
    finally:
        if process.poll() is None:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--seconds-per-row", type=float, default=0.005)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        for _ in range(args.runs):
            one_run(broker, Path(tmp), args.budget, args.seconds_per_row)


if __name__ == "__main__":
    main()
