"""The emulator against the rest of DEEPGRAM-API.md's §7 checklist, over loopback sockets.

Deepgram's default concurrency limits, callback mode, ``model_info`` and ``multichannel``
answers, and the control endpoints kept to loopback peers: a client tested against the
emulator meets what it would meet on Deepgram.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import Cli
from test_emulator import AUTH, KEY, WAV, WAV_SHA, emulator_with, make_wav, serve_app

from batch.emulator import (
    CALLBACK_RETRIES,
    DEEPGRAM_CONCURRENCY,
    KEYWORDS_ON_NOVA3,
    WHISPER_CONCURRENCY,
    Emulator,
    EmulatorConfig,
    control_allowed,
    model_info,
    transcript_for,
    wav_channels,
)

#: the emulator's key identifier, the ``accessor`` of GET /v1/auth/token
ACCESSOR = "0c6e8a5e-51f4-4cb5-9a7e-6d1f2b3c4d5e"
STEREO = make_wav(0.25, channels=2)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without aiohttp's own cap of 100 connections."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def post(
    session: aiohttp.ClientSession, emulator: Emulator, query: str = "", body: bytes = WAV
) -> tuple[int, dict[str, Any], str]:
    """POST audio to /v1/listen; the status, the JSON body and the ``dg-request-id``."""
    url = f"{emulator.url}/v1/listen{query}"
    headers = {"Content-Type": "audio/wav", **AUTH}
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json(), response.headers["dg-request-id"]


async def statuses(
    session: aiohttp.ClientSession, emulator: Emulator, queries: list[str]
) -> list[int]:
    """The statuses of requests sent all at once, in the order of ``queries``."""
    answers = await asyncio.gather(*(post(session, emulator, query) for query in queries))
    return [status for status, _, _ in answers]


# --------------------------------------------------------------------------- concurrency


async def test_default_limit_is_deepgrams_100_in_flight(session: aiohttp.ClientSession) -> None:
    """With no max_concurrency, the 101st request in flight gets Deepgram's 429 at once."""
    async with emulator_with(latency=2.0, retry_after=False) as emulator:
        sent = await statuses(session, emulator, ["?model=nova-3"] * (DEEPGRAM_CONCURRENCY + 3))
    assert DEEPGRAM_CONCURRENCY == 100
    assert sorted(sent) == [200] * DEEPGRAM_CONCURRENCY + [429] * 3
    refused = [record for record in emulator.log if record.status == 429]
    assert {record.fault for record in refused} == {"concurrency"}


async def test_whisper_has_its_own_limit_of_5(session: aiohttp.ClientSession) -> None:
    """Whisper requests beyond 5 in flight are refused while nova requests beside them are not."""
    whisper = ["?model=whisper-large"] * (WHISPER_CONCURRENCY + 2)
    async with emulator_with(latency=1.0, retry_after=False) as emulator:
        sent = await statuses(session, emulator, [*whisper, *["?model=nova-2"] * 4])
    assert WHISPER_CONCURRENCY == 5
    assert sorted(sent[: len(whisper)]) == [200] * 5 + [429] * 2
    assert sent[len(whisper) :] == [200] * 4


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        ("?sentiment=true", 10),
        ("?summarize=v2", 10),
        ("?detect_entities=true", 5),
        ("?topics=true&detect_entities=true", 5),  # the lowest of the request's limits
        ("?model=whisper&topics=true", 5),
    ],
)
async def test_audio_intelligence_features_have_lower_limits(
    session: aiohttp.ClientSession, query: str, limit: int
) -> None:
    """Deepgram holds sentiment, intents, topics and summarize to 10 in flight, entities
    to 5, and a request with several to the lowest; the emulator let 100 through, so a
    client's 429 handling was never met with them. Requests without them go on beside."""
    async with emulator_with(latency=1.0, retry_after=False) as emulator:
        sent = await statuses(session, emulator, [query] * (limit + 2) + ["?sentiment=false"] * 3)
    assert sorted(sent[: limit + 2]) == [200] * limit + [429] * 2
    assert sent[limit + 2 :] == [200] * 3


async def test_max_concurrency_replaces_both_limits(session: aiohttp.ClientSession) -> None:
    """An explicit max_concurrency is the limit for whisper requests too."""
    async with emulator_with(max_concurrency=8, latency=1.0, retry_after=False) as emulator:
        sent = await statuses(session, emulator, ["?model=whisper"] * 9)
    assert sorted(sent) == [200] * 8 + [429]


# --------------------------------------------------------------------------- callbacks


