"""``run --dry-run --probe``: remote durations from the first (Ogg: last) 64 KiB."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mutagen
import pytest
from aiohttp import web
from conftest import (
    Cli,
    MotoS3,
    dgbatch_subprocess_cmd,
    make_wav,
    serve_app,
    static_server,
    stop_when,
    subprocess_env,
)
from mutagen.ogg import OggPage

from batch.dedupe import content_key
from batch.emulator import Emulator
from batch.errors import ItemError
from batch.media import check_path, sniff_path
from batch.probe import (
    GUESS_BYTES_PER_SECOND,
    HEAD_BYTES,
    MAX_READ,
    TAIL_BYTES,
    SparseReader,
    local_duration,
    needs_tail,
    size_from_content_range,
    sparse_duration,
)


def wav_bytes(seconds: float, rate: int = 22050, channels: int = 2) -> bytes:
    """A real 16-bit WAV built with the stdlib (silence is enough for mutagen)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * channels * int(seconds * rate))
    return buf.getvalue()


def flac_bytes(rate: int, samples: int, padding: int = 200_000) -> bytes:
    """A FLAC stream header (STREAMINFO only) followed by filler standing in for frames."""
    info = struct.pack(">HH", 4096, 4096) + bytes(6)
    info += ((rate << 44) | (15 << 36) | samples).to_bytes(8, "big") + bytes(16)
    return b"fLaC" + b"\x80" + len(info).to_bytes(3, "big") + info + b"\xff\xf8" + bytes(padding)


def ogg_bytes(rate: int, seconds: float, filler: int = 200_000) -> bytes:
    """An Ogg Vorbis stream: id and comment headers, filler pages, a last page whose
    granule position gives the duration (mutagen reads it from the end)."""
    ident = b"\x01vorbis" + struct.pack("<IBIiiiBB", 0, 1, rate, 0, 64000, 0, 0xB8, 1)
    comment = b"\x03vorbis" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0) + b"\x01"

    def page(packet: bytes, seq: int, pos: int, first: bool = False, last: bool = False) -> bytes:
        p = OggPage()
        p.serial, p.sequence, p.position, p.first, p.last = 7, seq, pos, first, last
        p.packets = [packet]
        return bytes(p.write())

    out = page(ident, 0, 0, first=True) + page(comment, 1, 0)
    seq, noise = 2, bytes(range(256)) * 16
    while len(out) < filler:
        out += page(noise, seq, seq * 1000)
        seq += 1
    return out + page(noise, seq, int(rate * seconds), last=True)


def test_sparse_reader_reads_head_zeros_tail_and_seeks() -> None:
    """Absolute, relative and end seeks; overlapping head and tail; reads stop at size."""
    r = SparseReader(b"abc", 10, b"xyz")
    assert r.read() == b"abc\0\0\0\0xyz"
    assert r.seek(-4, io.SEEK_END) == 6 and r.read(2) == b"\0x" and r.tell() == 8
    assert r.seek(-7, io.SEEK_CUR) == 1 and r.read(3) == b"bc\0"
    assert r.seek(20) == 20 and r.read(5) == b""
    assert SparseReader(b"abcd", 5, b"xyz").read() == b"abxyz"
    assert len(SparseReader(b"", 10 * MAX_READ).read(MAX_READ)) == MAX_READ
    with pytest.raises(OSError):
        r.seek(-1)
    big = SparseReader(b"abc", 10_000_000)
    with pytest.raises(OSError):
        big.read()  # whole-file reads of a sparse object are refused, not allocated


@pytest.mark.parametrize(
    "data",
    [wav_bytes(3.0), wav_bytes(12.5, rate=8000, channels=1), flac_bytes(44100, 44100 * 7)],
    ids=["wav-stereo", "wav-mono", "flac"],
)
def test_head_alone_gives_mutagens_duration(data: bytes) -> None:
    """The first 64 KiB of a WAV/FLAC, seen at the real size, time it like the whole file."""
    assert len(data) > HEAD_BYTES
    expected = mutagen.File(io.BytesIO(data)).info.length
    assert not needs_tail(data[:HEAD_BYTES], len(data))
    assert sparse_duration(data[:HEAD_BYTES], len(data)) == pytest.approx(expected)


