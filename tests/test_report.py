"""The JSONL report: lines built by SQLite equal the Python rows, and stay redacted."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Cli, dgbatch_subprocess_cmd, make_wav, subprocess_env

from batch import migrations
from batch.cli import _Commands
from batch.models import Item, ItemKind, ItemStatus
from batch.report import dump_row, error_kind, iter_jsonl, iter_report, report_row, status_summary
from batch.state import Result, State

RESULTS = [
    Result("u0", ItemStatus.DONE, 1, 200, request_id="r0", duration=1 / 3,
           outputs=("/out/a.json", "/out/a.txt")),
    Result("u1", ItemStatus.FAILED, 3, 400, error='bad "audio"\n\tünïcode \x01 end',
           err_code="Bad Request", request_id="r1"),
    Result("u2", ItemStatus.DONE, 2, 200, duration=12.0, outputs=("/out/c.json",),
           timeout_retries=1, warning="empty transcript"),
    Result("u3", ItemStatus.DONE, 1, 200, duration=0.1, outputs=(), copy_of="u0"),
]  # fmt: skip


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    """A state with a done, a failed, a warned, a copied and a pending item."""
    state = State.open(tmp_path / "state.sqlite")
    items = [
        Item(f"u{i}", f"https://host/audio/{i}.wav", ItemKind.URL, f"{i}.wav") for i in range(5)
    ]
    state.plan(items, run_id=state.start_run("test"))
    state.assign_names()
    state.claim(10, 0, 1)
    for result in RESULTS:
        state.record(result)
    state.record(Result("u4", ItemStatus.PENDING, 0))
    state.flush()
    yield state
    state.close()


def _loose(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite prints 15 significant digits of a float, Python 17."""
    return {**row, "duration": pytest.approx(row["duration"]) if row["duration"] else None}


@pytest.mark.parametrize(
    ("where", "count"),
    [
        ({}, 5),
        ({"failed_only": True}, 1),
        ({"warnings_only": True}, 1),
        ({"failed_only": True, "warnings_only": True}, 2),  # either: the items to look at
    ],
    ids=["all", "failed", "warnings", "failed-or-warned"],
)
def test_sql_lines_are_the_python_rows(state: State, where: dict[str, bool], count: int) -> None:
    """Every field, type and escape of a line built by SQLite matches ``report_row``."""
    lines = [json.loads(line) for line in iter_jsonl(state, **where)]
    rows = list(iter_report(state, **where))
    assert len(rows) == count
    assert lines == [_loose(row) for row in rows]


def test_a_secret_in_the_state_is_still_redacted(state: State) -> None:
    """A state that somehow holds a secret (written by hand, an old version): its lines
    are rebuilt through ``redact_text``; the other lines keep SQLite's text."""
    secret_source = "https://user:hunter2@host/a.wav?X-Amz-Signature=deadbeefcafe"
    with state._mutex, state._db:  # a raw write, as nothing in dgbatch stores one
        state._db.execute(
            "UPDATE items SET source = ?, error = ? WHERE id = 'u1'",
            (secret_source, "refused: Authorization: Token abcdef0123456789"),
        )
    text = "\n".join(iter_jsonl(state))
    assert "hunter2" not in text and "deadbeefcafe" not in text
    assert "abcdef0123456789" not in text and "REDACTED" in text
    (row,) = state.iter_rows("WHERE id = 'u1'")
    assert dump_row(report_row(row)) in text.splitlines()


