"""The bundled Deepgram emulator, over real loopback sockets.

The rest of the suite trusts the emulator to behave like Deepgram, so these tests pin the
documented behaviour (DEEPGRAM-API.md §7) and every injectable fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import dgbatch_subprocess_cmd, subprocess_env
from multidict import CIMultiDictProxy

from batch.emulator import (
    DEFAULT_FAULTS,
    Emulator,
    EmulatorConfig,
    RequestRecord,
    answer_delay,
    build_response,
    looks_like_audio,
    run_in_thread,
    safe_url,
    transcript_for,
    wav_duration,
)

KEY = "test-key-0123"
AUTH = {"Authorization": f"Token {KEY}"}
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "example"


def make_wav(seconds: float, rate: int = 8000, channels: int = 1) -> bytes:
    """A 16-bit WAV of the given length (mono unless told), built in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x01\x02" * channels * int(rate * seconds))
    return buffer.getvalue()


WAV = make_wav(0.25)
WAV_SHA = hashlib.sha256(WAV).hexdigest()


@asynccontextmanager
async def emulator_with(**options: Any) -> AsyncIterator[Emulator]:
    """An emulator with the test key and the given config overrides."""
    async with Emulator(EmulatorConfig(key=KEY, **options)) as emulator:
        yield emulator


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Run a throwaway aiohttp app on loopback and yield its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A default emulator that accepts only the test key."""
    async with emulator_with() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed before the emulator stops."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def media_url() -> AsyncIterator[str]:
    """A media host serving WAV at /media/a.wav and 404 elsewhere."""

    async def media(request: web.Request) -> web.Response:
        return web.Response(body=WAV, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/media/a.wav", media)
    async with serve_app(app) as base:
        yield base


async def post(
    session: aiohttp.ClientSession,
    emulator: Emulator,
    body: bytes = WAV,
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    """POST raw audio to /v1/listen and return status, JSON body and headers."""
    sent = {"Content-Type": "audio/wav", **(AUTH if headers is None else headers)}
    url = f"{emulator.url}/v1/listen{query}"
    async with session.post(url, data=body, headers=sent) as response:
        return response.status, await response.json(), response.headers


async def post_url(
    session: aiohttp.ClientSession, emulator: Emulator, payload: object
) -> tuple[int, dict[str, Any]]:
    """Submit a JSON body to /v1/listen and return status and JSON body."""
    async with session.post(f"{emulator.url}/v1/listen", json=payload, headers=AUTH) as response:
        return response.status, await response.json()


async def raw_exchange(emulator: Emulator, request: bytes) -> bytes:
    """Send bytes on a fresh socket and return the status line and headers of the answer."""
    host, port = emulator.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


def only_record(emulator: Emulator) -> RequestRecord:
    """The single request the emulator logged."""
    assert len(emulator.log) == 1
    return emulator.log[0]


# --------------------------------------------------------------------------- uploads


async def test_upload_answer_is_derived_from_the_audio(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """A WAV upload gets its real sha256, its header duration and a transcript naming both."""
    status, body, headers = await post(session, emulator, query="?model=nova-3")
    assert status == 200
    meta = body["metadata"]
    assert meta["sha256"] == WAV_SHA
    assert meta["duration"] == pytest.approx(0.25)
    assert headers["dg-request-id"] == meta["request_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["created"])
    assert meta["model_info"][meta["models"][0]]["arch"] == "nova-3"
    alternative = body["results"]["channels"][0]["alternatives"][0]
    assert alternative["transcript"] == transcript_for(WAV_SHA, len(WAV))
    assert WAV_SHA[:16] in alternative["transcript"]
    starts = [word["start"] for word in alternative["words"]]
    assert starts == sorted(starts) and alternative["words"][-1]["end"] <= 0.25


async def test_upload_is_logged(emulator: Emulator, session: aiohttp.ClientSession) -> None:
    """The log records mode, size, digest, params as sent and the raw Authorization header."""
    await post(session, emulator, query="?keyterm=a&keyterm=b")
    record = only_record(emulator)
    assert (record.mode, record.status, record.fault) == ("upload", 200, None)
    assert record.content_length == record.bytes_received == len(WAV)
    assert record.sha256 == WAV_SHA
    assert record.params == [("keyterm", "a"), ("keyterm", "b")]
    assert record.authorization == f"Token {KEY}"
    assert record.content_type == "audio/wav"


async def test_example_audio_durations(emulator: Emulator, session: aiohttp.ClientSession) -> None:
    """Every committed example WAV is accepted and reported with its exact length."""
    files = sorted((EXAMPLE / "audio").rglob("*.wav"))
    assert len(files) >= 3 and sum(path.stat().st_size for path in files) < 40_000
    for path in files:
        with wave.open(str(path)) as audio:
            expected = audio.getnframes() / audio.getframerate()
        status, body, _ = await post(session, emulator, path.read_bytes())
        assert status == 200
        assert body["metadata"]["duration"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "head",
    [
        b"ID3\x04",
        b"\xff\xfb\x90\x00",
        b"fLaC",
        b"OggS",
        b"\x00\x00\x00\x20ftypM4A ",
        b"\x1aE\xdf\xa3",
    ],
)
async def test_containers_recognised_by_magic_bytes(
    emulator: Emulator, session: aiohttp.ClientSession, head: bytes
) -> None:
    """MP3, FLAC, Ogg, MP4 and WebM uploads are accepted and given a bitrate-guess duration."""
    body = head + bytes(16_000 - len(head))
    status, answer, _ = await post(session, emulator, body)
    assert status == 200
    assert answer["metadata"]["duration"] == pytest.approx(1.0)


@pytest.mark.parametrize("body", [b"", b"hello, this is not audio", b"RIFF\x00\x00\x00\x00RMID"])
async def test_non_audio_is_refused(
    emulator: Emulator, session: aiohttp.ClientSession, body: bytes
) -> None:
    """Empty or unrecognised bytes get Deepgram's 400 'corrupt or unsupported data' body."""
    status, answer, _ = await post(session, emulator, body)
    assert status == 400
    assert answer["err_code"] == "Bad Request"
    assert answer["err_msg"] == "Bad Request: failed to process audio: corrupt or unsupported data"
    assert answer["request_id"] == only_record(emulator).request_id
    assert only_record(emulator).sha256 == hashlib.sha256(body).hexdigest()


