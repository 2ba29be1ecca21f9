"""``dgbatch run`` end to end: every source kind and manifest format, what goes over the
wire, retries, per-item failures, fatal key errors, big uploads and secrets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import Result
from conftest import (
    KEY,
    Cli,
    dgbatch_subprocess_cmd,
    emulator_with,
    load_json,
    make_wav,
    make_wavs,
    outputs_under,
    read_state_rows,
    sent_sha256s,
    serve_app,
    sha256_of,
    start_run,
    static_server,
    subprocess_env,
    untagged,
    wait_for,
)

import batch.cli
import batch.job
import batch.outputs
from batch.emulator import Emulator, build_response

DEFAULTS = [("model", "nova-3"), ("smart_format", "true")]


def _out_transcript(out: Path, name: str) -> str:
    return (out / f"{name}.txt").read_text()


def _assert_output_for(out: Path, name: str, audio: Path) -> None:
    """``out/name.json`` is the emulator's answer for exactly ``audio``'s bytes."""
    body = load_json(out / f"{name}.json")
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["sha256"] == sha256_of(audio)
    text = _out_transcript(out, name)
    assert sha256_of(audio)[:16] in text
    assert f"{audio.stat().st_size} bytes" in text


def _rows_by_status(state: Path) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in read_state_rows(state):
        grouped.setdefault(str(row["status"]), []).append(row)
    return grouped


# -- sources ------------------------------------------------------------------------------


def test_a_folder_is_walked_recursively_and_streamed_as_uploads(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """Audio files under a folder are uploaded with their type, length, key and default params."""
    src, out = tmp_path / "calls", tmp_path / "out"
    a = make_wav(src / "a.wav")
    b = make_wav(src / "day1" / "b.wav", tone=1)
    (src / "notes.md").write_text("not audio")
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    _assert_output_for(out, "a", a)
    _assert_output_for(out, "day1/b", b)
    assert [p.relative_to(out).as_posix() for p in outputs_under(out)] == ["a.json", "day1/b.json"]
    assert len(emulator.log) == 2
    by_sha = {r.sha256: r for r in emulator.log}
    for audio in (a, b):
        record = by_sha[sha256_of(audio)]
        assert record.mode == "upload"
        assert record.content_type == "audio/wav"
        assert record.content_length == audio.stat().st_size == record.bytes_received
        assert record.authorization == f"Token {KEY}"
        assert untagged(record.params) == DEFAULTS
    assert "done 2, failed 0" in result.output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--include", "day1/*"], ["day1/b.json"]),
        (["--include", "b.wav"], ["day1/b.json"]),
        (["--exclude", "*.tmp.wav"], ["a.json", "day1/b.json"]),
        (["--exclude", "day1"], ["a.json", "c.tmp.json"]),
    ],
)
def test_include_and_exclude_filter_folder_walks(
    tmp_path: Path, dgbatch: Cli, options: list[str], expected: list[str]
) -> None:
    """Globs match the path relative to the folder and the file name."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "a.wav")
    make_wav(src / "c.tmp.wav", tone=2)
    make_wav(src / "day1" / "b.wav", tone=1)
    result = dgbatch("run", str(src), "--out", str(out), *options)
    assert result.exit_code == 0, result.output
    assert [p.relative_to(out).as_posix() for p in outputs_under(out)] == expected


def test_a_single_file_is_named_after_itself(tmp_path: Path, dgbatch: Cli) -> None:
    """``dgbatch run path/a.wav`` writes ``out/a.json`` and ``out/a.txt``."""
    wav = make_wav(tmp_path / "deep" / "folder" / "a.wav")
    out = tmp_path / "out"
    result = dgbatch("run", str(wav), "--out", str(out))
    assert result.exit_code == 0, result.output
    _assert_output_for(out, "a", wav)


def test_a_url_is_submitted_as_json_and_fetched_by_deepgram(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """An http(s) source is sent as ``{"url": ...}``; the emulator fetches it from our server."""
    media = tmp_path / "media"
    wav = make_wav(media / "pod" / "ep1.wav")
    out = tmp_path / "out"
    with static_server(media) as base:
        url = f"{base}/pod/ep1.wav"
        result = dgbatch("run", url, "--out", str(out))
    assert result.exit_code == 0, result.output
    _assert_output_for(out, "pod/ep1", wav)
    (record,) = emulator.log
    assert (record.mode, record.url, record.content_type) == ("url", url, "application/json")
    assert record.sha256 == sha256_of(wav)
    assert untagged(record.params) == DEFAULTS
    assert read_state_rows(out / ".dgbatch" / "state.sqlite")[0]["kind"] == "url"


def test_a_media_host_in_trouble_is_fetched_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """Deepgram's 400 ``REMOTE_CONTENT_ERROR`` for a host that answered 503 (unbilled,
    intermittent) is retried like a 503 of Deepgram's own; the host's 404 fails at once."""
    wav = make_wav(tmp_path / "ep1.wav")
    gets: list[str] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        gets.append(request.path)
        if request.path == "/gone.wav":
            return web.Response(status=404)
        if gets.count(request.path) == 1:
            return web.Response(status=503)
        return web.FileResponse(wav)

    app = web.Application()
    app.router.add_get("/{name}", flaky)
    out = tmp_path / "out"
    with serve_app(app) as base:
        urls = [f"{base}/ep1.wav", f"{base}/gone.wav"]
        result = dgbatch("run", *urls, "--out", str(out), "--backoff-base", "0.01")
    assert result.exit_code == 1, result.output
    assert sorted(gets) == ["/ep1.wav", "/ep1.wav", "/gone.wav"]
    rows = {row["source"]: row for row in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    assert (rows[urls[0]]["status"], rows[urls[0]]["attempts"]) == ("done", 2)
    assert (rows[urls[1]]["status"], rows[urls[1]]["attempts"]) == ("failed", 1)
    assert rows[urls[1]]["err_code"] == "REMOTE_CONTENT_ERROR"


def test_manifests_of_every_format_resolve_paths_against_their_folder(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """.txt, .jsonl and .csv manifests: relative paths, comments, ids, URLs and per-item params."""
    lists = tmp_path / "lists"
    audio = [make_wav(lists / "audio" / f"{n}.wav", tone=i) for i, n in enumerate("abcde")]
    media = tmp_path / "media"
    remote = make_wav(media / "r.wav", tone=9)
    out = tmp_path / "out"
    with static_server(media) as base:
        (lists / "urls.txt").write_text(f"# a comment\n\naudio/a.wav\n{base}/r.wav\n")
        (lists / "items.jsonl").write_text(
            '{"source": "audio/b.wav", "id": "greeting.2026-01-05"}\n'
            '{"source": "audio/c.wav", "params": {"diarize": true}}\n'
        )
        (lists / "list.csv").write_text(
            "source,id,language\naudio/d.wav,,\naudio/e.wav,spanish.wav,es\n"
        )
        result = dgbatch(
            "run",
            str(lists / "urls.txt"),
            str(lists / "items.jsonl"),
            str(lists / "list.csv"),
            "--out",
            str(out),
        )
    assert result.exit_code == 0, result.output
    names = ["audio/a", "r", "greeting.2026-01-05", "audio/c", "audio/d", "spanish"]
    for name, wav in zip(names, [audio[0], remote, *audio[1:]], strict=True):
        _assert_output_for(out, name, wav)
    params = {r.sha256: untagged(r.params) for r in emulator.log}
    assert params[sha256_of(audio[2])] == [*DEFAULTS, ("diarize", "true")]
    assert params[sha256_of(audio[4])] == [*DEFAULTS, ("language", "es")]
    assert params[sha256_of(audio[3])] == DEFAULTS
    assert "Speaker 1:" in _out_transcript(out, "audio/c")
    ids = {r["id"] for r in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    assert {"id:greeting.2026-01-05", "id:spanish.wav", str(audio[0])} <= ids


def test_an_id_repeated_in_another_manifest_fails_that_line_and_exits_1(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A second manifest reusing an id is a failed item naming it, not a silently lost recording."""
    monday = make_wav(tmp_path / "monday.wav")
    make_wav(tmp_path / "tuesday.wav", tone=1)
    (tmp_path / "m1.jsonl").write_text('{"source": "monday.wav", "id": "standup"}\n')
    (tmp_path / "m2.jsonl").write_text('{"source": "tuesday.wav", "id": "standup"}\n')
    out = tmp_path / "out"
    result = dgbatch(
        "run", str(tmp_path / "m1.jsonl"), str(tmp_path / "m2.jsonl"), "--out", str(out)
    )
    assert result.exit_code == 1, result.output
    assert [r.sha256 for r in emulator.log] == [sha256_of(monday)]
    _assert_output_for(out, "standup", monday)
    rows = _rows_by_status(out / ".dgbatch" / "state.sqlite")
    assert [r["source"] for r in rows["done"]] == [str(monday)]
    assert [r["error"] for r in rows["failed"]] == [
        "m2.jsonl:1: duplicate id 'standup' (first at m1.jsonl:1)"
    ]


def test_stdin_lists_sources_relative_to_the_current_folder(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-`` reads one source per line from stdin, relative to the current folder."""
    a = make_wav(tmp_path / "calls" / "a.wav")
    b = make_wav(tmp_path / "calls" / "b.wav", tone=1)
    monkeypatch.chdir(tmp_path)
    result = dgbatch("run", "-", "--out", "out", stdin="calls/a.wav\n\ncalls/b.wav\n")
    assert result.exit_code == 0, result.output
    _assert_output_for(tmp_path / "out", "calls/a", a)
    _assert_output_for(tmp_path / "out", "calls/b", b)


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], DEFAULTS),
        (["--param", "model=nova-2"], [("model", "nova-2"), ("smart_format", "true")]),
        (["--param", "smart_format="], [("model", "nova-3")]),
        (["--param", "diarize=True"], [*DEFAULTS, ("diarize", "true")]),
        (
            ["--param", "keyterm=a", "--param", "keyterm=b"],
            [*DEFAULTS, ("keyterm", "a"), ("keyterm", "b")],
        ),
    ],
)
def test_param_overrides_defaults(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, options: list[str], expected: Any
) -> None:
    """``--param`` replaces a default, removes it when empty and repeats keys for lists."""
    make_wav(tmp_path / "a.wav")
    result = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"), *options)
    assert result.exit_code == 0, result.output
    assert untagged(emulator.log[0].params) == expected


def test_manifest_params_override_defaults_and_cli_params(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """Per-item params win over ``--param``, which wins over the defaults."""
    a = make_wav(tmp_path / "a.wav")
    b = make_wav(tmp_path / "b.wav", tone=1)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"source": "a.wav", "params": {"model": "whisper-large", "smart_format": false}}\n'
        '{"source": "b.wav"}\n'
    )
    result = dgbatch(
        "run", str(manifest), "--out", str(tmp_path / "out"), "--param", "model=nova-2"
    )
    assert result.exit_code == 0, result.output
    params = {r.sha256: untagged(r.params) for r in emulator.log}
    assert params[sha256_of(a)] == [("model", "whisper-large"), ("smart_format", "false")]
    assert params[sha256_of(b)] == [("model", "nova-2"), ("smart_format", "true")]