def test_ogg_needs_its_tail() -> None:
    """An Ogg head alone has no duration; with the last 64 KiB mutagen finds the last page."""
    data = ogg_bytes(48000, 9.5)
    head, tail = data[:HEAD_BYTES], data[-TAIL_BYTES:]
    assert needs_tail(head, len(data)) and not needs_tail(data, len(data))
    assert sparse_duration(head, len(data)) is None
    assert sparse_duration(head, len(data), tail) == pytest.approx(9.5)


def test_unknown_data_and_content_range() -> None:
    """Garbage is unknown (not an error); Content-Range gives the total size."""
    assert sparse_duration(b"\x01\x02" * 1000, 5_000_000) is None
    assert sparse_duration(b"", 10) is None
    assert size_from_content_range("bytes 0-65535/123456") == 123456
    assert size_from_content_range("bytes 0-9/*") is None
    assert size_from_content_range(None) is None


def _dry(dgbatch: Cli, *args: str) -> dict[str, object]:
    result = dgbatch("run", *args, "--dry-run", "--json", key=None)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def _s3_objects() -> dict[str, bytes]:
    return {
        "in/a.wav": wav_bytes(4.0),
        "in/b.flac": flac_bytes(16000, 16000 * 30),
        "in/c.ogg": ogg_bytes(44100, 12.25),
        "in/d.wav": wav_bytes(0.5, rate=8000, channels=1),  # smaller than one range
        "in/e.mp3": b"\x00not audio at all" * 10,  # unprobeable: guessed
    }


def test_dry_run_probe_measures_s3_objects(
    dgbatch: Cli, emulator: Emulator, moto: MotoS3, tmp_path: Path
) -> None:
    """With ``--probe`` each S3 object is timed like mutagen on the whole object; an
    unreadable one falls back to the size guess. Nothing is sent."""
    objects = _s3_objects()
    moto.bucket("probe-src", objects)
    estimate = _dry(dgbatch, "s3://probe-src/in/", "--out", str(tmp_path / "out"), "--probe")
    timed = {k: v for k, v in objects.items() if not k.endswith(".mp3")}
    expected = sum(mutagen.File(io.BytesIO(v)).info.length for v in timed.values())
    assert estimate["duration_seconds"] == pytest.approx(expected, abs=1e-3)
    assert estimate["items_with_duration"] == 4
    assert estimate["guessed_seconds"] == pytest.approx(
        len(objects["in/e.mp3"]) / GUESS_BYTES_PER_SECOND, abs=1e-3
    )
    assert estimate["to_send"] == 5 and emulator.log == []


def test_dry_run_without_probe_guesses_s3_from_size(
    dgbatch: Cli, emulator: Emulator, moto: MotoS3, tmp_path: Path
) -> None:
    """Without ``--probe`` S3 objects are not read: all their seconds are guessed."""
    objects = _s3_objects()
    moto.bucket("probe-src", objects)
    estimate = _dry(dgbatch, "s3://probe-src/in/", "--out", str(tmp_path / "out"))
    size = sum(len(v) for v in objects.values())
    assert estimate["items_with_duration"] == 0 and estimate["duration_seconds"] == 0
    assert estimate["guessed_seconds"] == pytest.approx(size / GUESS_BYTES_PER_SECOND, abs=1e-3)


