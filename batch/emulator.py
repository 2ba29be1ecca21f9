"""A Deepgram-compatible ``POST /v1/listen`` on loopback, for the demo, the tests and benchmarks.

The machines that build dgbatch have no internet, so everything that talks to Deepgram is
exercised against this server instead. It follows the shared notes on the Deepgram API
(``DEEPGRAM-API.md`` §1-3 and its §7 "Emulator checklist"): ``Token``/``Bearer`` auth, URL
submissions that the emulator fetches itself, streamed binary uploads checked by magic bytes,
responses of Deepgram's shape, and injectable faults (429 with or without ``Retry-After``, 5xx,
non-JSON gateway pages, connection resets, truncated and garbage bodies, a concurrency limit).

Every transcript is derived from the audio it answers (:func:`transcript_for`), and
``metadata.sha256`` is the real digest of the bytes received, so a test can prove that each
output belongs to its input.

Control endpoints (no auth: this is a loopback test tool, never expose it)::

    GET  /_emulator/log            JSON list of RequestRecord (asdict), oldest first
    GET  /_emulator/stats          {"requests": N, "in_flight": N, "in_flight_max": N}
    POST /_emulator/auth?mode=M    M in ok|401|402|403: every /v1/listen then answers that error
    POST /_emulator/reset          clear the log and the in-flight high-water mark

Management endpoints (``Token`` auth), answered from the request log so that usage
reconciliation can be tested end to end::

    GET  /v1/projects/{id}/requests?start=&end=&limit=&page=   newest first, paged
    GET  /v1/projects/{id}/usage?start=&end=&tag=              one bucket: hours, requests

Test knobs for transcript checks: a WAV whose samples are all zero gets an empty
transcript (as silence does on Deepgram), and ``duration_ratio`` scales every
``metadata.duration`` (e.g. 0.5 to simulate a transcript that covers half the audio).

The log keeps the raw ``Authorization`` header so tests can check how the key was sent; it is
served without auth, which is why the emulator must only ever listen on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from batch.sniff import sniff_container

__all__ = [
    "AUTH_MODES",
    "DEFAULT_FAULTS",
    "EXTRA_FAULTS",
    "MAX_UPLOAD_BYTES",
    "Emulator",
    "EmulatorConfig",
    "RequestRecord",
    "build_response",
    "estimate_duration",
    "looks_like_audio",
    "run_in_thread",
    "safe_url",
    "serve",
    "transcript_for",
    "wav_duration",
]

#: Faults drawn by default when ``fault_rate`` > 0.
DEFAULT_FAULTS: tuple[str, ...] = ("429", "500", "502", "503", "reset", "truncated", "garbage")
#: Further faults a config may name; not drawn unless listed in ``faults``.
EXTRA_FAULTS: tuple[str, ...] = ("408", "504")
#: Values ``Emulator.auth_mode`` accepts.
AUTH_MODES: tuple[str, ...] = ("ok", "401", "402", "403")
#: Deepgram's documented file-size limit; above it the emulator answers 413 (an inference).
MAX_UPLOAD_BYTES = 2 * 1024**3

_HEAD_BYTES = 4096  # enough for magic bytes and a WAV header with a LIST chunk before ``data``
_GUESS_BYTES_PER_SECOND = 16_000  # ~128 kbit/s, a plausible compressed bitrate
_DIARIZE_SPLIT = 2  # with diarize, speaker 0 says the first two words, speaker 1 the rest
_JSON = "application/json"
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
_MODEL_UUID = "4d892fb6-7df8-4b94-8e9a-6a2e4c5b0f31"
_MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-20.1", "arch": "nova-3"}
_ACCESSOR_UUID = "0c6e8a5e-51f4-4cb5-9a7e-6d1f2b3c4d5e"
_GARBAGE = b"\x00\x8b\xff<!-- not json -->\x89PNG\r\n\x1a\n\xfe"
_CORRUPT = "Bad Request: failed to process audio: corrupt or unsupported data"
_UNROUTABLE = "Could not determine if URL for audio download is publicly routable."
_REMOTE = "The remote server hosting the media"


@dataclass
class EmulatorConfig:
    """How the emulator behaves; every knob defaults to a well-behaved Deepgram.

    ``key`` None accepts any non-empty token. ``latency`` is the seconds a request takes
    from its arrival; the emulator's own work (reading an upload, fetching a URL) counts
    towards it. ``fault_rate`` is the probability that one
    ``/v1/listen`` request gets a fault drawn from ``faults``. ``max_concurrency`` answers 429 as
    soon as more requests than that are in flight. ``retry_after`` on 429: True always sends
    ``Retry-After: <retry_after_seconds>``, False never, None on a seeded coin flip, so clients
    must work both ways (Deepgram does not document the header). ``allow_private_urls`` False
    refuses loopback and private URLs like Deepgram does; tests leave it on to fetch from their
    own servers.
    """

    host: str = "127.0.0.1"
    port: int = 0
    key: str | None = None
    latency: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    max_concurrency: int | None = None
    retry_after: bool | None = None
    #: the ``Retry-After`` value in seconds (tests use a short one)
    retry_after_seconds: float = 1.0
    seed: int | None = None
    allow_private_urls: bool = True
    #: ``metadata.duration`` = the audio's real duration times this (< 1: a short transcript)
    duration_ratio: float = 1.0

    def __post_init__(self) -> None:
        """Fail at construction: a misspelt fault name would otherwise silently never fire."""
        unknown = sorted(set(self.faults) - set(DEFAULT_FAULTS) - set(EXTRA_FAULTS))
        if unknown:
            msg = f"'faults' has unknown names {unknown}; known: {DEFAULT_FAULTS + EXTRA_FAULTS}"
            raise ValueError(msg)
        if not 0.0 <= self.fault_rate <= 1.0:
            msg = "'fault_rate' must be between 0 and 1"
            raise ValueError(msg)
        if self.latency < 0:
            msg = "'latency' must be >= 0"
            raise ValueError(msg)
        if self.max_concurrency is not None and self.max_concurrency < 1:
            msg = "'max_concurrency' must be >= 1 (or None for no limit)"
            raise ValueError(msg)


@dataclass(slots=True)
class RequestRecord:
    """One ``/v1/listen`` request as the emulator saw it, faulted or not.

    ``mode`` is ``url`` for a JSON content type, ``upload`` otherwise, and ``invalid`` when the
    JSON could not be used. ``bytes_received`` and ``sha256`` describe the audio (uploaded or
    fetched), not the JSON. ``status`` is 0 when the emulator dropped the connection (fault
    ``reset``) and 499 when the client went away before its upload was complete.
    """

    request_id: str
    time: float
    mode: str
    url: str | None
    content_type: str
    content_length: int | None
    bytes_received: int
    sha256: str | None
    params: list[tuple[str, str]]
    status: int
    fault: str | None
    authorization: str
    #: seconds of audio transcribed (None when the request never got that far)
    duration: float | None = None


class _Reject(Exception):
    """Carries an error answer up to the handler, so each check is one line at its call site."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _err(code: str, message: str) -> dict[str, Any]:
    """Deepgram's usual error body (the request id is added when answering)."""
    return {"err_code": code, "err_msg": message}