# -- answers that are not a transcript -------------------------------------------------


def test_a_400_fails_one_item_and_the_run_goes_on(tmp_path: Path, dgbatch: Cli) -> None:
    """A non-audio file named .wav fails with Deepgram's error; the others are done; exit 1."""
    src, out = tmp_path / "calls", tmp_path / "out"
    good = make_wavs(src, 3)
    (src / "bad.wav").write_bytes(b"definitely not audio, just text" * 10)
    result = dgbatch("run", str(src), "--out", str(out), "--no-sniff")
    assert result.exit_code == 1, result.output
    for wav in good:
        _assert_output_for(out, wav.stem, wav)
    assert not (out / "bad.json").exists()
    report = [json.loads(line) for line in (out / ".dgbatch" / "report.jsonl").open()]
    (bad,) = [row for row in report if row["status"] == "failed"]
    assert bad["source"] == str(src / "bad.wav")
    assert bad["http_status"] == 400
    assert bad["attempts"] == 1
    assert bad["err_code"] == "Bad Request"
    assert "corrupt or unsupported data" in bad["error"]
    assert bad["request_id"]
    assert "done 3, failed 1" in result.output


def test_the_summary_counts_inputs_that_failed_while_planning(tmp_path: Path, dgbatch: Cli) -> None:
    """Broken manifest lines fail before anything is sent; the summary counts them with
    the items that failed after a request, each once, as the state does (a line that was
    already failed in an earlier run is not counted again)."""
    good = make_wavs(tmp_path / "calls", 2)
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{good[0]}\n{tmp_path / 'gone.wav'}\nftp://x/y.wav\n{good[1]}\n")
    out = tmp_path / "out"
    result = dgbatch("run", str(manifest), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "done 2, failed 2," in result.output
    assert "state: 2 done, 2 failed, 0 pending" in result.output
    db = sqlite3.connect(out / ".dgbatch" / "state.sqlite")
    (summary,) = db.execute("SELECT summary FROM runs").fetchone()
    db.close()
    assert json.loads(summary)["failed_this_run"] == 2
    good[0].unlink()  # a done file that is gone: planned as broken, failed once, not twice
    again = dgbatch("run", str(manifest), "--out", str(out))
    assert "done 0, failed 1," in again.output
    assert "state: 1 done, 3 failed, 0 pending" in again.output


@pytest.mark.timeout(60)
def test_transient_faults_are_retried_until_every_item_is_done(tmp_path: Path) -> None:
    """429s, 5xx and resets are all retried to success. (A 200 without a transcript was
    billed: it is retried once only, see test_a_200_without_a_transcript_is_paid_for_twice_at_most;
    drawn at random here, two of them for one item made this test fail now and then.)"""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 12)
    faults_drawn = ("429", "500", "502", "503", "reset")
    with emulator_with(fault_rate=0.5, seed=7, retry_after=False, faults=faults_drawn) as emu:
        result = Cli(emu)("run", str(src), "--out", str(out), "--max-retries", "20")
        faults = {r.fault for r in emu.log if r.fault}
    assert result.exit_code == 0, result.output
    for wav in wavs:
        _assert_output_for(out, wav.stem, wav)
    assert "reset" in faults
    assert len(faults) >= 4
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert sum(int(r["attempts"]) for r in rows) > len(wavs)  # type: ignore[call-overload]


def test_an_item_that_keeps_failing_gives_up_after_max_retries(tmp_path: Path) -> None:
    """After ``--max-retries`` retries the item fails naming the last answer."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    with emulator_with(fault_rate=1.0, faults=("503",)) as emu:
        result = Cli(emu)("run", str(tmp_path / "a.wav"), "--out", str(out), "--max-retries", "2")
        assert len(emu.log) == 3
    assert result.exit_code == 1
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"], row["http_status"]) == ("failed", 3, 503)
    assert "gave up after 3 attempts" in str(row["error"])
    assert row["err_code"] == "Service Unavailable"


def _deepgram_200(n: int, body: bytes) -> web.Response:
    """A Deepgram-shaped 200 for request ``n`` of a test's own /v1/listen."""
    response = build_response(
        request_id=f"r{n}", sha256="0" * 64, size=len(body), duration=1.0, params=()
    )
    return web.json_response(response)


