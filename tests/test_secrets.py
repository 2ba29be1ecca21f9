"""Secrets never leave the process: not the API key, not presigned-URL signatures, not URL
passwords; not in the state (WAL included), the report, logs at -vv, progress, outputs or
error messages, and not in ``ps``."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import KEY, Cli, dgbatch_subprocess_cmd, serve_app, subprocess_env
from reliability_helpers import all_bytes_under, make_tiny_wavs, serve_folder

from batch.config import invoked_command
from batch.emulator import Emulator, EmulatorConfig, run_in_thread

SIGNATURE = "5f3a9c0d2e7b41a8b6c4d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4"
CREDENTIAL = "AKIAQWERTYUIOPASDFGH"
PASSWORD = "hunter2-Passw0rd-zz"
TOKEN = "tok-7d1c0a5e9b2f4e6a"
SECRETS = (KEY, SIGNATURE, CREDENTIAL, PASSWORD, TOKEN)


@pytest.fixture
def media_host(tmp_path: Path) -> Iterator[str]:
    """Serves ``remote*.wav``; query strings (signatures) are ignored."""
    make_tiny_wavs(tmp_path / "www", 3, prefix="remote")
    with serve_folder(tmp_path / "www") as host:
        yield host


@pytest.fixture
def faulty() -> Iterator[Emulator]:
    """Faults exercise every error path that could echo a secret; 30 ms per request."""
    config = EmulatorConfig(key=KEY, fault_rate=0.3, seed=7, latency=0.03, retry_after_seconds=0.01)
    with run_in_thread(config) as emu:
        yield emu


def signed(host: str, name: str) -> str:
    return (
        f"http://{host}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}"
        f"%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
        f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
    )


def make_inputs(tmp_path: Path, host: str) -> Path:
    make_tiny_wavs(tmp_path / "in", 40)
    manifest = tmp_path / "urls.txt"
    lines = [
        signed(host, "remote00000.wav"),
        signed(host, "missing.wav"),  # 404 at the media host: an error message with the URL
        f"http://user:{PASSWORD}@{host}/remote00001.wav",
        f"http://{host}/remote00002.wav?token={TOKEN}",
    ]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / f"key-{mode:o}"
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


def run_command(emulator: Emulator, tmp_path: Path, manifest: Path, *extra: str) -> list[str]:
    return [
        *dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), str(manifest),
        "--out", str(tmp_path / "out"), "--api-url", emulator.url,
        "--api-key-file", str(key_file(tmp_path, 0o600)), "-vv", "--progress", "log",
        "--backoff-base", "0.01", "--max-retries", "10", *extra,
    ]  # fmt: skip


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DEEPGRAM_")}


def run_and_watch_ps(command: list[str], emulator: Emulator, kill: bool) -> bytes:
    """Run; while it runs, check its command line; optionally SIGKILL it mid-way.
    Returns everything it printed."""
    seen = len(emulator.log)
    process = subprocess.Popen(
        command, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while len(emulator.log) == seen and time.monotonic() < deadline:
        time.sleep(0.002)
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert b"--api-key-file" in cmdline and KEY.encode() not in cmdline
    if kill:
        while len(emulator.log) < seen + 15 and time.monotonic() < deadline:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    printed, _ = process.communicate(timeout=60)
    return printed


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_no_secret_in_any_byte_written(faulty: Emulator, media_host: str, tmp_path: Path) -> None:
    """A killed run, its resume and a run whose key is revoked: sweep every byte they wrote
    or printed, and the report and status, for the key, signatures and passwords."""
    manifest = make_inputs(tmp_path, media_host)
    out = tmp_path / "out"
    printed = [run_and_watch_ps(run_command(faulty, tmp_path, manifest), faulty, kill=True)]
    assert (out / ".dgbatch" / "state.sqlite-wal").exists()
    swept = all_bytes_under(out)  # the WAL a crash leaves behind, before it is checkpointed
    printed.append(run_and_watch_ps(run_command(faulty, tmp_path, manifest), faulty, kill=False))
    faulty.auth_mode = "401"
    command = run_command(faulty, tmp_path, manifest, "--retry-failed")
    printed.append(subprocess.run(command, env=clean_env(), capture_output=True).stderr)
    state = str(out / ".dgbatch" / "state.sqlite")
    for args in (["report", "--state", state], ["status", "--state", state, "--json"]):
        report = subprocess.run([*dgbatch_subprocess_cmd(), *args], capture_output=True)
        printed += [report.stdout, report.stderr]

    text = b"\n".join(printed)
    assert b"refused the API key" in text and b"missing.wav" in text  # the paths ran
    assert b"DEBUG retry" in text and b"progress:" in text
    assert b"X-Amz-Signature=REDACTED" in (out / ".dgbatch" / "report.jsonl").read_bytes()
    swept.update(all_bytes_under(out))
    swept[Path("<printed>")] = text
    leaks = [
        (str(path), secret)
        for path, data in swept.items()
        for secret in SECRETS
        if secret.encode() in data
    ]
    assert leaks == []


def test_key_file_readable_by_others_is_refused(dgbatch: Cli, tmp_path: Path) -> None:
    """Like ssh with a private key: a key file others can read is refused, and the
    message never shows the key."""
    make_tiny_wavs(tmp_path / "in", 1)
    loose = key_file(tmp_path, 0o644)
    result = dgbatch(
        "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
        "--api-key-file", str(loose), key=None,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "readable by other users" in result.output and "chmod 600" in result.output
    assert KEY not in result.output
    private = key_file(tmp_path, 0o600)
    result = dgbatch(
        "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
        "--api-key-file", str(private), key=None,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_there_is_no_api_key_flag(dgbatch: Cli) -> None:
    """The key cannot be passed on the command line, where ``ps`` would show it."""
    result = dgbatch("run", "--help")
    assert "--api-key-file" in result.output
    assert "--api-key " not in result.output and "--api-key=" not in result.output


def echoing_api(status: int, body: str, request_id: str = "") -> web.Application:
    """A Deepgram behind a proxy that puts the key it was sent into its error answers:
    every /v1/listen gets ``status`` with ``body`` and a ``dg-request-id`` header of
    ``request_id`` (in both, ``{key}`` is the key received, ``{auth}`` the header)."""

    async def listen(request: web.Request) -> web.Response:
        await request.read()
        auth = request.headers.get("Authorization", "")
        key = auth.partition(" ")[2]
        headers = {"dg-request-id": request_id.format(key=key, auth=auth)} if request_id else {}
        return web.Response(status=status, text=body.format(key=key, auth=auth), headers=headers)

    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    return app


@pytest.mark.parametrize(
    ("status", "body", "request_id", "code"),
    [
        (402, '{{"err_msg": "no credit left for the key {key} of this project"}}', "", 3),
        (400, "<html><body>Bad request from key {key}</body></html>", "", 1),
        (500, '{{"err_code": "{key}", "err_msg": "upstream refused {key}"}}', "", 1),
        # in the request id, which is stored as it is: the header, or the key alone
        (400, '{{"err_msg": "refused {key}", "request_id": "{auth}"}}', "", 1),
        (400, '{{"err_msg": "refused {key}", "request_id": "{key}"}}', "", 1),
        (402, '{{"err_msg": "refused {key}", "request_id": "{key}"}}', "", 3),
        (502, "<p>refused {key}</p>", "{auth}", 1),
        (400, "<p>refused {key}</p>", "{key}", 1),
    ],
)
def test_key_echoed_in_an_error_answer_is_redacted(
    tmp_path: Path, status: int, body: str, request_id: str, code: int
) -> None:
    """An error body quoting the key (a proxy echoing the request) is recorded and shown
    with the key replaced: not in the message, the state, the report or the run report;
    a request id (body or ``dg-request-id``) that holds it is not recorded at all."""
    make_tiny_wavs(tmp_path / "in", 2)
    out = tmp_path / "out"
    with serve_app(echoing_api(status, body, request_id)) as url:
        command = [
            *dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out", str(out),
            "--api-url", url, "--no-preflight", "--progress", "none", "-vv",
            "--max-retries", "1", "--backoff-base", "0",
            "--run-report", str(out / ".dgbatch" / "run.json"),
        ]  # fmt: skip
        done = subprocess.run(command, env=subprocess_env(), capture_output=True, timeout=60)
    report = subprocess.run(
        [*dgbatch_subprocess_cmd(), "report", "--state", str(out / ".dgbatch" / "state.sqlite")],
        env=subprocess_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr.decode()
    assert b"REDACTED" in report.stdout
    assert code != 3 or b" REDACTED" in done.stderr  # the refusal is quoted, without the key
    swept = all_bytes_under(out)
    swept[Path("<printed>")] = done.stdout + done.stderr + report.stdout + report.stderr
    assert [str(path) for path, data in swept.items() if KEY.encode() in data] == []


def _echo_forms(key: str) -> list[str]:
    """The key as a proxy may echo it: as it is, upper-cased, percent-encoded, in base64."""
    encoded = base64.b64encode(key.encode()).decode().rstrip("=")
    return [key, key.upper(), urllib.parse.quote(key + "/", safe=""), encoded]


def account_echoing_the_key(tag: str = "") -> web.Application:
    """An account API behind a proxy that puts the key it was sent into what it answers:
    the key check's accessor and scopes, the request log's ids and dates."""

    def key_of(request: web.Request) -> str:
        return request.headers.get("Authorization", "").partition(" ")[2]

    async def token(request: web.Request) -> web.Response:
        key = key_of(request)
        forms = _echo_forms(key)
        return web.json_response({"accessor": forms[1], "username": forms[3], "scopes": forms})

    async def requests(request: web.Request) -> web.Response:
        key = key_of(request)
        response = {"code": 200, "details": {"duration": 1.0, "tags": [tag]}}
        logged = [
            {"request_id": form, "created": key, "response": response} for form in _echo_forms(key)
        ]
        return web.json_response({"requests": logged})

    async def usage(request: web.Request) -> web.Response:
        return web.json_response({"results": []})

    app = web.Application()
    app.router.add_get("/v1/auth/token", token)
    app.router.add_get("/v1/projects/p-1/requests", requests)
    app.router.add_get("/v1/projects/p-1/usage", usage)
    return app


def _assert_no_key(printed: str) -> None:
    lowered = printed.lower()
    assert [form for form in _echo_forms(KEY) if form.lower() in lowered] == []
    assert "REDACTED" in printed


@pytest.mark.parametrize("as_json", [(), ("--json",)], ids=["text", "json"])
def test_check_never_prints_the_key_an_account_api_echoes(
    dgbatch: Cli, as_json: tuple[str, ...]
) -> None:
    """``dgbatch check`` prints what the API says about the key: a proxy echoing the key
    there (in any case, percent-encoded, in base64) no longer gets it printed."""
    with serve_app(account_echoing_the_key()) as url:
        result = dgbatch("check", "--api-url", url, *as_json)
    assert result.exit_code == 0, result.output
    _assert_no_key(result.output)
    if as_json:
        assert json.loads(result.output)["scopes"][0] == "REDACTED"


def test_usage_never_prints_the_key_an_account_api_echoes(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``dgbatch usage`` lists requests of Deepgram's log that the state lacks: ids and
    dates that echo the key are printed without it."""
    make_tiny_wavs(tmp_path / "in", 1)
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    db = sqlite3.connect(state)
    (tag,) = db.execute("SELECT tag FROM runs").fetchone()
    db.close()
    with serve_app(account_echoing_the_key(tag)) as url:
        for as_json in ((), ("--json",)):
            args = ("usage", "--project", "p-1", "--state", str(state), "--api-url", url)
            result = dgbatch(*args, *as_json)
            assert result.exit_code == 1, result.output  # unmatched requests
            _assert_no_key(result.output)