_AUTH_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "401": (401, _err("INVALID_AUTH", "Invalid credentials.")),
    "402": (
        402,
        _err(
            "ASR_PAYMENT_REQUIRED",
            "Project does not have enough credits for an ASR request "
            "and does not have an overage agreement.",
        ),
    ),
    "403": (
        403,
        _err("INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."),
    ),
}
_TOO_MANY = _err("TOO_MANY_REQUESTS", "Too many requests. Please try again later")
_JSON_FAULTS: dict[str, tuple[int, dict[str, Any]]] = {
    "408": (408, _err("SLOW_UPLOAD", "Request upload timeout.")),
    "429": (429, _TOO_MANY),
    "500": (500, _err("INTERNAL_SERVER_ERROR", "Internal server error. Please try again later")),
    "503": (503, {"error_code": "Service Unavailable", "err_msg": "Please try again later"}),
}
_GATEWAY_FAULTS = {"502": "502 Bad Gateway", "504": "504 Gateway Time-out"}


def _gateway_page(title: str) -> bytes:
    """The HTML a load balancer sends, because Deepgram's gateway errors need not be JSON."""
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
    ).encode()


# --------------------------------------------------------------------------- pure helpers


def transcript_for(sha256_hex: str, size: int) -> str:
    """The transcript of ``size`` bytes whose digest is ``sha256_hex``, whatever the flags.

    Naming the digest and the size lets a test prove that an output belongs to its input.
    """
    return f"audio {sha256_hex[:16]} has {size} bytes"


def looks_like_audio(head: bytes) -> bool:
    """Whether the first bytes are a container Deepgram would auto-detect.

    The table is ``batch.sniff``'s, the one dgbatch checks local files with before sending.
    """
    return sniff_container(head) is not None


def wav_duration(head: bytes, size: int) -> float | None:
    """Seconds of audio in a WAV whose first bytes are ``head`` and total size is ``size``.

    Uses the data length from the header but never more than the bytes actually received, so a
    truncated file or a streaming header (size 0xFFFFFFFF) still gives a sane answer.
    """
    chunk = wav_data_chunk(head)
    if chunk is None:
        return None
    start, declared, byte_rate = chunk
    available = max(size - start, 0)
    return min(declared, available) / byte_rate if byte_rate else None


