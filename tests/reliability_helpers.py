"""Helpers shared by the reliability tests (chaos, crash-resume, faults, secrets)."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import json
import os
import struct
import threading
import time
import urllib.request
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import batch.outputs
from batch.emulator import Emulator, EmulatorConfig, run_in_thread, transcript_for


def make_tiny_wavs(folder: Path, count: int, prefix: str = "a") -> list[Path]:
    """``count`` distinct 10 ms WAV files (their index is in the samples), fast to make."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}{index:05d}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(struct.pack("<I", index + 1) * 40)  # never all zeros (silence)
        paths.append(path)
    return paths


def digest(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_outputs_match(audio: Path, out_stem: Path) -> None:
    """The json and txt outputs of ``audio`` are complete and answer exactly its bytes."""
    data = audio.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    answer = json.loads(out_stem.with_suffix(".json").read_text())
    assert answer["metadata"]["sha256"] == sha, audio
    text = out_stem.with_suffix(".txt").read_text()
    assert transcript_for(sha, len(data)) in text.lower(), audio  # paragraphs are punctuated


def leftover_temp_files(out: Path) -> list[Path]:
    """Temp files of interrupted atomic writes (``.name.xxxx.tmp``)."""
    return sorted(p for p in out.rglob(".*.tmp") if p.is_file())


def all_bytes_under(root: Path) -> dict[Path, bytes]:
    """Every regular file under ``root`` and its bytes."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over plain HTTP on loopback (a media host the emulator fetches URL
    items from, as Deepgram would); yields ``host:port``. Query strings are ignored."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def full_project(wav: Path, key: str, hold: float) -> Iterator[Emulator]:
    """An emulator whose project takes one request at a time (429 without Retry-After
    above it), already full: another client (another shard, another app) sends ``wav``
    and holds the slot for ``hold`` seconds, the emulator's latency."""
    config = EmulatorConfig(key=key, latency=hold, max_concurrency=1, retry_after=False)
    headers = {"Authorization": f"Token {key}", "Content-Type": "audio/wav"}
    with run_in_thread(config) as emulator:
        request = urllib.request.Request(f"{emulator.url}/v1/listen", wav.read_bytes(), headers)
        other = threading.Thread(target=lambda: urllib.request.urlopen(request).read())
        other.start()
        deadline = time.monotonic() + 10
        while emulator.in_flight_max() < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            yield emulator
        finally:
            other.join()


def disk_full_after(files: int) -> Callable[[str, bytes, list[str]], None]:
    """A stand-in for ``batch.outputs._write_new_file`` that writes ``files`` output files,
    then fails every later one with ENOSPC (no tmpfs of a given size without privileges)."""
    real_write = batch.outputs._write_new_file
    calls = 0

    def filling_disk(path: str, data: bytes, created: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls > files:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data, created)

    return filling_disk
