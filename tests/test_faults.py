"""Fatal and systemic faults: a revoked key, no API, an unwritable --out, sources that change
under the run, a corrupt state file. Each stops or fails cleanly, names the cause, and keeps
the state consistent (nothing done without its outputs, nothing lost)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from conftest import KEY, Cli, read_state_rows, serve_app, sha256_of
from reliability_helpers import all_bytes_under, disk_full_after, make_tiny_wavs

import batch.outputs
import batch.reportfile
import batch.sending
import batch.state
from batch.client import Answer, DeepgramClient, no_connection
from batch.emulator import Emulator, EmulatorConfig, run_in_thread
from batch.errors import ItemError
from batch.media import SENDERS, send_file
from batch.models import Filters, ItemKind, ItemStatus, Params
from batch.sources import expand_sources
from batch.state import Result, WorkItem

NEW_KEY = "new-key-9876543210fedcba"


@pytest.fixture
def slow_emulator() -> Iterator[Emulator]:
    """20 ms per request, so a test can act while a run is going."""
    with run_in_thread(EmulatorConfig(key=KEY, latency=0.02)) as emu:
        yield emu


def state_rows(out: Path) -> list[dict[str, object]]:
    return read_state_rows(out / ".dgbatch" / "state.sqlite")


def assert_consistent(out: Path) -> Counter[object]:
    """Nothing left running; every done item has all its outputs on disk."""
    rows = state_rows(out)
    for row in rows:
        assert row["status"] != "running", row
        if row["status"] == "done":
            outputs = Path(str(row["source"])).stem
            assert (out / f"{outputs}.json").is_file() and (out / f"{outputs}.txt").is_file()
    return Counter(row["status"] for row in rows)


def revoke_after(emulator: Emulator, requests: int) -> threading.Thread:
    """Switch the emulator to 401 once it has seen ``requests`` requests."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while len(emulator.log) < requests and time.monotonic() < deadline:
            time.sleep(0.001)
        emulator.auth_mode = "401"

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_key_revoked_mid_run_stops_and_resumes(slow_emulator: Emulator, tmp_path: Path) -> None:
    """A 401 mid-run stops dispatch (exit 3), leaves the rest pending, and the same command
    with a new key finishes without re-sending anything that was done."""
    make_tiny_wavs(tmp_path / "in", 120)
    out = tmp_path / "out"
    dgbatch = Cli(slow_emulator)
    revoke_after(slow_emulator, 30)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "-c", "8")
    assert result.exit_code == 3, result.output
    assert "refused the API key" in result.output and "HTTP 401" in result.output
    counts = assert_consistent(out)
    assert set(counts) == {"done", "pending"}
    refused = [r for r in slow_emulator.log if r.status == 401]
    assert 1 <= len(refused) <= 8  # only what was in flight when the key went

    slow_emulator.config.key = NEW_KEY
    slow_emulator.auth_mode = "ok"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), key=NEW_KEY)
    assert result.exit_code == 0, result.output
    assert assert_consistent(out) == {"done": 120}
    answered = Counter(r.sha256 for r in slow_emulator.log if r.status == 200)
    assert len(answered) == 120 and set(answered.values()) == {1}


