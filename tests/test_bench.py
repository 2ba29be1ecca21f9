"""scripts/bench.py runs end to end and writes its table (timings are not asserted)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SRC_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("curl") is None, reason="the bench compares with curl")
def test_bench_smoke_writes_its_table(tmp_path: Path) -> None:
    """--smoke runs every case once at tiny sizes and fills the generated section."""
    pytest.importorskip("deepgram", reason="the bench compares with deepgram-sdk")
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nHand-written history stays.\n")
    done = subprocess.run(
        [
            sys.executable,
            str(SRC_ROOT / "scripts" / "bench.py"),
            "--smoke",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    assert "Hand-written history stays." in text
    assert "<!-- bench:begin -->" in text and "<!-- bench:end -->" in text
    for case in ("1 rate", "2 latency", "3 peers", "4 upload", "5 state", "6 plan"):
        assert f"| {case} |" in text
    assert "client on CPU" in text or "API on cores of its own: skipped" in text
    assert "200 ms latency: all items in the state" in text
    assert "dgbatch / bare aiohttp" in done.stdout


def _bench() -> Any:
    sys.path.insert(0, str(SRC_ROOT / "scripts"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    return bench


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("0-1", {0, 1}), ("0,2", {0, 2}), ("0-1,4-5\n", {0, 1, 4, 5})],
)
def test_cpu_lists_are_read_as_linux_writes_them(text: str, cpus: set[int]) -> None:
    """``thread_siblings_list`` as /sys writes it: ranges and commas."""
    assert _bench().cpu_list(text) == cpus


@pytest.mark.parametrize(
    ("cores", "split"),
    [
        ([frozenset({0})], None),
        ([frozenset({0}), frozenset({0})], None),
        ([frozenset({0}), frozenset({1})], ({0}, {1})),
        ([frozenset({0, 2}), frozenset({1, 3}), frozenset({2, 0}), frozenset({3, 1})],
         ({0, 2}, {1, 3})),
        ([frozenset({i}) for i in range(5)], ({0, 1}, {2, 3, 4})),
    ],
    ids=["one-core", "one-core-twice", "two-cores", "smt-pairs", "odd"],
)  # fmt: skip
def test_the_api_and_the_client_never_share_a_core(
    cores: list[frozenset[int]], split: tuple[set[int], set[int]] | None
) -> None:
    """The pinned rate case splits whole cores, hardware threads of one core together."""
    assert _bench().halves(cores) == split