@contextmanager
def ranged_server(
    files: dict[str, bytes], ranges: list[str | None], tokens: dict[str, str] | None = None
) -> Iterator[str]:
    """``/r/NAME`` honours Range (206), ``/full/NAME`` ignores it (200, whole body);
    every request's Range header is appended to ``ranges``. A file of ``tokens`` is served
    only to a request whose ``token`` is its own (403 otherwise, as a signing host)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range"))
        name = request.match_info["name"]
        if (tokens or {}).get(name, request.query.get("token")) != request.query.get("token"):
            return web.Response(status=403)
        data = files[name]
        if request.match_info["mode"] == "full":
            return web.Response(body=data)
        spec = request.http_range
        part = data[spec]
        first = spec.start if spec.start is not None else 0
        first = first if first >= 0 else len(data) + first
        headers = {"Content-Range": f"bytes {first}-{first + len(part) - 1}/{len(data)}"}
        return web.Response(status=206, body=part, headers=headers)

    app = web.Application()
    app.router.add_get("/{mode}/{name}", handle)
    with serve_app(app) as url:
        yield url


def test_dry_run_probe_measures_urls_with_ranges(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """URL items are timed from Range GETs (a suffix range for Ogg), also from a server
    that ignores Range; the URL's secret never appears in the output, and the probe asks
    with it (it asked with ``?token=REDACTED``, which a signing host refuses)."""
    files = {"a.wav": wav_bytes(6.0), "b.ogg": ogg_bytes(48000, 20.0), "c.wav": wav_bytes(2.0)}
    ranges: list[str | None] = []
    with ranged_server(files, ranges, {"a.wav": "sekrit123"}) as base:
        urls = [
            f"{base}/r/a.wav?token=sekrit123",
            f"{base}/r/b.ogg",
            f"{base}/full/c.wav",
        ]
        estimate = _dry(dgbatch, *urls, "--out", str(tmp_path / "out"), "--probe")
    expected = sum(mutagen.File(io.BytesIO(v)).info.length for v in files.values())
    assert estimate["duration_seconds"] == pytest.approx(expected, abs=1e-3)
    assert estimate["items_with_duration"] == 3 and estimate["guessed_seconds"] == 0
    assert estimate["bytes"] == sum(len(v) for v in files.values())  # 206s and a 200 state it
    assert sorted(r or "" for r in ranges) == sorted(
        ["bytes=0-65535"] * 3 + [f"bytes=-{TAIL_BYTES}"]
    )
    assert "sekrit123" not in json.dumps(estimate)


def _static_audio(root: Path) -> dict[str, bytes]:
    """Two WAVs and a file mutagen cannot time, written under ``root`` for a static server."""
    files = {"a.wav": wav_bytes(3.0), "b.wav": wav_bytes(1.5), "c.mp3": b"\x00not audio" * 400}
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def test_dry_run_cost_of_urls_of_unknown_length_is_a_lower_bound(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Without ``--probe`` URLs have no size nor duration: the cost counts only the local
    file and says so (``≥``, how many items are unknown), in text and in JSON."""
    _static_audio(tmp_path / "www")
    local = make_wav(tmp_path / "in" / "local.wav", 2.0)
    with static_server(tmp_path / "www") as base:
        urls = (f"{base}/a.wav", f"{base}/c.mp3")
        options = ("--out", str(tmp_path / "o"), "--price-per-hour", "36")
        estimate = _dry(dgbatch, str(local), *urls, *options)
        text = dgbatch("run", str(local), *urls, *options, "--dry-run", key=None).output
        only_urls = dgbatch("run", *urls, *options, "--dry-run", key=None).output
    assert estimate["cost_is_lower_bound"] is True and estimate["items_without_estimate"] == 2
    assert estimate["estimated_cost_usd"] == pytest.approx(0.02)  # 2 s at $36/h
    assert "estimated cost: ≥ $0.0200 at --price-per-hour 36, plus 2 item(s)" in text
    assert "(+2 item(s) of unknown size)" in text
    assert "estimated cost: ≥ $0.0000" in only_urls
    assert "plus 2 item(s) of unknown length" in only_urls
    assert emulator.log == []


