"""Resuming: kill -9, Ctrl-C, a second run on the same state, --retry-failed, changed files.

The subprocess tests run the real ``python -m batch`` against an emulator in a thread of
the test process, so the emulator's log sees every request any of the runs sent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    Cli,
    dgbatch_subprocess_cmd,
    emulator_with,
    make_wav,
    make_wavs,
    outputs_under,
    read_state_rows,
    rows_so_far,
    sent_sha256s,
    serve_app,
    sha256_of,
    start_run,
    static_server,
    stop_when,
    subprocess_env,
    wait_for,
)

from batch.emulator import Emulator
from batch.planner import CHUNK
from batch.state import PlanStats, State


def _statuses(state: Path) -> list[str]:
    return [str(r["status"]) for r in read_state_rows(state)]


def _assert_each_output_matches(out: Path, wavs: list[Path], *, killed: bool = False) -> None:
    """One json and one txt per item, each the transcript of exactly that item.

    A ``kill -9`` during a write leaves that write's hidden temp file behind (nothing can
    remove it in a dying process); otherwise no temp file may be left.
    """
    assert len(outputs_under(out, ".json")) == len(wavs)
    assert len(outputs_under(out, ".txt")) == len(wavs)
    for wav in wavs:
        assert sha256_of(wav) in (out / f"{wav.stem}.json").read_text()
    temps = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert all(p.name.startswith(".") for p in temps) if killed else not temps


@pytest.mark.timeout(60)
def test_kill_9_mid_run_then_resume_does_every_item_exactly_once(tmp_path: Path) -> None:
    """After ``kill -9`` the same command finishes; at most ``concurrency`` requests are re-sent."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 200, seconds=0.01)
    state = out / ".dgbatch" / "state.sqlite"
    with emulator_with(latency=0.05) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "-c", "8")
        try:
            wait_for(lambda: len(outputs_under(out)) >= 40 or proc.poll() is not None)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        statuses = _statuses(state)
        assert 0 < statuses.count("done") < 200, "killed mid-run"
        status = Cli(emu)("status", "--state", str(state))
        assert "last run: #1 (running or crashed)" in status.output
        result = Cli(emu)("run", str(src), "--out", str(out), "-c", "8")
        sent = sent_sha256s(emu)
    assert result.exit_code == 0, result.output
    assert set(_statuses(state)) == {"done"}
    _assert_each_output_matches(out, wavs, killed=True)
    assert set(sent) == {sha256_of(w) for w in wavs}
    resent = sum(count - 1 for count in sent.values())
    assert resent <= 8, f"{resent} requests re-sent"


@pytest.mark.timeout(60)
def test_a_second_run_on_the_same_state_exits_4(tmp_path: Path) -> None:
    """While one run holds the state, another exits 4 with a clear message and changes nothing."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 6)
    lock = out / ".dgbatch" / "state.sqlite.lock"
    with emulator_with(latency=0.25) as emu:
        first = start_run(emu, str(src), "--out", str(out), "-c", "1")
        try:
            wait_for(lambda: len(emu.log) >= 1 or first.poll() is not None)
            assert first.poll() is None, "the first run must still be going"
            assert lock.read_text().startswith(f"pid {first.pid}")
            second = Cli(emu)("run", str(src), "--out", str(out))
        finally:
            first.communicate(timeout=30)
        assert second.exit_code == 4
        assert "state file is in use by another dgbatch run" in second.output
        assert f"pid {first.pid}" in second.output
        assert first.returncode == 0
        assert sum(sent_sha256s(emu).values()) == 6


@pytest.mark.timeout(60)
def test_a_second_state_on_the_same_out_exits_4(tmp_path: Path) -> None:
    """Two runs with two state files (a ``--state`` elsewhere) and one ``--out`` each
    planned every item as new and sent it. The second exits 4, naming the first."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 6)
    with emulator_with(latency=0.25) as emu:
        first = start_run(emu, str(src), "--out", str(out), "-c", "1")
        try:
            wait_for(lambda: len(emu.log) >= 1 or first.poll() is not None)
            assert first.poll() is None, "the first run must still be going"
            second = Cli(emu)(
                "run", str(src), "--out", str(out), "--state", str(tmp_path / "other.sqlite")
            )
        finally:
            first.communicate(timeout=30)
        assert second.exit_code == 4, second.output
        assert "writes its transcripts there, with another state file" in second.output
        assert f"pid {first.pid}" in second.output
        assert first.returncode == 0
        assert sum(sent_sha256s(emu).values()) == 6


