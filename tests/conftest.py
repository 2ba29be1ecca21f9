"""Shared fixtures: an isolated environment, the emulator on loopback, the CLI runner."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