def test_dry_run_probe_puts_what_it_learned_of_urls_in_the_totals(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """With ``--probe`` a URL's stated size counts in the bytes, its duration in the measured
    audio, and a URL it cannot time is guessed from that size: the cost is not a bound."""
    files = _static_audio(tmp_path / "www")
    with static_server(tmp_path / "www") as base:
        urls = [f"{base}/{name}" for name in files]
        args = (*urls, "--out", str(tmp_path / "o"), "--probe", "--price-per-hour", "36")
        estimate = _dry(dgbatch, *args)
        text = dgbatch("run", *args, "--dry-run", key=None).output
    assert estimate["bytes"] == sum(len(data) for data in files.values())
    assert estimate["items_without_size"] == 0 and estimate["items_without_estimate"] == 0
    assert estimate["duration_seconds"] == pytest.approx(4.5, abs=1e-3)
    guessed = len(files["c.mp3"]) / GUESS_BYTES_PER_SECOND
    assert estimate["guessed_seconds"] == pytest.approx(guessed, abs=1e-3)
    assert estimate["cost_is_lower_bound"] is False
    assert estimate["estimated_cost_usd"] == pytest.approx((4.5 + guessed) / 100, abs=1e-4)
    assert f"bytes: {estimate['bytes']:,}\n" in text and "≥" not in text
    assert emulator.log == []


def test_probe_needs_dry_run(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """``--probe`` without ``--dry-run`` is a usage error naming the flag; nothing is sent."""
    make_wav(tmp_path / "in" / "a.wav")
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--probe")
    assert result.exit_code == 2 and "--probe" in result.output
    assert emulator.log == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_long_probe(tmp_path: Path, sig: signal.Signals) -> None:
    """``--dry-run --probe`` of URLs that answer slowly: one Ctrl-C or SIGTERM stops it at
    once with exit 130 (one was swallowed and the probe ran to its end, exit 0)."""
    asked = threading.Event()

    async def slow(request: web.Request) -> web.Response:
        asked.set()
        await asyncio.sleep(4)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", slow)
    with serve_app(app) as url:
        (tmp_path / "urls.txt").write_text("".join(f"{url}/a{n}.wav\n" for n in range(6)))
        command = [
            *dgbatch_subprocess_cmd(), "run", str(tmp_path / "urls.txt"), "--out",
            str(tmp_path / "out"), "--dry-run", "--probe", "-c", "1",
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        signalled: list[float] = []

        def interrupt() -> None:
            signalled.append(time.monotonic())
            proc.send_signal(sig)

        stderr = stop_when(proc, asked.is_set, interrupt, timeout=60)
        ended = time.monotonic()
    assert proc.returncode == 130, stderr.decode()
    assert ended - signalled[0] < 3
    assert b"interrupted while probing" in stderr


def test_a_signal_stops_a_dry_run_while_it_plans(tmp_path: Path) -> None:
    """A Ctrl-C while a dry run plans a long manifest stops it with exit 130 (the plan
    went on to its end and the estimate was printed, exit 0)."""
    with (tmp_path / "urls.txt").open("w") as out:
        out.writelines(f"https://h.example/a{n}.wav\n" for n in range(300_000))
    command = [
        *dgbatch_subprocess_cmd(), "run", str(tmp_path / "urls.txt"), "--out",
        str(tmp_path / "out"), "--dry-run",
    ]  # fmt: skip
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**subprocess_env(), "TMPDIR": str(scratch)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not list(scratch.glob("dgbatch-dry-run-*/state.sqlite")):  # planning has begun
        assert time.monotonic() < deadline and proc.poll() is None, "the dry run never planned"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"would send" not in stdout


@pytest.mark.timeout(20)
def test_a_pipe_or_a_device_in_a_files_place_is_not_measured(tmp_path: Path) -> None:
    """A file swapped for a named pipe (or a link to ``/dev/zero``) after planning: its
    length read blocked a worker for ever (the pipe) or filled the memory (the device).
    Neither is read; the send-time check then fails the item, unsent."""
    pipe = tmp_path / "a.wav"
    os.mkfifo(pipe)
    zero = tmp_path / "z.wav"
    zero.symlink_to("/dev/zero")
    assert local_duration(str(pipe)) is None
    assert local_duration(str(zero)) is None
    with pytest.raises(ItemError, match="not a regular file"):
        check_path(str(pipe), "")


@pytest.mark.timeout(20)
def test_a_pipe_in_a_files_place_is_neither_sniffed_nor_hashed(tmp_path: Path) -> None:
    """The sniff before an upload ran on the event loop and waited on the pipe for ever,
    holding the whole run; ``--dedupe``'s hash waited in a worker. Neither waits now."""
    pipe = tmp_path / "b.wav"
    os.mkfifo(pipe)
    with pytest.raises(ItemError, match="not a regular file"):
        sniff_path(str(pipe), ())
    with pytest.raises(OSError, match="not a regular file"):
        content_key(str(pipe), ())


def _wav_stating(path: Path, data_size: int | None) -> Path:
    """A 2 s WAV whose header states ``data_size`` bytes of samples (None: as written)."""
    make_wav(path, 2.0)
    if data_size is not None:
        body = bytearray(path.read_bytes())
        at = body.index(b"data")
        body[at + 4 : at + 8] = struct.pack("<I", data_size)
        body[4:8] = struct.pack("<I", min(data_size + 36, 0xFFFFFFFF))
        path.write_bytes(bytes(body))
    return path


@pytest.mark.parametrize(
    ("data_size", "seconds"),
    [
        (None, 2.0),  # as written
        (0xFFFFFFFF, 2.0),  # written by a stream: mutagen read 74 hours
        (8000 * 2 * 60, 2.0),  # cut short: the header says a minute, 2 s are there
        (8000 * 2 * 1, 1.0),  # the header says less than the bytes: the header wins
    ],
)
def test_uncompressed_audio_is_as_long_as_its_bytes_can_hold_at_most(
    tmp_path: Path, data_size: int | None, seconds: float
) -> None:
    """A budget stopped for good at a streamed WAV (74 h of audio per its header), and the
    truncation check flagged its transcript; a WAV is measured at most by its bytes."""
    wav = _wav_stating(tmp_path / "a.wav", data_size)
    assert local_duration(str(wav)) == pytest.approx(seconds, abs=0.01)
    assert sparse_duration(wav.read_bytes()[:4096], wav.stat().st_size) == pytest.approx(
        seconds, abs=0.01
    )


def test_a_budget_lets_a_streamed_wav_through(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Under a 10 s cap, a 2 s WAV whose header states 4 GiB of samples is sent."""
    _wav_stating(tmp_path / "in" / "a.wav", 0xFFFFFFFF)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    result = dgbatch(*args, "--max-audio-hours", str(10 / 3600))
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 1


def test_dry_run_probes_urls_through_the_proxy_and_never_with_netrc(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe reaches a media host through the proxy ``HTTP_PROXY`` names (here the
    test server, for a host that does not resolve), and never sends ``~/.netrc``
    credentials to it (aiohttp's ``trust_env`` would: a ``default`` entry matches any)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login alice password NETRC-S3CRET\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=wav_bytes(4.0))

    app = web.Application()
    app.router.add_get("/calls/a.wav", handle)
    with serve_app(app) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        url = "http://media.invalid/calls/a.wav"
        estimate = _dry(dgbatch, url, "--out", str(tmp_path / "out"), "--probe")
    assert estimate["duration_seconds"] == pytest.approx(4.0, abs=1e-3)
    assert seen and seen == [None] * len(seen)


def test_a_probe_through_an_unusable_proxy_is_refused(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad ``HTTP_PROXY`` (a socks one) made every probe of an http media host fail,
    said only at -vv, and the estimate counted them unknown: refused, exit 2, unshown."""
    monkeypatch.setenv("HTTP_PROXY", "socks5://me:pw-s3cret@proxy.corp:1080")
    args = ("run", "http://media.invalid/a.wav", "--out", str(tmp_path / "o"), "--dry-run")
    probed = dgbatch(*args, "--probe")
    assert probed.exit_code == 2 and "HTTP_PROXY: only an http:// proxy" in probed.output
    assert "it is the proxy for media.invalid, a media host --probe reads" in probed.output
    assert "s3cret" not in probed.output
    assert dgbatch(*args).exit_code == 0  # without --probe no media host is reached
    monkeypatch.setenv("NO_PROXY", "media.invalid")  # a variable no probe uses is no matter
    assert dgbatch(*args, "--probe").exit_code == 0
