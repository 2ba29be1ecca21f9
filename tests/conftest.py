"""Shared fixtures: an isolated environment, the emulator on loopback, the CLI runner."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batch.cli import cli
from batch.emulator import Emulator, EmulatorConfig, run_in_thread

KEY = "test-key-0123456789abcdef"
SRC_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's Deepgram or AWS settings."""
    for name in list(os.environ):
        if name.startswith(("DEEPGRAM_", "AWS_", "DGBATCH_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


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