def test_api_unreachable_stops_the_run_items_stay_pending(tmp_path: Path) -> None:
    """Nothing listening: items retry with backoff (no busy loop), then the run stops
    naming "connection refused", and every item stays pending (not failed) for next time."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    make_tiny_wavs(tmp_path / "in", 30)
    out = tmp_path / "out"
    started = time.monotonic()
    result = Cli(None)(
        "run", str(tmp_path / "in"), "--out", str(out), "--api-url", url, "-c", "4",
        "--max-retries", "2", "--backoff-base", "0.05", "--progress", "none",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Deepgram cannot be reached" in result.output
    assert "connection refused" in result.output
    rows = state_rows(out)
    assert {r["status"] for r in rows} == {"pending"}
    assert {r["attempts"] for r in rows} == {0}  # no request reached Deepgram
    assert time.monotonic() - started < 10
    db = sqlite3.connect(out / ".dgbatch" / "state.sqlite")
    (summary,) = db.execute("SELECT summary FROM runs").fetchone()
    db.close()
    assert "Deepgram cannot be reached" in json.loads(summary)["error"]  # as status shows it


def test_output_parent_is_a_file_stops_the_run(dgbatch: Cli, tmp_path: Path) -> None:
    """An output folder that cannot be created stops the run with a message naming it;
    nothing is marked done without its outputs, and fixing it lets the run finish."""
    make_tiny_wavs(tmp_path / "in" / "sub", 3)
    make_tiny_wavs(tmp_path / "in", 3, prefix="top")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where a folder must go")
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "cannot write output" in result.output and str(out / "sub") in result.output
    rows = state_rows(out)
    assert all(r["status"] != "done" for r in rows if "/sub/" in str(r["source"]))
    assert "running" not in {r["status"] for r in rows}
    # an item stopped after its answer keeps the attempt it was paid for (the two folders'
    # files have the same bytes pairwise, so attempts are summed by content)
    attempts: Counter[str | None] = Counter()
    for row in rows:
        attempts[sha256_of(Path(str(row["source"])))] += int(str(row["attempts"]))
    assert attempts == Counter(record.sha256 for record in dgbatch.emulator.log)  # type: ignore[union-attr]

    (out / "sub").unlink()
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    assert {r["status"] for r in state_rows(out)} == {"done"}


def test_disk_full_stops_the_run(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC (simulated at the file-writing boundary: no tmpfs without privileges) stops
    the run with "disk full"; an item whose json was written but not its txt is not done."""
    make_tiny_wavs(tmp_path / "in", 6)
    out = tmp_path / "out"

    @contextlib.contextmanager
    def full_disk(path: Path) -> Iterator[BinaryIO]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        yield  # pragma: no cover

    # the second item's txt and everything after
    monkeypatch.setattr(batch.outputs, "_write_new_file", disk_full_after(3))
    monkeypatch.setattr(batch.reportfile, "atomic_file", full_disk)  # same disk
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "-c", "1")
    assert result.exit_code == 1, result.output
    assert "No space left on device (disk full)" in result.output
    assert "internal error" not in result.output
    assert "cannot write the report" in result.output
    assert assert_consistent(out) == {"done": 1, "pending": 5}

    monkeypatch.undo()
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    assert assert_consistent(out) == {"done": 6}


def test_a_paid_200_is_counted_when_the_next_try_fails_unsent(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 without a transcript is billed; when the try after it failed before its
    request went out (the file changed), the item's result lost the 200 and its length,
    so the budget of this run and the next counted 0 s for it (a mutation test found
    nothing checked it)."""
    make_tiny_wavs(tmp_path / "in", 1)
    tries = iter([Answer(200, b"garbage", None, None)])

    async def garbage_then_changed(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        answer = next(tries, None)
        if answer is None:
            raise ItemError(f"{source}: file changed between planning and sending")
        return answer

    monkeypatch.setattr(batch.sending, "SENDERS", {**SENDERS, ItemKind.FILE: garbage_then_changed})
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--max-audio-hours", "1", "--no-sniff")
    result = dgbatch(*args, "--backoff-base", "0")
    assert result.exit_code == 1, result.output
    (row,) = state_rows(out)
    assert (row["status"], row["paid_200s"]) == ("failed", 1), row
    assert row["local_duration"] is not None, row


def test_source_deleted_or_changed_before_sending(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file deleted or rewritten between planning and sending fails with a message that
    names it and says why; the next run re-plans the changed one and sends its new bytes,
    and the deleted one's failure, kept in the state, no longer sets its exit code."""
    a, b, c = make_tiny_wavs(tmp_path / "in", 3)

    async def meddling(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        if source == str(a):
            a.unlink()
        elif source == str(b):
            with b.open("ab") as handle:
                handle.write(b"\x00\x01")
            os.utime(b, ns=(0, 10**18))
        return await send_file(client, item, source)

    monkeypatch.setattr(batch.sending, "SENDERS", {**SENDERS, ItemKind.FILE: meddling})
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "-c", "1", "--no-sniff")
    assert result.exit_code == 1
    errors = {Path(str(r["source"])).name: (r["status"], r["error"]) for r in state_rows(out)}
    assert errors[a.name] == ("failed", f"{a}: file no longer exists")
    assert errors[b.name][0] == "failed"
    assert f"{b}: file changed between planning and sending" in str(errors[b.name][1])
    assert errors[c.name] == ("done", None)
    assert len(emulator.log) == 1

    monkeypatch.undo()
    again = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert again.exit_code == 0, again.output  # a.wav is gone: its failure is kept, not counted
    assert "1 failed item(s) of earlier runs are not among this run's sources" in again.output
    statuses = {Path(str(r["source"])).name: r["status"] for r in state_rows(out)}
    assert statuses == {a.name: "failed", b.name: "done", c.name: "done"}
    assert emulator.log[-1].bytes_received == b.stat().st_size


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff" * 100)


def _foreign_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("spoil", "what"),
    [(_empty, "an empty file"), (_foreign_sqlite, "an SQLite file of another program")],
    ids=["empty", "foreign"],
)
@pytest.mark.parametrize("command", [["status"], ["report"], ["report", "--format", "csv"]])
def test_reading_a_file_that_is_not_a_state_exits_2(
    tmp_path: Path, command: list[str], spoil: Callable[[Path], None], what: str
) -> None:
    """``status`` and ``report`` name a file that is not a state and why, exit 2, and leave
    it as it was (they used to fail with an internal error on their first query)."""
    state = tmp_path / "state.sqlite"
    spoil(state)
    before = state.read_bytes()
    result = Cli(None)(*command, "--state", str(state))
    assert result.exit_code == 2, result.output
    assert f"Error: {state}: {what}, not a dgbatch state file" in result.output
    assert state.read_bytes() == before


@pytest.mark.parametrize("spoil", [_garbage, _foreign_sqlite], ids=["garbage", "foreign"])
def test_corrupt_state_is_refused_untouched(dgbatch: Cli, tmp_path: Path, spoil: object) -> None:
    """A state file that is not ours exits 2 with a clear message and is not modified."""
    make_tiny_wavs(tmp_path / "in", 2)
    state = tmp_path / "out" / ".dgbatch" / "state.sqlite"
    state.parent.mkdir(parents=True)
    assert callable(spoil)
    spoil(state)
    before = all_bytes_under(state.parent)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert str(state) in result.output and "not touching it" in result.output
    after = all_bytes_under(state.parent)
    assert {p: b for p, b in after.items() if not p.name.endswith(".lock")} == before


def test_damaged_state_is_refused_untouched(dgbatch: Cli, tmp_path: Path) -> None:
    """A real state file cut in half (a bad copy, a full disk) is refused, never rewritten."""
    make_tiny_wavs(tmp_path / "in", 300)
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    state = out / ".dgbatch" / "state.sqlite"
    damaged = tmp_path / "damaged" / "state.sqlite"
    damaged.parent.mkdir()
    shutil.copy(state, damaged)
    with damaged.open("r+b") as handle:
        handle.truncate(damaged.stat().st_size // 2)
    before = damaged.read_bytes()
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--state", str(damaged))
    assert result.exit_code == 2, result.output
    assert str(damaged) in result.output
    assert damaged.read_bytes() == before


def test_state_disk_full_stops_the_run_cleanly(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own "database or disk is full" (max_page_count caps the file right after
    planning) stops the run with a message naming the state file, and the next run, with
    room again, finishes without losing an item."""
    make_tiny_wavs(tmp_path / "in", 300)
    out = tmp_path / "out"
    assign_names = batch.state.State.assign_names

    def then_fill_disk(self: batch.state.State) -> None:
        assign_names(self)
        pages = self.query("PRAGMA page_count")[0][0]
        self.query(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(batch.state.State, "assign_names", then_fill_disk)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "-c", "4")
    assert result.exit_code == 1, result.output  # the disk, not the input: not 2
    assert "cannot write the state file (database or disk is full)" in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output

    monkeypatch.undo()
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert assert_consistent(out) == {"done": 300}


def test_state_folder_deleted_mid_run_is_written_back(tmp_path: Path) -> None:
    """``rm -rf OUT/.dgbatch`` (or a cleaner) while a run holds the state: the run's record
    lived on only in its open connection, and the next run sent everything again. It is
    written back where it was when the run ends, so the next run sends nothing."""
    from conftest import emulator_with, start_run, wait_for

    make_tiny_wavs(tmp_path / "in", 60)
    out = tmp_path / "out"
    with emulator_with(latency=0.05) as emu:
        run = start_run(emu, str(tmp_path / "in"), "--out", str(out), "-c", "2")
        wait_for(lambda: len(emu.log) >= 2)
        shutil.rmtree(out / ".dgbatch")
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr.decode()
        assert b"deleted" in stderr
        rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
        assert Counter(r["status"] for r in rows) == {"done": 60}
        sent = len(emu.log)
        again = start_run(emu, str(tmp_path / "in"), "--out", str(out))
        _, stderr = again.communicate(timeout=60)
        assert again.returncode == 0, stderr.decode()
        assert len(emu.log) == sent


def endless_api(status: int) -> web.Application:
    """A gateway that answers ``status`` with a page that never ends (chunked, 64 KB at a
    time, until the client hangs up)."""

    async def listen(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/html"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await response.write(b"<p>upstream error</p>" * 3000)
                await asyncio.sleep(0)
        return response

    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    return app


@pytest.mark.parametrize("status", [502, 400])
def test_an_endless_error_page_is_read_no_further_than_its_quote(
    tmp_path: Path, status: int
) -> None:
    """An error answer is quoted by its first words, so only its first 64 KB are read: an
    endless page no longer fills memory until the timeout, and the item is recorded with
    the status it got (a timeout with no status before)."""
    make_tiny_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    with serve_app(endless_api(status)) as url:
        result = Cli(None)(
            "run", str(tmp_path / "in"), "--out", str(out), "--api-url", url, "--no-preflight",
            "--max-retries", "0", "--timeout", "60", "--progress", "none",
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    (row,) = state_rows(out)
    assert (row["status"], row["http_status"]) == ("failed", status)
    assert str(row["error"]).startswith(f"HTTP {status}: <p>upstream error</p>")
    assert status != 502 or str(row["error"]).endswith(" (gave up after 1 attempt)")


@pytest.mark.parametrize("status", [301, 307, 308])
def test_a_redirect_stops_the_run_and_is_not_followed(tmp_path: Path, status: int) -> None:
    """Deepgram does not redirect ``/v1/listen``: a redirect means ``--api-url`` points at
    something else. It is not followed (aiohttp re-sent a 301 as a GET, and a 308 to
    another host lost the key: "refused the API key", exit 3), nor retried and counted as
    possibly billed: the run stops with exit 1 naming --api-url, the items stay pending."""
    make_tiny_wavs(tmp_path / "in", 3)
    out = tmp_path / "out"
    followed: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.method)
        return web.Response(status=401)

    target = web.Application()
    target.router.add_route("*", "/{tail:.*}", elsewhere)

    def moving(to: str) -> web.Application:
        async def listen(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, headers={"Location": to})

        app = web.Application()
        app.router.add_post("/v1/listen", listen)
        return app

    with serve_app(target) as other, serve_app(moving(f"{other}/v1/listen?sig=s3cr3t")) as url:
        result = Cli(None)(
            "run", str(tmp_path / "in"), "--out", str(out), "--api-url", url,
            "--no-preflight", "-c", "1", "--progress", "none",
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"the API answered HTTP {status} (a redirect to {other}/v1/listen?sig=REDACTED)" in (
        result.output
    )
    assert "point --api-url" in result.output and "s3cr3t" not in result.output
    assert followed == []
    rows = state_rows(out)
    assert {r["status"] for r in rows} == {"pending"}
    assert sum(int(str(r["timeout_retries"])) for r in rows) == 0


_KEY = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)


@pytest.mark.parametrize(
    ("exc", "stops"),
    [
        (aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(errno.ECONNREFUSED, "r")), True),
        (aiohttp.ClientConnectorError(_KEY, OSError(errno.EHOSTUNREACH, "no route")), True),
        (aiohttp.ClientConnectorDNSError(_KEY, OSError(-2, "Name or service not known")), True),
        (aiohttp.ClientConnectorError(_KEY, ConnectionResetError(errno.ECONNRESET, "x")), False),
        (aiohttp.ClientConnectorError(_KEY, OSError(errno.ECONNABORTED, "aborted")), False),
        (aiohttp.ServerDisconnectedError(), False),
        (TimeoutError(), False),
    ],
)
def test_only_a_connection_that_cannot_be_made_stops_the_run(
    exc: BaseException, stops: bool
) -> None:
    """Refused, no route, DNS: Deepgram is unreachable for every item, so the run stops. A
    connection the peer reset while it was made (a server shedding load) is retried like
    any reset: it stopped the run while other items were being answered."""
    assert no_connection(exc) is stops


def test_state_disk_full_while_planning_stops_the_run_cleanly(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state's disk full as the plan stores its items: exit 1 with the message naming
    the state file (it was "internal error: database or disk is full"); the next run, with
    room again, finishes every item."""
    make_tiny_wavs(tmp_path / "in", 30)
    out = tmp_path / "out"
    start_run = batch.state.State.start_run

    def then_fill_disk(self: batch.state.State, command: str, priced: Params = ()) -> int:
        run_id = start_run(self, command, priced)
        pages = self.query("PRAGMA page_count")[0][0]
        self.query(f"PRAGMA max_page_count = {pages}")
        return run_id

    monkeypatch.setattr(batch.state.State, "start_run", then_fill_disk)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert f"{out / '.dgbatch' / 'state.sqlite'}: cannot write the state file" in result.output
    assert "internal error" not in result.output

    monkeypatch.undo()
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert assert_consistent(out) == {"done": 30}


def test_a_garbled_answer_is_reported_as_a_failed_connection(tmp_path: Path) -> None:
    """A server that answers with no HTTP at all: retried, then reported as what it is,
    "connection failed (…)", not by dgbatch's own exception class ("TransportError: …")."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def garble() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"this is not HTTP\r\n\r\n")

    threading.Thread(target=garble, daemon=True).start()
    make_tiny_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = Cli(None)(
        "run", str(tmp_path / "in"), "--out", str(out), "--api-url", f"http://127.0.0.1:{port}",
        "--no-preflight", "--max-retries", "1", "--backoff-base", "0", "--progress", "none",
    )  # fmt: skip
    listener.close()
    assert result.exit_code == 1, result.output
    (row,) = state_rows(out)
    error = str(row["error"])
    assert error.startswith("connection failed (") and "TransportError" not in error, error
    assert error.endswith("(gave up after 2 attempts)")


def _left_pending(tmp_path: Path, *, attempts: int, **recorded: Any) -> tuple[Path, Path]:
    """One file planned into ``out``'s state and left pending by a run that stopped after
    ``attempts`` requests (with what it ``recorded``): its file and ``out``."""
    (wav,) = make_tiny_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    state = batch.state.State.open(out / ".dgbatch" / "state.sqlite")
    items = list(expand_sources([str(wav)], Filters()))
    state.plan(items, run_id=state.start_run("dgbatch run"))
    state.assign_names()
    state.record(Result(items[0].id, ItemStatus.PENDING, attempts, **recorded))
    state.flush()
    state.close()
    return wav, out


def test_max_retries_bounds_an_items_requests_across_runs(tmp_path: Path) -> None:
    """An item a stop left pending after 2 requests, resumed with ``--max-retries 2``, got
    3 more: the budget started again at every run (5 requests, "gave up after 3"). Its
    earlier tries count: one more request, and the error says 3, as ``attempts`` does."""
    wav, out = _left_pending(tmp_path, attempts=2, http_status=500, error="HTTP 500")
    config = EmulatorConfig(key=KEY, fault_rate=1.0, faults=("500",))
    with run_in_thread(config) as down:
        result = Cli(down)("run", str(wav), "--out", str(out), "--max-retries", "2")
        assert len(down.log) == 1
    assert result.exit_code == 1
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert "gave up after 3 attempts" in str(row["error"])


def test_an_item_billed_in_an_earlier_run_is_not_sent_again_by_itself(tmp_path: Path) -> None:
    """``retry_next`` (a 5xx: the next run sends it again) looked only at this run's
    tries; an item whose timed-out tries of an earlier run may have been billed was sent
    again every night. It waits for ``--retry-failed``."""
    wav, out = _left_pending(tmp_path, attempts=3, error="timeout", timeout_retries=2)
    with run_in_thread(EmulatorConfig(key=KEY, fault_rate=1.0, faults=("503",))) as down:
        assert Cli(down)("run", str(wav), "--out", str(out), "--max-retries", "0").exit_code == 1
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["retry_next"], row["timeout_retries"]) == ("failed", 0, 2)
    assert "gave up after 4 attempts" in str(row["error"])
    with run_in_thread(EmulatorConfig(key=KEY)) as healthy:
        assert Cli(healthy)("run", str(wav), "--out", str(out)).exit_code == 1
        assert healthy.log == []


def _answering(status: int, body: dict[str, Any] | str, seen: list[web.Request]) -> web.Application:
    """An API answering every /v1/listen (and the key check) with ``status`` and ``body``."""

    async def listen(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    async def token(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"scopes": ["usage:write"]})

    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    app.router.add_get("/v1/auth/token", token)
    return app


_BAD_QUERY = {"err_code": "INVALID_QUERY_PARAMETER", "err_msg": "Failed to deserialize query"}


@pytest.mark.parametrize(
    ("status", "body", "code", "said"),
    [
        (404, "404 page not found", 1, "HTTP 404 (no such path: HTTP 404: 404 page not found)"),
        (400, _BAD_QUERY, 2, "Deepgram refused the query parameters (HTTP 400 INVALID_"),
    ],
)
def test_an_answer_about_the_run_not_the_item_stops_the_run(
    tmp_path: Path, status: int, body: dict[str, Any] | str, code: int, said: str
) -> None:
    """A 404 of /v1/listen (a wrong --api-url path) and a bad query parameter of the run's
    own failed every item for good, and the corrected run then sent nothing without
    --retry-failed. The run stops at the first one; the items stay pending."""
    make_tiny_wavs(tmp_path / "in", 3)
    out, seen = tmp_path / "out", []
    with serve_app(_answering(status, body, seen)) as url:
        result = Cli(None)(
            "run", str(tmp_path / "in"), "--out", str(out), "--api-url", url,
            "--no-preflight", "-c", "1", "--progress", "none", "--param", "diarize=yes",
        )  # fmt: skip
    assert result.exit_code == code, result.output
    assert said in result.output and "unfinished items stay pending" in result.output
    assert len(seen) == 1
    assert {r["status"] for r in state_rows(out)} == {"pending"}


def test_deepgram_is_reached_through_the_proxy_the_environment_names(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY``/``HTTPS_PROXY`` were ignored: behind a corporate proxy S3 worked
    (boto3 honours them) and Deepgram could not be reached. The emulator stands in for
    the proxy: a host that does not resolve is reached only through it, by the key check
    and the run."""
    monkeypatch.setenv("HTTP_PROXY", emulator.url.removeprefix("http://"))  # as curl reads it
    make_tiny_wavs(tmp_path / "in", 2)
    api = ["--api-url", "http://api.deepgram.invalid", "--allow-insecure-http"]
    result = Cli(None)("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *api)
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 2
    assert Cli(None)("check", *api).exit_code == 0
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # loopback APIs are never proxied
    again = Cli(emulator)("run", str(tmp_path / "in"), "--out", str(tmp_path / "o2"))
    assert again.exit_code == 0, again.output
    monkeypatch.setenv("NO_PROXY", "deepgram.invalid")  # nor NO_PROXY's: DNS fails, directly
    direct = Cli(None)("check", *api)
    assert direct.exit_code == 1 and "api.deepgram.invalid:80" in direct.output, direct.output


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("https://me:pr0xy-s3cret@proxy.corp:3129", "only an http:// proxy is supported"),
        ("socks5://me:pr0xy-s3cret@proxy.corp:1080", "only an http:// proxy is supported"),
        ("http://me:pr0xy#s3cret@proxy.corp:3128", "not a proxy URL (expected http://host:port"),
    ],
)
def test_a_proxy_that_cannot_be_used_is_refused_unshown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    """aiohttp tunnels only through an http proxy: an https:// one was ignored with a
    warning, and Deepgram reached directly; a password with a ``#`` ended the run as an
    internal error. Both are refused before anything starts, the value never shown."""
    monkeypatch.setenv("HTTPS_PROXY", value)
    make_tiny_wavs(tmp_path / "in", 1)
    for args in (["check"], ["run", str(tmp_path / "in"), "--out", str(tmp_path / "out")]):
        result = Cli(None)(*args)
        assert result.exit_code == 2 and f"HTTPS_PROXY: {said}" in result.output, result.output
        assert "s3cret" not in result.output


@pytest.mark.parametrize(
    "answer",
    [None, b"HTTP/1.1 407 Proxy Authentication Required\r\n", b"", b"\x05\xff"],
    ids=["unreachable", "407", "drops", "socks"],
)
def test_a_proxy_password_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: bytes | None
) -> None:
    """A proxy that cannot be reached, refuses its credentials, or drops or garbles the
    tunnel (a SOCKS port named as an http proxy) is named by its host, never with its
    password (a ``'`` in it escaped aiohttp's garbled-answer message), and the run stops
    with nothing counted: those items burned their retries as attempts."""
    with _raw_server(answer) as port:
        monkeypatch.setenv("HTTPS_PROXY", f"http://me:pr0xy's3cret@127.0.0.1:{port}")
        make_tiny_wavs(tmp_path / "in", 1)
        out = tmp_path / "out"
        run = ["run", str(tmp_path / "in"), "--out", str(out), "--max-retries", "0"]
        for args in (["check"], run):
            result = Cli(None)(*args, "--api-url", "https://api.deepgram.invalid")
            assert result.exit_code != 0 and "s3cret" not in result.output, result.output
        assert f"proxy 127.0.0.1:{port}" in result.output, result.output  # the run's says so
    assert all(b"s3cret" not in data for data in all_bytes_under(out).values())
    (row,) = state_rows(out)  # nothing reached Deepgram: the run stopped, the item waits
    assert (row["status"], row["attempts"]) == ("pending", 0)