@pytest.mark.timeout(60)
def test_runs_with_other_shard_settings_on_one_out_exclude_each_other(tmp_path: Path) -> None:
    """A shard's run and one without ``--shard`` (or a shard of another N) each have their
    own state on one ``--out``: both sent the items they shared (464 requests for 300).
    The later exits 4, naming the first; another shard of the same N goes on."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 6)
    with emulator_with(latency=0.25) as emu:
        first = start_run(emu, str(src), "--out", str(out), "--shard", "0/2", "-c", "1")
        try:
            wait_for(lambda: len(emu.log) >= 1 or first.poll() is not None)
            assert first.poll() is None, "the first run must still be going"
            whole = Cli(emu)("run", str(src), "--out", str(out))
            other_n = Cli(emu)("run", str(src), "--out", str(out), "--shard", "1/3")
            same_n = Cli(emu)("run", str(src), "--out", str(out), "--shard", "1/2")
        finally:
            first.communicate(timeout=30)
        for refused, said in ((whole, "without --shard"), (other_n, "as shard 1 of 3")):
            assert refused.exit_code == 4, refused.output
            assert f"pid {first.pid}" in refused.output
            assert f"as shard 0 of 2, and this run would {said}" in refused.output
        assert same_n.exit_code == 0, same_n.output
        assert first.returncode == 0
        assert sum(sent_sha256s(emu).values()) == 6
    # the refused runs left no state of theirs, which status would read instead of naming
    # the shards (an empty "items: 0")
    assert not (out / ".dgbatch" / "state.sqlite").exists()
    assert not (out / ".dgbatch" / "shard-1-of-3" / "state.sqlite").exists()
    assert "shards here: pass --shard 0/2 or 1/2" in Cli(None)("status", "--out", str(out)).output


@pytest.mark.timeout(60)
def test_a_run_whose_output_reader_goes_away_finishes(tmp_path: Path) -> None:
    """``dgbatch run … 2>&1 | head -1`` (or a ``| logger`` that died): the run ended at
    its next progress line with exit 0, items left in flight, re-sent and paid again by
    the next run. It finishes now, its output discarded."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 12)
    with emulator_with(latency=0.1) as emu:
        command = [*dgbatch_subprocess_cmd(), "run", str(src), "--out", str(out), "-c", "2",
                   "--api-url", emu.url, "--progress", "log", "-v"]  # fmt: skip
        proc = subprocess.Popen(
            command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        assert proc.stdout.readline()  # the first line, as ``head -1`` reads it
        proc.stdout.close()
        assert proc.wait(timeout=50) == 0
        assert sum(sent_sha256s(emu).values()) == 12
    assert _statuses(out / ".dgbatch" / "state.sqlite") == ["done"] * 12


def test_the_output_lock_never_keeps_a_run_out_alone(tmp_path: Path, emulator: Emulator) -> None:
    """The lock of a local ``--out`` is not a reason to refuse a run on its own: a state
    named ``OUT/.dgbatch/out`` (whose lock is that file) ran, and so does an ``--out``
    where the lock cannot be made (here a file stands where its folder goes), warned."""
    make_wavs(tmp_path / "in", 2)
    out = tmp_path / "out"
    named = Cli(emulator)(
        "run", str(tmp_path / "in"), "--out", str(out), "--state", str(out / ".dgbatch" / "out")
    )
    assert named.exit_code == 0, named.output
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / ".dgbatch").write_text("not a folder")
    elsewhere = tmp_path / "elsewhere.sqlite"
    result = Cli(emulator)(
        "run", str(tmp_path / "in"), "--out", str(blocked), "--state", str(elsewhere)
    )
    assert result.exit_code == 0, result.output
    assert "no lock on the output folder" in result.output
    assert len(outputs_under(blocked)) == 2


@pytest.mark.timeout(60)
def test_status_and_report_read_a_state_while_a_run_holds_it(tmp_path: Path) -> None:
    """``status`` and ``report`` work during a run (WAL readers never block the writer)."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 5)
    state = out / ".dgbatch" / "state.sqlite"
    with emulator_with(latency=0.2) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "-c", "1")
        try:
            wait_for(lambda: len(emu.log) >= 1)
            cli = Cli(emu)
            status = cli("status", "--state", str(state), "--json")
            report = cli("report", "--state", str(state))
        finally:
            proc.communicate(timeout=30)
    assert status.exit_code == 0, status.output
    assert '"total": 5' in status.output
    assert report.exit_code == 0
    assert len(report.output.splitlines()) == 5


@pytest.mark.timeout(60)
def test_sigint_exits_130_with_a_consistent_state_and_the_rerun_finishes(tmp_path: Path) -> None:
    """Ctrl-C lets in-flight requests finish, exits 130, leaves nothing running; a rerun ends it."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 30)
    state = out / ".dgbatch" / "state.sqlite"
    with emulator_with(latency=0.2) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "-c", "3")
        interrupt = lambda: proc.send_signal(signal.SIGINT)  # noqa: E731
        stderr = stop_when(proc, lambda: len(outputs_under(out)) >= 3, interrupt)
        assert proc.returncode == 130, stderr.decode()
        assert b"interrupted by SIGINT" in stderr
        rows = read_state_rows(state)
        statuses = [r["status"] for r in rows]
        assert "running" not in statuses
        assert 0 < statuses.count("done") < 30
        for row in rows:
            if row["status"] == "done":
                assert all(Path(p).exists() for p in _json_list(row["outputs"]))
        result = Cli(emu)("run", str(src), "--out", str(out))
        sent = sent_sha256s(emu)
    assert result.exit_code == 0, result.output
    _assert_each_output_matches(out, wavs)
    assert sum(sent.values()) == 30, "in-flight requests finished: nothing was sent twice"


def _json_list(text: object) -> list[str]:
    """Parse a JSON list column."""
    value = json.loads(str(text))
    assert isinstance(value, list)
    return [str(v) for v in value]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_interruptions_too(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM (systemd, Kubernetes) and SIGHUP (the terminal closed, an ssh session that
    dropped) stop the run like Ctrl-C: exit 130, nothing left running, and the next run
    sends nothing twice. SIGHUP killed the run as ``kill -9`` does (exit 129)."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 8)
    with emulator_with(latency=1.0) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "-c", "2")
        wait_for(lambda: emu.in_flight() >= 2 or proc.poll() is not None)
        proc.send_signal(sig)
        if sig == signal.SIGHUP:  # a closed terminal sends two (the kernel, then the shell)
            time.sleep(0.1)  # one after the other: no "second signal" that abandons
            proc.send_signal(sig)
        _, said = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert b"abandoning" not in said
        assert "running" not in _statuses(out / ".dgbatch" / "state.sqlite")
        assert Cli(emu)("run", str(src), "--out", str(out)).exit_code == 0
        assert set(sent_sha256s(emu).values()) == {1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("options", "signals"), [(["--grace", "0.3"], 1), (["--grace", "30"], 2)])
def test_slow_requests_are_abandoned_after_the_grace_period_or_a_second_signal(
    tmp_path: Path, options: list[str], signals: int
) -> None:
    """In-flight requests get ``--grace`` seconds after Ctrl-C; a second Ctrl-C abandons them.
    Either way the user is told, and the abandoned requests count as possibly billed (the
    emulator has their whole bodies: Deepgram would bill them, and the next run sends them
    again): the grace ran out without a word, and "0 possibly billed" was reported."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 3)
    with emulator_with(latency=20.0) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "-c", "3", *options)
        try:
            wait_for(lambda: emu.in_flight_max() >= 3 or proc.poll() is not None)
            started = time.monotonic()
            for _ in range(signals):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.1)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert time.monotonic() - started < 5.0
    assert proc.returncode == 130, stderr.decode()
    assert _statuses(out / ".dgbatch" / "state.sqlite") == ["pending"] * 3
    assert b"SIGINT: finishing 3 in-flight item(s)" in stderr
    said = b"SIGINT again: abandoning 3" if signals == 2 else b"--grace 0.3s is over: abandoning 3"
    assert said in stderr and b"(counted as possibly billed)" in stderr
    assert b"retried 0, possibly billed 3" in stderr
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert [r["timeout_retries"] for r in rows] == [1, 1, 1]


def test_done_items_are_not_sent_again(tmp_path: Path, dgbatch: Cli, emulator: Emulator) -> None:
    """Running the same command twice sends nothing the second time and exits 0."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 5)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    assert len(emulator.log) == 5
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 5
    assert "done 0, failed 0" in result.output
    assert "state: 5 done" in result.output


