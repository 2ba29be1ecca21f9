"""Adaptive concurrency against a project limit: does --concurrency 64 behave like 8?

Starts the emulator with ``--max-concurrency LIMIT`` (answers 429 above it) in this process,
then runs ``dgbatch run`` as a subprocess over the same small WAV files twice: once at
``--concurrency LIMIT`` (the right setting) and once at ``--concurrency OVER`` (a user who
asked for too much), with default backoff settings. Prints wall time, throughput, requests
and the share of 429s for each, and the verdict against issue 4's bar: 429 share < 10 %,
throughput within 20 % of the well-configured run.

Usage: .venv/bin/python scripts/bench_adaptive.py [--items 1000] [--latency 0.1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from batch.emulator import Emulator, EmulatorConfig, run_in_thread

KEY = "bench-key-0123456789"


@dataclass
class Result:
    """One run's numbers."""

    concurrency: int
    wall: float
    items: int
    requests: int
    throttled: int
    exit_code: int

    @property
    def rate(self) -> float:
        return self.items / self.wall

    @property
    def share(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0


def make_inputs(folder: Path, count: int) -> None:
    """``count`` distinct 0.1 s WAV files."""
    folder.mkdir(parents=True)
    for index in range(count):
        with wave.open(str(folder / f"a{index:05d}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            freq = 200 + index
            frames = (int(8000 * math.sin(2 * math.pi * freq * n / 8000)) for n in range(800))
            out.writeframes(b"".join(struct.pack("<h", s) for s in frames))


def run_once(emulator: Emulator, inputs: Path, work: Path, concurrency: int) -> Result:
    """One ``dgbatch run`` from scratch; the emulator log is cleared first."""
    out = work / f"out-{concurrency}"
    shutil.rmtree(out, ignore_errors=True)
    emulator.log.clear()
    command = [
        sys.executable, "-m", "batch", "run", str(inputs), "--out", str(out),
        "--api-url", emulator.url, "--concurrency", str(concurrency), "--progress", "none", "-q",
    ]  # fmt: skip
    env = {**os.environ, "DEEPGRAM_API_KEY": KEY}
    started = time.monotonic()
    code = subprocess.run(command, env=env, check=False).returncode
    wall = time.monotonic() - started
    statuses = Counter(record.status for record in list(emulator.log))
    items = len(list(inputs.iterdir()))
    return Result(concurrency, wall, items, sum(statuses.values()), statuses[429], code)


def show(result: Result) -> None:
    print(
        f"  --concurrency {result.concurrency:3d}: exit {result.exit_code}, "
        f"wall {result.wall:6.2f} s, {result.rate:6.1f} items/s, "
        f"{result.requests} requests, {result.throttled} × 429 ({result.share:.1%})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=8, help="emulator --max-concurrency")
    parser.add_argument("--over", type=int, default=64, help="the too-high --concurrency")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = EmulatorConfig(key=KEY, latency=args.latency, max_concurrency=args.limit)
    print(f"{args.items} items, emulator latency {args.latency} s, max-concurrency {args.limit}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp, run_in_thread(config) as emulator:
        work = Path(tmp)
        make_inputs(work / "in", args.items)
        for attempt in range(1, args.repeat + 1):
            print(f"round {attempt}")
            base = run_once(emulator, work / "in", work, args.limit)
            over = run_once(emulator, work / "in", work, args.over)
            show(base)
            show(over)
            ratio = over.rate / base.rate
            good = over.share < 0.10 and ratio >= 0.80 and over.exit_code == base.exit_code == 0
            ok = ok and good
            print(f"  throughput ratio {ratio:.2f}, 429 share {over.share:.1%}: "
                  f"{'PASS' if good else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