def wav_data_chunk(head: bytes) -> tuple[int, int, int] | None:
    """``(offset of the samples, their declared length, byte rate)`` of a WAV header."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        chunk_size = int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk_id == b"fmt " and pos + 20 <= len(head):
            byte_rate = int.from_bytes(head[pos + 16 : pos + 20], "little")
        elif chunk_id == b"data":
            return pos + 8, chunk_size, byte_rate
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def estimate_duration(head: bytes, size: int, params: Sequence[tuple[str, str]]) -> float:
    """A plausible ``metadata.duration``: exact for WAV and raw linear16, else a bitrate guess."""
    seconds = wav_duration(head, size)
    if seconds is None:
        seconds = size / _raw_byte_rate(dict(params))
    return round(seconds, 6)


def _raw_byte_rate(query: dict[str, str]) -> float:
    """Bytes per second of headerless audio, when ``encoding``/``sample_rate`` say what it is."""
    rate, channels = query.get("sample_rate", ""), query.get("channels", "1")
    if query.get("encoding") == "linear16" and rate.isdigit() and channels.isdigit():
        return max(int(rate) * 2 * int(channels), 1)
    return _GUESS_BYTES_PER_SECOND


def safe_url(url: str) -> str:
    """``scheme://host/path`` only: query strings may carry presigned-URL signatures."""
    try:
        parsed = URL(url)
        return str(parsed.with_query(None).with_fragment(None).with_user(None))
    except (ValueError, TypeError):
        return "<unparseable URL>"


def _fetchable(url: str) -> URL:
    """The URL to fetch, sent byte for byte when it is already encoded (signatures survive)."""
    encoded = all(33 <= ord(c) < 127 for c in url)
    try:
        parsed = URL(url, encoded=encoded)
    except (ValueError, TypeError) as exc:
        raise _Reject(400, _err("Bad Request", _UNROUTABLE)) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _Reject(400, _err("Bad Request", _UNROUTABLE))
    return parsed


def _url_from_json(raw: bytes) -> str:
    """The ``url`` of a JSON submission, refused with the bodies Deepgram documents."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        message = "Content-type was application/json, but we could not process the JSON payload."
        raise _Reject(400, _err("Bad Request", message)) from exc
    url = doc.get("url") if isinstance(doc, dict) else None
    if not isinstance(url, str) or not url:
        details = "Json deserialize error: missing field `url` at line 1 column 2"
        body = {
            "category": "INVALID_JSON",
            "message": "Invalid JSON submitted.",
            "details": details,
        }
        raise _Reject(400, body)
    return url


def _remote_status_error(status: int, reason: str | None) -> _Reject:
    """Deepgram's REMOTE_CONTENT_ERROR for a non-2xx answer from the media host."""
    kind = "a client error" if status < 500 else "a server error"
    if status < 400:
        kind = "a redirect that could not be followed"
    message = f"{_REMOTE} returned {kind}: {status} {reason or ''}".rstrip()
    return _Reject(400, _err("REMOTE_CONTENT_ERROR", message))


@dataclass(frozen=True, slots=True)
class _Options:
    """The query flags that change the response's shape (``smart_format`` implies the others)."""

    punctuate: bool
    paragraphs: bool
    diarize: bool
    utterances: bool

    @classmethod
    def parse(cls, params: Sequence[tuple[str, str]]) -> _Options:
        """Read booleans the way Deepgram does: lowercase ``true`` is on, anything else off."""
        on = {key for key, value in params if value.lower() == "true"}
        paragraphs = bool(on & {"paragraphs", "smart_format"})
        diarize = "diarize" in on or any(key == "diarize_model" for key, _ in params)
        return cls(
            punctuate=paragraphs or "punctuate" in on,
            paragraphs=paragraphs,
            diarize=diarize,
            utterances="utterances" in on,
        )


def build_response(
    *,
    request_id: str,
    sha256: str,
    size: int,
    duration: float,
    params: Sequence[tuple[str, str]],
    silent: bool = False,
) -> dict[str, Any]:
    """A 200 body of Deepgram's shape whose transcript, words and digest come from the audio;
    ``silent`` audio gets what Deepgram answers for silence: an empty transcript, no words."""
    opts = _Options.parse(params)
    transcript = "" if silent else transcript_for(sha256, size)
    turns = _turns(transcript.split(), duration, opts) if transcript else []
    alternative: dict[str, Any] = {
        "transcript": transcript,
        "confidence": 0.99,
        "words": [word for turn in turns for word in turn],
    }
    if opts.paragraphs:
        alternative["paragraphs"] = _paragraphs(turns, opts.diarize)
    results: dict[str, Any] = {"channels": [{"alternatives": [alternative]}]}
    if opts.utterances:
        results["utterances"] = [_utterance(turn, opts.diarize) for turn in turns]
    metadata = _metadata(request_id, sha256, duration, params)
    return {"metadata": metadata, "results": results}