def _listen_app(
    first: Callable[[int], Awaitable[web.Response | None]], seen: list[float]
) -> web.Application:
    """A /v1/listen that reads the body, lets ``first(n)`` answer request n (or pass with
    None), and otherwise answers a Deepgram-shaped 200."""

    async def listen(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(time.monotonic())
        early = await first(len(seen))
        if early is not None:
            return early
        return _deepgram_200(len(seen), body)

    return _app_of(listen)


def _throttling_app(retry_after: str | None, seen: list[float]) -> web.Application:
    """Answers the first request 429 (with ``retry_after`` if given), then Deepgram 200s."""

    async def first(n: int) -> web.Response | None:
        if n > 1:
            return None
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        error = {"err_code": "TOO_MANY_REQUESTS", "err_msg": "slow down", "request_id": "r0"}
        return web.json_response(error, status=429, headers=headers)

    return _listen_app(first, seen)


@pytest.mark.parametrize(("retry_after", "low", "high"), [("1", 0.9, 5.0), (None, 0.0, 0.5)])
def test_retry_after_is_honoured_when_present(
    tmp_path: Path, retry_after: str | None, low: float, high: float
) -> None:
    """A 429 with ``Retry-After: 1`` waits a second; without it the (tiny) backoff applies."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    seen: list[float] = []
    with serve_app(_throttling_app(retry_after, seen)) as url:
        result = Cli(None)(
            "run",
            str(tmp_path / "a.wav"),
            "--out",
            str(out),
            "--api-url",
            url,
            "--backoff-base",
            "0.01",
            "--progress",
            "none",
        )
    assert result.exit_code == 0, result.output
    assert len(seen) == 2
    assert low <= seen[1] - seen[0] < high
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"]) == ("done", 2)


def _slow_first_app(seen: list[float], stall: int) -> web.Application:
    """Reads the whole body, then stalls the first ``stall`` requests for 2 s; answers 200 after."""

    async def first(n: int) -> web.Response | None:
        if n <= stall:
            await asyncio.sleep(2.0)
        return None

    return _listen_app(first, seen)


def _run_against(url: str, *args: str) -> Result:
    return Cli(None)(*args, "--api-url", url, "--backoff-base", "0.01", "--progress", "none")


def test_a_timeout_after_the_upload_is_retried_and_counted_separately(tmp_path: Path) -> None:
    """A read timeout after the body was sent is retried and reported as ``timeout_retries``."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    seen: list[float] = []
    with serve_app(_slow_first_app(seen, stall=1)) as url:
        result = _run_against(
            url, "run", str(tmp_path / "a.wav"), "--out", str(out), "--timeout", "0.3"
        )
    assert result.exit_code == 0, result.output
    assert "retried 1, possibly billed 1" in result.output
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"], row["timeout_retries"]) == ("done", 2, 1)
    status = Cli(None)("status", "--state", str(out / ".dgbatch" / "state.sqlite"), "--json")
    assert json.loads(status.output)["timeout_retries"] == 1


async def _cut_short_200(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """A 200 whose body the line drops after its first bytes (processed, and billed)."""
    started = web.StreamResponse(status=200, headers={**headers, "Content-Length": "1000"})
    await started.prepare(request)
    await started.write(b'{"metadata": {')
    assert request.transport is not None
    request.transport.close()
    return started


def _app_of(listen: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    return app


def _first_answer_app(kind: str, seen: list[float]) -> web.Application:
    """Answers the first request with ``kind`` once its body is read, then Deepgram 200s."""

    async def listen(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(time.monotonic())
        if len(seen) == 1 and kind == "reset":
            assert request.transport is not None
            request.transport.close()
        if len(seen) == 1 and kind == "truncated":  # the answer begins, then the line drops
            return await _cut_short_200(request, {"Content-Type": "application/json"})
        if len(seen) == 1 and kind == "garbage":
            return web.Response(status=200, body=b"\x00not json", content_type="application/json")
        if len(seen) == 1 and kind == "503":
            return web.json_response({"err_code": "X", "err_msg": "busy"}, status=503)
        return _deepgram_200(len(seen), body)

    return _app_of(listen)


@pytest.mark.parametrize(
    ("kind", "billed"), [("garbage", 1), ("truncated", 1), ("reset", 1), ("503", 0)]
)
def test_retries_of_requests_deepgram_may_have_billed_are_counted(
    tmp_path: Path, kind: str, billed: int
) -> None:
    """A 200 that was not a transcript was processed, and a connection dropped after the
    whole body was sent may have been: their retries count as possibly billed, like a
    timeout's. A 503 was not processed: an ordinary retry."""
    seen: list[float] = []
    result, row = _one_file_against(tmp_path, _first_answer_app(kind, seen))
    assert result.exit_code == 0, result.output
    assert f"retried 1, possibly billed {billed}" in result.output
    assert (row["status"], row["attempts"], row["timeout_retries"]) == ("done", 2, billed)


def test_an_upload_cut_off_every_time_is_sent_again_by_the_next_run(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A server that hangs up before the body is in never had the request, so nothing was
    billed: the item that gave up on it is re-queued by the next run without
    ``--retry-failed``, as after a 503. Once the body was whole, it waits for it."""
    wav = make_wav(tmp_path / "in" / "a.wav")
    with wav.open("r+b") as handle:  # a long recording: more than the sockets buffer
        handle.truncate(32 << 20)
    seen: list[int] = []

    async def hang_up(request: web.Request) -> web.StreamResponse:
        seen.append(len(seen))
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--max-retries", "1")
    with serve_app(_app_of(hang_up)) as url:
        result = _run_against(url, *args)
    assert result.exit_code == 1, result.output
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["retry_next"], row["timeout_retries"], len(seen)) == (
        "failed",
        1,
        0,
        2,
    )
    again = Cli(emulator)(*args)
    assert again.exit_code == 0, again.output
    assert [record.sha256 for record in emulator.log] == [sha256_of(wav)]


def _one_file_against(tmp_path: Path, app: web.Application) -> tuple[Result, dict[str, object]]:
    """``dgbatch run a.wav`` against ``app``: what it printed, and the item's row."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    with serve_app(app) as url:
        result = _run_against(url, "run", str(tmp_path / "a.wav"), "--out", str(out))
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    return result, row


def _never_a_transcript_app(kind: str, seen: list[str]) -> web.Application:
    """Answers every request with a 200 that is no transcript: cut short, or garbage."""

    async def listen(request: web.Request) -> web.StreamResponse:
        await request.read()
        request_id = f"0b9f5c4e-0000-4000-8000-00000000000{len(seen)}"
        seen.append(request_id)
        headers = {"Content-Type": "application/json", "dg-request-id": request_id}
        if kind == "garbage":
            return web.Response(status=200, body=b"<html>ok</html>", headers=headers)
        return await _cut_short_200(request, headers)

    return _app_of(listen)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_a_200_without_a_transcript_is_paid_for_twice_at_most(tmp_path: Path, kind: str) -> None:
    """A 200 that is not a transcript (cut short, or not Deepgram's) was processed and
    billed; it was retried ``--max-retries`` times, each paid again (6 requests). It is
    tried once more, then fails, with the 200 and the last request id recorded."""
    seen: list[str] = []
    result, row = _one_file_against(tmp_path, _never_a_transcript_app(kind, seen))
    assert result.exit_code == 1, result.output
    assert len(seen) == 2
    assert (row["status"], row["attempts"], row["http_status"]) == ("failed", 2, 200)
    assert row["request_id"] == seen[-1]
    assert "a second 200 without a transcript (each one billed): not retried" in str(row["error"])
    assert row["err_code"] == "not_a_transcript"  # status groups failures by it


def test_timeout_retries_agree_when_an_item_gives_up(tmp_path: Path) -> None:
    """Two timeouts with ``--max-retries 1`` are one retry after a timeout, everywhere."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    seen: list[float] = []
    with serve_app(_slow_first_app(seen, stall=2)) as url:
        result = _run_against(
            url, "run", str(tmp_path / "a.wav"), "--out", str(out), "--timeout", "0.3",
            "--max-retries", "1",
        )  # fmt: skip
    assert result.exit_code == 1
    assert "retried 1, possibly billed 1" in result.output
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"], row["err_code"]) == ("failed", 2, "timeout")
    assert "timeout" in str(row["error"])
    assert row["timeout_retries"] == 1
    status = Cli(None)("status", "--state", str(out / ".dgbatch" / "state.sqlite"), "--json")
    (error,) = json.loads(status.output)["errors"]
    assert (error["error"], error["example"]) == ("timeout", str(row["error"]))


def test_a_project_concurrency_limit_slows_the_whole_pool(tmp_path: Path) -> None:
    """Against a limit of 2 in flight, ``-c 8`` halves its limit and still finishes every item."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 24)
    with emulator_with(max_concurrency=2, latency=0.05, retry_after=False) as emu:
        result = Cli(None)(
            "run", str(src), "--out", str(out), "-c", "8", "--max-retries", "20",
            "--api-url", emu.url, "--backoff-base", "0.01", "--progress", "none", "-vv",
        )  # fmt: skip
        throttled = [r for r in emu.log if r.fault == "concurrency"]
    assert result.exit_code == 0, result.output
    assert throttled, "the emulator's limit was hit"
    for wav in wavs:
        _assert_output_for(out, wav.stem, wav)
    changes = re.findall(r"concurrency limit (\d+) -> (\d+)", result.output)
    assert any(int(after) < int(before) for before, after in changes), "a 429 cuts the limit"
    assert all(int(after) <= 8 for _, after in changes), "never above --concurrency"


def test_a_request_slot_goes_back_when_its_answer_arrives(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-c`` counts requests in flight: while a stalled disk holds the first answers'
    outputs, the next items are still sent, yet no more answers wait for the disk than
    ``-c``: 2 answers being written, 2 more answered and keeping their slots until
    there is room, and no fifth request until the disk moves."""
    make_wavs(tmp_path / "in", 8)
    real_write = batch.outputs._write_new_file
    sent_while_stalled: list[int] = []

    def stalled_disk(path: str, data: bytes, created: list[str]) -> None:
        if not sent_while_stalled:
            deadline = time.monotonic() + 10
            while len(emulator.log) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # the time a fifth request would need to go out
            sent_while_stalled.append(len(emulator.log))
        real_write(path, data, created)

    monkeypatch.setattr(batch.outputs, "_write_new_file", stalled_disk)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "2")
    assert result.exit_code == 0, result.output
    assert sent_while_stalled == [4]
    assert len(emulator.log) == 8
    assert len(outputs_under(tmp_path / "out")) == 8


def test_an_item_abandoned_while_its_outputs_are_written_is_not_paid_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C abandons the items in flight; one whose paid answer is already
    being written is let finish it, and is recorded done, not sent again next time."""
    make_wavs(tmp_path / "in", 1)
    real_write = batch.outputs._write_new_file

    def interrupted_twice(path: str, data: bytes, created: list[str]) -> None:
        if not created:  # the first file of the write: Ctrl-C, Ctrl-C, then the disk moves
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
        real_write(path, data, created)

    monkeypatch.setattr(batch.outputs, "_write_new_file", interrupted_twice)
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 130, result.output
    assert "abandoning 1 in-flight item(s)" in result.output
    assert [r["status"] for r in read_state_rows(out / ".dgbatch" / "state.sqlite")] == ["done"]
    monkeypatch.undo()
    again = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert again.exit_code == 0 and len(emulator.log) == 1


@pytest.mark.parametrize("first", [False, True])
def test_a_ctrl_c_once_the_run_is_over_keeps_its_exit_code(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
    first: bool,
) -> None:  # fmt: skip
    """A Ctrl-C while the loop shuts down and the summary prints (the run over, its state
    closed) is noted, not raised: it was click's "Aborted!" and exit 1 (a second Ctrl-C of
    a stopping run, exit 130 otherwise). The default handler is back afterwards."""
    make_wavs(tmp_path / "in", 1)
    real_summary = batch.cli.format_summary

    def interrupted(outcome: batch.job.RunOutcome) -> str:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return real_summary(outcome)

    if first:  # and one Ctrl-C during the run itself: the run's exit code is 130
        real_write = batch.outputs._write_new_file

        def interrupted_once(path: str, data: bytes, created: list[str]) -> None:
            if not created:
                os.kill(os.getpid(), signal.SIGINT)
            real_write(path, data, created)

        monkeypatch.setattr(batch.outputs, "_write_new_file", interrupted_once)
    monkeypatch.setattr(batch.cli, "format_summary", interrupted)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert result.exit_code == (130 if first else 0), result.output
    assert "Aborted" not in result.output and "state: 1 done" in result.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_as_the_process_exits_keeps_the_runs_exit_code(
    tmp_path: Path, emulator: Emulator, sig: signal.Signals
) -> None:
    """The command restored the default handlers at its end, before the interpreter's
    teardown: a SIGTERM then (a service manager stopping a run as it ends) killed the
    process, 143 for a run that ended 0, and a SIGINT printed a KeyboardInterrupt trace.
    As the console script, a late signal is only noted: the exit is the run's."""
    make_wavs(tmp_path / "in", 2)
    for pause in (0.0, 0.005, 0.01, 0.02):  # the teardown lasts some tens of ms
        out = tmp_path / f"out{pause}"
        proc = start_run(emulator, str(tmp_path / "in"), "--out", str(out))
        assert proc.stderr is not None
        said = b""
        for line in proc.stderr:  # the summary's last line: the run is over, the process ends
            said += line
            if line.startswith(b"report:"):
                time.sleep(pause)
                proc.send_signal(sig)
                break
        said += proc.stderr.read()
        assert proc.wait(timeout=30) == 0, said
        assert b"Traceback" not in said and b"KeyboardInterrupt" not in said


def test_an_item_writing_its_outputs_when_grace_ends_is_let_finish_them(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ``--grace`` runs out, an item whose paid answer is being written is cancelled
    once and given the output grace to land; it is recorded done, not sent again. (The
    drain loop used to cancel it again every 0.25 s, cutting that grace short.)"""
    make_wavs(tmp_path / "in", 1)
    real_write = batch.outputs._write_new_file

    def slow_after_ctrl_c(path: str, data: bytes, created: list[str]) -> None:
        if not created:  # the first file of the write: Ctrl-C, then a slow disk
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.9)  # past --grace and three turns of the drain loop, within 2 s
        real_write(path, data, created)

    monkeypatch.setattr(batch.outputs, "_write_new_file", slow_after_ctrl_c)
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--grace", "0.1")
    assert result.exit_code == 130, result.output
    assert [r["status"] for r in read_state_rows(out / ".dgbatch" / "state.sqlite")] == ["done"]
    monkeypatch.undo()
    again = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert again.exit_code == 0 and len(emulator.log) == 1


def test_a_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    """Nothing listening on the API port: every try is retried, then the run stops (exit 1)
    naming the refused connection, and the item stays pending for the next run, with no
    attempt counted: no request reached Deepgram (README: attempts are the requests
    Deepgram saw)."""
    make_wav(tmp_path / "a.wav")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    result = _run_against(
        f"http://127.0.0.1:{port}", "run", str(tmp_path / "a.wav"), "--out", str(out),
        "--max-retries", "2",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "retried 0" in result.output  # three tries, none sent (README: requests sent)
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"], row["http_status"]) == ("pending", 0, None)
    assert f"cannot connect to 127.0.0.1:{port}" in str(row["error"])
    assert "connection refused" in result.output


# -- fatal key errors ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["401", "402", "403"])
def test_a_refused_key_stops_the_run_and_leaves_items_pending(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, mode: str
) -> None:
    """401/402/403 exit 3 after one request, without the key in the message; items stay pending."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 5)
    emulator.auth_mode = mode
    result = dgbatch("run", str(src), "--out", str(out), "-c", "1", "--no-preflight")
    assert result.exit_code == 3
    refused_what = "the account (no credit left" if mode == "402" else "the API key"
    assert f"Deepgram refused {refused_what}" in result.output
    assert f"HTTP {mode}" in result.output
    assert KEY not in result.output
    assert len(emulator.log) == 1
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert {r["status"] for r in rows} == {"pending"}
    (refused,) = [r for r in rows if r["attempts"]]  # what was answered is recorded
    assert (refused["http_status"], refused["request_id"]) == (
        int(mode),
        emulator.log[0].request_id,
    )
    assert refused["err_code"] and refused["request_id"]
    assert outputs_under(out) == []


def test_a_wrong_key_exits_3_and_the_right_key_finishes_the_run(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """After a 401 nothing is lost: the same command with the right key does every item once."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = make_wavs(src, 6)
    wrong = "wrong-key-987654321"
    result = dgbatch("run", str(src), "--out", str(out), "-c", "2", "--no-preflight", key=wrong)
    assert result.exit_code == 3
    assert "refused the API key" in result.output
    assert wrong not in result.output
    assert {r["status"] for r in read_state_rows(out / ".dgbatch" / "state.sqlite")} == {"pending"}
    assert len(emulator.log) <= 2
    emulator.log.clear()
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sent_sha256s(emulator) == {sha256_of(w): 1 for w in wavs}


def test_a_key_revoked_mid_run_keeps_finished_work(tmp_path: Path, dgbatch: Cli) -> None:
    """Items done before the 401 stay done; the rest stay pending for the next run."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 4)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    make_wavs(tmp_path / "more", 3)
    dgbatch.emulator.auth_mode = "401"  # type: ignore[union-attr]
    result = dgbatch(
        "run", str(src), str(tmp_path / "more"), "--out", str(out), "-c", "1", "--no-preflight"
    )
    assert result.exit_code == 3
    grouped = _rows_by_status(out / ".dgbatch" / "state.sqlite")
    assert (len(grouped["done"]), len(grouped["pending"])) == (4, 3)


# -- big uploads ---------------------------------------------------------------------------


def _sparse_wav(path: Path, size: int) -> Path:
    """A WAV header promising ``size`` bytes, then zeros: costs no disk space."""
    rate = 16_000
    header = (
        b"RIFF"
        + (size - 8).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + (size - 44).to_bytes(4, "little")
    )
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(size)
    return path


def _peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@pytest.mark.timeout(90)
def test_a_200_mb_upload_is_streamed_in_flat_memory(tmp_path: Path, emulator: Emulator) -> None:
    """A 200 MB file is uploaded whole (same sha256) while the process peaks far below 200 MB."""
    size = 200 * 1024 * 1024
    big = _sparse_wav(tmp_path / "big.wav", size)
    out = tmp_path / "out"
    cmd = [
        *dgbatch_subprocess_cmd(),
        "run",
        str(big),
        "--out",
        str(out),
        "--api-url",
        emulator.url,
        "--progress",
        "none",
    ]
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _peak_rss_kb(proc.pid))
        time.sleep(0.02)
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert 0 < peak < 100 * 1024, f"peak RSS {peak} kB"
    (record,) = emulator.log
    assert record.content_length == size == record.bytes_received
    assert record.sha256 == sha256_of(big)
    assert load_json(out / "big.json")["metadata"]["sha256"] == record.sha256  # type: ignore[index]


# -- secrets -------------------------------------------------------------------------------


def _all_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_key_and_url_signatures_never_leave_the_process(tmp_path: Path) -> None:
    """Neither the key nor a URL signature is in the state (and WAL), report, logs or outputs."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 6)
    (src / "bad.wav").write_bytes(b"not audio at all" * 8)
    media = tmp_path / "media"
    make_wav(media / "signed.wav", tone=7)
    signature = "SIGsecret0123456789"
    with (
        emulator_with(  # no 200s without a transcript: two for one item fail it (billed)
            fault_rate=0.4, seed=3, retry_after=False, faults=("429", "500", "502", "503", "reset")
        ) as emu,
        static_server(media) as base,
    ):
        signed = f"{base}/signed.wav?X-Amz-Signature={signature}&token=tok{signature}"
        result = Cli(emu)("run", str(src), signed, "--out", str(out), "--max-retries", "20", "-vv")
        assert emu.log[0].authorization == f"Token {KEY}"
        assert any(r.url == signed for r in emu.log)
    assert result.exit_code == 1, result.output
    assert "DEBUG" in result.output or "retry" in result.output or "done" in result.output
    for secret in (KEY, signature):
        assert secret not in result.output
        for path, data in _all_bytes(out).items():
            assert secret.encode() not in data, path
    report = (out / ".dgbatch" / "report.jsonl").read_text()
    assert "REDACTED" in report
    assert (out / "signed.json").exists()


@pytest.mark.timeout(60)
def test_the_key_is_not_in_a_live_state_file_or_its_wal(tmp_path: Path) -> None:
    """While a run holds the state open, neither the database nor its -wal holds the key."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 16)
    state_dir = out / ".dgbatch"
    with emulator_with(latency=0.1) as emu:
        proc = start_run(emu, str(src), "--out", str(out), "-c", "2", "-vv")
        try:
            wait_for(
                lambda: (
                    ((state_dir / "state.sqlite-wal").exists() and len(emu.log) >= 2)
                    or proc.poll() is not None
                )
            )
            live = _all_bytes(state_dir)
        finally:
            stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert any(p.name.endswith("-wal") for p in live)
    for path, data in {**live, **_all_bytes(out)}.items():
        assert KEY.encode() not in data, path
    assert KEY.encode() not in stdout + stderr


@pytest.mark.parametrize(
    ("size", "total"), [(None, 1200.0), (0, 1200.0), (1 << 20, 1204.0), (100 << 20, 1600.0)]
)
def test_the_request_timeout_grows_4_s_per_mb_uploaded(size: int | None, total: float) -> None:
    """README: ``--timeout`` plus an allowance of 4 s per MB, so big uploads are not cut off."""
    from batch.client import request_timeout

    assert request_timeout(size, 1200.0).total == total


def test_urls_that_differ_only_in_a_secret_are_not_folded_into_one(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """Ids hide secret query values, so ``?key=file1`` and ``?key=file2`` share one: the
    first is sent, the others fail saying why, instead of silently never being sent. The
    same URL re-signed is one recording, sent once with its freshest signature."""
    media = tmp_path / "media"
    make_wav(media / "a.wav")
    out = tmp_path / "out"
    with static_server(media) as base:
        urls = [f"{base}/a.wav?key=file{n}" for n in (1, 2, 3)]
        urls.append(f"{base}/a.wav?key=file1&X-Amz-Signature=abcd1234")
        urls.append(f"{base}/a.wav?key=file1&X-Amz-Signature=efgh5678")
        manifest = tmp_path / "urls.txt"
        manifest.write_text("\n".join(urls) + "\n")
        result = dgbatch("run", str(manifest), "--out", str(out))
    assert result.exit_code == 1, result.output
    # the re-signed one once, with its latest signature
    assert sorted(r.url for r in emulator.log) == [urls[0], urls[4]]
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    failed = sorted(str(r["error"]) for r in rows if r["status"] == "failed")
    assert [e.split(":")[0] for e in failed] == ["urls.txt", "urls.txt"]
    assert all("give each its own id" in e for e in failed)
    assert all("?key=REDACTED: an earlier source differs" in e for e in failed)  # colon kept
    assert [r["status"] for r in rows].count("done") == 2
    stored = result.output.encode() + b"".join(
        p.read_bytes() for p in (out / ".dgbatch").iterdir() if p.is_file()
    )
    for secret in (b"file2", b"file3", b"abcd1234", b"efgh5678"):
        assert secret not in stored


def test_each_clash_of_urls_on_the_command_line_has_its_own_row(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """URLs given as arguments have no manifest line to tell their clash rows apart: a
    third URL differing only in a secret still gets a failed row of its own, and a second
    run (the same clashes, in the same order) keeps the same rows."""
    media = tmp_path / "media"
    make_wav(media / "a.wav")
    out = tmp_path / "out"
    with static_server(media) as base:
        urls = [f"{base}/a.wav?key=file{n}" for n in (1, 2, 3)]
        for _ in range(2):
            result = dgbatch("run", *urls, "--out", str(out))
            assert result.exit_code == 1, result.output
            rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
            assert sorted(str(r["status"]) for r in rows) == ["done", "failed", "failed"]
    assert len(emulator.log) == 1


def test_a_clash_leaves_the_first_urls_name_and_kind_alone(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """The failed row of a clash has no outputs, so it takes no name from the item it
    clashed with (which keeps ``a.json``, not ``a.wav.json``), and it is a URL row."""
    media = tmp_path / "media"
    make_wav(media / "a.wav")
    out = tmp_path / "out"
    with static_server(media) as base:
        manifest = tmp_path / "urls.txt"
        manifest.write_text(f"{base}/a.wav?key=aaaa\n{base}/a.wav?key=bbbb\n")
        result = dgbatch("run", str(manifest), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert (out / "a.json").is_file() and not (out / "a.wav.json").exists()
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert {(r["status"], r["kind"]) for r in rows} == {("done", "url"), ("failed", "url")}


def test_one_file_on_two_lines_with_other_params_fails_the_later_line(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """Both lines would be one item (a file is keyed by its path), and the first line's
    params were silently replaced by the second's: the first is sent as written, the
    later one fails naming its line; the same line twice is one item, and so is the same
    file from a folder and from a line without params."""
    make_wav(tmp_path / "calls" / "a.wav")
    make_wav(tmp_path / "calls" / "b.wav", tone=1)
    manifest = tmp_path / "calls" / "m.jsonl"
    manifest.write_text(
        '{"source": "a.wav", "params": {"language": "en"}}\n'
        '{"source": "a.wav", "params": {"language": "fr"}}\n'
        '{"source": "a.wav", "params": {"language": "en"}}\n'
        '{"source": "b.wav"}\n'
    )
    out = tmp_path / "out"
    run = ("run", str(manifest), str(tmp_path / "calls" / "b.wav"), "--out", str(out))
    result = dgbatch(*run)
    assert result.exit_code == 1, result.output
    languages = sorted(dict(r.params).get("language", "-") for r in emulator.log)
    assert languages == ["-", "en"]
    rows = {r["id"]: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    assert len(rows) == 3 and rows[str(tmp_path / "calls" / "a.wav")]["status"] == "done"
    clash = rows[f"clash:m.jsonl:2:{tmp_path / 'calls' / 'a.wav'}"]
    expected = f"m.jsonl:2: {tmp_path / 'calls' / 'a.wav'} is already an item of this run with"
    assert clash["status"] == "failed" and str(clash["error"]).startswith(expected)
    again = dgbatch(*run)  # still two lines for one item: still failed, nothing sent
    assert again.exit_code == 1 and len(emulator.log) == 2


def test_a_file_whose_output_would_replace_it_is_not_sent(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recording named ``rec.json`` transcribed into its own folder was overwritten by
    its own transcript. It fails unsent, named, and the recording stays as it was."""
    monkeypatch.chdir(tmp_path)
    rec = make_wav(tmp_path / "rec.json")
    before = rec.read_bytes()
    make_wav(tmp_path / "b.wav")
    dry = dgbatch("run", "rec.json", "b.wav", "--out", ".", "--dry-run", "--json")
    plan = json.loads(dry.output)  # the dry run counts it as the run fails it: unsent
    assert (plan["to_send"], plan["fail_locally"]) == (1, {"output_path": 1}), dry.output
    result = dgbatch("run", "rec.json", "--out", ".")
    assert result.exit_code == 1, result.output
    assert rec.read_bytes() == before
    assert emulator.log == []
    (row,) = read_state_rows(tmp_path / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["err_code"], row["attempts"]) == ("failed", "output_path", 0)
    assert "its json output would replace the recording itself" in str(row["error"])


def test_a_file_over_deepgrams_limit_is_not_uploaded(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A file over 2 GB was uploaded whole for a 413 (and priced by the dry run). It fails
    before the upload, as the dry run says; the next file goes on. (Sparse: nothing is
    written to disk.)"""
    make_wav(tmp_path / "in" / "a.wav")
    huge = make_wav(tmp_path / "in" / "huge.wav")
    with huge.open("r+b") as handle:  # a WAV's header, then a hole
        handle.truncate(2 * 1024**3 + 1)
    out = tmp_path / "out"
    dry = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--dry-run", "--json")
    assert json.loads(dry.output)["fail_locally"] == {"too_large": 1}
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 1, result.output
    state = read_state_rows(out / ".dgbatch" / "state.sqlite")
    rows = {Path(str(r["source"])).name: r for r in state}
    assert rows["a.wav"]["status"] == "done"
    assert (rows["huge.wav"]["err_code"], rows["huge.wav"]["attempts"]) == ("too_large", 0)
    assert "over Deepgram's 2 GB limit" in str(rows["huge.wav"]["error"])
    assert [r.status for r in emulator.log] == [200]


def test_a_dedupe_copy_never_replaces_its_own_recording(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--dedupe``, ``rec.json`` (a copy of ``a.wav``) took ``a.wav``'s answer and
    its transcript replaced the recording: a copy is written, never sent, so the check
    before sending missed it. The sink refuses it too."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "a.wav")
    rec = tmp_path / "rec.json"
    rec.write_bytes((tmp_path / "a.wav").read_bytes())
    before = rec.read_bytes()
    result = dgbatch("run", "a.wav", "rec.json", "--out", ".", "--dedupe")
    assert result.exit_code == 1, result.output
    assert rec.read_bytes() == before
    rows = {
        Path(str(r["source"])).name: r
        for r in read_state_rows(tmp_path / ".dgbatch" / "state.sqlite")
    }
    assert rows["a.wav"]["status"] == "done"
    assert (rows["rec.json"]["status"], rows["rec.json"]["err_code"]) == ("failed", "output_path")


def _cut_short_then_busy_app(seen: list[int]) -> web.Application:
    """A 200 cut short (processed, billed), then 503 for ever."""

    async def listen(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(len(seen))
        if len(seen) > 1:
            return web.json_response({"err_code": "BUSY", "err_msg": "busy"}, status=503)
        return await _cut_short_200(request, {"Content-Type": "application/json"})

    return _app_of(listen)


def test_a_503_cut_short_is_a_503(tmp_path: Path) -> None:
    """A 503 whose body the line dropped was taken for a request Deepgram may have
    processed: counted as possibly billed, and left for ``--retry-failed``. Its status
    came, and a 503 is unbilled: the next run sends it again by itself."""

    async def listen(request: web.Request) -> web.StreamResponse:
        await request.read()
        started = web.StreamResponse(status=503, headers={"Content-Length": "1000"})
        await started.prepare(request)
        await started.write(b'{"err_code": ')
        assert request.transport is not None
        request.transport.close()
        return started

    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    with serve_app(_app_of(listen)) as url:
        result = _run_against(url, "run", str(tmp_path / "a.wav"), "--out", str(out),
                              "--max-retries", "1")  # fmt: skip
    assert result.exit_code == 1 and "possibly billed 0" in result.output, result.output
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["http_status"], row["timeout_retries"], row["retry_next"]) == (503, 0, 1)


def test_an_item_that_may_have_been_billed_is_not_sent_again_by_itself(tmp_path: Path) -> None:
    """An item that gave up on a 503 is sent again by the next run, unless one of its
    tries may have been billed (here a 200 cut short): then it waits for --retry-failed,
    or every night would pay for it once more."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    seen: list[int] = []
    with serve_app(_cut_short_then_busy_app(seen)) as url:
        command = ("run", str(tmp_path / "a.wav"), "--out", str(out), "--max-retries", "2")
        assert _run_against(url, *command).exit_code == 1
        assert _run_against(url, *command).exit_code == 1
    assert len(seen) == 3  # the second run sent nothing
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["retry_next"], row["timeout_retries"]) == ("failed", 0, 1)


def test_a_model_refused_on_one_manifest_line_fails_only_that_line(tmp_path: Path) -> None:
    """The project may not use whisper-large (Deepgram: 403, no access to the requested
    model): the line asking for it fails, its request unbilled, and the rest are done; the
    same model asked for by the whole run (``--param``) stops the run, exit 3."""
    make_wavs(tmp_path / "calls", 3)
    lines = [{"source": str(p)} for p in sorted((tmp_path / "calls").iterdir())]
    lines[1]["params"] = {"model": "whisper-large"}  # type: ignore[assignment]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with emulator_with(forbidden_models=("whisper-large",)) as emu:
        dgbatch = Cli(emu)
        result = dgbatch("run", str(manifest), "--out", str(tmp_path / "out"), "-c", "1")
        assert result.exit_code == 1, result.output
        rows = {
            row["source"]: row for row in read_state_rows(tmp_path / "out/.dgbatch/state.sqlite")
        }
        assert [rows[line["source"]]["status"] for line in lines] == ["done", "failed", "done"]
        assert "(the model its manifest line asks for)" in str(rows[lines[1]["source"]]["error"])
        whole = dgbatch(
            "run", str(tmp_path / "calls"), "--out", str(tmp_path / "o2"),
            "--param", "model=whisper-large",
        )  # fmt: skip
        assert whole.exit_code == 3, whole.output
        assert "Deepgram refused the API key, or the model" in whole.output


def _aged(*paths: Path, seconds: float = 3600) -> None:
    """Make files older than a batch planned now, as a user's or an earlier batch's are."""
    when = time.time() - seconds
    for path in paths:
        os.utime(path, (when, when))


def test_a_file_this_batch_did_not_write_is_not_replaced(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subtitle made by hand beside the video, the manifest of the run, and an earlier
    batch's transcript (its own --state, the same --out) were replaced by transcripts
    without a word. Such an item fails unsent (``output_exists``, ``output_path`` for the
    manifest), the file stays, and the rest of the run goes on; --force replaces it."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "videos" / "movie.wav")
    make_wav(tmp_path / "videos" / "other.wav", tone=1)
    subtitle = tmp_path / "videos" / "movie.srt"
    subtitle.write_text("1\n00:00:00,000 --> 00:00:02,000\nmade by hand\n")
    _aged(subtitle)
    result = dgbatch("run", "videos", "--out", "videos", "--formats", "json,srt")
    assert result.exit_code == 1, result.output
    assert subtitle.read_text().endswith("made by hand\n") and len(emulator.log) == 1
    rows = {
        Path(str(r["source"])).name: r
        for r in read_state_rows(tmp_path / "videos/.dgbatch/state.sqlite")
    }
    assert (rows["movie.wav"]["err_code"], rows["other.wav"]["status"]) == ("output_exists", "done")
    assert "videos/movie.srt: is already there, and this batch did not write it" in str(
        rows["movie.wav"]["error"]
    )
    forced = dgbatch("run", "videos", "--out", "videos", "--formats", "json,srt", "--force")
    assert forced.exit_code == 0 and "made by hand" not in subtitle.read_text()

    make_wav(tmp_path / "d" / "list.wav", tone=2)  # a manifest as new as the batch
    (tmp_path / "d" / "list.txt").write_text("list.wav\n")
    listed = dgbatch("run", "d/list.txt", "--out", "d")
    assert listed.exit_code == 1 and (tmp_path / "d" / "list.txt").read_text() == "list.wav\n"
    (row,) = read_state_rows(tmp_path / "d/.dgbatch/state.sqlite")
    assert row["err_code"] == "output_path" and "a SOURCE of this run" in str(row["error"])

    make_wav(tmp_path / "day1" / "a.wav", tone=3)
    make_wav(tmp_path / "day2" / "a.wav", tone=4)
    assert dgbatch("run", "day1", "--out", "p", "--state", "s1/").exit_code == 0
    first = (tmp_path / "p" / "a.json").read_bytes()
    _aged(tmp_path / "p" / "a.json", tmp_path / "p" / "a.txt")
    second = dgbatch("run", "day2", "--out", "p", "--state", "s2/")
    assert second.exit_code == 1 and (tmp_path / "p" / "a.json").read_bytes() == first
    assert dgbatch("run", "day1", "--out", "p", "--state", "s1/").exit_code == 0  # its own


def test_a_format_rendered_later_does_not_replace_a_file_of_the_users(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A format added later is rendered from the json, unsent, and written by no check
    made before a request: the writer itself keeps a user's file (made before the batch)."""
    make_wav(tmp_path / "in" / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    mine = out / "a.srt"
    mine.write_text("mine\n")
    _aged(mine)
    again = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--formats", "json,srt")
    assert mine.read_text() == "mine\n" and len(emulator.log) == 1
    assert "out/a.srt: is already there, and this batch did not write it" in again.output


def test_a_run_that_fails_nothing_says_why_it_exits_1(tmp_path: Path, dgbatch: Cli) -> None:
    """A failure of an earlier night kept every later night at exit 1 while the summary
    said "failed 0", and nothing pointed at the item."""
    make_wav(tmp_path / "in" / "ok.wav")
    (tmp_path / "in" / "bad.wav").write_bytes(b"not audio at all" * 10)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert dgbatch(*args).exit_code == 1
    again = dgbatch(*args)
    assert again.exit_code == 1 and "done 0, failed 0" in again.output
    assert "1 item(s) of this run's sources failed in earlier runs, so the exit code is 1" in (
        again.output
    )


def test_a_dry_run_does_not_call_a_broken_line_of_a_new_manifest_not_retried(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """On a fresh --out, nothing was retried or not: the dry run said "1 failed and not
    retried" of a manifest line that is not JSON."""
    make_wav(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_text('{"source": "a.wav"}\n{"source": \n')
    dry = dgbatch("run", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "1 failed, not sent: inputs found broken while planning, or earlier runs'" in dry.output


def test_no_write_of_any_kind_replaces_a_file_the_item_did_not_write(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second review of the guard: a format rendered later (written by no check made
    before a request) wrote over the run's manifest, and over a subtitle made after the
    item was done; of two manifests named list.txt, the one at an output's place was
    replaced; a failed item queued again replaced another batch's newer transcript."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "a" / "list.wav", tone=1)
    make_wav(tmp_path / "b" / "other.wav", tone=2)
    (tmp_path / "a" / "list.txt").write_text("list.wav\n")
    (tmp_path / "b" / "list.txt").write_text("other.wav\n")
    assert (
        dgbatch("run", "a/list.txt", "b/list.txt", "--out", "a", "--formats", "json").exit_code == 0
    )
    mine = tmp_path / "a" / "list.srt"
    mine.write_text("made after it was done\n")
    later = dgbatch("run", "a/list.txt", "b/list.txt", "--out", "a", "--formats", "json,txt,srt")
    assert (tmp_path / "a" / "list.txt").read_text() == "list.wav\n"
    assert mine.read_text() == "made after it was done\n"
    assert "a/list.txt: is a SOURCE of this run" in later.output

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.wav").write_bytes(b"not audio at all" * 10)  # batch A: fails
    make_wav(tmp_path / "e" / "a.wav", tone=3)
    assert dgbatch("run", "d", "--out", "p").exit_code == 1
    with sqlite3.connect(tmp_path / "p/.dgbatch/state.sqlite") as db:  # an hour ago
        db.execute(
            "UPDATE items SET created_at = created_at - 3600, updated_at = updated_at - 3600"
        )
    assert dgbatch("run", "e", "--out", "p", "--state", "sb/").exit_code == 0
    theirs = (tmp_path / "p" / "a.json").read_bytes()
    _aged(tmp_path / "p" / "a.json", tmp_path / "p" / "a.txt", seconds=1800)  # after A's plan
    make_wav(tmp_path / "d" / "a.wav", tone=4)  # changed: A's item is queued again, now
    assert dgbatch("run", "d", "--out", "p").exit_code == 1
    assert (tmp_path / "p" / "a.json").read_bytes() == theirs


def test_a_local_out_whose_state_was_lost_is_not_paid_for_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """The state deleted (or a new --state on the same --out): every item was paid for
    again, then, with the output guard, failed as output_exists for ever. A json whose
    metadata.sha256 is the file's is this audio's transcript: adopted, nothing sent. A
    file whose audio changed meanwhile is not adopted: its old transcript is not its own."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wavs = [make_wav(src / f"{n}.wav", tone=i) for i, n in enumerate("abc")]
    assert dgbatch("run", str(src), "--out", str(out), "--formats", "json").exit_code == 0
    shutil.rmtree(out / ".dgbatch")
    _aged(*out.glob("*.json"))  # written long before this state plans them
    make_wav(wavs[2], tone=9)  # c.wav is other audio now
    again = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt")
    assert again.exit_code == 1, again.output
    assert "skipped 2 item(s) whose outputs already existed" in again.output
    with sqlite3.connect(out / ".dgbatch/state.sqlite") as db:  # nor is it audio it sent
        (summary,) = db.execute("SELECT summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    assert json.loads(summary)["audio_hours"] == 0
    assert len(emulator.log) == 3  # nothing sent again: c.wav failed unsent
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(out / ".dgbatch/state.sqlite")}
    assert (rows["a.wav"]["status"], rows["c.wav"]["err_code"]) == ("done", "output_exists")
    assert (out / "a.txt").is_file()  # the format it lacked, rendered from its json


def test_adopted_outputs_are_no_audio_in_the_progress_either(
    tmp_path: Path, emulator: Emulator
) -> None:
    """The summary left adopted outputs' audio out, the progress lines did not (a log
    scraper read 0.17 h for a run that sent nothing)."""
    src, out = tmp_path / "calls", tmp_path / "out"
    for n in range(2):
        make_wav(src / f"{n}.wav", seconds=40.0, tone=n)
    run = ("run", str(src), "--out", str(out), "--api-url", emulator.url, "--progress", "log")
    assert "audio=0.02h" in Cli(None)(*run).output  # 80 s, sent
    shutil.rmtree(out / ".dgbatch")
    _aged(*out.glob("*.json"))
    again = Cli(None)(*run)
    assert again.exit_code == 0 and "skipped 2 item(s)" in again.output, again.output
    assert "audio=0.02h" not in again.output and "2/2 items" in again.output


def test_a_paid_answer_kept_unwritten_is_audio_in_the_progress_too(
    tmp_path: Path, emulator: Emulator
) -> None:
    """The summary counted a paid answer whose outputs could not be written (kept for the
    next run), the progress lines did not: they read 0.01 h where the summary said 0.02."""
    for n in range(2):
        make_wav(tmp_path / f"{n}.wav", seconds=40.0, tone=n)
    manifest = tmp_path / "m.jsonl"  # names that meet: the second's folder is the first's json
    manifest.write_text('{"source": "0.wav", "id": "x"}\n{"source": "1.wav", "id": "x.json/y"}\n')
    out = tmp_path / "out"
    run = ("run", str(manifest), "--out", str(out), "--api-url", emulator.url, "--progress", "log")
    result = Cli(None)(*run)
    assert result.exit_code == 1 and "audio 0.02 h" in result.output, result.output
    last = [line for line in result.output.splitlines() if line.startswith("progress:")][-1]
    assert "audio=0.02h" in last, last


def test_the_progress_lines_count_failures_as_the_summary_does(
    tmp_path: Path, emulator: Emulator
) -> None:
    """``failed=`` left out what failed while planning (a missing file, a broken line) and
    earlier runs' failures: ``progress: 5/5 items failed=0`` for a rerun with two failed
    items (a review found it)."""
    make_wav(tmp_path / "a.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"source": "a.wav"}\n{"source": "missing.wav"}\n{broken\n'
                        '{"source": "empty.wav"}\n')  # fmt: skip
    out = tmp_path / "out"
    run = ("run", str(manifest), "--out", str(out), "--api-url", emulator.url, "--progress", "log")
    for _ in range(2):  # the rerun sends nothing: its failures are all earlier ones
        result = Cli(None)(*run)
        assert result.exit_code == 1 and "state: 1 done, 3 failed" in result.output, result.output
        last = [line for line in result.output.splitlines() if line.startswith("progress:")][-1]
        assert last.startswith("progress: 4/4 items failed=3 "), last


@pytest.mark.timeout(60)
def test_what_the_third_review_of_the_output_guard_found(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO at an output's place hung a format rendered later for ever; a manifest
    given as a link was replaced (the link is what the guard meets); after ``mv out
    transcripts`` a changed source's own recorded outputs were taken for another's; a
    file written after an item was queued but before it was ever claimed counted as a
    crashed attempt's, and was replaced."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "calls" / "a.wav")
    make_wav(tmp_path / "calls" / "b.wav", tone=1)
    assert dgbatch("run", "calls", "--out", "out").exit_code == 0
    os.mkfifo(tmp_path / "out" / "a.srt")
    later = dgbatch("run", "calls", "--out", "out", "--formats", "json,txt,srt")
    assert "out/a.srt: is already there, and this batch did not write it" in later.output
    assert (tmp_path / "out" / "b.srt").is_file()

    (tmp_path / "lists").mkdir()
    make_wav(tmp_path / "list.wav", tone=2)
    (tmp_path / "lists" / "today.txt").write_text("list.wav\n")
    (tmp_path / "list.txt").symlink_to("lists/today.txt")
    assert dgbatch("run", "list.txt", "--out", ".").exit_code == 1
    assert (tmp_path / "list.txt").is_symlink()

    (tmp_path / "out").rename(tmp_path / "transcripts")
    make_wav(tmp_path / "calls" / "a.wav", seconds=0.3, tone=3)  # changed: sent again
    moved = dgbatch("run", "calls", "--out", "transcripts", "--formats", "json,txt")
    assert moved.exit_code == 0, moved.output

    for n in "cde":
        make_wav(tmp_path / "q" / f"{n}.wav", tone=ord(n))
    budget = ("--max-audio-hours", "0.00008", "-c", "1")  # c.wav is sent, d and e wait
    assert dgbatch("run", "q", "--out", "p", *budget).exit_code == 1
    (tmp_path / "p" / "e.json").write_text("another batch's\n")  # after e was queued
    assert dgbatch("run", "q", "--out", "p").exit_code == 1
    assert (tmp_path / "p" / "e.json").read_text() == "another batch's\n"
