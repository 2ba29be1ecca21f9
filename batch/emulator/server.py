"""The emulator's server: its routes, and the life of a ``/v1/listen`` request.

A request is authorised, admitted under the concurrency limit, its audio received or fetched
and checked, and its answer held for the configured latency; a drawn fault then replaces the
answer. In callback mode the answer is ``{"request_id"}`` at once and the transcript is
delivered later (:mod:`~batch.emulator.callbacks`). Every request is logged, however it ends.

The management routes come from :class:`~batch.emulator.management.ManagementApi`, the
``/_emulator`` control routes from :class:`~batch.emulator.control.ControlApi`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from batch.emulator.audio import _Sink, estimate_duration, looks_like_audio, wav_channels
from batch.emulator.callbacks import Deliveries, callback_target
from batch.emulator.config import (
    AUTH_MODES,
    DEEPGRAM_CONCURRENCY,
    MAX_UPLOAD_BYTES,
    EmulatorConfig,
    RequestRecord,
)
from batch.emulator.control import ControlApi
from batch.emulator.faults import (
    _AUTH_ERRORS,
    _GARBAGE,
    _GATEWAY_FAULTS,
    _JSON,
    _JSON_FAULTS,
    _TOO_MANY,
    _err,
    _gateway_page,
    _Reject,
    _reject_response,
    _reset,
    _respond,
    _token,
    _truncated,
)
from batch.emulator.fetch import (
    _FETCH_TIMEOUT,
    _REMOTE,
    _drain,
    _fetchable,
    _remote_status_error,
    _require_public,
    _url_from_json,
    safe_url,
)
from batch.emulator.management import ManagementApi
from batch.emulator.responses import build_response, model_info
from batch.params import FEATURE_CONCURRENCY, limited_features

_CORRUPT = "Bad Request: failed to process audio: corrupt or unsupported data"


class Emulator(ManagementApi, ControlApi):
    """One emulator server; start it with :meth:`start` or ``async with``."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.log: list[RequestRecord] = []
        self._auth_mode = "ok"
        self._rng = random.Random(self.config.seed)
        self._in_flight = 0
        self._in_flight_max = 0
        #: requests in flight per feature of a lower limit (also counted in ``_in_flight``)
        self._feature_in_flight: Counter[str] = Counter()
        self._callbacks = Deliveries(self.config.callback_retry_gap)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url = ""
        #: forbidden models by the name ``model_info`` gives (``whisper`` is
        #: ``medium-whisper``): a model is refused however a request names it
        self._forbidden = frozenset(
            model_info((("model", m),))[1] for m in self.config.forbidden_models
        )

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

    async def callbacks_settled(self) -> None:
        """Wait until every callback delivery started so far has succeeded or given up."""
        await self._callbacks.wait()

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
        """Close the socket, cancel pending callback deliveries (once no handler can start
        another) and close the session; safe to call twice or before start."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._callbacks.cancel()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _app(self) -> web.Application:
        """Deepgram's routes, then the control endpoints."""
        app = web.Application()
        app.router.add_post("/v1/listen", self._listen)
        app.router.add_get("/v1/auth/token", self._token_details)
        app.router.add_get("/v1/projects/{project}/requests", self._project_requests)
        app.router.add_get("/v1/projects/{project}/usage", self._project_usage)
        self._add_control_routes(app)
        return app

    # ----------------------------------------------------------------------- /v1/listen

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        """Count the request as in flight for its whole life and log it however it ends."""
        record = _new_record(request)
        limited = limited_features(request.query.items())
        self._in_flight += 1
        for feature in limited:
            self._feature_in_flight[feature] += 1
        self._in_flight_max = max(self._in_flight_max, self._in_flight)
        try:
            return await self._answer(request, record, limited)
        finally:
            self._in_flight -= 1
            for feature in limited:
                self._feature_in_flight[feature] -= 1
            self.log.append(record)

    async def _answer(
        self, request: web.Request, record: RequestRecord, limited: tuple[str, ...]
    ) -> web.StreamResponse:
        """Auth, then the concurrency limit (answered at once), then body, latency and faults.
        A callback request is answered without the latency: that is its processing time,
        spent before the delivery instead."""
        arrived = time.monotonic()
        fault = None
        try:
            self._authorize(request.headers.get("Authorization", ""))
            self._check_model(record)
            _check_params(record)
            self._admit(record, limited)
            fault = self._draw_fault()
            response = await self._transcribe(request, record, arrived)
        except _Reject as reject:
            response = _reject_response(record, reject)
        if record.fault == "concurrency":
            return response
        if self.config.latency > 0 and record.callback is None:
            limit = self._processing_limit(record)
            held = min(self.config.latency, limit)
            await asyncio.sleep(answer_delay(held, time.monotonic() - arrived))
            if self.config.latency > limit and response.status == 200:
                return _reject_response(record, _Reject(504, _PROCESSING_TOO_LONG))
        if fault is None:
            return response
        return await self._inject(request, record, fault, response)

    def _processing_limit(self, record: RequestRecord) -> float:
        """Deepgram cancels processing past 10 minutes, 20 with Whisper (``max_processing``
        and twice it)."""
        whisper = model_info(record.params)[2] == "whisper"
        return self.config.max_processing * (2 if whisper else 1)

    def _authorize(self, header: str) -> None:
        """401 for a missing or wrong key; otherwise the runtime ``auth_mode`` decides."""
        token = _token(header)
        if token is None or (self.config.key is not None and token != self.config.key):
            raise _Reject(*_AUTH_ERRORS["401"])
        if self._auth_mode != "ok":
            raise _Reject(*_AUTH_ERRORS[self._auth_mode])

    def _check_model(self, record: RequestRecord) -> None:
        """Deepgram answers 403 to a request for a model the project may not use."""
        if self._forbidden and model_info(record.params)[1] in self._forbidden:
            raise _Reject(*_AUTH_ERRORS["403"])

    def _admit(self, record: RequestRecord, limited: tuple[str, ...]) -> None:
        """Deepgram limits concurrent requests per project; over the limit it answers 429.
        A request with features of lower limits (Whisper 5; sentiment, intents, topics and
        summarize 10; entities 5) is held to the lowest of them.
        ``max_concurrency`` replaces all these limits for every request."""
        limit = self.config.max_concurrency
        if limit is not None:
            over = self._in_flight > limit
        else:
            over = self._in_flight > DEEPGRAM_CONCURRENCY or any(
                self._feature_in_flight[feature] > FEATURE_CONCURRENCY[feature]
                for feature in limited
            )
        if over:
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

    async def _transcribe(
        self, request: web.Request, record: RequestRecord, arrived: float
    ) -> web.Response:
        """Receive the audio (uploaded or fetched), check it and answer Deepgram's 200 body,
        or in callback mode ``{"request_id"}`` while the body is delivered later."""
        if request.content_length is None:
            raise _Reject(411, _err("LENGTH_REQUIRED", "A Content-Length header is required."))
        callback = self._callback(request, record)
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
            channels=_channels(request, sink),
        )
        if callback is None:
            return _respond(record, 200, json.dumps(body).encode(), _JSON)
        delay = answer_delay(self.config.latency, time.monotonic() - arrived)
        session = self._started_session()
        self._callbacks.start(session, record, callback, json.dumps(body).encode(), delay)
        return _respond(record, 200, json.dumps({"request_id": record.request_id}).encode(), _JSON)

    def _callback(self, request: web.Request, record: RequestRecord) -> tuple[URL, str] | None:
        """Callback mode's receiver and method, checked before the audio is read; None
        without ``callback=`` (one lookup, the only cost to other requests)."""
        url = request.query.get("callback")
        if url is None:
            return None
        record.callback = safe_url(url)
        method = request.query.get("callback_method")
        return callback_target(url, method, self.config.callback_ports_only)

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

    def _started_session(self) -> aiohttp.ClientSession:
        """The session for URL fetches and callback deliveries, which exists while started."""
        if self._session is None:
            msg = "the emulator is not started"
            raise RuntimeError(msg)
        return self._session

    async def _fetch(self, target: URL, url: str) -> _Sink:
        """GET the media; any failure becomes REMOTE_CONTENT_ERROR without the query string."""
        try:
            async with self._started_session().get(target, max_redirects=10) as remote:
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


def _channels(request: web.Request, sink: _Sink) -> int:
    """With ``multichannel=true``, as many channels as a WAV header declares; else one (the
    emulator cannot count the channels of other containers)."""
    if request.query.get("multichannel", "").lower() != "true":
        return 1
    return wav_channels(sink.head) or 1


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


#: Deepgram's answer to ``keywords`` with a Nova-3 model, as the real API words it
#: (capitalised: a client that looks for the parameter's name must not match by case)
KEYWORDS_ON_NOVA3 = "Keywords are not supported for Nova-3. Please use `keyterm` instead."


def _check_params(record: RequestRecord) -> None:
    """Deepgram refuses some parameters with some models before it reads the audio."""
    if model_info(record.params)[2] == "nova-3" and any(k == "keywords" for k, _ in record.params):
        raise _Reject(400, _err("INVALID_QUERY_PARAMETER", KEYWORDS_ON_NOVA3))


#: the 504 of a request Deepgram cancelled for taking too long to process
_PROCESSING_TOO_LONG = _err(
    "GATEWAY_TIMEOUT", "Processing exceeded the maximum time; the request was cancelled."
)
