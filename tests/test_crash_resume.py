"""Crash-resume: a real ``dgbatch run`` killed at random points loses and re-buys (almost) nothing.

The run is a subprocess (``python -m batch run``); the emulator runs in a thread of the test
process and logs every request with the digest of the audio it received, so the test knows
exactly what was sent, and how many times.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KEY, dgbatch_subprocess_cmd, read_state_rows
from reliability_helpers import assert_outputs_match, leftover_temp_files, make_tiny_wavs

from batch.emulator import Emulator, EmulatorConfig, run_in_thread
from batch.signals import SignalLatch

ITEMS = 400
CONCURRENCY = 8
KILLS = 5


@pytest.fixture
def slow_emulator() -> Iterator[Emulator]:
    """50 ms per request: a run takes seconds, so kills land mid-flight."""
    with run_in_thread(EmulatorConfig(key=KEY, latency=0.05)) as emu:
        yield emu


def start_run(emulator: Emulator, tmp_path: Path) -> subprocess.Popen[bytes]:
    command = [
        *dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
        "--api-url", emulator.url, "--concurrency", str(CONCURRENCY), "--progress", "none",
    ]  # fmt: skip
    env = {**os.environ, "DEEPGRAM_API_KEY": KEY}
    return subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE)


def wait_for_requests(emulator: Emulator, count: int, process: subprocess.Popen[bytes]) -> None:
    """Block until the emulator has seen ``count`` requests in total (or the run ended)."""
    deadline = time.monotonic() + 30
    while len(emulator.log) < count and process.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)


def interrupt_runs(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals, seed: int
) -> list[int | None]:
    """Start the run KILLS times, each time sending ``sig`` after a random number of
    requests plus a random few milliseconds (mid-request, mid-write, mid-commit)."""
    rng = random.Random(seed)
    codes: list[int | None] = []
    for _ in range(KILLS):
        process = start_run(emulator, tmp_path)
        wait_for_requests(emulator, len(emulator.log) + rng.randint(1, 50), process)
        time.sleep(rng.uniform(0, 0.03))
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
        codes.append(process.returncode)
        assert b"Traceback" not in stderr, stderr.decode()
    return codes


def finish_and_check(emulator: Emulator, tmp_path: Path, audio: list[Path]) -> Counter[str]:
    """One last uninterrupted run: everything done, every output whole and its own."""
    process = start_run(emulator, tmp_path)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    out = tmp_path / "out"
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert Counter(r["status"] for r in rows) == {"done": ITEMS}
    for path in audio:
        assert_outputs_match(path, out / path.stem)
    assert leftover_temp_files(out) == []
    return Counter(record.sha256 for record in emulator.log if record.sha256)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_at_random_points_then_resume(slow_emulator: Emulator, tmp_path: Path) -> None:
    """Five SIGKILLs: all done in the end, and each kill re-sent at most the requests in
    flight and the answers waiting for their outputs (each at most ``-c``)."""
    audio = make_tiny_wavs(tmp_path / "in", ITEMS)
    codes = interrupt_runs(slow_emulator, tmp_path, signal.SIGKILL, seed=11)
    assert codes == [-signal.SIGKILL] * KILLS
    sent = finish_and_check(slow_emulator, tmp_path, audio)
    assert len(sent) == ITEMS
    assert sum(sent.values()) <= ITEMS + KILLS * 2 * CONCURRENCY


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_exits_130_and_resends_nothing(slow_emulator: Emulator, tmp_path: Path) -> None:
    """Five SIGTERMs: each run exits 130 after its in-flight requests finish; nothing is
    ever sent twice."""
    audio = make_tiny_wavs(tmp_path / "in", ITEMS)
    codes = interrupt_runs(slow_emulator, tmp_path, signal.SIGTERM, seed=12)
    assert codes == [130] * KILLS
    sent = finish_and_check(slow_emulator, tmp_path, audio)
    assert sent == Counter({digest: 1 for digest in sent})
    assert len(sent) == ITEMS


def wait_for_lock(state_dir: Path, process: subprocess.Popen[bytes]) -> None:
    """Block until ``process`` holds the state lock (its run has started)."""
    lock = state_dir / "state.sqlite.lock"
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if f"pid {process.pid} " in lock.read_text():
                return
        time.sleep(0.001)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_at_any_moment_of_a_run_exits_130(slow_emulator: Emulator, tmp_path: Path) -> None:
    """From the moment the state is opened (planning, between planning and the pool,
    dispatching), SIGTERM ends the run with 130 and leaves nothing running."""
    make_tiny_wavs(tmp_path / "in", 1500)
    codes = []
    for step in range(6):
        process = start_run(slow_emulator, tmp_path)
        wait_for_lock(tmp_path / "out" / ".dgbatch", process)
        time.sleep(step * 0.025)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        codes.append(process.returncode)
    assert codes == [130] * 6
    rows = read_state_rows(tmp_path / "out" / ".dgbatch" / "state.sqlite")
    assert "running" not in {row["status"] for row in rows}


def test_signal_latch_routes_and_remembers() -> None:
    """A signal between phases is remembered and handed to the next phase at once."""
    latch = SignalLatch()
    seen: list[signal.Signals] = []
    assert latch.interruption() is None
    latch(signal.SIGTERM)  # no phase running: only remembered
    with latch.routed_to(seen.append):
        latch(signal.SIGINT)
    assert seen == [signal.SIGTERM, signal.SIGINT]
    assert str(latch.interruption()).startswith("interrupted by SIGINT")