class Receiver:
    """A callback receiver that answers the statuses it is given, then 200, and keeps what
    it was sent."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.method, dict(request.headers), await request.json()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    """``receiver`` on loopback; yields its hook URL."""
    app = web.Application()
    app.router.add_route("*", "/hook", receiver.handle)
    async with serve_app(app) as base:
        yield f"{base}/hook"


async def test_callback_answers_the_request_id_then_posts_the_transcript(
    session: aiohttp.ClientSession,
) -> None:
    """callback=: 200 {"request_id"} at once (not after the latency), then the full body is
    POSTed with a dg-token naming the key's identifier, never the key."""
    receiver = Receiver()
    async with receiving(receiver) as hook, emulator_with(latency=1.0) as emulator:
        started = time.monotonic()
        status, body, request_id = await post(session, emulator, f"?callback={hook}")
        assert time.monotonic() - started < 0.8
        assert (status, body) == (200, {"request_id": request_id})
        assert receiver.received == []  # held for the latency, as processing
        await emulator.callbacks_settled()
    [(method, headers, delivered)] = receiver.received
    assert method == "POST" and headers["dg-token"] == ACCESSOR
    assert KEY not in str(headers)
    assert delivered["metadata"]["request_id"] == request_id
    assert delivered["metadata"]["sha256"] == WAV_SHA
    transcript = delivered["results"]["channels"][0]["alternatives"][0]["transcript"]
    assert transcript == transcript_for(WAV_SHA, len(WAV))
    [record] = emulator.log
    assert (record.callback, record.callback_attempts) == (hook, [200])


async def test_callback_put_is_retried_until_the_receiver_takes_it(
    session: aiohttp.ClientSession,
) -> None:
    """callback_method=put PUTs; a receiver answering 500 twice gets it the third time."""
    receiver = Receiver(500, 503)
    async with receiving(receiver) as hook, emulator_with(callback_retry_gap=0.01) as emulator:
        status, _, _ = await post(session, emulator, f"?callback={hook}&callback_method=put")
        await emulator.callbacks_settled()
    assert status == 200
    assert [method for method, _, _ in receiver.received] == ["PUT"] * 3
    assert emulator.log[0].callback_attempts == [500, 503, 200]


async def test_callback_gives_up_after_ten_retries(session: aiohttp.ClientSession) -> None:
    """A receiver nobody listens on is tried 1 + 10 times, each a connection error (0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with emulator_with(callback_retry_gap=0.001) as emulator:
        status, _, _ = await post(session, emulator, f"?callback=http://127.0.0.1:{port}/h")
        await emulator.callbacks_settled()
    assert status == 200 and CALLBACK_RETRIES == 10
    assert emulator.log[0].callback_attempts == [0] * 11


@pytest.mark.parametrize(
    ("query", "body", "err_code"),
    [
        ("?callback={hook}", b"not audio at all", "Bad Request"),
        ("?callback=ftp://example.com/h", WAV, "INVALID_QUERY_PARAMETER"),
        ("?callback={hook}&callback_method=get", WAV, "INVALID_QUERY_PARAMETER"),
    ],
)
async def test_callback_refusals_deliver_nothing(
    session: aiohttp.ClientSession, query: str, body: bytes, err_code: str
) -> None:
    """Bad audio is still a 400 in callback mode, as is a bad callback URL or method, and
    nothing is delivered."""
    receiver = Receiver()
    async with receiving(receiver) as hook, emulator_with() as emulator:
        status, answer, _ = await post(session, emulator, query.format(hook=hook), body)
        await emulator.callbacks_settled()
    assert (status, answer["err_code"]) == (400, err_code)
    assert receiver.received == [] and emulator.log[0].callback_attempts == []


async def test_callback_fetch_failure_is_400(session: aiohttp.ClientSession) -> None:
    """A URL submission in callback mode is fetched before the answer: a 404 is a 400."""
    receiver = Receiver()
    async with receiving(receiver) as hook, emulator_with() as emulator:
        url = f"{emulator.url}/v1/listen?callback={hook}"
        async with session.post(url, json={"url": f"{hook}/missing"}, headers=AUTH) as response:
            assert response.status == 400
            assert (await response.json())["err_code"] == "REMOTE_CONTENT_ERROR"
    assert receiver.received == []


async def test_callback_ports_can_be_held_to_deepgrams(session: aiohttp.ClientSession) -> None:
    """With callback_ports_only, a receiver on a random port is refused; 8443 is accepted."""
    async with emulator_with(callback_ports_only=True, callback_retry_gap=60) as emulator:
        status, answer, _ = await post(session, emulator, "?callback=http://127.0.0.1:45678/h")
        assert (status, answer["err_code"]) == (400, "INVALID_QUERY_PARAMETER")
        status, _, _ = await post(session, emulator, "?callback=http://127.0.0.1:8443/h")
        assert status == 200


async def test_stop_cancels_pending_deliveries(session: aiohttp.ClientSession) -> None:
    """A delivery waiting 60 s to retry does not hold stop() or outlive the emulator."""
    receiver = Receiver(500)
    async with receiving(receiver) as hook:
        emulator = Emulator(EmulatorConfig(key=KEY, callback_retry_gap=60))
        await emulator.start()
        await post(session, emulator, f"?callback={hook}")
        while not emulator.log or not emulator.log[0].callback_attempts:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await emulator.stop()
        assert time.monotonic() - started < 5
    assert emulator.log[0].callback_attempts == [500]
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("callback ")]
    assert pending == []


# --------------------------------------------------------------------------- model_info


@pytest.mark.parametrize(
    ("params", "name", "arch"),
    [
        ([], "general-nova-3", "nova-3"),
        ([("model", "nova-3")], "general-nova-3", "nova-3"),
        ([("model", "nova-3-medical")], "medical-nova-3", "nova-3"),
        ([("model", "nova-2")], "general-nova-2", "nova-2"),
        ([("model", "nova-2-phonecall")], "phonecall-nova-2", "nova-2"),
        ([("model", "nova")], "general-nova", "nova"),
        ([("model", "enhanced-meeting")], "meeting-enhanced", "enhanced"),
        ([("model", "base")], "general-base", "base"),
        ([("model", "whisper")], "medium-whisper", "whisper"),
        ([("model", "whisper-large")], "large-whisper", "whisper"),
        ([("model", "my-custom-model")], "my-custom-model", "my-custom-model"),
    ],
)
def test_model_info_names_the_requested_model(
    params: list[tuple[str, str]], name: str, arch: str
) -> None:
    """model= decides model_info's name and arch; nova-3 when the request names none."""
    model_uuid, got_name, got_arch = model_info(params)
    assert (got_name, got_arch) == (name, arch)
    assert model_info(params)[0] == model_uuid  # stable per model