def _turns(tokens: list[str], duration: float, opts: _Options) -> list[list[dict[str, Any]]]:
    """Words spread evenly over the audio, grouped by speaker turn (one turn without diarize)."""
    step = duration / len(tokens)
    split = _DIARIZE_SPLIT if opts.diarize else len(tokens)
    bounds = [(0, split), (split, len(tokens))] if opts.diarize else [(0, len(tokens))]
    turns: list[list[dict[str, Any]]] = []
    for speaker, (low, high) in enumerate(bounds):
        turn = [_word(tokens[i], i, step) for i in range(low, high)]
        if opts.diarize:
            for word in turn:
                word.update(speaker=speaker, speaker_confidence=0.9)
        if opts.punctuate:
            _punctuate(turn)
        turns.append(turn)
    return turns


def _word(token: str, index: int, step: float) -> dict[str, Any]:
    """One entry of ``words``: lowercase, unpunctuated, with increasing start and end."""
    start, end = round(index * step, 4), round((index + 0.9) * step, 4)
    return {"word": token, "start": start, "end": end, "confidence": 0.99}


def _punctuate(turn: list[dict[str, Any]]) -> None:
    """Each turn reads as one sentence, as punctuate/smart_format would render it."""
    for word in turn:
        word["punctuated_word"] = word["word"]
    turn[0]["punctuated_word"] = turn[0]["word"].capitalize()
    turn[-1]["punctuated_word"] += "."


def _text(turn: list[dict[str, Any]]) -> str:
    """The turn as displayed text, preferring punctuated words like caption renderers do."""
    return " ".join(word.get("punctuated_word", word["word"]) for word in turn)


def _paragraphs(turns: list[list[dict[str, Any]]], diarize: bool) -> dict[str, Any]:
    """``alternatives[].paragraphs``: one paragraph of one sentence per turn."""
    items: list[dict[str, Any]] = []
    lines: list[str] = []
    for turn in turns:
        start, end, text = turn[0]["start"], turn[-1]["end"], _text(turn)
        item: dict[str, Any] = {"sentences": [{"text": text, "start": start, "end": end}]}
        if diarize:
            item["speaker"] = turn[0]["speaker"]
        item.update(num_words=len(turn), start=start, end=end)
        items.append(item)
        lines.append(f"Speaker {turn[0]['speaker']}: {text}" if diarize else text)
    if not lines:
        return {"transcript": "", "paragraphs": []}
    return {"transcript": "\n" + "\n\n".join(lines), "paragraphs": items}


def _utterance(turn: list[dict[str, Any]], diarize: bool) -> dict[str, Any]:
    """One entry of ``results.utterances``."""
    utterance: dict[str, Any] = {
        "start": turn[0]["start"],
        "end": turn[-1]["end"],
        "confidence": 0.99,
        "channel": 0,
        "transcript": _text(turn),
        "words": turn,
    }
    if diarize:
        utterance["speaker"] = turn[0]["speaker"]
    utterance["id"] = str(uuid.uuid4())
    return utterance