def test_a_changed_file_is_done_again_and_new_files_are_added(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A file whose size or mtime changed is re-sent; unchanged ones are not; new ones join."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 4)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    emulator.log.clear()
    make_wav(wavs[0], seconds=0.05, tone=50)  # new content and size
    os.utime(wavs[1], ns=(time.time_ns(), wavs[1].stat().st_mtime_ns + 5_000_000_000))  # touch
    new = make_wav(src / "new.wav", tone=60)
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sent_sha256s(emulator) == {sha256_of(p): 1 for p in (wavs[0], wavs[1], new)}
    assert sha256_of(wavs[0]) in (out / "f000.json").read_text()


def test_a_manifest_id_given_to_another_url_is_sent_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """An ``id`` whose line now names another URL is another recording (a URL has no size
    or mtime to tell it by): it was reported done with the old one's transcript, or
    failed with the old one's error, and never sent."""
    media, out = tmp_path / "media", tmp_path / "out"
    one, two = make_wav(media / "one.wav", tone=1), make_wav(media / "two.wav", tone=2)
    manifest = tmp_path / "m.jsonl"
    with static_server(media) as base:
        for name, sent in (("one.wav", one), ("gone.wav", None), ("two.wav", two)):
            manifest.write_text(f'{{"source": "{base}/{name}", "id": "B"}}\n')
            emulator.log.clear()
            result = dgbatch("run", str(manifest), "--out", str(out))
            assert result.exit_code == (1 if sent is None else 0), result.output
            assert [r.sha256 for r in emulator.log] == [sent and sha256_of(sent)]
        again = dgbatch("run", str(manifest), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert sha256_of(two) in (out / "B.json").read_text()
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["source"], row["status"], row["attempts"]) == (f"{base}/two.wav", "done", 1)


def test_a_pending_url_whose_secret_this_run_lacks_is_not_sent_redacted(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """An earlier run left a URL with a token pending; the state keeps it without the
    token. A later run on the same state with other sources sent it with ``REDACTED`` for
    the token (a refused fetch, failed for good). It fails unsent now, and the next run
    that lists the URL sends it, with its token."""
    wav = make_wav(tmp_path / "media.wav")
    fetched: list[str] = []

    async def guarded(request: web.Request) -> web.StreamResponse:
        fetched.append(request.query_string)
        if request.query.get("token") != "s3cr3t-t0ken":
            return web.Response(status=403)
        return web.FileResponse(wav)

    app = web.Application()
    app.router.add_get("/a.wav", guarded)
    out, manifest = tmp_path / "out", tmp_path / "urls.txt"
    with serve_app(app) as base:
        manifest.write_text(f"{base}/a.wav?token=s3cr3t-t0ken\n")
        down = ("--api-url", "http://127.0.0.1:9", "--no-preflight", "--backoff-base", "0.01")
        assert Cli(None)("run", str(manifest), "--out", str(out), *down).exit_code == 1
        other = make_wav(tmp_path / "other.wav", tone=3)
        later = dgbatch("run", str(other), "--out", str(out))
        assert later.exit_code == 1, later.output
        assert fetched == [] and "sends them again by itself" not in later.output
        report = dgbatch("report", "--out", str(out), "--failed")
        assert "source_needed" in report.output and "list its manifest" in report.output
        again = dgbatch("run", str(manifest), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert fetched == ["token=s3cr3t-t0ken"]
    make_wav(tmp_path / "media" / "REDACTED.wav")  # that word in a URL's own text is no sign
    with static_server(tmp_path / "media") as base:
        named = dgbatch("run", f"{base}/REDACTED.wav", "--out", str(tmp_path / "named"))
    assert named.exit_code == 0, named.output
    assert "s3cr3t" not in (out / ".dgbatch" / "state.sqlite").read_bytes().decode("latin-1")


_SIGNED = {  # one recording, signed on two nights: the query of each signing
    "aws": ("X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=aaaa1111",
            "X-Amz-Date=20260102T000000Z&X-Amz-Expires=3600&X-Amz-Signature=bbbb2222"),
    "azure-ud": ("sv=2024&skt=2026-01-01&ske=2026-01-02&se=2026-01-02&sig=aaaa1111",
                 "sv=2024&skt=2026-01-02&ske=2026-01-03&se=2026-01-03&sig=bbbb2222"),
    "cos": ("q-sign-time=1;2&q-key-time=1;2&q-signature=aaaa1111",
            "q-sign-time=3;4&q-key-time=3;4&q-signature=bbbb2222"),
    "cloudflare": ("verify=1700000000-aaaa1111", "verify=1700086400-bbbb2222"),
    "akamai": ("hdnts=exp%3D1~acl%3D*~hmac%3Daaaa1111", "hdnts=exp%3D2~acl%3D*~hmac%3Dbbbb2222"),
    "semicolons": ("a=1;Expires=100;Signature=aaaa1111", "a=1;Expires=200;Signature=bbbb2222"),
    "nginx": ("md5=aaaa1111&expires=1700000000", "md5=bbbb2222&expires=1700086400"),
    "tencent-cdn": ("sign=1700000000-r1-0-aaaa1111", "sign=1700086400-r2-0-bbbb2222"),
}  # fmt: skip


@pytest.mark.parametrize("with_id", [False, True])
@pytest.mark.parametrize("scheme", list(_SIGNED))
def test_a_url_signed_again_is_not_sent_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, with_id: bool, scheme: str
) -> None:
    """A URL signed again for the next night (its date, expiry and signature changed) is
    the same recording: a review of the fix above found it sent again every night, its
    stored URL keeping the signing date; and a second review, with schemes other than
    AWS's (whose signatures were also stored as they came)."""
    make_wav(tmp_path / "media" / "a.wav")
    out = tmp_path / "out"
    with static_server(tmp_path / "media") as base:
        for query in _SIGNED[scheme]:
            url = f"{base}/a.wav?{query}"
            line = json.dumps({"source": url, "id": "call-1"} if with_id else {"source": url})
            (tmp_path / "m.jsonl").write_text(line + "\n")
            result = dgbatch("run", str(tmp_path / "m.jsonl"), "--out", str(out))
            assert result.exit_code == 0, result.output
    assert len(emulator.log) == 1
    stored = (out / ".dgbatch" / "state.sqlite").read_bytes() + (
        out / ".dgbatch" / "report.jsonl"
    ).read_bytes()
    assert b"aaaa1111" not in stored and b"bbbb2222" not in stored


def test_an_expiry_that_signs_nothing_is_part_of_the_recording(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """``exp`` or ``expiry`` in an unsigned URL (an export's number, a date) names another
    recording: a review found ``?exp=export-1001`` never sent beside ``export-1002``."""
    make_wav(tmp_path / "media" / "get")
    with static_server(tmp_path / "media") as base:
        urls = [f"{base}/get?exp=export-1001", f"{base}/get?exp=export-1002",
                f"{base}/get?expiry=2025-01-01", f"{base}/get?expiry=2026-01-01"]  # fmt: skip
        result = dgbatch("run", *urls, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 4


def test_done_items_listed_with_other_params_are_said_not_sent_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A manifest line of a done item edited to other params is not sent again, and
    every run says so while the line differs (the edit seemed applied: nothing told the
    user); the state keeps the params it was sent with (``sent_params``). The same params
    in another order, or the line put back, are no edit."""
    wav = make_wav(tmp_path / "a.wav")
    manifest, out = tmp_path / "m.jsonl", tmp_path / "out"
    said = f"1 done item(s) are listed with other params than they were sent with ({wav})"
    for params, warned in (
        ('{"language": "en", "diarize": true}', False),
        ('{"diarize": true, "language": "en"}', False),
        ('{"language": "fr", "diarize": true}', True),
        ('{"language": "fr", "diarize": true}', True),
        ('{"diarize": true, "language": "en"}', False),
    ):
        manifest.write_text(f'{{"source": "{wav}", "id": "A", "params": {params}}}\n')
        dry = dgbatch("run", str(manifest), "--out", str(out), "--dry-run")
        assert (said in dry.output) is warned, dry.output
        result = dgbatch("run", str(manifest), "--out", str(out))
        assert result.exit_code == 0, result.output
        assert (said in result.output) is warned, result.output
        (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
        sent = dict(json.loads(str(row["sent_params"])))
        assert sent == {"language": "en", "diarize": "true"}
    assert len(emulator.log) == 1


def test_broken_lines_that_moved_or_were_fixed_are_not_failures_any_more(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A broken line is recorded by its number; when a line is inserted above it, or it
    is fixed, the earlier run's row named a line that is fine now, and every shift added
    one more failure (13 listed for 8 broken lines). A run that read the manifest whole
    forgets them."""
    wavs = [make_wav(tmp_path / f"w{n}.wav", tone=n) for n in range(3)]
    manifest, out = tmp_path / "m.txt", tmp_path / "out"
    manifest.write_bytes(f"{wavs[0]}\n\xff\xfe bad\n{wavs[1]}\n".encode("latin-1"))
    assert dgbatch("run", str(manifest), "--out", str(out)).exit_code == 1
    manifest.write_bytes(f"{wavs[2]}\n{wavs[0]}\n\xff\xfe bad\n{wavs[1]}\n".encode("latin-1"))
    shifted = dgbatch("run", str(manifest), "--out", str(out))
    assert shifted.exit_code == 1, shifted.output
    failed = dgbatch("report", "--out", str(out), "--failed").output.splitlines()
    assert len(failed) == 1 and "m.txt:3: invalid UTF-8" in failed[0]
    manifest.write_text(f"{wavs[2]}\n{wavs[0]}\n{wavs[1]}\n")
    fixed = dgbatch("run", str(manifest), "--out", str(out))
    assert fixed.exit_code == 0, fixed.output
    assert dgbatch("report", "--out", str(out), "--failed").output == ""
    assert len(emulator.log) == 3
    # a clash (one file on two lines with two params) names its manifest by file name only:
    # another manifest of that name (each night's folder has one) must not forget it
    clash = json.dumps({"source": str(wavs[0]), "params": {"language": "fr"}})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m.jsonl").write_text(f"{json.dumps({'source': str(wavs[0])})}\n{clash}\n")
    assert dgbatch("run", str(tmp_path / "b" / "m.jsonl"), "--out", str(out)).exit_code == 1
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.jsonl").write_text(f"{json.dumps({'source': str(wavs[1])})}\n")
    assert dgbatch("run", str(tmp_path / "a" / "m.jsonl"), "--out", str(out)).exit_code == 0
    failed = dgbatch("report", "--out", str(out), "--failed").output.splitlines()
    assert len(failed) == 1 and "m.jsonl:2:" in failed[0]


def test_an_item_deepgram_was_too_busy_for_is_sent_again_by_the_next_run(
    tmp_path: Path,
) -> None:
    """Items that gave up on 429s or 5xx (an outage, a throttled night) failed for good:
    a nightly job, without ``--retry-failed``, never sent them again. The next run does."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 3)
    with emulator_with(fault_rate=1.0, faults=("500", "429", "503")) as down:
        result = Cli(down)("run", str(src), "--out", str(out), "--max-retries", "1")
    assert result.exit_code == 1
    assert "3 of the failed item(s) gave up on Deepgram or their media host" in result.output
    assert "the others" not in result.output  # there are none
    state = out / ".dgbatch" / "state.sqlite"
    assert set(_statuses(state)) == {"failed"}
    with emulator_with() as healthy:
        again = Cli(healthy)("run", str(src), "--out", str(out))
        assert again.exit_code == 0, again.output
        assert sent_sha256s(healthy) == {sha256_of(w): 1 for w in wavs}
    rows = read_state_rows(state)
    assert {(r["status"], r["attempts"], r["error"]) for r in rows} == {("done", 1, None)}


def test_retry_failed_requeues_items_that_failed_earlier(tmp_path: Path) -> None:
    """Failed items stay failed on a plain rerun and are retried with ``--retry-failed``
    (a 408, the upload too slow: the item's, not Deepgram's)."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 3)
    with emulator_with(fault_rate=1.0, faults=("408",)) as broken:
        result = Cli(broken)("run", str(src), "--out", str(out), "--max-retries", "1")
    assert result.exit_code == 1
    state = out / ".dgbatch" / "state.sqlite"
    assert set(_statuses(state)) == {"failed"}
    with emulator_with() as healthy:
        cli = Cli(healthy)
        plain = cli("run", str(src), "--out", str(out))
        assert plain.exit_code == 1
        assert healthy.log == []
        retried = cli("run", str(src), "--out", str(out), "--retry-failed")
        assert retried.exit_code == 0, retried.output
        assert sent_sha256s(healthy) == {sha256_of(w): 1 for w in wavs}
    rows = read_state_rows(state)
    assert {(r["status"], r["attempts"], r["error"]) for r in rows} == {("done", 1, None)}


@pytest.mark.timeout(60)
def test_an_interrupted_force_is_continued_not_restarted(tmp_path: Path) -> None:
    """``--force`` stopped by Ctrl-C and run again redoes only what it had not redone:
    each item is sent once by the two forced runs together. Once a force has finished,
    the next ``--force`` redoes everything again."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 6)
    with emulator_with(latency=0.2) as emu:
        assert Cli(emu)("run", str(src), "--out", str(out)).exit_code == 0
        emu.log.clear()
        forced = ("run", str(src), "--out", str(out), "--force", "-c", "1")
        proc = start_run(emu, *forced[1:])
        wait_for(lambda: len(emu.log) >= 3 or proc.poll() is not None)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        redone = len(emu.log)
        assert 3 <= redone < 6
        assert Cli(emu)(*forced).exit_code == 0
        assert sent_sha256s(emu) == {sha256_of(f): 1 for f in src.iterdir()}
        assert Cli(emu)(*forced).exit_code == 0  # a new force: all six again
        assert len(emu.log) == 12


def test_an_unfinished_force_is_continued_without_force_and_a_failed_start_begins_none(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A force a run left unfinished (here written into the state, as a plan stopped
    midway leaves it) is carried on by the next run, --force or not, and then ends. A
    --force that stops before planning anything (exit 2) leaves no force behind."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 3)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    state = out / ".dgbatch" / "state.sqlite"
    db = sqlite3.connect(state)
    with db:
        db.execute("INSERT INTO meta (key, value) VALUES ('force_since', ?)", (repr(time.time()),))
    db.close()
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    assert sent_sha256s(emulator) == {sha256_of(f): 2 for f in src.iterdir()}
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0  # the force ended
    assert len(emulator.log) == 6
    typo = dgbatch("run", str(tmp_path / "typo"), "--out", str(out), "--force")
    assert typo.exit_code == 2
    db = sqlite3.connect(state)
    assert db.execute("SELECT value FROM meta WHERE key = 'force_since'").fetchone() is None
    db.close()


def test_a_failure_whose_source_is_gone_no_longer_fails_every_run(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """The exit code is about the run's own items: once a failed file is no longer
    listed, its old failed row stays in the state for the report but later runs exit 0,
    and say it is left out (a broken line fixed is forgotten). A failure still listed
    still exits 1."""
    make_wav(tmp_path / "one.wav")
    make_wav(tmp_path / "two.wav", tone=1)
    (tmp_path / "empty.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"source": "one.wav"}\n{bad json\n{"source": "empty.wav"}\n')
    out = tmp_path / "out"
    assert dgbatch("run", str(manifest), "--out", str(out)).exit_code == 1
    manifest.write_text('{"source": "one.wav"}\n{"source": "two.wav"}\n{"source": "empty.wav"}\n')
    still = dgbatch("run", str(manifest), "--out", str(out))
    assert still.exit_code == 1, still.output  # empty.wav is still listed, still failed
    manifest.write_text('{"source": "one.wav"}\n{"source": "two.wav"}\n')
    fixed = dgbatch("run", str(manifest), "--out", str(out))
    assert fixed.exit_code == 0, fixed.output
    assert "1 failed item(s) of earlier runs are not among this run's sources" in fixed.output
    assert "state: 2 done, 1 failed, 0 pending" in fixed.output
    assert len(emulator.log) == 2  # one.wav and two.wav, each once


def _run_reading_stdin(out: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [*dgbatch_subprocess_cmd(), "run", "-", "--out", str(out), *args]
    return subprocess.Popen(
        [*command, "--progress", "none"],
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_signal_while_stdin_is_read_is_a_stop_not_bad_input(tmp_path: Path) -> None:
    """``dgbatch run -`` waiting on a producer that has written nothing yet: a SIGTERM then
    is exit 130 at once (it was exit 2, "no audio sources found in: -", recorded as bad
    input; and then it still waited for the producer to close stdin)."""
    out = tmp_path / "out"
    proc = _run_reading_stdin(out)
    try:
        wait_for(lambda: (out / ".dgbatch" / "state.sqlite").exists() or proc.poll() is not None)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 130  # the producer has not closed stdin
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert b"no audio sources" not in stderr
        assert b"interrupted while waiting for stdin" in stderr
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.kill()
        proc.wait()


def test_a_stop_mid_run_does_not_wait_for_a_silent_producer(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A producer that wrote a chunk's worth of lines and went quiet (``tail -f``): a
    SIGTERM stops the run at once, with what was sent recorded; it used to wait until the
    producer closed stdin."""
    wav = make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    proc = _run_reading_stdin(out, "--api-url", emulator.url)
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"{wav}\n".encode() * CHUNK)  # one item, a whole chunk of lines
        proc.stdin.flush()
        wait_for(lambda: len(outputs_under(out)) == 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 130
        rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
        assert [(row["status"], row["attempts"]) for row in rows] == [("done", 1)]
        assert len(emulator.log) == 1
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.kill()
        proc.wait()


def test_the_output_lock_knows_the_state_through_a_linked_out(
    tmp_path: Path, emulator: Emulator
) -> None:
    """``--out`` through a link, the state named as the output lock under the real
    folder: the run locked itself out (exit 4, naming its own pid)."""
    make_wavs(tmp_path / "in", 1)
    (tmp_path / "real" / ".dgbatch").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")
    result = Cli(emulator)(
        "run", str(tmp_path / "in"), "--out", str(tmp_path / "link"),
        "--state", str(tmp_path / "real" / ".dgbatch" / "out"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.timeout(60)
def test_a_200_without_a_transcript_is_tried_once_more_across_runs(tmp_path: Path) -> None:
    """A 200 that is no transcript was billed, so the item gets one more try at most; a
    stop between the two made the next run forget the first, and pay twice more. Here the
    second try is abandoned by the stop: the next run makes one try, not two."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 1)
    with emulator_with(latency=1.0, fault_rate=1.0, faults=("garbage",)) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "--grace", "0.1")
        wait_for(lambda: len(emu.log) >= 1 or proc.poll() is not None)
        stop_when(proc, lambda: emu.in_flight() >= 1, lambda: proc.send_signal(signal.SIGINT))
        assert proc.returncode == 130
        (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
        assert (row["status"], row["paid_200s"]) == ("pending", 1)
        again = start_run(emu, str(src), "--out", str(out))
        again.communicate(timeout=30)
        wait_for(lambda: emu.in_flight() == 0)
        assert again.returncode == 1 and len(emu.log) == 3  # 1, 2 (abandoned), and one more
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert row["status"] == "failed" and "a second 200 without a transcript" in str(row["error"])


def _run_cmd(emu: Emulator, *args: str) -> list[str]:
    """``dgbatch run ARGS`` against ``emu``, without ``start_run``'s fast backoff."""
    return [
        *dgbatch_subprocess_cmd(), "run", *args, "--api-url", emu.url, "--progress", "none"
    ]  # fmt: skip


@pytest.mark.timeout(60)
def test_a_stop_in_the_backoff_after_a_200_without_a_transcript_remembers_it(
    tmp_path: Path,
) -> None:
    """The second review: a Ctrl-C in the backoff after a broken 200 left the item pending
    with ``paid_200s`` 0 (only a cancelled request kept it): five paid 200s for one
    recording over five runs. The next run makes one try, not two. Its retry of a paid
    request counts as possibly billed (it went uncounted when a stop came between), and
    as a retry where it is made (the stopped run said "retried 1", the next "retried 0")."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 1)
    with emulator_with(fault_rate=1.0, faults=("garbage",)) as emu:
        cmd = _run_cmd(emu, str(src), "--out", str(out), "--backoff-base", "30")
        proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE)
        interrupt = lambda: proc.send_signal(signal.SIGINT)  # noqa: E731
        said = stop_when(proc, lambda: len(emu.log) >= 1, interrupt, pause=0.3)  # in the backoff
        (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
        assert (proc.returncode, row["status"], row["paid_200s"]) == (130, "pending", 1)
        assert row["timeout_retries"] == 1 and b"retried 0, possibly billed 1" in said
        again = subprocess.run(
            _run_cmd(emu, str(src), "--out", str(out)), env=subprocess_env(), capture_output=True
        )
        assert again.returncode == 1 and len(emu.log) == 2
        assert b"retried 1, possibly billed 0" in again.stderr
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["attempts"], row["timeout_retries"]) == (2, 1)


@pytest.mark.timeout(60)
def test_a_kill_9_in_the_backoff_keeps_the_tries_made(tmp_path: Path) -> None:
    """Tries were written only with the item's result: a ``kill -9`` while it waited to
    try again lost them, and each next run sent it as if new (5 paid 200s without a
    transcript for one recording over three kills; 7 requests under ``--max-retries 2``).
    The state keeps them once the item is to try again: one more try, not two."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 1)
    state = out / ".dgbatch" / "state.sqlite"
    with emulator_with(fault_rate=1.0, faults=("garbage",)) as emu:
        slow = ("--backoff-base", "1000", "--backoff-cap", "1000")
        proc = subprocess.Popen(
            _run_cmd(emu, str(src), "--out", str(out), *slow),
            env=subprocess_env(),
            stderr=subprocess.PIPE,
        )

        def tried() -> bool:
            rows = rows_so_far(state)
            return bool(rows) and int(str(rows[0]["attempts"])) >= 1

        stop_when(proc, tried, proc.kill)
        (row,) = read_state_rows(state)  # and its retry of a paid request is counted
        assert (row["attempts"], row["paid_200s"], row["timeout_retries"]) == (1, 1, 1)
        again = subprocess.run(_run_cmd(emu, str(src), "--out", str(out)), env=subprocess_env())
        assert again.returncode == 1 and len(emu.log) == 2
    (row,) = read_state_rows(state)
    assert (row["attempts"], row["timeout_retries"]) == (2, 1)


@pytest.mark.timeout(60)
def test_the_grace_holds_when_the_run_was_stopping_already(tmp_path: Path) -> None:
    """A Ctrl-C while the run was stopping for its budget waited for every request (15 s
    here), ignoring --grace: a service manager's stop timeout would kill it. (The budget
    stops here at a line whose model has no price, with three requests in flight.)"""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 4)
    manifest = tmp_path / "m.jsonl"
    lines = [{"source": str(wav)} for wav in wavs[:3]]
    lines.append({"source": str(wavs[3]), "params": {"model": "x-1"}})
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with emulator_with(latency=15.0) as emu:
        cmd = _run_cmd(emu, str(manifest), "--out", str(out), "-c", "6", "--grace", "0.5")
        proc = subprocess.Popen(
            [*cmd, "--max-cost", "100"], env=subprocess_env(), stderr=subprocess.PIPE
        )
        started: list[float] = []

        def interrupt() -> None:
            started.append(time.monotonic())
            proc.send_signal(signal.SIGINT)

        stderr = stop_when(proc, lambda: emu.in_flight() >= 1, interrupt, pause=0.5)
        assert time.monotonic() - started[0] < 5, stderr.decode()
        assert b"no list price known" in stderr and b"--grace 0.5s is over" in stderr


@pytest.mark.timeout(60)
def test_a_ctrl_c_while_the_budget_waits_for_items_in_flight_stops_at_once(
    tmp_path: Path,
) -> None:
    """At a full cap, the budget waits for the items in flight (they may cost less than
    they reserved) before it stops: a Ctrl-C meanwhile is an interruption (exit 130,
    within --grace), not a budget stop."""
    src, out = tmp_path / "calls", tmp_path / "out"
    for n in range(3):
        make_wav(src / f"{n}.wav", 1.0, tone=n)
    with emulator_with(latency=15.0) as emu:
        cmd = _run_cmd(emu, str(src), "--out", str(out), "-c", "3", "--grace", "0.5")
        proc = subprocess.Popen(
            [*cmd, "--max-audio-hours", str(1.5 / 3600)],
            env=subprocess_env(),
            stderr=subprocess.PIPE,
        )
        started: list[float] = []

        def interrupt() -> None:
            started.append(time.monotonic())
            proc.send_signal(signal.SIGINT)

        stderr = stop_when(proc, lambda: emu.in_flight() >= 1, interrupt, pause=0.5)
        assert proc.returncode == 130, stderr.decode()
        assert time.monotonic() - started[0] < 5 and b"audio budget" not in stderr


@pytest.mark.timeout(60)
def test_an_abandoned_upload_whose_body_was_not_out_is_not_possibly_billed(
    tmp_path: Path,
) -> None:
    """Abandoned at the end of --grace, an upload the server had not read counted as
    possibly billed: only a request whose whole body was out can have been processed."""
    make_wav(tmp_path / "calls" / "big.wav", seconds=1000, rate=16000)  # 32 MB: over the buffers
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    cmd = [
        *dgbatch_subprocess_cmd(), "run", str(tmp_path / "calls"), "--out", str(tmp_path / "o"),
        "--api-url", url, "--no-preflight", "--grace", "0.2", "--progress", "none",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE)
    interrupt = lambda: proc.send_signal(signal.SIGINT)  # noqa: E731
    try:  # after a second, the socket's buffers are full: the body is not out
        stderr = stop_when(proc, lambda: bool(accepted), interrupt, pause=1.0)
    finally:
        listener.close()
    assert proc.returncode == 130, stderr.decode()
    (row,) = read_state_rows(tmp_path / "o" / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["timeout_retries"]) == ("pending", 0)
    assert b"possibly billed 0" in stderr


def test_a_resumed_run_sends_pending_items_as_their_lines_now_say(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan runs in the background: a resumed run whose first chunk was all done
    claimed the earlier run's pending rows before the plan listed their lines again, and
    sent them with the params the user had just edited out (paid for, then recorded done;
    a presigned URL's failed as ``source_needed``). Until the plan is over, only rows it
    listed again are sent."""
    wavs = make_wavs(tmp_path / "in", 200)
    manifest = tmp_path / "m.jsonl"

    def write(language: str) -> None:
        lines = [{"source": str(w), "params": {"language": language}} for w in wavs]
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))

    write("en")
    out = tmp_path / "out"
    emulator.auth_mode = "401"  # all planned in one chunk, nothing sent: every row pending
    run1 = dgbatch("run", str(manifest), "--out", str(out), "-c", "4", "--no-preflight")
    assert run1.exit_code == 3, run1.output
    emulator.auth_mode = "ok"
    write("fr")
    monkeypatch.setattr("batch.planner.CHUNK", 5)  # run 2 lists them again 5 at a time,
    plan = State.plan  # and slowly: the runner is ready for more before the plan is

    def slow_plan(self: State, *args: Any, **kwargs: Any) -> PlanStats:
        time.sleep(0.01)
        return plan(self, *args, **kwargs)

    monkeypatch.setattr(State, "plan", slow_plan)
    result = dgbatch("run", str(manifest), "--out", str(out), "-c", "64")
    assert result.exit_code == 0, result.output
    sent = [dict(record.params).get("language") for record in emulator.log if record.status == 200]
    assert sent == ["fr"] * len(wavs), Counter(sent)


def test_pending_items_no_source_lists_are_sent_once_the_plan_is_over(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier run's pending items that this run's sources do not list are still sent
    (README: exit 0 covers "any earlier run's unfinished ones it sent"), after the plan."""
    first = make_wavs(tmp_path / "a", 3)
    out = tmp_path / "out"
    emulator.auth_mode = "401"
    assert dgbatch("run", str(tmp_path / "a"), "--out", str(out), "--no-preflight").exit_code == 3
    emulator.auth_mode = "ok"
    monkeypatch.setattr("batch.planner.CHUNK", 5)  # a plan that grows while the run sends
    second = make_wavs(tmp_path / "b", 30)
    result = dgbatch("run", str(tmp_path / "b"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sent_sha256s(emulator) == Counter(sha256_of(w) for w in first + second)


def test_a_crashed_item_under_a_symlink_out_of_out_is_recovered(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Recovery looks for the outputs a crashed attempt wrote; under a folder of ``--out``
    that is a symlink leading out of it, that look raised ValueError: every later run
    crashed with "internal error", its run report without an exit code. The item is sent
    and fails as it does in a run that did not crash (``unsafe_output``)."""
    make_wav(tmp_path / "calls" / "day1" / "a.wav")
    make_wav(tmp_path / "calls" / "day2" / "b.wav", tone=2)
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"
    emulator.auth_mode = "401"
    run = ["run", str(tmp_path / "calls"), "--out", str(out)]
    assert dgbatch(*run, "--no-preflight").exit_code == 3
    emulator.auth_mode = "ok"
    with sqlite3.connect(state) as db:  # as kill -9 leaves an item sent and not recorded
        db.execute("UPDATE items SET status = 'running', claimed_at = 1")
    (tmp_path / "elsewhere").mkdir()
    (out / "day1").symlink_to(tmp_path / "elsewhere")
    result = dgbatch(*run)
    assert result.exit_code == 1, result.output
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(state)}
    assert rows["a.wav"]["err_code"] == "unsafe_output" and rows["b.wav"]["status"] == "done"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_listed_only_index_is_made_only_for_a_run_that_needs_it(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A plan pays for every index of its rows: the one that keeps a resumed run's
    listed-only claims a range is made when a run starts with pending rows, not before."""
    make_wavs(tmp_path / "in", 3)
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"

    def indexed() -> bool:
        with sqlite3.connect(state) as db:
            sql = "SELECT 1 FROM sqlite_master WHERE name = 'items_listed'"
            return db.execute(sql).fetchone() is not None

    emulator.auth_mode = "401"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--no-preflight").exit_code == 3
    assert not indexed()
    emulator.auth_mode = "ok"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    assert indexed()
