"""The SQLite state file: plan upserts, output names, claims, results, recovery and the lock."""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    KEY,
    SRC_ROOT,
    Cli,
    dgbatch_subprocess_cmd,
    make_wav,
    on_read_only_mount,
    read_state_rows,
    sent_sha256s,
    sha256_of,
    static_server,
    subprocess_env,
)

from batch.emulator import Emulator
from batch.errors import StateError, StateLocked, StateWriteError, exit_code_of
from batch.models import Item, ItemKind, ItemStatus
from batch.records import Some
from batch.state import Result, State, WorkItem
from batch.urls import url_id


def _item(name: str, fingerprint: str = "10:1", *, error: str | None = None, **kw: object) -> Item:
    item_id = str(kw.pop("id", f"/src/{name}"))
    return Item(
        id=item_id,
        source=item_id,
        kind=ItemKind.FILE,
        name=name,
        size=10,
        fingerprint=fingerprint,
        error=error,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    """A fresh, locked state file."""
    st = State.open(tmp_path / "state.sqlite")
    try:
        yield st
    finally:
        st.close()


def _status(state: State, item_id: str) -> tuple[str, int, str | None]:
    ((status, attempts, error),) = state.query(
        "SELECT status, attempts, error FROM items WHERE id = ?", (item_id,)
    )
    return status, attempts, error


def _finish(state: State, status: ItemStatus, *items: Item) -> None:
    """Claim every pending item and record ``status`` for the given ones."""
    state.claim(100, 0, 1)
    for item in items:
        error = "HTTP 400" if status is ItemStatus.FAILED else None
        state.record(Result(item.id, status, 3, 400 if error else 200, error))
    state.flush()


@pytest.mark.parametrize(
    ("before", "changed", "retry_failed", "after", "attempts"),
    [
        (ItemStatus.PENDING, False, False, "pending", 0),
        (ItemStatus.DONE, False, False, "done", 3),
        (ItemStatus.DONE, False, True, "done", 3),
        (ItemStatus.DONE, True, False, "pending", 0),
        (ItemStatus.FAILED, False, False, "failed", 3),
        (ItemStatus.FAILED, False, True, "pending", 0),
        (ItemStatus.FAILED, True, False, "pending", 0),
    ],
)
@pytest.mark.parametrize("same_run", [False, True])
def test_plan_upsert_semantics(
    state: State,
    before: ItemStatus,
    changed: bool,
    retry_failed: bool,
    after: str,
    attempts: int,
    same_run: bool,
) -> None:
    """Re-planning keeps done/failed items unless the source changed or --retry-failed asks;
    an item that failed in this very run (its source listed again by a later chunk) is
    not sent again by it: it was sent, and a timeout's or a 504's try may have been paid."""
    item = _item("a.wav")
    state.plan([item], run_id=1)
    if before is not ItemStatus.PENDING:
        _finish(state, before, item)
    again = _item("a.wav", "11:2" if changed else "10:1")
    state.plan([again], run_id=1 if same_run else 2, retry_failed=retry_failed)
    if same_run and before is ItemStatus.FAILED and not changed:
        after, attempts = "failed", 3
    status, tries, error = _status(state, item.id)
    assert (status, tries) == (after, attempts)
    if after == "pending":
        assert error is None


def test_a_done_item_keeps_the_params_it_was_sent_with(state: State) -> None:
    """Listed again with other params (twice in one run: one file on two edited lines),
    a done item keeps those it was sent with in ``sent_params``, is no clash, and counts
    once among the items whose lines ask for other params than were sent."""
    item = _item("a.wav", params=(("language", "en"),))
    state.plan([item], run_id=1)
    _finish(state, ItemStatus.DONE, item)
    edited = _item("a.wav", params=(("language", "fr"),))
    state.plan([edited, edited], run_id=2)
    rows = state.query("SELECT id, params, sent_params, status FROM items")
    assert rows == [(item.id, '[["language", "fr"]]', '[["language", "en"]]', "done")]
    assert (state.done_asked_anew(2), state.done_asked_anew(1)) == ((1, ["/src/a.wav"]), (0, []))
    state.plan([_item("a.wav", params=(("language", "en"),))], run_id=3)  # put back
    assert state.done_asked_anew(3).total == 0


def test_a_requeued_item_starts_its_possibly_billed_retries_again(state: State) -> None:
    """A changed source is another recording: its earlier possibly billed retries kept it
    from being re-queued after a 503 (``retry_next`` needs none), as attempts would."""
    item = _item("a.wav")
    state.plan([item], run_id=1)
    state.claim(10, 0, 1)
    state.record(Result(item.id, ItemStatus.FAILED, 2, 0, "timeout", timeout_retries=1))
    state.flush()
    state.plan([item], run_id=2)
    assert state.query("SELECT timeout_retries FROM items") == [(1,)]
    state.plan([_item("a.wav", "11:2")], run_id=3)
    assert state.query("SELECT status, attempts, timeout_retries FROM items") == [("pending", 0, 0)]


def test_tries_noted_before_a_failed_write_are_written_by_the_next(state: State) -> None:
    """A write the disk refused kept the results for the next flush, not the tries noted
    for items waiting to try again (their possibly billed retries among them)."""
    item = _item("a.wav")
    state.plan([item], run_id=1)
    state.claim(10, 0, 1)
    state.note_tries(item.id, 1, 0, 1)
    state._db.execute("PRAGMA query_only = 1")  # every write fails, as on a full disk
    with pytest.raises(StateWriteError):
        state.flush()
    state._db.execute("PRAGMA query_only = 0")
    state.flush()
    assert state.query("SELECT attempts, timeout_retries FROM items") == [(1, 1)]


def test_plan_records_broken_items_as_failed_but_never_undoes_done(state: State) -> None:
    """A malformed entry is a failed item with its reason; a done item stays done."""
    good, broken = _item("a.wav"), _item("b.wav", error="list.jsonl:2: invalid JSON")
    stats = state.plan([good, broken], run_id=1)
    assert (stats.seen, stats.broken) == (2, 1)
    assert _status(state, broken.id) == ("failed", 0, "list.jsonl:2: invalid JSON")
    _finish(state, ItemStatus.DONE, good)
    state.plan([_item("a.wav", error="now broken")], run_id=2)
    assert _status(state, good.id)[0] == "done"


def test_plan_updates_params_and_source(state: State) -> None:
    """The latest plan's params are the ones sent."""
    state.plan([_item("a.wav", params=(("model", "nova-3"),))], run_id=1)
    state.plan([_item("a.wav", params=(("model", "nova-2"),))], run_id=2)
    state.assign_names()
    (work,) = state.claim(10, 0, 2)
    assert work.params == (("model", "nova-2"),)


def _names(state: State) -> dict[str, str]:
    return dict(state.query("SELECT id, out_name FROM items"))


def test_assign_names_keeps_extensions_only_for_shared_stems(state: State) -> None:
    """``a.wav`` + ``a.mp3`` keep their extensions; ``b.wav`` and ``day1/a.wav`` do not."""
    items = [_item(n) for n in ("a.wav", "a.mp3", "b.wav", "day1/a.wav")]
    state.plan(items, run_id=1)
    state.assign_names()
    assert _names(state) == {
        "/src/a.wav": "a.wav",
        "/src/a.mp3": "a.mp3",
        "/src/b.wav": "b",
        "/src/day1/a.wav": "day1/a",
    }


def test_assign_names_breaks_exact_ties_deterministically(state: State) -> None:
    """Two items with the same name get distinct names; the first keeps the plain one."""
    state.plan([_item("a.wav", id="/x/a.wav"), _item("a.wav", id="/y/a.wav")], run_id=1)
    state.assign_names()
    names = _names(state)
    assert names["/x/a.wav"] == "a.wav"
    assert names["/y/a.wav"].startswith("a.wav-")
    assert len(set(names.values())) == 2


def test_assign_names_never_renames_an_item_already_named(state: State) -> None:
    """A later run adding ``a.mp3`` leaves ``a.wav``'s outputs where they are."""
    state.plan([_item("a.wav")], run_id=1)
    state.assign_names()
    state.plan([_item("a.mp3")], run_id=2)
    state.assign_names()
    assert _names(state) == {"/src/a.wav": "a", "/src/a.mp3": "a.mp3"}


@pytest.mark.parametrize(
    ("name", "out_name"),
    [
        ("../../evil.wav", "evil"),
        ("/etc/x.wav", "etc/x"),
        ("a\x00\x1fb.wav", "a__b"),
        ("..", "item"),
    ],
)
def test_names_are_sanitised_before_they_are_stored(state: State, name: str, out_name: str) -> None:
    """``..``, absolute paths and control characters never reach an output name."""
    state.plan([_item(name, id="id:x")], run_id=1)
    state.assign_names()
    assert _names(state) == {"id:x": out_name}


def test_claim_commits_before_sending_and_results_wait_for_flush(state: State) -> None:
    """Claims are visible to another connection at once; results only after a flush."""
    items = [_item(f"{n}.wav") for n in "abc"]
    state.plan(items, run_id=1)
    state.assign_names()
    claimed = state.claim(2, 0, 1)
    assert [w.id for w in claimed] == ["/src/a.wav", "/src/b.wav"]
    assert [r["status"] for r in read_state_rows(state.path)] == ["running", "running", "pending"]
    state.record(Result("/src/a.wav", ItemStatus.DONE, 1, 200, outputs=("o.json",)))
    assert state.pending_results() == 1
    assert read_state_rows(state.path)[0]["status"] == "running"
    state.flush()
    row = read_state_rows(state.path)[0]
    assert (row["status"], row["attempts"], row["outputs"]) == ("done", 1, '["o.json"]')
    assert state.counts() == {"pending": 1, "running": 1, "done": 1, "failed": 0}


_KNOWN = Result(
    "/src/a.wav", ItemStatus.DONE, 1, 200, None, None, "req-1", 1.5, ("a.json",), 0, "empty",
    "/src/b.wav", 2.0,
)  # fmt: skip
_UNKNOWN = Result("/src/a.wav", ItemStatus.PENDING, 2, timeout_retries=1)
_COLUMNS_READ = (
    "status", "attempts", "http_status", "error", "err_code", "request_id", "duration",
    "outputs", "timeout_retries", "warning", "copy_of", "local_duration",
)  # fmt: skip


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ((_KNOWN,), ("done", 1, 200, None, None, "req-1", 1.5, '["a.json"]', 0, "empty",
                     "/src/b.wav", 2.0)),
        ((_UNKNOWN,), ("pending", 2, None, None, None, None, None, None, 1, None, None, None)),
        # what is not known keeps the measured duration and the outputs, clears the rest
        ((_KNOWN, _UNKNOWN), ("pending", 2, None, None, None, None, 1.5, '["a.json"]', 1,
                              None, None, 2.0)),
        ((Result("/src/a.wav", ItemStatus.FAILED, 3, 0, "timed out", "timeout"),),
         ("failed", 3, 0, "timed out", "timeout", None, None, None, 0, None, None, None)),
        # an empty text is "nothing to say", stored as NULL like None
        ((Result("/src/a.wav", ItemStatus.FAILED, 1, 500, "", "", "", 0.0, (), 0, "", ""),),
         ("failed", 1, 500, None, None, None, 0.0, None, 0, None, None, None)),
    ],
)  # fmt: skip
def test_flush_stores_unknown_fields_as_null(
    state: State, results: tuple[Result, ...], expected: tuple[object, ...]
) -> None:
    """Results are bound without None (see ``records.result_row``); what is unknown still reads
    back NULL, and an unknown duration or output list keeps the stored one."""
    state.plan([_item("a.wav")], run_id=1)
    for result in results:
        state.record(result)
        state.flush()
    row = read_state_rows(state.path)[0]
    assert tuple(row[column] for column in _COLUMNS_READ) == expected


