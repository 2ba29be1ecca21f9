"""Chaos: 1,000 items against an emulator that faults 30 % of requests lose nothing."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KEY, Cli, read_state_rows
from reliability_helpers import (
    assert_outputs_match,
    digest,
    leftover_temp_files,
    make_tiny_wavs,
)

from batch.emulator import DEFAULT_FAULTS, Emulator, EmulatorConfig, run_in_thread

ITEMS = 1000


@pytest.fixture
def chaotic() -> Iterator[Emulator]:
    """Every fault Deepgram traffic sees, on 30 % of requests; Retry-After on half the 429s."""
    config = EmulatorConfig(key=KEY, fault_rate=0.3, seed=4, retry_after_seconds=0.01)
    with run_in_thread(config) as emu:
        yield emu


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_chaos_every_item_done_exactly_as_sent(chaotic: Emulator, tmp_path: Path) -> None:
    """All items end done, each output answers its own input, none is partial, and the
    attempts the report counts are exactly the requests the emulator saw. An item given
    two 200s without a transcript (each billed) fails instead of paying on; a run with
    ``--retry-failed`` finishes those."""
    audio = make_tiny_wavs(tmp_path / "in", ITEMS)
    out = tmp_path / "out"
    command = (
        "run", str(tmp_path / "in"), "--out", str(out),
        "--concurrency", "32", "--max-retries", "15", "--backoff-cap", "0.05",
    )  # fmt: skip
    result = Cli(chaotic)(*command)
    assert result.exit_code in (0, 1), result.output
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    failed = {str(r["source"]): int(str(r["attempts"])) for r in rows if r["status"] == "failed"}
    assert all("a second 200 without a transcript" in str(r["error"]) for r in rows if r["error"])
    if failed:  # their attempts go back to 0 with --retry-failed: counted here
        assert Cli(chaotic)(*command, "--retry-failed").exit_code == 0
        rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert [r["status"] for r in rows] == ["done"] * ITEMS
    for path in audio:
        assert_outputs_match(path, out / path.stem)
    assert leftover_temp_files(out) == []

    log = list(chaotic.log)
    faults = Counter(record.fault for record in log)
    assert set(DEFAULT_FAULTS) <= set(faults), faults
    sent_per_sha = Counter(record.sha256 for record in log)
    report = [json.loads(line) for line in (out / ".dgbatch" / "report.jsonl").open()]
    by_source = {row["source"]: row["attempts"] + failed.get(row["source"], 0) for row in report}
    assert sum(by_source.values()) == len(log)
    assert all(by_source[str(p)] == sent_per_sha[digest(p)] for p in audio)