def test_a_407_of_a_proxy_passing_plain_http_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a proxy without a tunnel (an http ``--api-url``, allowed), its 407 was taken
    for Deepgram's answer: every item failed for good (``http_407``). Nothing reached
    Deepgram: the run stops, the items pending."""
    with _raw_server(b"HTTP/1.1 407 Proxy Authentication Required\r\n") as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        make_tiny_wavs(tmp_path / "in", 2)
        out = tmp_path / "out"
        api = ["--api-url", "http://api.deepgram.invalid", "--allow-insecure-http"]
        fast = ("--no-preflight", "--backoff-base", "0.01")
        run = Cli(None)("run", str(tmp_path / "in"), "--out", str(out), *fast, *api)
    assert run.exit_code == 1 and "did not pass the request on (HTTP 407" in run.output
    with _raw_server(b"HTTP/1.1 407 Proxy Authentication Required\r\n") as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        check = Cli(None)("check", *api)  # the key check says whose 407 it is too
    assert check.exit_code == 1 and f"the proxy 127.0.0.1:{port} did not pass" in check.output
    assert {(r["status"], r["attempts"]) for r in state_rows(out)} == {("pending", 0)}


@contextlib.contextmanager
def _raw_server(answer: bytes | None) -> Iterator[int]:
    """A port where ``answer`` is said to every connection and it is closed; with None,
    a port nothing listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if answer is None:
            listener.close()
            yield port
            return
        said = answer + b"Content-Length: 0\r\n\r\n" if answer.startswith(b"HTTP/") else answer
        listener.listen()
        listener.settimeout(0.1)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn, _ = listener.accept()
                    with conn:
                        conn.recv(65536)
                        conn.sendall(said)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield port
        finally:
            stop.set()
            thread.join()