def test_recording_never_waits_for_the_database(state: State) -> None:
    """The event loop records results while another thread runs a statement (its lock is
    held here): the result is buffered at once and committed by the next flush."""
    state.plan([_item("a.wav")], run_id=1)
    recorded = threading.Event()

    def record() -> None:
        state.record(Result("/src/a.wav", ItemStatus.DONE, 1, 200))
        recorded.set()

    with state._mutex:  # a flush, a claim or a plan chunk in progress
        worker = threading.Thread(target=record)
        worker.start()
        assert recorded.wait(5)
    worker.join()
    state.flush()
    assert _status(state, "/src/a.wav")[0] == "done"


def test_results_recorded_during_flushes_are_all_committed(state: State) -> None:
    """Four threads record while the main thread keeps flushing: none is lost or doubled."""
    items = [_item(f"{n}.wav") for n in range(2000)]
    state.plan(items, run_id=1)

    def record(part: list[Item]) -> None:
        for item in part:
            state.record(Result(item.id, ItemStatus.DONE, 1, 200, timeout_retries=1))

    workers = [threading.Thread(target=record, args=(items[k::4],)) for k in range(4)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        state.flush()
    state.flush()
    assert state.pending_results() == 0
    assert state.counts()["done"] == 2000
    # timeout_retries adds up: a result committed twice would count twice
    assert state.query("SELECT SUM(timeout_retries) FROM items") == [(2000,)]


def test_results_of_a_failed_flush_go_back_ahead_of_newer_ones(state: State) -> None:
    """A flush that cannot write keeps its results buffered, before those recorded since,
    so the newest result of an item is still the one that sticks."""
    state.plan([_item("a.wav"), _item("b.wav")], run_id=1)
    state.record(Result("/src/a.wav", ItemStatus.PENDING, 1, 503, "busy"))
    state.record(Result("/src/a.wav", ItemStatus.DONE, 2, 200))
    state.record(Result("/src/b.wav", ItemStatus.PENDING, 1, 503, "busy"))
    state.query("PRAGMA query_only = ON")
    with pytest.raises(StateError, match="cannot write the state file"):
        state.flush()
    state.query("PRAGMA query_only = OFF")
    state.record(Result("/src/b.wav", ItemStatus.DONE, 2, 200))
    assert state.pending_results() == 4
    state.flush()
    assert [_status(state, f"/src/{n}.wav")[:2] for n in "ab"] == [("done", 2), ("done", 2)]


def test_claim_continues_after_the_cursor_and_flushes_first(state: State) -> None:
    """The next claim starts after the last rowid and commits buffered results with it."""
    state.plan([_item(f"{n}.wav") for n in "abc"], run_id=1)
    state.assign_names()
    first = state.claim(2, 0, 1)
    state.record(Result(first[0].id, ItemStatus.FAILED, 1, 400, "HTTP 400"))
    (third,) = state.claim(2, first[-1].rowid, 1)
    assert third.id == "/src/c.wav"
    assert read_state_rows(state.path)[0]["status"] == "failed"
    assert state.claim(2, third.rowid, 1) == []


def test_running_items_go_back_to_pending(state: State) -> None:
    """``release_running`` and ``running`` see what a crashed run left in flight."""
    state.plan([_item(f"{n}.wav") for n in "ab"], run_id=1)
    state.assign_names()
    state.claim(10, 0, 1)
    assert [w.id for w in state.running()] == ["/src/a.wav", "/src/b.wav"]
    assert state.release_running() == 2
    assert state.counts()["pending"] == 2
    assert state.running() == []


def test_a_crashed_run_s_running_items_are_sent_once_on_the_next_run(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """Items left ``running`` by a crash (no outputs) become pending and are sent exactly once."""
    src = tmp_path / "calls"
    files = [make_wav(src / f"{n}.wav", tone=i) for i, n in enumerate("abc")]
    state_path = tmp_path / "out" / ".dgbatch" / "state.sqlite"
    crash = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from batch.sources import expand_sources\n"
        "from batch.models import Filters\n"
        "from batch.state import State\n"
        "state = State.open(Path(sys.argv[1]))\n"
        "state.plan(expand_sources([sys.argv[2]], Filters()), run_id=1)\n"
        "state.assign_names()\n"
        "state.claim(10, 0, 1)\n"
        "os._exit(9)  # no flush, no close: a crash right after the claim\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", crash, str(state_path), str(src)], env=subprocess_env(), check=False
    )
    assert done.returncode == 9
    assert {r["status"] for r in read_state_rows(state_path)} == {"running"}
    result = dgbatch("run", str(src), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in read_state_rows(state_path)} == {"done"}
    assert sent_sha256s(dgbatch.emulator) == {sha256_of(f): 1 for f in files}  # type: ignore[arg-type]


