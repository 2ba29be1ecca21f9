"""Shared fixtures: an isolated environment, the emulator on loopback, the CLI runner."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from batch.cli import cli
from batch.emulator import Emulator, EmulatorConfig, run_in_thread

KEY = "test-key-0123456789abcdef"

# Machines here are 2 shared cores: a hypothesis deadline measures the load, not the code.
hypothesis.settings.register_profile("dgbatch", deadline=None)
hypothesis.settings.load_profile("dgbatch")
SRC_ROOT = Path(__file__).resolve().parent.parent


def documentation() -> str:
    """The user documentation: README.md (where a user starts: the common case, the options
    table, exit codes and retry rules) and docs/REFERENCE.md (the detailed reference it
    links to). A test of a rule's exact wording reads both; one of README's tables, README."""
    return "\n".join((SRC_ROOT / name).read_text() for name in ("README.md", "docs/REFERENCE.md"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's Deepgram, AWS or proxy settings, or their cache."""
    for name in list(os.environ):
        if name.startswith(("DEEPGRAM_", "AWS_", "DGBATCH_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    # the default state of an S3 --out lives in the user's cache: each test gets its own
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A fresh emulator in a background thread that accepts only ``KEY``."""
    with run_in_thread(EmulatorConfig(key=KEY)) as emu:
        yield emu


def make_wav(path: Path, seconds: float = 0.25, rate: int = 8000, tone: int = 0) -> Path:
    """A small valid mono 16-bit WAV whose bytes differ by ``tone``."""
    import math
    import struct
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    freq = 220 + 37 * tone
    samples = (int(8000 * math.sin(2 * math.pi * freq * n / rate)) for n in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Cli:
    """Runs ``dgbatch`` in-process against the emulator with the test key."""

    emulator: Emulator | None

    def __call__(self, *args: str, key: str | None = KEY, stdin: str | None = None) -> Result:
        env = {"DEEPGRAM_API_KEY": key} if key is not None else {}
        full = list(args)
        if args and args[0] == "run" and self.emulator is not None:
            full += ["--api-url", self.emulator.url, "--backoff-base", "0.01", "--progress", "none"]
        return CliRunner().invoke(cli, full, env=env, input=stdin, catch_exceptions=False)


@pytest.fixture
def dgbatch(emulator: Emulator) -> Cli:
    """The CLI, wired to the emulator."""
    return Cli(emulator)


def rows_so_far(state: Path) -> list[dict[str, object]]:
    """``read_state_rows`` of a run still starting: none before the file is there, nor
    while it is there without its tables (SQLite makes the file first; a poll in between
    failed a test now and then, "no such table: items")."""
    import sqlite3

    if not state.exists():
        return []
    try:
        return read_state_rows(state)
    except sqlite3.OperationalError:
        return []


def read_state_rows(state: Path) -> list[dict[str, object]]:
    """Every item row of a state file, as dicts."""
    import sqlite3

    db = sqlite3.connect(state)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM items ORDER BY rowid")]
    finally:
        db.close()


def dgbatch_subprocess_cmd() -> list[str]:
    """The real console entry point, for subprocess tests (kill -9, signals)."""
    return [sys.executable, "-m", "batch"]


def load_json(path: Path) -> dict[str, object]:
    """Parse a JSON output file."""
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


# -- helpers for the end-to-end suites (test_run, test_resume, test_cli, test_outputs) ------


@contextmanager
def emulator_with(**options: Any) -> Iterator[Emulator]:
    """An emulator in a background thread with the test key and the given config overrides."""
    with run_in_thread(EmulatorConfig(key=KEY, **options)) as emu:
        yield emu


@contextmanager
def serve_app(app: web.Application) -> Iterator[str]:
    """Serve an aiohttp app on 127.0.0.1 from a background thread; yield its base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-http", daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)

    async def start() -> str:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@contextmanager
def static_server(root: Path) -> Iterator[str]:
    """Serve the files under ``root`` over plain HTTP on loopback (for URL sources)."""
    app = web.Application()
    app.router.add_static("/", root)
    with serve_app(app) as url:
        yield url


def subprocess_env(key: str | None = KEY) -> dict[str, str]:
    """The test process's (already cleaned) environment, plus the key."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC_ROOT)
    if key is not None:
        env["DEEPGRAM_API_KEY"] = key
    return env


def start_run(
    emu: Emulator, *args: str, cwd: Path | None = None, key: str | None = KEY
) -> subprocess.Popen[bytes]:
    """Start a real ``dgbatch run ARGS`` subprocess against ``emu``."""
    cmd = [
        *dgbatch_subprocess_cmd(),
        "run",
        *args,
        "--api-url",
        emu.url,
        "--backoff-base",
        "0.01",
        "--progress",
        "none",
    ]
    # SIGHUP as a terminal leaves it: under ``nohup`` (a CI wrapper) the child inherited it
    # ignored, and kept it so (a run started under nohup is meant to), failing SIGHUP tests
    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=subprocess_env(key),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        signal.signal(signal.SIGHUP, inherited)


def stop_when(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    act: Callable[[], object],
    *,
    pause: float = 0.0,
    timeout: float = 30.0,
) -> bytes:
    """Once ``ready`` (or the process ended), wait ``pause`` and ``act`` on the running
    process (a signal, a fault); its stderr once it ends. Killed if it outlives that, or if
    it is never ready: the failure then shows what it printed (a loaded machine, or a hang)."""
    try:
        try:
            wait_for(lambda: ready() or proc.poll() is not None, timeout=timeout)
        except pytest.fail.Exception:
            proc.kill()
            _, stderr = proc.communicate()
            pytest.fail(
                f"never ready in {timeout} s; it printed: {stderr.decode(errors='replace')}"
            )
        time.sleep(pause)
        act()
        _, stderr = proc.communicate(timeout=timeout)
        return stderr or b""
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def make_wavs(folder: Path, count: int, seconds: float = 0.02) -> list[Path]:
    """``count`` small WAVs with distinct bytes (``f000.wav`` …) in ``folder``."""
    return [make_wav(folder / f"f{i:03d}.wav", seconds=seconds, tone=i) for i in range(count)]


def outputs_under(out: Path, suffix: str = ".json") -> list[Path]:
    """Every output file with ``suffix`` under ``out``, the state folder excluded."""
    return sorted(p for p in out.rglob(f"*{suffix}") if ".dgbatch" not in p.relative_to(out).parts)


def sent_sha256s(emu: Emulator) -> Counter[str]:
    """How many ``/v1/listen`` requests the emulator received per audio digest."""
    return Counter(r.sha256 for r in list(emu.log) if r.sha256 is not None)


def make_silent_wav(path: Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    """A valid WAV whose samples are all zero: the emulator answers an empty transcript."""
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return path


def untagged(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Request params without the ``tag`` pairs every run adds (tested on their own)."""
    return [(k, v) for k, v in params if k != "tag"]


# -- S3: moto in server mode ---------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto S3 server on loopback for the whole session (its state is process-global)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class MotoS3:
    """A clean moto, a boto3 client on it, and fast helpers to fill buckets."""

    url: str
    client: Any  # a boto3 S3 client

    def bucket(self, name: str, objects: dict[str, bytes] | None = None) -> str:
        """Create a bucket (if new) and put ``objects`` through moto's backend (no HTTP)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        if name not in backend.buckets:
            backend.create_bucket(name, "us-east-1")
        for key, data in (objects or {}).items():
            backend.put_object(name, key, data)
        return name


@pytest.fixture
def moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """moto reset to empty, with ``AWS_ENDPOINT_URL`` pointing dgbatch at it."""
    import urllib.request

    import boto3
    from botocore.config import Config

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    return MotoS3(moto_url, client)


def api_failing_first() -> tuple[web.Application, list[int]]:
    """An API answering 503 to its first request and a 1 s transcript to the others (each
    takes 0.3 s); the list counts the requests."""
    calls: list[int] = []

    async def listen(request: web.Request) -> web.Response:
        await request.read()
        calls.append(1)
        await asyncio.sleep(0.3)
        if len(calls) == 1:
            return web.Response(status=503, text="busy")
        body = {
            "metadata": {"request_id": f"r{len(calls)}", "duration": 1.0},
            "results": {"channels": [{"alternatives": [{"transcript": "hi", "words": []}]}]},
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    return app, calls


def on_read_only_mount(mount: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (bash) after a tmpfs is mounted at ``mount``, in a mount namespace
    of its own (root only: skipped elsewhere); the script makes it read-only when it is
    ready."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a read-only mount")
    mount.mkdir(parents=True)
    full = f"set -e; mount -t tmpfs tmpfs {mount}; {script}"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not allowed here")
    return subprocess.run(
        ["unshare", "-m", "bash", "-c", full],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )
