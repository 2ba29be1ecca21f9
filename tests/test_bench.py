"""scripts/bench.py runs end to end and writes its table (timings are not asserted)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
    assert "dgbatch / bare aiohttp" in done.stdout
