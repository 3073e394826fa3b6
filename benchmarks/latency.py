"""(c) end-to-end latency: one system at one fixed rate, each program in its own process.

A row of (c) starts a fresh embedded broker (Tansu's memory store slows down as
earlier rows' topics pile up), then, each in its own interpreter so that none
shares a GIL with another: the system under test, a reader of its output topic,
and a generator producing at a fixed rate. Latency = the time the reader sees an
output - the CreateTime of its input, per input (partition, offset), after the
first 10% of the inputs (warm-up).

The systems:

- ``passthrough``: the floor, a bare confluent consume -> produce loop
  (passthrough.py): two broker hops and nothing else;
- ``passthrough-kafka-python``: the same loop with kafka-python's clients, the floor
  of streamer's kafka-python backend (what its client costs with nothing else);
- ``handoffs``: the floor with ``HANDOFFS`` thread hops per batch (each batch told
  through a chain of Pykka actors, the last one producing: streamer's consumer ->
  preprocessor -> model -> producer shape, and nothing else of streamer);
- ``handoffs-kafka-python``: the same probe on kafka-python's pass-through, the floor
  of that shape on streamer's kafka-python backend;
- ``scoring``: the bare scoring loop, the same loop decoding with orjson,
  scoring with numpy and producing streamer's output document (:func:`scoring`);
- ``streamer-confluent`` and ``streamer-kafka-python``: ``streamer run`` with
  its defaults (``--set section.key=value`` changes one).

Every client takes its first record with ``poll(timeout)`` and then what is
prefetched with ``consume(n, 0)``. Used by ``bench.py`` (c); alone:

    python benchmarks/latency.py measure --system passthrough --rate 10000 --seconds 15
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTITIONS = 4
SYSTEMS = (
    "passthrough",
    "passthrough-kafka-python",
    "handoffs",
    "handoffs-kafka-python",
    "scoring",
    "streamer-kafka-python",
    "streamer-confluent",
)
# The systems that run passthrough.py (the others start streamer or the scoring loop).
PASS_THROUGHS = ("passthrough", "passthrough-kafka-python", "handoffs", "handoffs-kafka-python")
# The thread hops of the ``handoffs`` probes: streamer's three actor handoffs per batch.
HANDOFFS = 3
# The clients of the floor and the generator: the settings of a latency test on Tansu.
FETCH_WAIT_MS = 5
LINGER_MS = 5


# --- the programs (each runs in its own interpreter) -------------------------------


def generate(bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    """Produce ``rate`` demo records/s for ``seconds``; the CreateTimes are read back later."""
    import random

    from confluent_kafka import Producer

    from streamer.core.demo_data import make_record

    rng = random.Random(2)
    values = [make_record(rng, bad_ratio=0.0) for _ in range(20_000)]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": LINGER_MS,
            "acks": "all",
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
            # At most 5 requests in flight, like every system's producer (and the Java
            # client's default since Kafka 3.0): without it librdkafka pipelines a small
            # request every linger however far behind the broker is, and Tansu fell
            # seconds behind within a row, for the floor too (docs/performance.md). The
            # CreateTime is still taken at produce(), so a wait here counts as latency.
            "enable.idempotence": True,
        }
    )
    # One record sent and acknowledged before the clock starts: an idempotent producer
    # first asks the broker for its producer id (0.5 s on Tansu), and a row that began
    # with that wait began with a backlog of ~1 s of records (30,000 at 30,000/s), whose
    # catch-up ran past the warm-up into the measured inputs and set their p99
    # (docs/performance.md). Upstream producers of a long-running pipeline are connected.
    key, value = values[-1]
    producer.produce(topic, value, key)
    if producer.flush(30) > 0:
        msg = "the generator's first record was not acknowledged in 30 s"
        raise RuntimeError(msg)
    return 1 + produce_at_rate(producer, topic, values, rate, seconds, pause_s=0.001)


def produce_at_rate(
    producer: Any,
    topic: str,
    values: Any,
    rate: float,
    seconds: float,
    *,
    pause_s: float,
    stop: Any = None,
) -> int:
    """Produce ``values`` in turn at ``rate`` records/s for ``seconds`` (or until ``stop`` is
    set) on a confluent Producer, no callback per record; flush; return how many were sent."""
    sent = 0
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds or (stop is not None and stop.is_set()):
            break
        for _ in range(max(0, int(elapsed * rate) - sent)):
            key, value = values[sent % len(values)]
            try:
                producer.produce(topic, value, key)
            except BufferError:  # the local queue is full: let it drain
                break
            sent += 1
        producer.poll(0)
        time.sleep(pause_s)
    producer.flush(60)
    return sent


def read(bootstrap: str, topic: str, out: Path) -> None:
    """Note (output bytes, ms seen, output CreateTime) until SIGTERM; then write lines of
    "partition offset ms_seen output_create_time_ms scored_at".

    It does as little as possible while the clock runs: the outputs are parsed at the end.
    """
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tail-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "fetch.queue.backoff.ms": 1,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    print("ready", flush=True)
    seen: list[tuple[bytes, float, int]] = []
    while not stopping:
        first = consumer.poll(0.05)
        if first is None:
            continue
        received = time.time() * 1000
        for message in [first, *consumer.consume(10_000, 0)]:
            if message.error() is None:
                seen.append((message.value(), received, message.timestamp()[1]))
    consumer.close()
    with out.open("wb") as file:
        for value, received, produced in seen:
            # The output's CreateTime is when the system called produce(): it splits a
            # record's time into the first hop and the system, then the second hop.
            doc = orjson.loads(value)
            file.write(
                b"%d %d %.3f %d %s\n"
                % (
                    doc["partition"],
                    doc["offset"],
                    received,
                    produced,
                    doc.get("scored_at", "").encode(),
                )
            )


def scoring(bootstrap: str, topic: str, output: str, session_ms: int) -> None:
    """The bare scoring loop: poll, decode, score with numpy, produce streamer's document."""
    from confluent_kafka import Consumer, Producer

    sys.path.insert(0, str(HERE))
    from bare import _output, _scorer  # the (a) floor's decoding, model and output

    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    assigned: list[Any] = []
    score = _scorer()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"scoring-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "fetch.queue.backoff.ms": 10,
            "queued.max.messages.kbytes": 4096,
            "fetch.max.bytes": 4 << 20,
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": 1000,
        }
    )
    consumer.subscribe([topic], on_assign=lambda _c, parts: assigned.extend(parts))
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": LINGER_MS,
            "partitioner": "murmur2_random",
        }
    )
    announced = False
    while not stopping:
        first = consumer.poll(0.05)
        if not announced and assigned:
            print("ready", flush=True)
            announced = True
        if first is None:
            producer.poll(0)
            continue
        messages = [m for m in [first, *consumer.consume(10_000, 0)] if m.error() is None]
        by_partition: dict[int, list[Any]] = {}
        for m in messages:
            by_partition.setdefault(m.partition() or 0, []).append(m)
        for partition, chunk in by_partition.items():
            scores = score([m.value() or b"" for m in chunk])
            encode = _output(topic, partition)
            for m, s in zip(chunk, scores, strict=True):
                producer.produce(output, encode(m.key(), m.offset() or 0, s), m.key())
        producer.poll(0)
    producer.flush(10)
    consumer.close()