def test_an_error_printed_at_exit_is_redacted(dgbatch: Cli, tmp_path: Path) -> None:
    """The ``Error:`` line quotes what a library said (botocore quotes the endpoint it was
    given): a token there is not printed."""
    result = dgbatch(
        "run", str(tmp_path), "--out", "s3://b/o/", "--state", str(tmp_path / "s.sqlite"),
        "--s3-endpoint-url", f"http://h:1/?token={TOKEN}x",
    )  # fmt: skip
    assert result.exit_code != 0
    assert "Error:" in result.output and TOKEN not in result.output


def test_a_run_report_at_an_http_url_is_refused(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--run-report https://…`` was taken for a local path: folders named after the URL,
    its password and signature among them, were made in the current folder."""
    monkeypatch.chdir(tmp_path)
    target = f"https://u:{PASSWORD}@h/r.json?sig={SIGNATURE}"
    result = dgbatch("run", str(tmp_path), "--out", str(tmp_path / "out"), "--run-report", target)
    assert result.exit_code == 2
    assert "give a local path or s3://bucket/key" in result.output
    assert PASSWORD not in result.output and SIGNATURE not in result.output
    assert not Path("https:").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pa'ssw0rd@127.0.0.1/u.wav",  # quoting split the password off the URL
        "http://user:pa ss'w0rd@127.0.0.1/u.wav",
        "https://h/a.wav?X-Amz-Signature=pa'ssw0rd",
    ],
)
def test_the_recorded_command_line_holds_no_url_secret(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Each word is redacted before the command line is quoted for the state: a password
    with a ``'`` was quoted apart, no longer found, and stored in clear in ``runs``."""
    monkeypatch.setattr("sys.argv", ["dgbatch", "run", url, "--out", "o"])
    recorded = invoked_command()
    assert "ssw0rd" not in recorded and "w0rd" not in recorded, recorded
    assert recorded.startswith("dgbatch run ") and recorded.endswith(" --out o")
