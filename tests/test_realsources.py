"""Real sources of items stored redacted (presigned URLs): at hand until each is sent, never
in the state, and not in Python's memory either (``batch.realsources``)."""

from __future__ import annotations

import os
import sqlite3
import threading
import tracemalloc
from pathlib import Path

import pytest
from conftest import KEY, Cli, make_wav, read_state_rows, static_server

from batch.emulator import EmulatorConfig, run_in_thread
from batch.job import _watch
from batch.models import Filters
from batch.realsources import RealSources, _scratch, scratch_folder
from batch.sources import expand_sources

SIGNED = "X-Amz-Credential=AKIAEXAMPLE&X-Amz-Security-Token={token}&X-Amz-Signature={n:064x}"


def test_the_first_source_of_an_id_stays_until_replaced() -> None:
    sources = RealSources()
    assert sources.get("a", "stored") == "stored"  # none yet: no database at all
    assert sources.add("a", "https://x/a?sig=1") is None
    assert sources.add("a", "https://x/a?sig=2") == "https://x/a?sig=1"
    assert sources.get("a", "stored") == "https://x/a?sig=1"
    sources.replace("a", "https://x/a?sig=2")
    assert sources.get("a", "stored") == "https://x/a?sig=2"
    assert sources.get("b", "stored b") == "stored b"
    sources.close()
    assert sources.add("c", "https://x/c?sig=3") is None  # a planner still running: ignored
    assert sources.get("a", "stored") == "stored"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the file through /proc")
def test_what_reaches_the_temporary_file_holds_no_signature() -> None:
    """SQLite spills the database past its few MB of cache to a file it has unlinked; its
    blocks stay on that disk afterwards, so what it holds is sealed with a key only the
    process's memory has. 5,000 URLs of 1 KB spill; no signature or token is in the file,
    and every source comes back whole. The file is in the folder errors name."""
    before = _open_deleted_files()
    token = "IQoJb3JpZ2luX2VjEJr" * 40
    urls = {f"id{n}": f"https://b/c{n}.wav?{SIGNED.format(token=token, n=n)}" for n in range(5000)}
    sources = RealSources()
    for item_id, url in urls.items():
        sources.add(item_id, url)
    spilled = {fd: target for fd, target in _open_deleted_files().items() if fd not in before}
    contents = b"".join(Path(fd).read_bytes() for fd in spilled)
    assert all(target.startswith(scratch_folder()) for target in spilled.values()), spilled
    assert spilled and len(contents) > 1_000_000, "the database did not spill to its file"
    assert b"IQoJb3JpZ2lu" not in contents and b"X-Amz-Signature" not in contents
    assert all(sources.get(item_id, "") == url for item_id, url in urls.items())
    sources.close()


def _open_deleted_files() -> dict[str, str]:
    """``/proc/self/fd`` entry → path of the files this process has open and unlinked."""
    found = {}
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # the listing's own descriptor, closed since
            continue
        if target.endswith(" (deleted)"):
            found[str(fd)] = target
    return found


def test_planning_keeps_presigned_urls_out_of_python_memory(tmp_path: Path) -> None:
    """A run needs each presigned URL until it sends it, maybe hours after planning; a
    million of them are over a GB. 20,000 URLs of ~1 KB held in a dict were 30 MB of traced
    memory; in the temporary database, none (its few MB of cache are SQLite's)."""
    manifest = tmp_path / "urls.txt"
    token = "IQoJb3JpZ2luX2VjEJr" * 40
    urls = [
        f"https://b.s3.amazonaws.com/c{n}.wav?{SIGNED.format(token=token, n=n)}\n"
        for n in range(20_000)
    ]
    manifest.write_text("".join(urls))
    sources = RealSources()
    tracemalloc.start()
    try:
        items = list(_watch(expand_sources([str(manifest)], Filters()), sources, threading.Event()))
        held, _ = tracemalloc.get_traced_memory()
        del items[1:]
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "REDACTED" in items[0].id
    assert sources.get(items[0].id, "") == urls[0].strip()
    assert held > 10e6  # the list of items itself: the measure sees what is held
    assert after < 3e6, f"{after / 1e6:.1f} MB still traced once the items are dropped"
    sources.close()


