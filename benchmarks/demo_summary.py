"""A long ``streamer demo`` and its closing summary: the summary's time and peak RSS.

    .venv/bin/python benchmarks/demo_summary.py                 # 10 minutes at 5000 records/s
    .venv/bin/python benchmarks/demo_summary.py --duration 60   # a shorter one

Not part of CI. It runs ``streamer demo --duration D`` in a subprocess and
watches its output. The summary phase starts at the demo's ``reconciling:
reading back ...`` line and ends at its ``summary:`` line. At the start the
child's peak-RSS counter is reset (``/proc/PID/clear_refs``), so that the
peak reported for the summary is the summary's own, not the pipeline's; RSS
is also sampled every 50 ms, in case the reset is not allowed. The exit code is
the demo's.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in kB (0 once the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


class Watch:
    """The demo's lines with the time each arrived, and RSS samples of the summary phase."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.summary_started: float | None = None
        self.summary_line: str | None = None
        self.summary_ended: float | None = None
        self.pipeline_peak_kb = 0
        self.sampled_peak_kb = 0
        self.hwm_after_reset_kb = 0
        self.reset = False
        self.lock = threading.Lock()
        self._live = 0

    def follow(self, stream: IO[str]) -> None:
        for raw in stream:
            line = raw.rstrip("\n").split("\r")[-1]
            now = time.monotonic()
            if line.startswith("reconciling: reading back") and self.summary_started is None:
                self._start_summary(now)
            if line.startswith("summary:"):
                with self.lock:
                    self.summary_ended = now
                    self.summary_line = line
                    self.hwm_after_reset_kb = status_kb(self.process.pid, "VmHWM")
            if line.startswith("in "):
                self._live += 1
                if self._live % 60:
                    continue
            print(f"  | {line}", flush=True)

    def _start_summary(self, now: float) -> None:
        pid = self.process.pid
        with self.lock:
            self.summary_started = now
            self.pipeline_peak_kb = status_kb(pid, "VmHWM")
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                self.reset = True
            except OSError:
                self.reset = False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        pid = self.process.pid
        while self.process.poll() is None and self.summary_ended is None:
            self.sampled_peak_kb = max(self.sampled_peak_kb, status_kb(pid, "VmRSS"))
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--summary-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    command = [
        sys.executable,
        "-m",
        "streamer",
        "demo",
        "--duration",
        f"{args.duration:g}",
        "--rate",
        f"{args.rate:g}",
        "--metrics-port",
        "0",
        "--summary-timeout",
        f"{args.summary_timeout:g}",
    ]
    print("$ " + " ".join(command), flush=True)
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    watch = Watch(process)
    assert process.stdout is not None
    assert process.stderr is not None
    readers = [
        threading.Thread(target=watch.follow, args=(stream,), daemon=True)
        for stream in (process.stdout, process.stderr)
    ]
    for reader in readers:
        reader.start()
    code = process.wait()
    for reader in readers:
        reader.join(timeout=10)
    total = time.monotonic() - started
    print(f"demo exit code {code} after {total:.0f}s")
    print(f"summary line: {watch.summary_line}")
    if watch.summary_started is None or watch.summary_ended is None:
        print("the summary phase did not start or did not end")
        return code or 1
    peak_kb = max(watch.sampled_peak_kb, watch.hwm_after_reset_kb if watch.reset else 0)
    print(
        f"summary phase: {watch.summary_ended - watch.summary_started:.1f}s, "
        f"peak RSS {peak_kb / 1024:.0f} MB "
        f"({'VmHWM reset at its start' if watch.reset else 'sampled every 50 ms'}); "
        f"the pipeline phase peaked at {watch.pipeline_peak_kb / 1024:.0f} MB"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