async def test_model_info_follows_the_request(session: aiohttp.ClientSession) -> None:
    """The uuid-keyed model_info of an answer is the requested model's, one per model."""
    async with emulator_with() as emulator:
        _, nova2, _ = await post(session, emulator, "?model=nova-2")
        _, nova3, _ = await post(session, emulator)
    meta = nova2["metadata"]
    [model_uuid] = meta["models"]
    assert meta["model_info"] == {
        model_uuid: {"name": "general-nova-2", "version": "2025-01-20.1", "arch": "nova-2"}
    }
    assert nova3["metadata"]["models"] != meta["models"]
    assert nova3["metadata"]["model_info"][nova3["metadata"]["models"][0]]["arch"] == "nova-3"


# --------------------------------------------------------------------------- multichannel


async def test_multichannel_answers_each_channel_of_a_wav(session: aiohttp.ClientSession) -> None:
    """multichannel=true on a stereo WAV gives two channels told apart by their transcripts,
    and utterances that name their channel."""
    sha = hashlib.sha256(STEREO).hexdigest()
    async with emulator_with() as emulator:
        _, body, _ = await post(session, emulator, "?multichannel=true&utterances=true", STEREO)
    assert body["metadata"]["channels"] == 2
    transcripts = [c["alternatives"][0]["transcript"] for c in body["results"]["channels"]]
    assert transcripts == [transcript_for(sha, len(STEREO)), transcript_for(sha, len(STEREO), 1)]
    assert transcripts[1].endswith("on channel 1")
    assert {u["channel"] for u in body["results"]["utterances"]} == {0, 1}


@pytest.mark.parametrize(
    ("query", "audio"),
    [("", STEREO), ("?multichannel=false", STEREO), ("?multichannel=true", WAV)],
)
async def test_one_channel_otherwise(
    session: aiohttp.ClientSession, query: str, audio: bytes
) -> None:
    """Without multichannel, or on mono audio, the answer has one channel."""
    async with emulator_with() as emulator:
        _, body, _ = await post(session, emulator, query, audio)
    assert body["metadata"]["channels"] == len(body["results"]["channels"]) == 1


def test_wav_channels_reads_the_header() -> None:
    """The fmt chunk's channel count; None for what is not a WAV or has no usable fmt."""
    assert wav_channels(make_wav(0.25, channels=3)[:64]) == 3
    assert wav_channels(WAV[:44]) == 1
    assert wav_channels(b"OggS" + bytes(60)) is None
    assert wav_channels(WAV[:22]) is None  # the fmt chunk is cut short