def test_outputs_a_crashed_run_wrote_are_adopted_not_paid_twice(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """An item left ``running`` whose outputs were written after its claim is done, not
    re-sent, and recorded as if its run had: its outputs, request id and duration."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wav = make_wav(src / "a.wav")
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    state_path = out / ".dgbatch" / "state.sqlite"
    (before,) = read_state_rows(state_path)
    db = sqlite3.connect(state_path)
    with db:  # where a kill between the outputs and the commit leaves it
        db.execute(
            "UPDATE items SET status = 'running', claimed_at = 1.0, outputs = NULL, "
            "request_id = NULL, duration = NULL"
        )
    db.close()
    dgbatch.emulator.log.clear()  # type: ignore[union-attr]
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "recovered 1 item" in result.output
    assert dgbatch.emulator.log == []  # type: ignore[union-attr]
    (row,) = read_state_rows(state_path)
    assert row["status"] == "done"
    assert json.loads(str(row["outputs"])) == [str(out / "a.json"), str(out / "a.txt")]
    assert (row["request_id"], row["duration"]) == (before["request_id"], before["duration"])
    assert sha256_of(wav) in (out / "a.json").read_text()


@pytest.mark.parametrize("txt_written", [True, False])
def test_a_crashed_runs_json_is_adopted_by_a_run_with_more_formats(
    tmp_path: Path, dgbatch: Cli, txt_written: bool
) -> None:
    """The same with a longer ``--formats`` (or the crash between the json's rename and the
    txt's): the json is adopted and the rest rendered from it, nothing sent. It was sent
    again, paid, because not every format asked for was there."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "a.wav")
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    state_path = out / ".dgbatch" / "state.sqlite"
    (before,) = read_state_rows(state_path)
    if not txt_written:
        (out / "a.txt").unlink()
    db = sqlite3.connect(state_path)
    with db:
        db.execute("UPDATE items SET status = 'running', claimed_at = 1.0, outputs = NULL")
    db.close()
    dgbatch.emulator.log.clear()  # type: ignore[union-attr]
    result = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt")
    assert result.exit_code == 0, result.output
    assert "recovered 1 item" in result.output and "rendered the formats 1 done" in result.output
    assert dgbatch.emulator.log == []  # type: ignore[union-attr]
    (row,) = read_state_rows(state_path)
    assert (row["status"], row["request_id"]) == ("done", before["request_id"])
    assert json.loads(str(row["outputs"])) == [str(out / f"a.{f}") for f in ("json", "txt", "srt")]
    assert (out / "a.srt").is_file() and (out / "a.txt").is_file()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\x00" * 200],
)
def test_a_corrupt_state_file_is_refused_and_left_untouched(
    tmp_path: Path, dgbatch: Cli, content: bytes
) -> None:
    """A damaged state file exits 2 naming the file, and its bytes are not changed."""
    make_wav(tmp_path / "calls" / "a.wav")
    state_path = tmp_path / "state.sqlite"
    state_path.write_bytes(content)
    result = dgbatch(
        "run", str(tmp_path / "calls"), "--out", str(tmp_path / "out"), "--state", str(state_path)
    )
    assert result.exit_code == 2
    assert str(state_path) in result.output
    assert state_path.read_bytes() == content
    assert dgbatch.emulator.log == []  # type: ignore[union-attr]
    status = dgbatch("status", "--state", str(state_path))
    assert status.exit_code == 2
    assert state_path.read_bytes() == content


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """An SQLite file of another program is not migrated into a state file."""
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE customers (name TEXT)")
        db.execute("INSERT INTO customers VALUES ('ada')")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="not a dgbatch state file"):
        State.open(path)
    assert path.read_bytes() == before