def test_a_line_asking_for_keywords_on_nova3_fails_alone(dgbatch: Cli, tmp_path: Path) -> None:
    """Deepgram refuses ``keywords`` with Nova-3 in a 400 that names it "Keywords": read
    case-sensitively, it was taken for the run's own query and stopped the whole batch,
    at the same line every night. That line fails now, and the others are sent."""
    wavs = make_tiny_wavs(tmp_path / "in", 3)
    lines = [{"source": str(w), "id": w.stem} for w in wavs]
    lines[1]["params"] = {"keywords": ["Northwind:2"]}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    result = dgbatch("run", str(manifest), "--out", str(out), "-c", "1")
    assert result.exit_code == 1, result.output
    rows = {row["id"]: row for row in state_rows(out)}
    assert [rows[f"id:{w.stem}"]["status"] for w in wavs] == ["done", "failed", "done"]
    assert "Keywords are not supported for Nova-3" in str(rows[f"id:{wavs[1].stem}"]["error"])


def test_deepgrams_own_warnings_reach_the_report(tmp_path: Path) -> None:
    """Deepgram says in ``metadata.warnings`` that it ignored a parameter (``keywords`` on
    nova-3): the item was paid for as if it had worked, and nobody was told. The warning
    is the item's now, without a key the answer may echo; every request (the key check
    too) says it is dgbatch."""
    make_tiny_wavs(tmp_path / "in", 1)
    shutil.copy(next((tmp_path / "in").iterdir()), tmp_path / "in" / "copy.wav")  # --dedupe
    warned = {"parameter": "keywords", "type": "unsupported_model", "message": f"no {KEY}"}
    answer = {
        "metadata": {"request_id": "r1", "duration": 0.1, "warnings": [warned]},
        "results": {"channels": [{"alternatives": [{"transcript": "hi", "words": []}]}]},
    }
    out, seen = tmp_path / "out", []
    with serve_app(_answering(200, answer, seen)) as url:
        result = Cli(None)(
            "run", str(tmp_path / "in"), "--out", str(out), "--api-url", url, "--progress", "none",
            "--dedupe",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = state_rows(out)  # the copy's too: it quotes the same answer, not sent
    assert [r["warning"] for r in rows] == [
        "Deepgram: keywords: unsupported_model: no REDACTED"
    ] * 2
    assert sum(1 for r in seen if r.path == "/v1/listen") == 1
    assert {r.headers["User-Agent"].split("/")[0] for r in seen} == {"dgbatch"}