def test_multichannel_md_has_a_section_per_channel(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """dgbatch run --formats md --param multichannel=true on a stereo WAV writes one
    "## Channel N" section per channel, each with that channel's transcript."""
    source = tmp_path / "in" / "call.wav"
    source.parent.mkdir()
    source.write_bytes(STEREO)
    out = tmp_path / "out"
    result = dgbatch(
        "run", str(source), "--out", str(out), "--formats", "md", "--param", "multichannel=true"
    )
    assert result.exit_code == 0, result.output
    sections = (out / "call.md").read_text().split("## Channel ")
    assert [section.split("\n", 1)[0] for section in sections[1:]] == ["0", "1"]
    assert "on channel" not in sections[1] and "on channel 1." in sections[2]


# --------------------------------------------------------------------------- control endpoints


@pytest.mark.parametrize(
    ("host", "peer", "allowed"),
    [
        ("127.0.0.1", "192.0.2.7", True),  # listening on loopback: only loopback can reach it
        ("localhost", None, True),
        ("::1", "::1", True),
        ("0.0.0.0", "127.0.0.1", True),
        ("0.0.0.0", "127.8.9.10", True),
        ("0.0.0.0", "::1", True),
        ("::", "::ffff:127.0.0.1", True),
        ("0.0.0.0", "192.0.2.7", False),
        ("::", "2001:db8::1", False),
        ("192.0.2.2", "192.0.2.2", False),
        ("0.0.0.0", None, False),
        ("", "10.1.2.3", False),
        ("myhost", "fe80::1%eth0", False),
    ],
)
def test_control_allowed(host: str, peer: str | None, allowed: bool) -> None:
    """Control requests are served on a loopback emulator, elsewhere only to loopback peers."""
    assert control_allowed(host, peer) is allowed


async def control_status(host: str, peer: str) -> int:
    """The status of GET /_emulator/stats from ``peer`` to an emulator bound to ``host``,
    through its real routes (the emulator is not started: nothing is bound)."""
    app = Emulator(EmulatorConfig(host=host))._app()
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: {
        "peername": (peer, 40000),
        "sockname": (host, 8080),
    }.get(name, default)
    request = make_mocked_request("GET", "/_emulator/stats", app=app, transport=transport)
    match = await app.router.resolve(request)
    response = await match.handler(request)
    return response.status


@pytest.mark.parametrize(
    ("host", "peer", "status"),
    [("0.0.0.0", "198.51.100.4", 403), ("0.0.0.0", "127.0.0.1", 200), ("127.0.0.1", "::1", 200)],
)
async def test_control_routes_refuse_remote_peers(host: str, peer: str, status: int) -> None:
    """Bound beyond loopback, /_emulator answers 403 to a remote peer, 200 to a local one."""
    assert await control_status(host, peer) == status


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_control_endpoints_over_a_real_interface(session: aiohttp.ClientSession) -> None:
    """Bound to a non-loopback address, the emulator transcribes for its peers but answers
    403 to their control requests (the peer is that address, not loopback)."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    async with Emulator(EmulatorConfig(host=address, key=KEY)) as emulator:
        async with session.get(f"{emulator.url}/_emulator/log") as response:
            assert response.status == 403
        async with session.post(f"{emulator.url}/_emulator/auth?mode=401") as response:
            assert response.status == 403
        assert (await post(session, emulator))[0] == 200
    assert emulator.auth_mode == "ok" and len(emulator.log) == 1


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?keywords=Northwind:2", 400),  # nova-3, the default
        ("?model=nova-3-medical&keywords=Northwind:2", 400),
        ("?model=nova-2&keywords=Northwind:2", 200),
        ("?keyterm=Northwind", 200),
    ],
)
async def test_keywords_are_refused_with_nova3(
    session: aiohttp.ClientSession, query: str, status: int
) -> None:
    """Deepgram refuses ``keywords`` with Nova-3 models in a 400 of its own wording; an
    emulator answering 200 let a client that could not handle it pass its tests."""
    async with emulator_with() as emulator:
        got, answer, _ = await post(session, emulator, query)
    assert got == status
    if status == 400:
        assert answer["err_code"] == "INVALID_QUERY_PARAMETER"
        assert answer["err_msg"] == KEYWORDS_ON_NOVA3


@pytest.mark.parametrize(
    ("latency", "query", "status"),
    [(0.3, "", 504), (0.3, "?model=whisper-large", 504), (0.15, "?model=whisper-large", 200)],
)
async def test_processing_past_the_limit_is_a_504(
    session: aiohttp.ClientSession, latency: float, query: str, status: int
) -> None:
    """Deepgram cancels processing past 10 minutes (20 with Whisper) and answers 504; the
    emulator held any latency and answered 200, so no test met the real case: a slot held
    for the whole limit, then a 504."""
    async with emulator_with(latency=latency, max_processing=0.1) as emulator:
        started = time.monotonic()
        got, answer, _ = await post(session, emulator, query)
        took = time.monotonic() - started
    assert got == status
    if status == 504:
        assert answer["err_code"] == "GATEWAY_TIMEOUT"
        assert took < latency  # answered at the limit, not after the latency