def test_only_one_writer_may_hold_a_state_file(tmp_path: Path) -> None:
    """A second open is refused with StateLocked naming the holder; readers are not blocked."""
    path = tmp_path / "state.sqlite"
    first = State.open(path)
    try:
        with pytest.raises(StateLocked, match="in use by another dgbatch run") as info:
            State.open(path)
        assert exit_code_of(info.value) == 4
        assert "pid" in str(info.value)
        reader = State.open(path, readonly=True)
        assert reader.counts()["pending"] == 0
        reader.close()
    finally:
        first.close()
    State.open(path).close()


def test_readonly_open_of_a_missing_state_is_an_error(tmp_path: Path) -> None:
    """``status`` on a path with no state file says so instead of creating one."""
    path = tmp_path / "nope.sqlite"
    with pytest.raises(StateError, match="no such state file"):
        State.open(path, readonly=True)
    assert not path.exists()


@pytest.mark.parametrize("folder", ["q#x", "a?b", "100%", "sp ace"])
def test_a_dry_run_reads_a_state_whose_path_has_uri_characters(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """The dry run's copy of the state opened ``file:q#x/…?mode=ro`` unquoted: SQLite
    made an empty ``q`` beside it and read that, so every done item was to send again
    (``%``: "cannot read the state file"); a review found it."""
    monkeypatch.chdir(tmp_path)
    wav = make_wav(tmp_path / "a.wav")
    args = ("run", str(wav), "--out", "out", "--state", f"{folder}/state.sqlite")
    assert dgbatch(*args).exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    dry = dgbatch(*args, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output[dry.output.index("{") :])["already_done"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("folder", ["q#x", "a?b", "100%", "sp ace"])
def test_readonly_open_of_a_path_with_uri_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """``status`` reads a state whose path has ``#``, ``?`` or ``%`` in it, and creates no
    stray file where the path would have been cut short."""
    monkeypatch.chdir(tmp_path)
    path = Path(folder) / "state.sqlite"
    path.parent.mkdir()
    State.open(path).close()
    before = sorted(p.name for p in tmp_path.iterdir())
    reader = State.open(path, readonly=True)
    assert reader.counts()["pending"] == 0
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_state_is_wal_and_records_each_run(tmp_path: Path, dgbatch: Cli) -> None:
    """The state file is in WAL mode and has a runs row with the exit code, without the key."""
    make_wav(tmp_path / "calls" / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "calls"), "--out", str(out)).exit_code == 0
    db = sqlite3.connect(out / ".dgbatch" / "state.sqlite")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        ((exit_code, command, summary),) = db.execute(
            "SELECT exit_code, command, summary FROM runs"
        ).fetchall()
    finally:
        db.close()
    assert exit_code == 0
    assert KEY not in command and KEY not in summary


def test_plan_stores_only_the_items_own_params(state: State) -> None:
    """The run's layers (defaults, --param, tags) are added at send time, not stored."""
    own = _item("a.wav", params=(("model", "whisper"), ("diarize", "true")))
    state.plan([own, _item("b.wav")], run_id=1)
    state.assign_names()
    a, b = state.claim(10, 0, 1)
    assert a.params == (("model", "whisper"), ("diarize", "true"))
    assert b.params == ()


def test_with_params_keeps_every_other_field() -> None:
    """``WorkItem.with_params`` (the hot path's copy) equals ``dataclasses.replace``,
    for every field there is: a field added later cannot be silently dropped."""
    values = {field.name: f"v-{field.name}" for field in dataclasses.fields(WorkItem)}
    item = WorkItem(**values)  # type: ignore[arg-type]
    params = (("model", "nova-3"),)
    assert item.with_params(params) == dataclasses.replace(item, params=params)


def _forced(state: State, item_id: str) -> int:
    ((forced,),) = state.query("SELECT forced FROM items WHERE id = ?", (item_id,))
    return int(forced)


@pytest.mark.parametrize(
    ("then", "forced"),
    [
        pytest.param("nothing", 1, id="re-queued by the force: flagged"),
        pytest.param("failed", 1, id="failed again: still flagged (--retry-failed)"),
        pytest.param("done", 0, id="done again: an item like any other"),
        pytest.param("changed", 0, id="its source changed: old outputs cannot match"),
    ],
)
def test_the_forced_flag_lasts_until_the_item_is_redone(
    state: State, then: str, forced: int
) -> None:
    """Items a --force re-queues are flagged (their S3 outputs are the ones being redone,
    never to be adopted) until done again, or until their source changes."""
    item = _item("a.wav")
    state.plan([item], run_id=1)
    _finish(state, ItemStatus.DONE, item)
    assert _forced(state, item.id) == 0
    state.plan([item], run_id=2, force_since=time.time() + 1)
    if then in ("done", "failed"):
        _finish(state, ItemStatus.DONE if then == "done" else ItemStatus.FAILED, item)
    if then == "changed":
        state.plan([_item("a.wav", "11:2")], run_id=3)
    assert _forced(state, item.id) == forced


@pytest.mark.parametrize("under", ["afile/state.sqlite", "afile/sub/state.sqlite"])
def test_a_state_under_a_file_names_the_file(tmp_path: Path, under: str) -> None:
    """``--state afile/x.sqlite`` said "cannot create state folder: File exists"; it names
    the file in the way."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StateError) as caught:
        State.open(tmp_path / under)
    assert str(caught.value) == (
        f"{tmp_path / under}: cannot create state folder: "
        f"{str(tmp_path / 'afile')!r} is a file, not a folder"
    )


def _line(path: str, origin: str, **params: str) -> Item:
    """A manifest line's item: a file keyed by its path, with its own params."""
    return Item(path, path, ItemKind.FILE, Path(path).name, tuple(params.items()), origin=origin)


def test_clashes_of_two_folders_or_manifests_of_one_name_are_each_kept(state: State) -> None:
    """Clash ids are their origin's and their item's: the clashes of one folder (every
    item of a walk has the folder as origin) were one row, all but the last lost; and two
    manifests of one name clashing on the same line made the plan recurse for ever."""
    items = [
        _line("/c/a.wav", "list.jsonl:1"),
        _line("/c/b.wav", "list.jsonl:2"),
        _line("/c/a.wav", "/c", diarize="true"),  # the folder, after the manifest
        _line("/c/b.wav", "/c", diarize="true"),
        _line("/d/a.wav", "list.jsonl:1"),  # another folder's list.jsonl
        _line("/d/a.wav", "list.jsonl:2", language="fr"),
        _line("/x/a.wav", "list.jsonl:3"),
        _line("/x/a.wav", "list.jsonl:4", language="en"),
        _line("/x/a.wav", "list.jsonl:4", language="de"),  # a clash's own clash: dropped
    ]
    stats = state.plan(items, run_id=1)
    failed = [r[0] for r in state.query("SELECT id FROM items WHERE status = 'failed'")]
    assert failed == [
        "clash:/c:/c/a.wav",
        "clash:/c:/c/b.wav",
        "clash:list.jsonl:2:/d/a.wav",
        "clash:list.jsonl:4:/x/a.wav",
    ]
    assert stats.broken == 5  # every row planned in a clash's place counts


def test_the_same_params_in_another_order_are_no_clash(state: State) -> None:
    """A CSV's columns and a JSONL line's keys in another order ask for the same request:
    one item, not a clash."""
    first = _line("/c/a.wav", "m.csv:2", language="en", diarize="true")
    again = Item(first.id, first.source, ItemKind.FILE, "a.wav",
                 (("diarize", "true"), ("language", "en")), origin="m.jsonl:1")  # fmt: skip
    stats = state.plan([first, again], run_id=1)
    assert stats.broken == 0
    assert state.query("SELECT id, status FROM items") == [("/c/a.wav", "pending")]


def test_a_state_whose_folder_was_deleted_is_still_locked(tmp_path: Path) -> None:
    """``rm -rf OUT/.dgbatch`` while a run holds its state deleted the lock beside it, and a
    run started then got in (and sent every item again). The lock outside the folder keeps
    it out; once the first run ends, the next one gets in."""

    path = tmp_path / "out" / ".dgbatch" / "state.sqlite"
    first = State.open(path)
    shutil.rmtree(path.parent)
    with pytest.raises(StateLocked, match="its folder was deleted and made again"):
        State.open(path)
    first.close()  # and writes its state back where it was
    State.open(path).close()


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_lock_folder_others_can_write_to_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    """Another user who made the folder of second locks first (or can write to it) could
    hold the lock of a state whose path they guess, and keep every run out: such a folder
    is not used (the lock beside the state still holds)."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    folder = tmp_path / "tmp" / f"dgbatch-locks-{os.getuid()}"
    folder.mkdir(parents=True)
    folder.chmod(mode)
    state = State.open(tmp_path / "out" / "state.sqlite")
    try:
        assert list(folder.iterdir()) == []  # nothing locked there
    finally:
        state.close()
    folder.chmod(0o700)
    State.open(tmp_path / "out" / "state.sqlite").close()
    assert len(list(folder.iterdir())) == 1


def test_a_state_copied_without_its_wal_is_refused(tmp_path: Path) -> None:
    """Before its first checkpoint a state's schema and items are all in its ``-wal``; a
    copy of the file alone (after a ``kill -9``) was opened as a new state, and every item
    done was sent again. It is refused by name, for a run and for ``status``, untouched."""

    path = tmp_path / "state.sqlite"
    live = State.open(path)
    live.plan([_item("a")], run_id=live.start_run("dgbatch run"))
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)  # the file alone, while the run holds it
    live.close()
    before = copy.read_bytes()
    for readonly in (False, True):
        with pytest.raises(StateError, match=r"copy\.sqlite: its -wal file is missing or empty"):
            State.open(copy, readonly=readonly)
    assert copy.read_bytes() == before
    assert State.open(path, readonly=True).counts()["pending"] == 1  # the original is fine


def test_a_state_whose_first_migration_a_full_disk_undid_is_made_again(tmp_path: Path) -> None:
    """A disk full while a new state was made left only the empty ``_migrations`` table;
    every later run refused the file as another program's, until it was deleted by hand."""
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    db.commit()
    db.close()
    state = State.open(path)
    state.plan([_item("a")], run_id=state.start_run("dgbatch run"))
    assert state.counts()["pending"] == 1
    state.close()
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE _migrations (version INTEGER)")  # another tool's
    db.commit()
    db.close()
    with pytest.raises(StateError, match="not a dgbatch state file"):
        State.open(other)


@pytest.mark.parametrize("readonly", [False, True], ids=["run", "status"])
def test_a_state_of_a_newer_dgbatch_is_refused(tmp_path: Path, readonly: bool) -> None:
    """A state a newer dgbatch migrated is refused, by ``status`` and ``report`` too (they
    read it as if it were of this version's shape)."""
    path = tmp_path / "state.sqlite"
    State.open(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', datetime('now'))")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="written by a newer dgbatch"):
        State.open(path, readonly=readonly)


def test_status_and_report_read_a_state_in_a_read_only_folder(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A state on a read-only mount (a snapshot, an operator without write access): SQLite
    cannot make the ``-shm`` file its read-only mode needs, and status called the healthy
    state "not a usable dgbatch state file"."""
    wav = make_wav(tmp_path / "a.wav")
    out = tmp_path / "ro" / "out"
    dg = " ".join(dgbatch_subprocess_cmd())
    done = on_read_only_mount(
        tmp_path / "ro",
        f"{dg} run {wav} --out {out} --api-url {emulator.url} --progress none; "
        f"mount -o remount,ro {tmp_path}/ro; {dg} status --out {out}; "
        f"{dg} report --out {out} --format csv; "
        f"{dg} run {wav} --out {out} --api-url {emulator.url} --dry-run --json",
    )
    assert done.returncode == 0, done.stderr
    assert "  done     1" in done.stdout and "a.wav,file,done," in done.stdout, done.stdout
    assert '"already_done": 1' in done.stdout, done.stdout  # the dry run read it too


def test_a_dry_runs_refusal_names_the_state_not_its_copy(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """The dry run plans into a copy of the state: its errors named the copy, in a
    temporary folder gone by the time the user read them."""
    wav = make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(wav), "--out", str(out)).exit_code == 0
    db = sqlite3.connect(out / ".dgbatch" / "state.sqlite")
    db.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', datetime('now'))")
    db.commit()
    db.close()
    dry = dgbatch("run", str(wav), "--out", str(out), "--dry-run")
    assert dry.exit_code == 2
    assert f"{out / '.dgbatch' / 'state.sqlite'}: written by a newer dgbatch" in dry.output
    assert "dgbatch-dry-run-" not in dry.output


@pytest.mark.parametrize(
    ("migration", "queries"),
    [
        ("m007_url_ids_redacted_again",
         ["x-api-key=k1", "src=https%3A%2F%2Fb.s3%2Fk.wav%3FX-Amz-Signature%3Dabc"]),
        ("m011_url_ids_signed_again",
         ["verify=1700000000-k1mac", "hdnts=exp%3D17~acl%3D*~hmac%3Dk1mac",
          "sv=2024&skt=2026-01-01&ske=2026-01-02&sig=k1sig", "exp=17&token=k1a;k1b"]),
        ("m021_url_ids_signed_by_md5_and_sign", ["md5=k1md5&expires=1700000001", "sign=k1-17"]),
    ],
)  # fmt: skip
def test_url_ids_of_an_earlier_release_are_redacted_again_when_opened(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, migration: str, queries: list[str]
) -> None:
    """This release redacts more of a URL (``x-api-key``, a signature nested in a query
    value; m011: Cloudflare's and Akamai's signatures, an Azure user-delegation key's
    times), and a URL item's id is its redacted form: a state an earlier release wrote is
    re-keyed when opened, so its done items are not planned anew and paid again."""
    names = [f"{n}.wav" for n in "abcd"[: len(queries)]]
    for name in names:
        make_wav(tmp_path / "www" / name)
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"
    with static_server(tmp_path / "www") as host:
        urls = [f"{host}/{name}?{query}" for name, query in zip(names, queries, strict=True)]
        (tmp_path / "urls.txt").write_text("".join(f"{u}\n" for u in urls))
        assert dgbatch("run", str(tmp_path / "urls.txt"), "--out", str(out)).exit_code == 0
        db = sqlite3.connect(state)  # as the earlier release keyed them: those parts shown
        for url in urls:
            db.execute("UPDATE items SET id = ?, source = ? WHERE id = ?", (url, url, url_id(url)))
        db.execute("DELETE FROM _migrations WHERE name = ?", (migration,))
        db.commit()
        db.close()
        sent = len(emulator.log)
        again = dgbatch("run", str(tmp_path / "urls.txt"), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert len(emulator.log) == sent
    rows = read_state_rows(state)
    assert sorted(str(r["id"]) for r in rows) == sorted(url_id(u) for u in urls)
    assert all(r["status"] == "done" for r in rows)
    assert not any("k1" in str(r["id"]) + str(r["source"]) for r in rows)


def test_a_name_another_item_has_is_not_adopted(tmp_path: Path) -> None:
    """Outputs found under another name (a lost state) are adopted only if no other item
    has that name: two items would share one output (a mutation test found nothing
    checked it)."""
    state = State.open(tmp_path / "state.sqlite")
    items = [Item(f"/src/{n}.wav", f"/src/{n}.wav", ItemKind.FILE, f"{n}.wav") for n in "ab"]
    state.plan(items, run_id=state.start_run("t"))
    names = {str(r["id"]): r["out_name"] for r in read_state_rows(state.path)}
    assert state.adopt_name("/src/a.wav", str(names["/src/b.wav"])) is False
    assert state.adopt_name("/src/a.wav", "c") is True
    after = {str(r["id"]): r["out_name"] for r in read_state_rows(state.path)}
    state.close()
    assert after == {"/src/a.wav": "c", "/src/b.wav": names["/src/b.wav"]}


def test_m021_redacts_md5_and_sign_in_clash_rows_and_errors(tmp_path: Path) -> None:
    """m021 re-keyed URL items and redacted sources named by an id; a clash row's source
    and any row's error quoting its URL kept ``md5=``/``sign=`` in clear (a review found
    it)."""
    state = State.open(tmp_path / "state.sqlite")
    url = "https://h/get?key=a&md5=SECRETMD5&sign=SECRETSIGN"
    state.plan([Item("https://h/x.wav", "https://h/x.wav", ItemKind.URL, "x")], run_id=1)
    state.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")  # as an earlier release stored them
    db.execute(
        "UPDATE items SET id = ?, name = ?, source = ?, status = 'failed', error = ?",
        (f"clash:urls.txt:2:{url}", f"clash:urls.txt:2:{url}", url, f"{url} is already an item"),
    )
    db.execute("DELETE FROM _migrations WHERE name = 'm021_url_ids_signed_by_md5_and_sign'")
    db.commit()
    db.close()
    State.open(tmp_path / "state.sqlite").close()
    (row,) = read_state_rows(tmp_path / "state.sqlite")
    stored = f"{row['id']} {row['name']} {row['source']} {row['error']}"
    assert "SECRET" not in stored and "md5=REDACTED&sign=REDACTED" in stored, stored


def test_m012_redacts_the_sources_of_url_items_named_by_an_id(tmp_path: Path) -> None:
    """m011 re-keyed URL items keyed by their URL, not those named by a manifest ``id``:
    their new secrets stayed in clear, and the plan took each for another recording."""
    state = State.open(tmp_path / "state.sqlite")
    url = "https://h/a.wav?Expires=1&token=t1;TAIL&verify=1-CFMAC"
    state.plan([Item("id:ep", url, ItemKind.URL, "ep")], run_id=state.start_run("t"))
    state.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("UPDATE items SET source = ?", (url,))  # as an earlier release stored it
    db.execute("DELETE FROM _migrations WHERE name = 'm012_named_url_sources_redacted_again'")
    db.commit()
    db.close()
    state = State.open(tmp_path / "state.sqlite")
    ((source,),) = state.query("SELECT source FROM items")
    state.close()
    assert source == "https://h/a.wav?Expires=1&token=REDACTED;REDACTED&verify=REDACTED"


def test_rekeying_gives_a_shared_id_to_the_done_item(tmp_path: Path) -> None:
    """An expired signing (failed) and the working one (done) were two items; keyed again
    as one, the done one keeps the id (the failed one took it, and the next run reported
    the recording failed and --retry-failed paid again)."""
    from batch.migrations import m011_url_ids_signed_again

    state = State.open(tmp_path / "state.sqlite")
    first, second = "https://h/a.wav?verify=1-AAAA", "https://h/a.wav?verify=2-BBBB"
    run = state.start_run("t")
    state.plan([Item(u, u, ItemKind.URL, "a") for u in (first, second)], run_id=run)
    state.claim(10, 0, run)
    state.record(Result(first, ItemStatus.FAILED, 1, 400, "HTTP 400"))
    state.record(Result(second, ItemStatus.DONE, 1, 200))
    state.flush()
    db = state._db  # keyed by their URLs, as an earlier release keyed them
    m011_url_ids_signed_again(db)
    rows = dict(db.execute("SELECT id, status FROM items").fetchall())
    state.close()
    assert rows["https://h/a.wav?verify=REDACTED"] == "done"


def _reopened_without(
    path: Path, migration: str, *updates: tuple[str, tuple[object, ...]]
) -> State:
    """The state at ``path`` as an earlier release left it (``updates``), opened again so
    that ``migration`` runs."""
    db = sqlite3.connect(path)
    for sql, args in updates:
        db.execute(sql, args)
    db.execute("DELETE FROM _migrations WHERE name = ?", (migration,))
    db.commit()
    db.close()
    return State.open(path)


def test_m013_keys_url_items_from_their_sources(tmp_path: Path) -> None:
    """A mid-pass release took a generic ``exp`` for a signing time (its ids had
    ``exp=REDACTED``), and an m011 before the done-first order left a done row keyed by
    its old URL, its signature in clear, while a failed row of the same recording held the
    shared id: every run said the recording failed. Keyed from their sources, the ``exp``
    comes back, the done row takes the shared id, and no signature stays."""
    path = tmp_path / "state.sqlite"
    state = State.open(path)
    plain, expired, good = (
        "https://h/c1.wav?exp=1", "https://h/p1.wav?verify=1-EXPIREDSIG",
        "https://h/p1.wav?verify=2-LIVESIG",
    )  # fmt: skip
    run = state.start_run("t")
    state.plan([Item(u, u, ItemKind.URL, u[10:12]) for u in (plain, expired, good)], run_id=run)
    state.claim(10, 0, run)
    for url, status in (
        (plain, ItemStatus.DONE),
        (expired, ItemStatus.FAILED),
        (good, ItemStatus.DONE),
    ):
        state.record(Result(url, status, 1, 200 if status is ItemStatus.DONE else 400))
    state.flush()
    state.close()
    shared = "https://h/p1.wav?verify=REDACTED"
    rekey = "UPDATE items SET id = ?, source = ? WHERE id = ?"
    state = _reopened_without(
        path,
        "m013_url_ids_from_their_sources",
        (rekey, ("https://h/c1.wav?exp=REDACTED", plain, plain)),
        (rekey, (shared, shared, expired)),
        ("UPDATE items SET source = ? WHERE id = ?", (good, good)),
    )
    rows = dict(state.query("SELECT id, status FROM items"))
    state.close()
    assert rows == {plain: "done", shared: "done"}
    assert b"LIVESIG" not in path.read_bytes() and b"EXPIREDSIG" not in path.read_bytes()


def test_same_recording_is_asked_once_a_row_when_a_plan_updates_it(tmp_path: Path) -> None:
    """``PLAN`` asks whether a URL is the one stored in each of a row's ``CASE``s: the
    answer for the same two URLs is given again, not worked out eight times a row."""
    from batch.state import _asked_again

    asked: list[tuple[str, str]] = []
    same = _asked_again(lambda a, b: asked.append((a, b)) or a[0] == b[0])
    assert [same("ab", "ac"), same("ab", "ac"), same("ab", "xy"), same("ab", "ac")] == [
        True, True, False, True
    ]  # fmt: skip
    assert asked == [("ab", "ac"), ("ab", "xy"), ("ab", "ac")]


def test_m010_takes_a_done_items_params_as_those_it_was_sent_with(tmp_path: Path) -> None:
    """Done items of an earlier release have no ``sent_params``: their lines' params
    until now stand in, so that an edit after the upgrade is told, as on a new state."""
    state = State.open(tmp_path / "state.sqlite")
    item = Item("/a.wav", "/a.wav", ItemKind.FILE, "a", params=(("language", "en"),), size=1)
    state.plan([item], run_id=state.start_run("t"))
    _finish(state, ItemStatus.DONE, item)
    state.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("UPDATE items SET sent_params = NULL")
    db.execute("DELETE FROM _migrations WHERE name = 'm010_sent_params'")
    db.commit()
    db.close()
    state = State.open(tmp_path / "state.sqlite")
    edited = Item("/a.wav", "/a.wav", ItemKind.FILE, "a", params=(("language", "fr"),), size=1)
    run = state.start_run("t")
    state.plan([edited], run_id=run)
    assert state.done_asked_anew(run).total == 1
    state.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.start_run("dgbatch run"),
        lambda s: s.finish_run(1, 0, {}),
        lambda s: s.set_run_tag(1, "t"),
        lambda s: s.adopt_name("u0", "x"),
        lambda s: s.set_outputs("u0", ["/o/x.json"]),
        lambda s: s.begin_force(True),
        lambda s: s.end_force(),
    ],
    ids=["start_run", "finish_run", "set_run_tag", "adopt_name", "set_outputs", "begin", "end"],
)
def test_a_write_the_disk_refuses_names_the_state_file(
    tmp_path: Path, write: Callable[[State], object]
) -> None:
    """A full disk made the next run's first write (its row in ``runs``) an "internal
    error: database or disk is full"; every write names the state file and what to do."""
    state = State.open(tmp_path / "state.sqlite")
    state.plan([Item("u0", "https://h/0.wav", ItemKind.URL, "0")], run_id=state.start_run("t"))
    state._db.execute("PRAGMA query_only = 1")  # every write fails, as on a full disk
    with pytest.raises(StateWriteError, match=r"state\.sqlite: cannot write the state file"):
        write(state)
    state._db.execute("PRAGMA query_only = 0")
    state.close()


def test_a_state_on_a_disk_that_fails_is_not_called_unusable(tmp_path: Path) -> None:
    """Opened on a full disk, the state was "not a usable dgbatch state file", and the
    run before it "internal error: File too large" (its lock's owner line)."""
    state = State.open(tmp_path / "state.sqlite")
    state.plan([Item("u0", "https://h/0.wav", ItemKind.URL, "0")], run_id=state.start_run("t"))
    state.close()

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead

    for path in (str(tmp_path / "state.sqlite"), str(tmp_path / "new" / "state.sqlite")):
        opening = (
            f"import pathlib; from batch.state import State; State.open(pathlib.Path({path!r}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", opening], preexec_fn=full_disk, capture_output=True, cwd=SRC_ROOT
        )  # a new one too: "damaged", exit 2, invited deleting it
        assert b"StateWriteError" in done.stderr and b"a full disk?" in done.stderr, done.stderr


def test_m009_stops_an_earlier_release_re_queuing_a_504(tmp_path: Path) -> None:
    """A 504 (processing over Deepgram's limit) that an earlier release marked to be sent
    again by the next run was sent again once more after the upgrade."""
    path = tmp_path / "state.sqlite"
    state = State.open(path)
    state.plan([Item("u0", "https://h/0.wav", ItemKind.URL, "0")], run_id=state.start_run("t"))
    state.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE items SET status = 'failed', http_status = 504, retry_next = 1")
        db.execute("DELETE FROM _migrations WHERE name = 'm009_paid_200s'")
    State.open(path).close()
    assert read_state_rows(path)[0]["retry_next"] == 0


@pytest.mark.parametrize(
    ("some", "named"),
    [
        (Some(1, ["a.wav"]), "a.wav"),
        (Some(3, ["a.wav", "b.wav", "c.wav"]), "a.wav, b.wav, c.wav"),
        (Some(5, ["a.wav", "b.wav", "c.wav"]), "a.wav, b.wav, c.wav and 2 more"),
    ],
)
def test_a_few_items_are_named_and_the_rest_counted(some: Some, named: str) -> None:
    assert some.named() == named


def test_the_items_asked_anew_are_named_first_few_only(state: State) -> None:
    """Five done items whose lines were edited: the first three are named, all counted."""
    items = [_item(f"{n}.wav", params=(("language", "en"),)) for n in range(5)]
    state.plan(items, run_id=1)
    for item in items:
        _finish(state, ItemStatus.DONE, item)
    state.plan([_item(f"{n}.wav", params=(("language", "fr"),)) for n in range(5)], run_id=2)
    assert state.done_asked_anew(2) == (5, ["/src/0.wav", "/src/1.wav", "/src/2.wav"])