def _signed_manifest(tmp_path: Path, base: str, count: int) -> Path:
    manifest = tmp_path / "urls.txt"
    manifest.write_text(
        "".join(f"{base}/a.wav?n={n}&X-Amz-Signature={n:064x}\n" for n in range(count))
    )
    return manifest


def test_no_room_for_the_temporary_database_stops_the_run_with_its_reason(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real sources cannot be kept (TMPDIR full): exit 1 naming the folder, the reason
    and what to do, nothing sent; not an internal error."""

    def full(self: RealSources) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RealSources, "_open", full)
    manifest = _signed_manifest(tmp_path, "http://127.0.0.1:9", 3)
    result = dgbatch("run", str(manifest), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert f"{scratch_folder()}: cannot keep the real sources" in result.output
    assert "database or disk is full" in result.output and "SQLITE_TMPDIR" in result.output
    assert "internal error" not in result.output
    assert dgbatch.emulator is not None and dgbatch.emulator.log == []


def test_the_temporary_database_failing_mid_run_stops_it_and_loses_nothing(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the temporary database failing while sending stops the run (exit 1, its
    reason shown); the items stay pending, and the next run sends them."""
    make_wav(tmp_path / "media" / "a.wav")
    with static_server(tmp_path / "media") as base:
        manifest = _signed_manifest(tmp_path, base, 3)
        args = ("run", str(manifest), "--out", str(tmp_path / "out"), "-c", "1")
        with monkeypatch.context() as patch:
            patch.setattr(RealSources, "get", _unreadable)
            first = dgbatch(*args)
        assert first.exit_code == 1, first.output
        assert "cannot keep the real sources" in first.output
        assert "internal error" not in first.output
        rows = read_state_rows(tmp_path / "out" / ".dgbatch" / "state.sqlite")
        assert {r["status"] for r in rows} == {"pending"}
        again = dgbatch(*args)
    assert again.exit_code == 0, again.output
    assert dgbatch.emulator is not None and len(dgbatch.emulator.log) == 3


def _unreadable(self: RealSources, item_id: str, default: str) -> str:
    with _scratch():
        raise sqlite3.OperationalError("disk I/O error")


@pytest.mark.timeout(60)
def test_the_temporary_database_failing_with_requests_in_flight_loses_no_paid_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a budget, with a presigned URL in the run and 8 requests in flight when the
    temporary database fails: the run stops, and every answer Deepgram gave was written (or
    kept). Files never look it up (their paths are never redacted), and a failure reading it
    no longer left the dispatch loop without waiting for the requests in flight."""
    calls = [0]
    real_get = RealSources.get

    def failing_after_8(self: RealSources, item_id: str, default: str) -> str:
        calls[0] += 1
        if calls[0] > 8:
            return _unreadable(self, item_id, default)
        return real_get(self, item_id, default)

    make_wav(tmp_path / "media" / "a.wav", 0.2)
    files = [make_wav(tmp_path / "in" / f"f{n:03}.wav", 0.2, tone=n) for n in range(40)]
    with (
        static_server(tmp_path / "media") as base,
        run_in_thread(EmulatorConfig(key=KEY, latency=1.0)) as emu,
    ):
        manifest = tmp_path / "list.txt"
        signed = f"{base}/a.wav?n=0&X-Amz-Signature={'f' * 64}\n"
        manifest.write_text(signed + "".join(f"{f}\n" for f in files))
        monkeypatch.setattr(RealSources, "get", failing_after_8)
        out = tmp_path / "out"
        result = Cli(emu)("run", str(manifest), "--out", str(out), "-c", "8",
                          "--max-audio-hours", "100")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "cannot keep the real sources" in result.output
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    answered = [r for r in emu.log if r.status == 200]
    assert len([r for r in rows if r["status"] == "done"]) == len(answered)
    assert len(answered) >= 8  # the failure came with requests in flight