def test_a_state_from_before_the_last_migration_reports_in_python(tmp_path: Path) -> None:
    """A read-only state without the later columns (``warning``, ``copy_of``) still reports,
    those fields empty."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    migrations.m001_initial(db)
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 'then')")
    db.execute(
        "INSERT INTO items (id, source, kind, name, out_stem, out_full, params, status, "
        "attempts, created_at, updated_at) VALUES ('a', 'https://h/a.wav', 'url', 'a.wav', "
        "'a', 'a.wav', '[]', 'done', 1, 0, 0)"
    )
    db.commit()
    db.close()
    state = State.open(path, readonly=True)
    try:
        (line,) = iter_jsonl(state)
    finally:
        state.close()
    row = json.loads(line)
    assert row["id"] == "a" and row["status"] == "done"
    assert row["warning"] is None and row["copy_of"] is None and row["outputs"] == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("m.txt:3: /x/gone/m3.wav: no such file", "no such file"),
        ("m.txt:4: /y/other/b.wav: no such file", "no such file"),
        ("m2.jsonl:1: duplicate id 'standup' (first at m1.jsonl:1)", "duplicate id … …"),
        ("m.csv:7: expected 2 fields, got 3", "expected … fields, got …"),
        ("https://h/a b.mp3: URL contains whitespace", "URL contains whitespace"),
        # a ": " inside a quoted or bracketed example is no clause (status showed "…}})")
        (
            """m.jsonl:2: key(s) 'language' not read: keys go in 'params' ({"params": {"a": 1}})""",
            "keys go in … …",
        ),
        ("", ""),
    ],
)
def test_error_kind_table(error: str, kind: str) -> None:
    """A message without a code groups by what is wrong, not by which line or file."""
    assert error_kind(error) == kind


def test_status_groups_planning_failures_by_what_is_wrong(tmp_path: Path) -> None:
    """25 missing files in a manifest are one row of the commonest errors, not ten."""
    manifest = tmp_path / "missing.txt"
    manifest.write_text("".join(f"gone/m{n}.wav\n" for n in range(25)))
    out = tmp_path / "out"
    result = Cli(None)("run", str(manifest), "--out", str(out), "--no-preflight")
    assert result.exit_code == 1, result.output
    state = State.open(out / ".dgbatch" / "state.sqlite", readonly=True)
    try:
        summary = status_summary(state)
    finally:
        state.close()
    (row,) = summary["errors"]
    assert row["error"] == "no such file" and row["count"] == 25
    assert "missing.txt:" in row["example"]


def test_a_local_path_is_reported_as_the_state_keeps_it(dgbatch: Cli, tmp_path: Path) -> None:
    """A file's path is no secret: words in it that look like one (``Bearer 2024-…``,
    ``Secret=…``) stay, so that the report's ids are the state's and name the files."""
    folder = tmp_path / "Secret=Santa"
    wav = make_wav(folder / "Bearer 2024-01-05 call.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(folder), "--out", str(out)).exit_code == 0
    lines = (out / ".dgbatch" / "report.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(row["id"], row["source"]) for row in rows] == [(str(wav), str(wav))]


def test_a_carriage_return_in_a_cell_is_quoted(dgbatch: Cli, tmp_path: Path) -> None:
    """A lone ``\\r`` in a source was written unquoted, and a CSV reader took it for a
    line end: the report of one item read as two rows."""
    make_wav(tmp_path / "in" / "a\rb.wav")
    make_wav(tmp_path / "in" / "c.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    state = str(out / ".dgbatch" / "state.sqlite")
    printed = dgbatch("report", "--state", state, "--format", "csv").output
    rows = list(csv.DictReader(io.StringIO(printed, newline="")))
    assert sorted(Path(row["source"]).name for row in rows) == ["a\rb.wav", "c.wav"]


def test_a_report_that_cannot_be_written_whole_leaves_the_last_one(tmp_path: Path) -> None:
    """``report -o`` over a file, on a disk that fills up (here: a file size limit) ended
    with half a report where the last one was, and "internal error". The last one stays,
    the file is named, and the exit is 1."""
    state = State.open(tmp_path / "state.sqlite")
    items = [Item(f"u{i}", f"https://host/{i:064}.wav", ItemKind.URL, f"{i}") for i in range(2000)]
    state.plan(items, run_id=state.start_run("test"))
    state.close()
    last = tmp_path / "report.csv"
    last.write_text("the last report\n")

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead

    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(tmp_path / "state.sqlite")]
    done = subprocess.run(
        [*command, "--format", "csv", "-o", str(last)],
        env=subprocess_env(),
        capture_output=True,
        preexec_fn=small_files,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert b"cannot write the report: File too large; the file there is unchanged" in done.stderr
    assert last.read_text() == "the last report\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _report_state(tmp_path: Path) -> Path:
    state = State.open(tmp_path / "state.sqlite")
    state.plan([Item("u1", "https://host/1.wav", ItemKind.URL, "1")], run_id=state.start_run("t"))
    state.close()
    return tmp_path / "state.sqlite"


def test_report_o_through_a_link_replaces_the_file_and_keeps_the_link(tmp_path: Path) -> None:
    """``-o`` is written through a temp file beside the file a link points at: the link
    stays a link, and the file keeps its permissions."""
    state = _report_state(tmp_path)
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "r.csv"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to("real/r.csv")
    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state), "--format", "csv"]
    done = subprocess.run([*command, "-o", str(link)], env=subprocess_env(), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and real.read_text().startswith("id,source,")
    assert real.stat().st_mode & 0o777 == 0o640


def test_report_o_to_a_pipe_writes_into_it(tmp_path: Path) -> None:
    """``-o /dev/stdout`` (or a process substitution's ``/dev/fd/N``) is written as it
    is: the temp file and rename meant for files made it an empty report, and replaced
    the link. (A link of the test's own stands for ``/dev/stdout``, which a broken
    build run as root would replace for the whole machine.)"""
    state = _report_state(tmp_path)
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state), "-o", str(stdout)]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == "https://host/1.wav"
    assert stdout.is_symlink()


def test_status_prints_no_control_characters(dgbatch: Cli, tmp_path: Path) -> None:
    """A file named with an escape sequence (``ESC]0;pwned BEL`` retitles a terminal)
    reached the terminal through the errors ``status`` prints; it shows as spaces."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x\x1b]0;pwned\x07.wav").write_bytes(b"")  # empty: a failed item naming it
    out = tmp_path / "out"
    dgbatch("run", str(folder), "--out", str(out))
    printed = dgbatch("status", "--state", str(out / ".dgbatch" / "state.sqlite")).output
    assert "pwned" in printed
    assert "\x1b" not in printed and "\x07" not in printed