async def test_encoding_param_skips_the_sniff(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """Headerless PCM is accepted with encoding=linear16 and timed from its sample rate."""
    pcm = bytes(32_000)
    status, body, _ = await post(
        session, emulator, pcm, query="?encoding=linear16&sample_rate=8000"
    )
    assert status == 200
    assert body["metadata"]["duration"] == pytest.approx(2.0)


async def test_missing_content_length_is_411(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """A chunked upload (no Content-Length) is refused with 411 LENGTH_REQUIRED."""

    async def chunks() -> AsyncIterator[bytes]:
        yield WAV

    url = f"{emulator.url}/v1/listen"
    async with session.post(url, data=chunks(), headers=AUTH) as response:
        assert response.status == 411
        assert (await response.json())["err_code"] == "LENGTH_REQUIRED"


async def test_upload_over_two_gigabytes_is_413(emulator: Emulator) -> None:
    """A Content-Length above Deepgram's 2 GB limit is refused before any body is read."""
    request = (
        b"POST /v1/listen HTTP/1.1\r\nHost: x\r\nAuthorization: Token " + KEY.encode() + b"\r\n"
        b"Content-Type: audio/wav\r\nContent-Length: 3000000000\r\n\r\nRIFF"
    )
    head = await raw_exchange(emulator, request)
    assert head.startswith(b"HTTP/1.1 413")


async def test_client_leaving_mid_upload_is_logged_499(emulator: Emulator) -> None:
    """An upload cut short by the client is logged as 499 with the bytes that arrived."""
    host, port = emulator.url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/listen HTTP/1.1\r\nHost: x\r\nAuthorization: Token " + KEY.encode() + b"\r\n"
        b"Content-Type: audio/wav\r\nContent-Length: 100000\r\n\r\n" + WAV[:1000]
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    for _ in range(100):
        if emulator.log:
            break
        await asyncio.sleep(0.01)
    record = only_record(emulator)
    assert (record.status, record.bytes_received) == (499, 1000)


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("scheme", ["Token", "token", "TOKEN", "Bearer", "bearer"])
async def test_auth_schemes_are_case_insensitive(
    emulator: Emulator, session: aiohttp.ClientSession, scheme: str
) -> None:
    """Token and Bearer credentials are accepted whatever the case of the scheme."""
    status, _, _ = await post(session, emulator, headers={"Authorization": f"{scheme} {KEY}"})
    assert status == 200


@pytest.mark.parametrize("header", [None, "Token wrong", f"Basic {KEY}", "Token ", KEY])
async def test_bad_credentials_are_401(
    emulator: Emulator, session: aiohttp.ClientSession, header: str | None
) -> None:
    """A missing, wrong or malformed key gets 401 INVALID_AUTH with a request id."""
    headers = {} if header is None else {"Authorization": header}
    status, body, _ = await post(session, emulator, headers=headers)
    assert status == 401
    assert body == {
        "err_code": "INVALID_AUTH",
        "err_msg": "Invalid credentials.",
        "request_id": only_record(emulator).request_id,
    }


async def test_any_token_accepted_without_configured_key(session: aiohttp.ClientSession) -> None:
    """With key=None any non-empty token is accepted."""
    async with Emulator() as emulator:
        status, _, _ = await post(session, emulator, headers={"Authorization": "Token anything"})
    assert status == 200


async def test_auth_mode_switches_at_runtime(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """Setting auth_mode makes every request fail like a revoked or unpaid key, until reset."""
    expected = {
        "401": "INVALID_AUTH",
        "402": "ASR_PAYMENT_REQUIRED",
        "403": "INSUFFICIENT_PERMISSIONS",
    }
    for mode, code in expected.items():
        emulator.auth_mode = mode
        status, body, _ = await post(session, emulator)
        assert (status, body["err_code"]) == (int(mode), code)
    emulator.auth_mode = "ok"
    assert (await post(session, emulator))[0] == 200
    with pytest.raises(ValueError, match="auth_mode"):
        emulator.auth_mode = "500"


async def test_token_details_endpoint(emulator: Emulator, session: aiohttp.ClientSession) -> None:
    """GET /v1/auth/token describes a valid key without echoing it and refuses a wrong one."""
    url = f"{emulator.url}/v1/auth/token"
    async with session.get(url, headers=AUTH) as response:
        text = await response.text()
        assert response.status == 200
    details = json.loads(text)
    assert details["username"] == "dgbatch-emulator"
    assert details["scopes"] == ["usage:write"] and details["expiration"] is None
    assert KEY not in text
    async with session.get(url, headers={"Authorization": "Token nope"}) as response:
        assert response.status == 401
        assert (await response.json())["err_code"] == "INVALID_AUTH"


# --------------------------------------------------------------------------- URL mode


async def test_url_mode_fetches_the_media(
    emulator: Emulator, session: aiohttp.ClientSession, media_url: str
) -> None:
    """A JSON submission is fetched by the emulator and answered with the media's digest."""
    url = f"{media_url}/media/a.wav?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=60"
    status, body = await post_url(session, emulator, {"url": url})
    assert status == 200
    assert body["metadata"]["sha256"] == WAV_SHA
    record = only_record(emulator)
    assert (record.mode, record.url, record.sha256) == ("url", url, WAV_SHA)
    assert record.bytes_received == len(WAV)


async def test_url_fetch_404_hides_the_query(
    emulator: Emulator, session: aiohttp.ClientSession, media_url: str
) -> None:
    """A 404 from the media host becomes 400 REMOTE_CONTENT_ERROR without the signature."""
    status, body = await post_url(session, emulator, {"url": f"{media_url}/gone.wav?sig=SECRET"})
    assert status == 400
    assert body["err_code"] == "REMOTE_CONTENT_ERROR"
    assert body["err_msg"].endswith("returned a client error: 404 Not Found")
    assert "SECRET" not in json.dumps(body)


async def test_url_fetch_connection_failure(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """An unreachable media host becomes REMOTE_CONTENT_ERROR naming scheme://host/path only."""
    async with serve_app(web.Application()) as base:
        dead = f"{base}/a.wav?sig=SECRET"
    status, body = await post_url(session, emulator, {"url": dead})
    assert (status, body["err_code"]) == (400, "REMOTE_CONTENT_ERROR")
    assert f"{base}/a.wav" in body["err_msg"] and "SECRET" not in body["err_msg"]


@pytest.mark.parametrize(
    ("payload", "key"),
    [(b"{not json", "err_code"), (b'{"uri": "http://x/a.wav"}', "category"), (b"[1]", "category")],
)
async def test_unusable_json_is_400(
    emulator: Emulator, session: aiohttp.ClientSession, payload: bytes, key: str
) -> None:
    """Malformed JSON or a body without url gets one of Deepgram's documented 400 shapes."""
    headers = {**AUTH, "Content-Type": "application/json"}
    async with session.post(f"{emulator.url}/v1/listen", data=payload, headers=headers) as response:
        assert response.status == 400
        assert key in await response.json()
    assert only_record(emulator).mode == "invalid"


async def test_private_urls_refused_when_configured(
    session: aiohttp.ClientSession, media_url: str
) -> None:
    """With allow_private_urls=False a loopback URL is refused like Deepgram refuses it."""
    async with emulator_with(allow_private_urls=False) as emulator:
        status, body = await post_url(session, emulator, {"url": f"{media_url}/media/a.wav"})
    assert (status, body["err_code"]) == (400, "REMOTE_CONTENT_ERROR")
    assert "publicly routable" in body["err_msg"]


# --------------------------------------------------------------------------- response shape


async def test_plain_request_has_no_optional_fields(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """Without flags, words carry no punctuation or speakers and nothing optional is added."""
    _, body, _ = await post(session, emulator)
    alternative = body["results"]["channels"][0]["alternatives"][0]
    assert set(alternative) == {"transcript", "confidence", "words"}
    assert set(alternative["words"][0]) == {"word", "start", "end", "confidence"}
    assert "utterances" not in body["results"]
    assert "tags" not in body["metadata"] and "extra" not in body["metadata"]


@pytest.mark.parametrize("flag", ["smart_format", "paragraphs"])
async def test_paragraphs_follow_the_flags(
    emulator: Emulator, session: aiohttp.ClientSession, flag: str
) -> None:
    """smart_format or paragraphs adds punctuated words and a paragraphs block."""
    _, body, _ = await post(session, emulator, query=f"?{flag}=true")
    alternative = body["results"]["channels"][0]["alternatives"][0]
    assert alternative["words"][0]["punctuated_word"] == "Audio"
    paragraphs = alternative["paragraphs"]
    assert paragraphs["transcript"].startswith("\nAudio ")
    assert paragraphs["paragraphs"][0]["num_words"] == len(alternative["words"])


async def test_diarize_and_utterances(emulator: Emulator, session: aiohttp.ClientSession) -> None:
    """diarize gives two speakers on words, paragraphs and utterances; utterances follow turns."""
    query = "?diarize=true&utterances=true&paragraphs=true"
    _, body, _ = await post(session, emulator, query=query)
    words = body["results"]["channels"][0]["alternatives"][0]["words"]
    assert {word["speaker"] for word in words} == {0, 1}
    assert all("speaker_confidence" in word for word in words)
    utterances = body["results"]["utterances"]
    assert [u["speaker"] for u in utterances] == [0, 1]
    assert sum(len(u["words"]) for u in utterances) == len(words)
    paragraphs = body["results"]["channels"][0]["alternatives"][0]["paragraphs"]
    assert paragraphs["transcript"].startswith("\nSpeaker 0: ")
    assert "\n\nSpeaker 1: " in paragraphs["transcript"]


async def test_tags_and_extra_are_echoed(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    """Repeated tag params come back as metadata.tags and extra key:value pairs as a map."""
    _, body, _ = await post(session, emulator, query="?tag=nightly&tag=run-7&extra=item:day1%2Fa")
    assert body["metadata"]["tags"] == ["nightly", "run-7"]
    assert body["metadata"]["extra"] == {"item": "day1/a"}


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status", "key"),
    [("429", 429, "err_code"), ("500", 500, "err_code"), ("503", 503, "error_code")],
)
async def test_json_faults(
    session: aiohttp.ClientSession, fault: str, status: int, key: str
) -> None:
    """429, 500 and 503 faults answer Deepgram's JSON bodies and are logged by name."""
    async with emulator_with(fault_rate=1.0, faults=(fault,), retry_after=True) as emulator:
        got, body, headers = await post(session, emulator)
    assert (got, key in body) == (status, True)
    assert body["request_id"] == headers["dg-request-id"]
    assert (only_record(emulator).fault, only_record(emulator).status) == (fault, status)
    if fault == "429":
        assert body["err_code"] == "TOO_MANY_REQUESTS" and headers["Retry-After"] == "1"


async def test_retry_after_can_be_omitted(session: aiohttp.ClientSession) -> None:
    """retry_after=False sends 429 without a Retry-After header."""
    async with emulator_with(fault_rate=1.0, faults=("429",), retry_after=False) as emulator:
        status, _, headers = await post(session, emulator)
    assert status == 429 and "Retry-After" not in headers


async def test_gateway_fault_is_not_json(session: aiohttp.ClientSession) -> None:
    """A 502 fault answers an HTML page, as a gateway would."""
    async with emulator_with(fault_rate=1.0, faults=("502",)) as emulator:
        url = f"{emulator.url}/v1/listen"
        async with session.post(url, data=WAV, headers=AUTH) as response:
            assert response.status == 502
            assert response.content_type == "text/html"
            assert b"502 Bad Gateway" in await response.read()


async def test_reset_fault_drops_the_connection(session: aiohttp.ClientSession) -> None:
    """A reset fault closes the connection without any answer."""
    async with emulator_with(fault_rate=1.0, faults=("reset",)) as emulator:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, emulator)
    assert (only_record(emulator).fault, only_record(emulator).status) == ("reset", 0)


async def test_truncated_fault_cuts_the_body(session: aiohttp.ClientSession) -> None:
    """A truncated fault sends 200 headers for the full body, then half of it."""
    async with emulator_with(fault_rate=1.0, faults=("truncated",)) as emulator:
        url = f"{emulator.url}/v1/listen"
        async with session.post(url, data=WAV, headers=AUTH) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    assert only_record(emulator).fault == "truncated"


async def test_garbage_fault_is_unparseable(session: aiohttp.ClientSession) -> None:
    """A garbage fault answers 200 with bytes that are not JSON."""
    async with emulator_with(fault_rate=1.0, faults=("garbage",)) as emulator:
        url = f"{emulator.url}/v1/listen"
        async with session.post(url, data=WAV, headers=AUTH) as response:
            assert response.status == 200
            raw = await response.read()
    with pytest.raises(ValueError):
        json.loads(raw)


async def test_seeded_faults_are_reproducible(session: aiohttp.ClientSession) -> None:
    """The same seed draws the same fault sequence, mixed with successes."""
    sequences = []
    for _ in range(2):
        async with emulator_with(fault_rate=0.5, faults=("500", "503"), seed=7) as emulator:
            for _ in range(12):
                await post(session, emulator)
        sequences.append([record.fault for record in emulator.log])
    assert sequences[0] == sequences[1]
    assert {None, "500", "503"} <= set(sequences[0])


def test_unknown_fault_names_are_refused() -> None:
    """A typo in faults fails at construction instead of silently never firing."""
    with pytest.raises(ValueError, match="faults"):
        EmulatorConfig(faults=("5OO",))
    assert set(DEFAULT_FAULTS) == {"429", "500", "502", "503", "reset", "truncated", "garbage"}


def test_the_command_passes_its_options_and_refuses_bad_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dgbatch emulator`` builds its config from the options (``--duration-ratio`` for
    truncated transcripts included); a bad value exits 2 naming it."""
    from click.testing import CliRunner

    import batch.emulator
    from batch.cli import cli

    served: list[EmulatorConfig] = []
    monkeypatch.setattr(batch.emulator, "serve", served.append)
    ok = CliRunner().invoke(cli, ["emulator", "--port", "0", "--duration-ratio", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert (served[0].port, served[0].duration_ratio) == (0, 0.5)
    for option, value in [("--duration-ratio", "0"), ("--latency", "-1"), ("--fault-rate", "2")]:
        bad = CliRunner().invoke(cli, ["emulator", option, value])  # named as typed
        assert bad.exit_code == 2 and f"Error: emulator: {option} must be" in bad.output


async def test_concurrency_limit_answers_429_at_once(session: aiohttp.ClientSession) -> None:
    """Requests beyond max_concurrency get an immediate 429 while the admitted ones proceed."""
    async with emulator_with(max_concurrency=2, latency=0.3, retry_after=False) as emulator:
        started = time.monotonic()
        results = await asyncio.gather(*(post(session, emulator) for _ in range(5)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 429, 429, 429]
    refused = [r for r in emulator.log if r.status == 429]
    assert all(r.fault == "concurrency" for r in refused)
    assert 3 <= emulator.in_flight_max() <= 5
    assert time.monotonic() - started < 1.0


async def test_latency_delays_every_answer(session: aiohttp.ClientSession) -> None:
    """Configured latency is added to a successful response."""
    async with emulator_with(latency=0.2) as emulator:
        started = time.monotonic()
        status, _, _ = await post(session, emulator)
    assert status == 200 and time.monotonic() - started >= 0.2


@pytest.mark.parametrize(
    ("latency", "worked", "delay"),
    [(0.2, 0.0, 0.2), (0.2, 0.05, 0.15), (0.2, 0.2, 0.0), (0.2, 0.5, 0.0), (0.0, 0.1, 0.0)],
)
def test_answer_delay_counts_the_emulators_own_work(
    latency: float, worked: float, delay: float
) -> None:
    """Latency is time per request: work done while answering is part of it, never added."""
    assert answer_delay(latency, worked) == pytest.approx(delay)


async def test_latency_includes_fetching_the_url(session: aiohttp.ClientSession) -> None:
    """A URL that takes 0.6 s to fetch, with latency 0.8, is answered after ~0.8 s, not 1.4 s:
    fetching is the server's work, as it is Deepgram's."""

    async def slow_media(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(body=WAV, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/media/a.wav", slow_media)
    async with serve_app(app) as base, emulator_with(latency=0.8) as emulator:
        started = time.monotonic()
        status, _ = await post_url(session, emulator, {"url": f"{base}/media/a.wav"})
        elapsed = time.monotonic() - started
    assert status == 200
    assert 0.8 <= elapsed < 1.3


# --------------------------------------------------------------------------- control and running


async def test_control_endpoints(emulator: Emulator, session: aiohttp.ClientSession) -> None:
    """The /_emulator endpoints expose the log, switch auth and reset, without auth."""
    await post(session, emulator)
    async with session.get(f"{emulator.url}/_emulator/log") as response:
        log = await response.json()
    assert [entry["sha256"] for entry in log] == [WAV_SHA]
    assert [entry["authorization"] for entry in log] == ["Token REDACTED"]  # not the key
    async with session.post(f"{emulator.url}/_emulator/auth?mode=402") as response:
        assert response.status == 200
    assert (await post(session, emulator))[0] == 402
    async with session.post(f"{emulator.url}/_emulator/auth?mode=nonsense") as response:
        assert response.status == 400
    async with session.get(f"{emulator.url}/_emulator/stats") as response:
        assert (await response.json())["requests"] == 2
    async with session.post(f"{emulator.url}/_emulator/reset") as response:
        assert response.status == 200
    assert emulator.log == [] and emulator.auth_mode == "402"


def test_run_in_thread_serves_sync_callers() -> None:
    """run_in_thread serves a blocking client and its log is readable from the main thread."""
    audio = (EXAMPLE / "audio" / "hello.wav").read_bytes()
    with run_in_thread(EmulatorConfig(key=KEY)) as emulator:
        request = urllib.request.Request(
            f"{emulator.url}/v1/listen?diarize=true", data=audio, headers=AUTH, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.load(response)
        assert body["metadata"]["sha256"] == hashlib.sha256(audio).hexdigest()
        assert emulator.log[0].status == 200
        url = emulator.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/_emulator/log", timeout=2)


@pytest.fixture
def served() -> Iterator[subprocess.Popen[str]]:
    """``serve`` running in a child process, killed if a test leaves it behind."""
    code = "from batch.emulator import serve, EmulatorConfig; serve(EmulatorConfig())"
    command = [sys.executable, "-c", code]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as child:
        yield child
        if child.poll() is None:
            child.kill()


def test_serve_prints_its_address_and_exits_cleanly(served: subprocess.Popen[str]) -> None:
    """serve prints one listening line with the real port and exits 0 on SIGTERM."""
    assert served.stdout is not None
    line = served.stdout.readline()
    match = re.fullmatch(r"dgbatch emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
    assert match, line
    with urllib.request.urlopen(f"{match[1]}/_emulator/stats", timeout=5) as response:
        assert json.load(response)["requests"] == 0
    served.send_signal(signal.SIGTERM)
    assert served.wait(timeout=10) == 0
    assert served.stdout.read() == ""


# --------------------------------------------------------------------------- pure helpers


def test_wav_duration_never_exceeds_the_bytes_received() -> None:
    """A WAV header promising more data than arrived is timed by what arrived."""
    assert wav_duration(WAV[:44], len(WAV)) == pytest.approx(0.25)
    assert wav_duration(WAV[:44], 44 + 2000) == pytest.approx(0.125)
    assert wav_duration(b"OggS" + bytes(40), 100) is None


def test_looks_like_audio_rejects_near_misses() -> None:
    """Text, short bytes and a RIFF that is neither WAVE nor AVI are not audio."""
    assert not looks_like_audio(b"")
    assert not looks_like_audio(b"\xff")
    assert not looks_like_audio(b"RIFF\x00\x00\x00\x00RMID")
    assert looks_like_audio(WAV[:12])


def test_safe_url_drops_query_fragment_and_credentials() -> None:
    """Error messages can name a URL without leaking signatures or basic-auth passwords."""
    assert (
        safe_url("https://u:pw@h.example/a/b.wav?X-Amz-Signature=s#f")
        == "https://h.example/a/b.wav"
    )


def test_build_response_without_words_duration() -> None:
    """Zero-length audio still gives well-formed, non-decreasing word times."""
    body = build_response(request_id="r", sha256=WAV_SHA, size=44, duration=0.0, params=[])
    words = body["results"]["channels"][0]["alternatives"][0]["words"]
    assert all(word["start"] <= word["end"] == 0.0 for word in words)


def test_a_port_in_use_is_named_not_an_internal_error(tmp_path: Path) -> None:
    """``dgbatch emulator --port N`` with N taken printed ``internal error: [Errno 98]``."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*dgbatch_subprocess_cmd(), "emulator", "--port", str(port)],
            env=subprocess_env(),
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"emulator: cannot listen on 127.0.0.1:{port}:" in done.stderr.decode()
    assert b"internal error" not in done.stderr


def test_a_host_that_does_not_resolve_is_named() -> None:
    """``--host`` that no resolver knows was an internal error (exit 1)."""
    done = subprocess.run(
        [*dgbatch_subprocess_cmd(), "emulator", "--host", "no-such-host.invalid", "--port", "0"],
        env=subprocess_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert b"emulator: cannot listen on no-such-host.invalid:0:" in done.stderr


def test_a_port_out_of_range_is_named() -> None:
    """``--port 70000`` was an internal error (exit 1)."""
    done = subprocess.run(
        [*dgbatch_subprocess_cmd(), "emulator", "--port", "70000"],
        env=subprocess_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert b"emulator: cannot listen on 127.0.0.1:70000:" in done.stderr