def _metadata(
    request_id: str, sha256: str, duration: float, params: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """``metadata`` with the fields the spec marks required, plus echoed ``tag``/``extra``."""
    created = _iso_time(time.time())
    metadata: dict[str, Any] = {
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": created,
        "duration": duration,
        "channels": 1,
        "models": [_MODEL_UUID],
        "model_info": {_MODEL_UUID: dict(_MODEL_INFO)},
    }
    tags = [value for key, value in params if key == "tag"]
    if tags:
        metadata["tags"] = tags
    extra: dict[str, str] = {}
    for key, value in params:
        if key == "extra":
            name, _, text = value.partition(":")
            extra[name] = text
    if extra:
        metadata["extra"] = extra
    return metadata


class _Sink:
    """Hashes audio as it streams past and keeps only its head, so 1 GB costs no memory."""

    __slots__ = ("_hash", "head", "last_nonzero", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.head = b""
        self.size = 0
        #: offset of the last non-zero byte seen (-1: none), to recognise a silent WAV
        self.last_nonzero = -1

    def feed(self, chunk: bytes) -> None:
        """Account for the next piece of audio."""
        self._hash.update(chunk)
        kept = len(chunk.rstrip(b"\0"))
        if kept:
            self.last_nonzero = self.size + kept - 1
        self.size += len(chunk)
        if len(self.head) < _HEAD_BYTES:
            self.head += chunk[: _HEAD_BYTES - len(self.head)]

    def is_silent_wav(self) -> bool:
        """A WAV with samples, every one of them zero."""
        chunk = wav_data_chunk(self.head)
        return chunk is not None and self.size > chunk[0] and self.last_nonzero < chunk[0]

    def hexdigest(self) -> str:
        """The digest Deepgram reports as ``metadata.sha256``."""
        return self._hash.hexdigest()


def _token(header: str) -> str | None:
    """The credential of ``Token <k>`` or ``Bearer <k>``, schemes matched case-insensitively."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return None
    return token.strip() or None


# --------------------------------------------------------------------------- the server


class Emulator:
    """One emulator server; start it with :meth:`start` or ``async with``."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.log: list[RequestRecord] = []
        self._auth_mode = "ok"
        self._rng = random.Random(self.config.seed)
        self._in_flight = 0
        self._in_flight_max = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url = ""

    @property
    def url(self) -> str:
        """Base URL to give clients as their API URL, e.g. ``http://127.0.0.1:45123``."""
        if not self._url:
            msg = "the emulator is not started"
            raise RuntimeError(msg)
        return self._url

    @property
    def auth_mode(self) -> str:
        """``ok``, or the error every ``/v1/listen`` answers (a key revoked mid-run)."""
        return self._auth_mode

    @auth_mode.setter
    def auth_mode(self, mode: str) -> None:
        if mode not in AUTH_MODES:
            msg = f"'auth_mode' must be one of {AUTH_MODES}, not {mode!r}"
            raise ValueError(msg)
        self._auth_mode = mode

    def in_flight_max(self) -> int:
        """The most ``/v1/listen`` requests that were in flight at once (reset clears it)."""
        return self._in_flight_max

    def reset(self) -> None:
        """Start a fresh measurement; the list object is kept so references to it stay valid."""
        self.log.clear()
        self._in_flight_max = self._in_flight

    async def start(self) -> None:
        """Bind the socket (port 0 lets the OS pick) and open the session used for URL fetches."""
        if self._runner is not None:
            msg = "the emulator is already started"
            raise RuntimeError(msg)
        self._session = aiohttp.ClientSession(timeout=_FETCH_TIMEOUT)
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def stop(self) -> None:
        """Close the socket and the fetch session; safe to call twice or before start."""
        runner, self._runner = self._runner, None
        session, self._session = self._session, None
        if runner is not None:
            await runner.cleanup()
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _app(self) -> web.Application:
        """Routes; the control endpoints live under ``/_emulator`` so they never clash."""
        app = web.Application()
        app.router.add_post("/v1/listen", self._listen)
        app.router.add_get("/v1/auth/token", self._token_details)
        app.router.add_get("/v1/projects/{project}/requests", self._project_requests)
        app.router.add_get("/v1/projects/{project}/usage", self._project_usage)
        app.router.add_get("/_emulator/log", self._control_log)
        app.router.add_get("/_emulator/stats", self._control_stats)
        app.router.add_post("/_emulator/auth", self._control_auth)
        app.router.add_post("/_emulator/reset", self._control_reset)
        return app

    # ----------------------------------------------------------------------- /v1/listen

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        """Count the request as in flight for its whole life and log it however it ends."""
        record = _new_record(request)
        self._in_flight += 1
        self._in_flight_max = max(self._in_flight_max, self._in_flight)
        try:
            return await self._answer(request, record)
        finally:
            self._in_flight -= 1
            self.log.append(record)

    async def _answer(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        """Auth, then the concurrency limit (answered at once), then body, latency and faults."""
        arrived = time.monotonic()
        fault = None
        try:
            self._authorize(request.headers.get("Authorization", ""))
            self._admit(record)
            fault = self._draw_fault()
            response = await self._transcribe(request, record)
        except _Reject as reject:
            response = _reject_response(record, reject)
        if record.fault == "concurrency":
            return response
        if self.config.latency > 0:
            await asyncio.sleep(answer_delay(self.config.latency, time.monotonic() - arrived))
        if fault is None:
            return response
        return await self._inject(request, record, fault, response)

    def _authorize(self, header: str) -> None:
        """401 for a missing or wrong key; otherwise the runtime ``auth_mode`` decides."""
        token = _token(header)
        if token is None or (self.config.key is not None and token != self.config.key):
            raise _Reject(*_AUTH_ERRORS["401"])
        if self._auth_mode != "ok":
            raise _Reject(*_AUTH_ERRORS[self._auth_mode])

    def _admit(self, record: RequestRecord) -> None:
        """Deepgram limits concurrent requests per project; over the limit it answers 429."""
        limit = self.config.max_concurrency
        if limit is not None and self._in_flight > limit:
            record.fault = "concurrency"
            raise _Reject(429, _TOO_MANY, self._retry_after())

    def _draw_fault(self) -> str | None:
        """A fault for this request, from the seeded RNG so sequences are reproducible."""
        rate, faults = self.config.fault_rate, self.config.faults
        if rate <= 0 or not faults or self._rng.random() >= rate:
            return None
        return self._rng.choice(faults)

    def _retry_after(self) -> dict[str, str]:
        """``Retry-After`` is undocumented, so clients must cope with and without it."""
        send = self.config.retry_after
        if send is None:
            send = self._rng.random() < 0.5
        return {"Retry-After": f"{self.config.retry_after_seconds:g}"} if send else {}

    async def _transcribe(self, request: web.Request, record: RequestRecord) -> web.Response:
        """Receive the audio (uploaded or fetched), check it and answer Deepgram's 200 body."""
        if request.content_length is None:
            raise _Reject(411, _err("LENGTH_REQUIRED", "A Content-Length header is required."))
        if record.mode == "url":
            sink = await self._fetch_submitted(request, record)
        else:
            sink = await _receive(request, record)
        record.bytes_received, record.sha256 = sink.size, sink.hexdigest()
        if not sink.size or ("encoding" not in request.query and not looks_like_audio(sink.head)):
            raise _Reject(400, _err("Bad Request", _CORRUPT))
        duration = estimate_duration(sink.head, sink.size, record.params)
        record.duration = duration
        body = build_response(
            request_id=record.request_id,
            sha256=record.sha256,
            size=sink.size,
            duration=round(duration * self.config.duration_ratio, 6),
            params=record.params,
            silent=sink.is_silent_wav(),
        )
        return _respond(record, 200, json.dumps(body).encode(), _JSON)

    async def _fetch_submitted(self, request: web.Request, record: RequestRecord) -> _Sink:
        """Read ``{"url": ...}`` and fetch it, as Deepgram does for remote files."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _Reject(413, _err("PAYLOAD_TOO_LARGE", "JSON body too large.")) from exc
        try:
            record.url = _url_from_json(raw)
        except _Reject:
            record.mode = "invalid"
            raise
        target = _fetchable(record.url)
        if not self.config.allow_private_urls:
            await _require_public(target)
        return await self._fetch(target, record.url)

    async def _fetch(self, target: URL, url: str) -> _Sink:
        """GET the media; any failure becomes REMOTE_CONTENT_ERROR without the query string."""
        if self._session is None:
            msg = "the emulator is not started"
            raise RuntimeError(msg)
        try:
            async with self._session.get(target, max_redirects=10) as remote:
                if remote.status >= 300:
                    raise _remote_status_error(remote.status, remote.reason)
                return await _drain(remote.content.iter_any())
        except aiohttp.TooManyRedirects as exc:
            message = f"{_REMOTE} redirected too many times ({safe_url(url)})"
            raise _Reject(400, _err("REMOTE_CONTENT_ERROR", message)) from exc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            message = f"{_REMOTE} failed to return valid data ({safe_url(url)})"
            raise _Reject(400, _err("REMOTE_CONTENT_ERROR", message)) from exc

    # ----------------------------------------------------------------------- answers

    async def _inject(
        self, request: web.Request, record: RequestRecord, fault: str, normal: web.Response
    ) -> web.StreamResponse:
        """Replace the normal answer with the drawn fault."""
        record.fault = fault
        if fault == "reset":
            return _reset(request, record)
        if fault == "truncated":
            full = normal.body if isinstance(normal.body, bytes) else b"{}"
            return await _truncated(request, record, full)
        if fault == "garbage":
            return _respond(record, 200, _GARBAGE, _JSON)
        if fault in _GATEWAY_FAULTS:
            page = _gateway_page(_GATEWAY_FAULTS[fault])
            return _respond(record, int(fault), page, "text/html")
        status, body = _JSON_FAULTS[fault]
        headers = self._retry_after() if status == 429 else None
        return _reject_response(record, _Reject(status, body, headers))

    # ----------------------------------------------------------------------- other routes

    async def _token_details(self, request: web.Request) -> web.Response:
        """``GET /v1/auth/token``: lets a client check its key without paying for a request."""
        refused = self._management_auth(request)
        if refused is not None:
            return refused
        details = {
            "username": "dgbatch-emulator",
            "accessor": _ACCESSOR_UUID,
            "scopes": ["usage:write"],
            "expiration": None,
        }
        return web.json_response(details)

    def _management_auth(self, request: web.Request) -> web.Response | None:
        """The 401 a management call gets without a valid key, else None."""
        token = _token(request.headers.get("Authorization", ""))
        if token is not None and self.config.key in (None, token) and self._auth_mode != "401":
            return None
        status, body = _AUTH_ERRORS["401"]
        return web.json_response({**body, "request_id": str(uuid.uuid4())}, status=status)

    def _window(self, request: web.Request) -> list[RequestRecord]:
        """Logged requests between the ``start`` and ``end`` query values, newest first."""
        start = _parse_time(request.query.get("start"), 0.0)
        end = _parse_time(request.query.get("end"), float("inf"))
        chosen = [r for r in list(self.log) if start <= r.time <= end]
        return sorted(chosen, key=lambda r: r.time, reverse=True)

    async def _project_requests(self, request: web.Request) -> web.Response:
        """``GET /v1/projects/{id}/requests``: the request log, paged (``page`` from 0)."""
        refused = self._management_auth(request)
        if refused is not None:
            return refused
        limit = min(max(_int_query(request, "limit", 10), 1), 1000)
        page = max(_int_query(request, "page", 0), 0)
        project = request.match_info["project"]
        chosen = self._window(request)[page * limit : (page + 1) * limit]
        entries = [_log_entry(record, project) for record in chosen]
        return web.json_response({"page": page, "limit": limit, "requests": entries})

    async def _project_usage(self, request: web.Request) -> web.Response:
        """``GET /v1/projects/{id}/usage``: hours and requests processed, optionally by tag."""
        refused = self._management_auth(request)
        if refused is not None:
            return refused
        tags = set(request.query.getall("tag", []))
        processed = [
            r
            for r in self._window(request)
            if r.duration is not None and (not tags or tags & set(_tags_of(r)))
        ]
        hours = sum(r.duration or 0.0 for r in processed) / 3600
        bucket = {
            "start": request.query.get("start"),
            "end": request.query.get("end"),
            "hours": round(hours, 6),
            "total_hours": round(hours, 6),
            "requests": len(processed),
        }
        return web.json_response(
            {
                "start": bucket["start"],
                "end": bucket["end"],
                "resolution": {"units": "day", "amount": 1},
                "results": [bucket],
            }
        )

    async def _control_log(self, request: web.Request) -> web.Response:
        """The log for a test driving an emulator in another process."""
        return web.json_response([asdict(record) for record in list(self.log)])

    async def _control_stats(self, request: web.Request) -> web.Response:
        """Counters a benchmark can read without downloading the whole log."""
        stats = {
            "requests": len(self.log),
            "in_flight": self._in_flight,
            "in_flight_max": self._in_flight_max,
        }
        return web.json_response(stats)

    async def _control_auth(self, request: web.Request) -> web.Response:
        """Switch ``auth_mode`` to simulate a key revoked or out of credit mid-run."""
        mode = request.query.get("mode", "")
        if mode not in AUTH_MODES:
            return web.json_response({"error": f"mode must be one of {AUTH_MODES}"}, status=400)
        self.auth_mode = mode
        return web.json_response({"auth_mode": mode})

    async def _control_reset(self, request: web.Request) -> web.Response:
        """:meth:`reset` for a test driving an emulator in another process."""
        self.reset()
        return web.json_response({"ok": True})


def _respond(
    record: RequestRecord,
    status: int,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Every answer carries ``dg-request-id``, and its status goes into the log."""
    record.status = status
    response = web.Response(status=status, body=body, content_type=content_type)
    response.headers["dg-request-id"] = record.request_id
    if headers:
        response.headers.update(headers)
    return response


def _reject_response(record: RequestRecord, reject: _Reject) -> web.Response:
    """An error answer whose body names the request id, as Deepgram's do."""
    body = json.dumps({**reject.body, "request_id": record.request_id}).encode()
    return _respond(record, reject.status, body, _JSON, reject.headers)


def _parse_time(value: str | None, default: float) -> float:
    """Epoch seconds of ``YYYY-MM-DD`` or an ISO 8601 time (``Z`` for UTC); else ``default``."""
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return default
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _int_query(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        return default


def _tags_of(record: RequestRecord) -> list[str]:
    return [value for key, value in record.params if key == "tag"]


def _iso_time(epoch: float) -> str:
    """Deepgram's timestamps: UTC with milliseconds (``2026-11-27T19:37:05.123Z``)."""
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _log_entry(record: RequestRecord, project: str) -> dict[str, Any]:
    """One request as Deepgram's management API lists it. A request the emulator processed
    counts as a 200 even if a fault then spoiled the answer: Deepgram bills those too."""
    seconds = record.duration
    code = 200 if seconds is not None else record.status
    query = "&".join(f"{key}={value}" for key, value in record.params)
    created = _iso_time(record.time)
    details: dict[str, Any] = {
        "usd": round((seconds or 0.0) / 60 * 0.0043, 6),
        "duration": seconds or 0.0,
        "total_audio": seconds or 0.0,
        "channels": 1,
        "streams": 1,
        "method": "sync",
        "models": [_MODEL_UUID],
        "tags": _tags_of(record),
    }
    return {
        "request_id": record.request_id,
        "project_uuid": project,
        "created": created,
        "path": "/v1/listen" + (f"?{query}" if query else ""),
        "api_key_id": _ACCESSOR_UUID,
        "response": {"code": code, "completed": created, "details": details},
        "callback": None,
    }


def answer_delay(latency: float, worked: float) -> float:
    """How long to hold an answer: ``latency`` is the server's time per request, so the
    emulator's own work (fetching a URL, reading the audio) counts towards it, and a
    client at concurrency C can reach C/latency (while that work takes less), as against
    the real API."""
    return max(0.0, latency - worked)


def _new_record(request: web.Request) -> RequestRecord:
    """The log entry, filled in as the request is handled."""
    return RequestRecord(
        request_id=str(uuid.uuid4()),
        time=time.time(),
        mode="url" if request.content_type == _JSON else "upload",
        url=None,
        content_type=request.headers.get("Content-Type", ""),
        content_length=request.content_length,
        bytes_received=0,
        sha256=None,
        params=list(request.query.items()),
        status=0,
        fault=None,
        authorization=request.headers.get("Authorization", ""),
    )


async def _receive(request: web.Request, record: RequestRecord) -> _Sink:
    """Stream the upload through the hasher; nothing but its head stays in memory."""
    if (request.content_length or 0) > MAX_UPLOAD_BYTES:
        raise _Reject(413, _err("PAYLOAD_TOO_LARGE", "Payload too large: the limit is 2 GB."))
    sink = _Sink()
    try:
        async for chunk in request.content.iter_any():
            sink.feed(chunk)
    except (ConnectionError, HttpProcessingError) as exc:
        record.bytes_received = sink.size
        message = "The client closed the connection before the upload finished."
        raise _Reject(499, _err("CLIENT_CLOSED_REQUEST", message)) from exc
    return sink


async def _drain(chunks: AsyncIterator[bytes]) -> _Sink:
    """Hash fetched media as it arrives, refusing more than Deepgram's file-size limit."""
    sink = _Sink()
    async for chunk in chunks:
        sink.feed(chunk)
        if sink.size > MAX_UPLOAD_BYTES:
            raise _Reject(413, _err("PAYLOAD_TOO_LARGE", "Remote media larger than 2 GB."))
    return sink


async def _require_public(target: URL) -> None:
    """Refuse loopback and private hosts, as Deepgram's fetcher does."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    except (OSError, ValueError) as exc:
        raise _Reject(400, _err("Bad Request", _UNROUTABLE)) from exc
    if not addresses or not all(address.is_global for address in addresses):
        message = "URL for media download must be publicly routable."
        raise _Reject(400, _err("REMOTE_CONTENT_ERROR", message))


async def _truncated(
    request: web.Request, record: RequestRecord, full: bytes
) -> web.StreamResponse:
    """Valid 200 headers promising the whole body, half of it, then a closed connection."""
    record.status = 200
    response = web.StreamResponse(status=200, headers={"dg-request-id": record.request_id})
    response.content_type = _JSON
    response.content_length = len(full)
    with suppress(ConnectionError):
        await response.prepare(request)
        await response.write(full[: len(full) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _reset(request: web.Request, record: RequestRecord) -> web.Response:
    """Drop the connection without an answer; aiohttp discards the response it cannot send."""
    record.status = 0
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


# --------------------------------------------------------------------------- running it


@contextmanager
def run_in_thread(config: EmulatorConfig) -> Iterator[Emulator]:
    """Start the emulator in a background thread with its own event loop; yield it; stop on exit.

    For sync tests and benchmarks whose client runs on the main thread's loop: the emulator then
    never competes with the client for the same loop. ``log`` is safe to read from the caller.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dgbatch-emulator", daemon=True)
    thread.start()
    emulator = Emulator(config)
    try:
        asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(timeout=30)
        yield emulator
    finally:
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def serve(config: EmulatorConfig) -> None:
    """Blocking: run until SIGINT/SIGTERM, then return normally so the CLI can exit 0.

    Prints exactly one line, ``dgbatch emulator listening on http://HOST:PORT``, flushed, so a
    script that started it with ``--port 0`` can read the port.
    """
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(config))


async def _serve_until_signal(config: EmulatorConfig) -> None:
    """The async body of :func:`serve`; signals only set an event so shutdown is one path."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stopping.set)
    async with Emulator(config) as emulator:
        print(f"dgbatch emulator listening on {emulator.url}", flush=True)
        await stopping.wait()