def test_report_o_to_stdout_appended_to_a_log_appends(tmp_path: Path) -> None:
    """``report -o /dev/stdout >> cron.log`` (here through a link of the test's own)
    replaced the log with the report: the link was followed to the log file, and the
    report renamed over it. It goes into the open stream, after what was there."""
    state = _report_state(tmp_path)
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    log = tmp_path / "cron.log"
    log.write_text("last night\n")
    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state), "-o", str(stdout)]
    with log.open("a") as appended:
        done = subprocess.run(
            command, env=subprocess_env(), stdout=appended, stderr=subprocess.PIPE
        )
    assert done.returncode == 0, done.stderr
    first, report = log.read_text().splitlines()
    assert first == "last night" and json.loads(report)["source"] == "https://host/1.wav"


@pytest.mark.parametrize("fd", [4, 5])
def test_report_o_to_a_descriptor_is_never_the_states_own(tmp_path: Path, fd: int) -> None:
    """``-o /dev/fd/4`` named the state's own ``-wal`` (or ``-shm``), opened by the time
    the report was written, and the report went into it: a running batch lost its state.
    The output is opened before the state; such a descriptor is then no file at all."""
    state = _report_state(tmp_path)
    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state), "-o", f"/dev/fd/{fd}"]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True)
    assert done.returncode == 2, done.stderr
    assert b"cannot write the report" in done.stderr
    reread = State.open(state, readonly=True)
    assert reread.counts()["pending"] == 1
    reread.close()