# --- the orchestration ---------------------------------------------------------------


def _python(*arguments: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__)), *arguments], stdout=stdout, text=True
    )


def _wait_ready(process: subprocess.Popen[str], what: str) -> None:
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        msg = f"{what} exited with {process.wait()} before it was ready"
        raise RuntimeError(msg)


def _stop(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_times(bootstrap: str, topic: str, count: int) -> dict[tuple[int, int], int]:
    """(partition, offset) -> CreateTime (ms) of the first ``count`` records of a topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"times-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    times: dict[tuple[int, int], int] = {}
    deadline = time.monotonic() + 120
    try:
        while len(times) < count and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                if message.error() is None:
                    times[(message.partition(), message.offset())] = message.timestamp()[1]
    finally:
        consumer.close()
    return times


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def pin_apart(broker_pid: int, cpus: set[int], *, alone: bool = False) -> set[int]:
    """Pin the broker to ``cpus``, and this process with it (or, ``alone``, to the others).

    Returns the other CPUs, for the system under test.
    """
    rest = set(os.sched_getaffinity(0)) - cpus
    if not rest:
        msg = f"broker CPUs {sorted(cpus)} leave no CPU to the system under test"
        raise ValueError(msg)
    pin_threads(broker_pid, cpus)
    pin_threads(os.getpid(), rest if alone else cpus)
    return rest


def _create_topics(bootstrap: str, *names: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    dlq = [NewTopic(f"{names[0]}.dlq", 1, 1)]
    futures.update(admin.create_topics(dlq))
    for future in futures.values():
        future.result(30)


def _start_system(
    system: str,
    bootstrap: str,
    topic: str,
    output: str,
    workdir: Path,
    settings: dict[str, dict[str, Any]],
    session_ms: int,
) -> tuple[subprocess.Popen[Any], Any]:
    """Start the system under test; returns it and what tells it is ready."""
    if system in PASS_THROUGHS:
        command = [sys.executable, str(HERE / "passthrough.py"), "--bootstrap", bootstrap]
        command += ["--topic", topic, "--output", output, "--session-ms", str(session_ms)]
        command += ["--fetch-wait-ms", str(FETCH_WAIT_MS), "--linger-ms", str(LINGER_MS)]
        if system.endswith("-kafka-python"):
            command += ["--client", "kafka-python"]
        if system.startswith("handoffs"):
            command += ["--handoffs", str(settings.get("probe", {}).get("handoffs", HANDOFFS))]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        return process, None
    if system == "scoring":
        process = _python(
            "scoring",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--output",
            output,
            "--session-ms",
            str(session_ms),
        )
        return process, None
    sys.path.insert(0, str(HERE))
    from bench import Streamer

    backend = system.removeprefix("streamer-")
    streamer = Streamer(
        workdir,
        bootstrap,
        backend,
        topic,
        output,
        session_timeout_s=session_ms / 1000,
        sections=settings,
    )
    return streamer.process, streamer


def measure(
    system: str,
    rate: float,
    seconds: float,
    *,
    bootstrap: str | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    session_ms: int = 6000,
    keep: Path | None = None,
    broker_cpus: set[int] | None = None,
    broker_alone: bool = False,
) -> dict[str, Any]:
    """One row: a fresh broker (unless ``bootstrap``), the system, a reader, a generator.

    ``broker_cpus``: the fresh broker, the generator and the reader run on these CPUs, the
    system under test on the others (the broker on hardware of its own, as in production,
    as far as one machine allows). This process is pinned with them, for good. With
    ``broker_alone`` the broker has ``broker_cpus`` to itself, and the generator, the
    reader and the system under test share the others for the row: every system then
    competes for its CPUs with the same two clients, and none with the broker.

    Returns the quantiles (ms), the records sent and answered, the CPU of the system
    and of the broker (share of one core while the generator ran), the exit code,
    and streamer's metrics at the end (``exposition``).
    """
    from streamer.devtools.broker import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="latency-")))
        broker_pid = 0
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            broker_pid = broker.pid
        system_cpus = None
        if broker_cpus and broker_pid:
            if broker_alone:
                # Pinned for this row only (bench.py measures in its own process).
                every_cpu = os.sched_getaffinity(0)
                stack.callback(pin_threads, os.getpid(), every_cpu)
            # The generator and the reader start later and inherit this process's CPUs.
            system_cpus = pin_apart(broker_pid, broker_cpus, alone=broker_alone)
        tag = uuid.uuid4().hex[:8]
        topic, output = f"lat-in-{tag}", f"lat-out-{tag}"
        _create_topics(bootstrap, topic, output)
        seen_file = workdir / "seen.txt"
        run = _Run(system, bootstrap, workdir, settings or {}, session_ms)
        try:
            run.start(topic, output)
            if system_cpus:
                # Its threads then, and those they start later (they inherit it).
                pin_threads(run.pid, system_cpus)
            run.reader = _python(
                "read", "--bootstrap", bootstrap, "--topic", output, "--out", str(seen_file)
            )
            _wait_ready(run.reader, "the reader")
            generator = _python(
                "generate", "--bootstrap", bootstrap, "--topic", topic,
                "--rate", str(rate), "--seconds", str(seconds),
            )  # fmt: skip
            stack.callback(generator.kill)  # a no-op once it has exited
            pids = [run.pid, broker_pid]
            before = [cpu_seconds(pid) for pid in pids]
            sent = int(generator.communicate(timeout=seconds + 120)[0].strip())
            cpu = [(cpu_seconds(pid) - b) / seconds for pid, b in zip(pids, before, strict=True)]
            times = create_times(bootstrap, topic, sent)
            time.sleep(min(5.0, 1.0 + seconds / 10))  # the last outputs
            exposition = run.metrics()
        finally:
            code = run.stop()
        rows = [line.split() for line in seen_file.read_text().splitlines()]
        if keep is not None:
            keep.write_text(seen_file.read_text())
            keep.with_suffix(".times").write_text(
                "\n".join(f"{p} {o} {t}" for (p, o), t in times.items())
            )
    result = _quantiles(rows, times)
    result.update(
        system=system,
        rate=rate,
        sent=sent,
        exit=code,
        settings=settings or {},
        cpu_system=round(cpu[0], 3),
        cpu_broker=round(cpu[1], 3) if broker_pid else 0.0,
        layout=_layout(broker_cpus if broker_pid else None, alone=broker_alone),
        exposition=exposition,
    )
    return result


def _layout(broker_cpus: set[int] | None, *, alone: bool) -> str:
    """Where a row's programs ran, in words."""
    if not broker_cpus:
        return "every program on every CPU"
    cpus = ",".join(map(str, sorted(broker_cpus)))
    if alone:
        return f"the broker alone on CPU {cpus}"
    return f"the broker, the generator and the reader on CPU {cpus}"


class _Run:
    """The system under test and its reader, started and stopped together."""

    def __init__(
        self,
        system: str,
        bootstrap: str,
        workdir: Path,
        settings: dict[str, dict[str, Any]],
        session_ms: int,
    ) -> None:
        self.system = system
        self._bootstrap = bootstrap
        self._workdir = workdir
        self._settings = settings
        self._session_ms = session_ms
        self._process: subprocess.Popen[Any] | None = None
        self._streamer: Any = None
        self.reader: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def start(self, topic: str, output: str) -> None:
        """Start the system and wait until it holds its partitions."""
        self._process, self._streamer = _start_system(
            self.system, self._bootstrap, topic, output, self._workdir, self._settings,
            self._session_ms,
        )  # fmt: skip
        if self._streamer is None:
            _wait_ready(self._process, self.system)
            return
        deadline = time.monotonic() + 120
        while not self._streamer.ready():
            if time.monotonic() > deadline:
                msg = f"{self.system} was not ready in 120 s"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def metrics(self) -> str:
        return self._streamer.metrics() if self._streamer is not None else ""

    def stop(self) -> int:
        """Stop the reader (it then writes what it saw), then the system; its exit code."""
        if self.reader is not None:
            _stop(self.reader)
        if self._streamer is not None:
            return int(self._streamer.stop())
        return _stop(self._process) if self._process is not None else -1


def _quantiles(rows: list[list[str]], times: dict[tuple[int, int], int]) -> dict[str, Any]:
    """p50, p95, p99 and max of (seen - CreateTime) of the inputs after the first 10%.

    An input whose output was not seen counts as infinitely late, so that a system
    that fell behind shows it instead of looking fast on what it did answer.

    Two splits of the median say where a row's time went:

    - ``p50_first_third`` and ``p50_last_third``: the median of the inputs created in
      the first and in the last third of the measured time. On Tansu a row whose
      broker falls behind (its memory store slows as the topics grow, and it shares
      the cores) has a last third many times the first, whatever the system: the
      row then measures the broker, not the system (docs/performance.md).
    - ``hop1_p50`` and ``hop2_p50``: CreateTime -> the output's CreateTime (the first
      hop and the system, up to its ``produce()``), and the output's CreateTime ->
      seen (the second hop), medians over the answered inputs.
    """
    import numpy as np

    warmup = sorted(times.values())[len(times) // 10] if times else 0
    first_seen: dict[tuple[int, int], tuple[float, float]] = {}
    for row in rows:
        source, seen = (int(row[0]), int(row[1])), float(row[2])
        produced = float(row[3]) if row[3].isdigit() else float("nan")
        if source not in first_seen or seen < first_seen[source][0]:
            first_seen[source] = (seen, produced)
    measured = sorted(
        (created, first_seen.get(source, (float("inf"), float("nan"))))
        for source, created in times.items()
        if created >= warmup
    )
    latencies = np.array([seen - created for created, (seen, _) in measured])
    result: dict[str, Any] = {"answered": sum(1 for source in times if source in first_seen)}
    if len(latencies):
        # "higher": a quantile is a latency that was measured (inf too), never
        # interpolated between two (inf - inf is NaN).
        q = np.percentile(latencies, [50, 95, 99, 100], method="higher").tolist()
        result.update(dict(zip(("p50", "p95", "p99", "max"), q, strict=True)))
        created = np.array([c for c, _ in measured], dtype=float)
        start, end = created[0], created[-1]
        third = (end - start) / 3
        for name, chosen in (
            ("p50_first_third", created <= start + third),
            ("p50_last_third", created >= end - third),
        ):
            result[name] = float(np.percentile(latencies[chosen], 50, method="higher"))
        produced = np.array([p for _, (_, p) in measured])
        hop1 = produced - created
        hop2 = latencies + created - produced
        answered = np.isfinite(hop1) & np.isfinite(hop2)
        if answered.any():
            result["hop1_p50"] = float(np.median(hop1[answered]))
            result["hop2_p50"] = float(np.median(hop2[answered]))
    return result


def _parse_settings(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` (value as JSON, else text) into config sections."""
    settings: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        section, _, key = name.partition(".")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        settings.setdefault(section, {})[key] = value
    return settings


def _cpus(listed: str) -> set[int] | None:
    return {int(c) for c in listed.split(",")} if listed else None


def exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM's handler of a driver (this one's and bench.py's): unwind, exit 128 + signum.

    So every process it started, and the broker, are stopped: killed outright, the
    broker (a session of its own) kept running, with its topics.
    """
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    rd = sub.add_parser("read")
    sc = sub.add_parser("scoring")
    me = sub.add_parser("measure")
    for p in (gen, rd, sc):
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
    gen.add_argument("--rate", type=float, required=True)
    gen.add_argument("--seconds", type=float, required=True)
    rd.add_argument("--out", type=Path, required=True)
    sc.add_argument("--output", required=True)
    sc.add_argument("--session-ms", type=int, default=6000)
    me.add_argument("--system", required=True, help=f"[LABEL=]SYSTEM, SYSTEM one of {SYSTEMS}")
    me.add_argument("--rate", type=float, required=True)
    me.add_argument("--seconds", type=float, default=15.0)
    me.add_argument("--bootstrap", help="an existing broker instead of a fresh one")
    me.add_argument("--set", action="append", default=[], help="streamer: section.key=value")
    me.add_argument("--keep", type=Path, help="write what the reader saw here")
    me.add_argument("--metrics", action="store_true", help="print streamer's exposition too")
    me.add_argument(
        "--broker-cpus",
        default="",
        help="pin the fresh broker, the generator and the reader to these CPUs (e.g. '1'), "
        "the system under test to the others",
    )
    me.add_argument(
        "--broker-alone",
        action="store_true",
        help="with --broker-cpus: the broker alone on those CPUs, the generator and the "
        "reader beside the system under test",
    )
    args = parser.parse_args()
    if args.command == "generate":
        print(generate(args.bootstrap, args.topic, args.rate, args.seconds), flush=True)
    elif args.command == "read":
        read(args.bootstrap, args.topic, args.out)
    elif args.command == "scoring":
        scoring(args.bootstrap, args.topic, args.output, args.session_ms)
    else:
        signal.signal(signal.SIGTERM, exit_on_sigterm)
        label, _, system = args.system.rpartition("=")
        if system not in SYSTEMS:
            parser.error(f"--system {args.system!r}: the system is one of {', '.join(SYSTEMS)}")
        result = measure(
            system, args.rate, args.seconds, bootstrap=args.bootstrap,
            settings=_parse_settings(args.set), keep=args.keep,
            broker_cpus=_cpus(args.broker_cpus), broker_alone=args.broker_alone,
        )  # fmt: skip
        exposition = result.pop("exposition")
        print(json.dumps({"label": label or system, **result}), flush=True)
        if args.metrics:
            print(exposition)
    return 0


if __name__ == "__main__":
    sys.exit(main())