def test_report_o_to_an_inherited_descriptor_appends(tmp_path: Path) -> None:
    """``-o /dev/fd/3 3>> log``: the report was renamed over the log, whose lines were
    lost. A descriptor the path names is written into."""
    state = _report_state(tmp_path)
    log = tmp_path / "cron.log"
    log.write_text("last night\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        command = [
            *dgbatch_subprocess_cmd(),
            "report",
            "--state",
            str(state),
            "-o",
            f"/dev/fd/{fd}",
        ]
        done = subprocess.run(command, env=subprocess_env(), capture_output=True, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    first, report = log.read_text().splitlines()
    assert first == "last night" and json.loads(report)["source"] == "https://host/1.wav"


@pytest.mark.timeout(30)
def test_report_o_to_a_fifo_of_a_missing_state_fails_at_once(tmp_path: Path) -> None:
    """With the output opened first, a FIFO ``-o`` waited for a reader before the missing
    state was even looked at."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    missing = str(tmp_path / "nope.sqlite")
    done = subprocess.run(
        [*dgbatch_subprocess_cmd(), "report", "--state", missing, "-o", str(fifo)],
        env=subprocess_env(),
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert b"no such state file" in done.stderr


def test_report_o_to_another_process_descriptor_is_its_file(tmp_path: Path) -> None:
    """``/proc/<pid>/fd/1`` of another process names that process's file, not this one's
    stdout: the report goes to the file, not to what this process prints."""
    state = _report_state(tmp_path)
    target = tmp_path / "other.log"
    with target.open("w") as handle:
        other = subprocess.Popen(["sleep", "30"], stdout=handle)
    try:
        command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state)]
        done = subprocess.run(
            [*command, "-o", f"/proc/{other.pid}/fd/1"], env=subprocess_env(), capture_output=True
        )
    finally:
        other.kill()
        other.wait()
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    assert json.loads(target.read_text())["source"] == "https://host/1.wav"


def test_report_o_is_refused_on_what_keeps_a_batch_safe(tmp_path: Path) -> None:
    """``-o`` was accepted onto the real ``-wal`` of a ``--state`` link (SQLite keeps it
    beside the file the link leads to: a running batch lost its state), onto an output
    lock (a second run then got in), and a link loop was an internal error."""
    real = _report_state(tmp_path)
    link = tmp_path / "link.sqlite"
    link.symlink_to(real.name)
    (tmp_path / "out" / ".dgbatch").mkdir(parents=True)
    (tmp_path / "out" / ".dgbatch" / "out.lock").write_text("pid 1 on h")
    (tmp_path / "loop").symlink_to("loop")
    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(link), "-o"]
    refusals = {
        f"{real}-wal": b"is the state file",
        str(tmp_path / "out" / ".dgbatch" / "out.lock"): b"is a lock of a dgbatch run",
        str(tmp_path / "loop"): b"a symbolic link loop",
    }
    for target, said in refusals.items():
        done = subprocess.run([*command, target], env=subprocess_env(), capture_output=True)
        assert (done.returncode, said in done.stderr) == (2, True), (target, done.stderr)
    assert (tmp_path / "out" / ".dgbatch" / "out.lock").read_text() == "pid 1 on h"


def test_report_o_to_a_descriptor_through_a_linked_folder_appends(tmp_path: Path) -> None:
    """``fds/3`` with ``fds`` a link to ``/dev/fd``: only the last part of the path was
    followed, the descriptor was missed, and the report replaced the log."""
    state = _report_state(tmp_path)
    (tmp_path / "fds").symlink_to("/dev/fd")
    log = tmp_path / "cron.log"
    log.write_text("last night\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state)]
        done = subprocess.run(
            [*command, "-o", str(tmp_path / "fds" / str(fd))],
            env=subprocess_env(),
            capture_output=True,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines()[0] == "last night"


def _big_state(tmp_path: Path, count: int = 2000) -> Path:
    """A state whose report is far bigger than a pipe's buffer (64 KiB)."""
    state = State.open(tmp_path / "state.sqlite")
    items = [Item(f"u{i}", f"https://host/{i:064}.wav", ItemKind.URL, f"{i}") for i in range(count)]
    state.plan(items, run_id=state.start_run("test"))
    state.close()
    return tmp_path / "state.sqlite"


@pytest.mark.parametrize(
    "command",
    [["report"], ["report", "--format", "csv"], ["report", "-o", "/dev/stdout"]],
)
def test_a_reader_that_stops_reading_is_no_failure(tmp_path: Path, command: list[str]) -> None:
    """``dgbatch report | head`` exited 1 without a word (click's way with a broken pipe),
    which failed a ``set -o pipefail`` script; the reader had what it wanted: exit 0,
    nothing on stderr (``-o /dev/stdout`` said "Broken pipe; the file there is
    unchanged", exit 1: a review found it)."""
    state = _big_state(tmp_path)
    proc = subprocess.Popen(
        [*dgbatch_subprocess_cmd(), *command, "--state", str(state)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # the first line, as ``head -1`` reads it
    proc.stdout.close()
    assert (proc.wait(timeout=60), proc.stderr.read()) == (0, b"")


def test_a_broken_pipe_that_is_not_stdout_is_an_error() -> None:
    """Only stdout's reader going away is quiet; a broken pipe elsewhere (a socket) is an
    error, said, where click alone exits 1 without a word."""
    group = _Commands()

    @group.command()
    def send() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    result = CliRunner().invoke(group, ["send"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "Error: cannot write the answer: Broken pipe" in result.output, result.output


def test_a_report_into_another_descriptor_whose_reader_left_names_it(tmp_path: Path) -> None:
    """``-o /dev/fd/N`` whose reader is gone: the report is not written, said as such
    (exit 1), not as a file left unchanged."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [*dgbatch_subprocess_cmd(), "report", "--state", str(_big_state(tmp_path, 10)),
             "-o", f"/dev/fd/{write}"],
            env=subprocess_env(), capture_output=True, pass_fds=(write,),
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 1
    assert (
        done.stderr
        == f"Error: -o '/dev/fd/{write}': cannot write the report: Broken pipe\n".encode()
    )


@pytest.mark.parametrize(
    "command", [["status", "--json"], ["report"], ["report", "--format", "csv"]]
)
def test_a_stdout_that_cannot_take_the_answer_is_said_so(
    tmp_path: Path, command: list[str]
) -> None:
    """``> /dev/full``: "internal error: [Errno 28] …" (a review found it); it is said as
    what it is, exit 1."""
    state = _big_state(tmp_path, 10)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*dgbatch_subprocess_cmd(), *command, "--state", str(state)],
            env=subprocess_env(), stdout=full, stderr=subprocess.PIPE,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == b"Error: cannot write to standard output: No space left on device\n"


@pytest.mark.parametrize(
    ("name", "args", "first"),
    [
        ("r.csv", [], "id,source,"),
        ("R.CSV", [], "id,source,"),
        ("r.jsonl", [], '{"id":'),
        ("r.txt", [], '{"id":'),
        ("r.csv", ["--format", "jsonl"], '{"id":'),  # said: as said
    ],
)
def test_report_o_csv_is_csv_unless_told_otherwise(
    tmp_path: Path, name: str, args: list[str], first: str
) -> None:
    """``report -o failed.csv`` wrote JSON lines into the .csv, without a word."""
    state = _report_state(tmp_path)
    target = tmp_path / name
    command = [*dgbatch_subprocess_cmd(), "report", "--state", str(state), "-o", str(target)]
    done = subprocess.run([*command, *args], env=subprocess_env(), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert target.read_text().startswith(first)
