"""One Deepgram ``/v1/listen`` request: a URL as JSON, or audio streamed as the body.

This is the only module that talks HTTP to Deepgram. aiohttp and asyncio errors are
translated here, once, into ``TransportError`` so that the runner and the retry
policy never see a third-party exception.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from yarl import URL

from batch import __version__
from batch.models import Params
from batch.params import encode_query
from batch.proxies import proxy_for, refused_by
from batch.redact import redact_text
from batch.transcripts import request_id_of

CHUNK_SIZE = 1 << 20
#: Deepgram cancels processing after 10 minutes (20 for Whisper) and answers 504;
#: a client timeout shorter than that would give up on work Deepgram still bills, and
#: retry it (paid twice). Before processing, Deepgram downloads a URL item and a request
#: may wait in its queue: 10 more minutes over Whisper's 20 cover both.
DEFAULT_TIMEOUT = 30 * 60.0
#: the slowest upload rate we accept before calling a connection stalled (bytes/s)
MIN_UPLOAD_RATE = 256 * 1024
CONNECT_TIMEOUT = 30.0
#: an upload that takes no new chunk for this long is stalled (a dead peer or path);
#: only the upload is watched: Deepgram may legitimately think for minutes afterwards
STALL_TIMEOUT = 60.0
#: most of an error answer read (only its first 4 KB or 1,000 characters are quoted): a
#: gateway streaming an endless error page must not fill memory until the timeout
ERROR_BODY_LIMIT = 64 * 1024
#: most of a 200 read: a day of audio transcribed with every option is a few hundred MB;
#: a longer body is cut there, so it is not a transcript (retried, as any such 200)
ANSWER_BODY_LIMIT = 1 << 30


class TransportError(Exception):
    """The request got no complete HTTP answer (refused, reset, timed out, truncated)."""

    def __init__(
        self,
        message: str,
        *,
        body_sent: bool,
        timeout: bool,
        connect_failed: bool = False,
        reached: bool = True,
    ) -> None:
        super().__init__(message)
        #: the whole request body had been sent: Deepgram may have processed (and billed) it
        self.body_sent = body_sent
        self.timeout = timeout
        #: no connection at all (refused, DNS, TLS): every item would fail the same way
        self.connect_failed = connect_failed
        #: a request reached Deepgram (not so when no connection was made, or the audio
        #: could not be read from S3 first): only those count as the item's attempts
        self.reached = reached and not connect_failed
        #: the answer whose body was cut short (its status and headers came): a 200 then
        #: was processed, and billed
        self.partial: Answer | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer from Deepgram."""

    status: int
    body: bytes
    retry_after: str | None
    request_id: str | None
    #: where a redirect points (never followed)
    location: str | None = None
    #: the body was longer than its limit and was cut there (``_read_body``)
    truncated: bool = False


@functools.lru_cache(maxsize=256)
def request_timeout(size: int | None, base: float = DEFAULT_TIMEOUT) -> aiohttp.ClientTimeout:
    """A total timeout that grows with the upload: ``base`` plus the time to send ``size``
    bytes at ``MIN_UPLOAD_RATE``, so a 1 GB upload is not cut at a fixed limit. Cached
    (timeouts are immutable): every URL item of a run gets the same one."""
    upload_time = (size or 0) / MIN_UPLOAD_RATE
    return aiohttp.ClientTimeout(
        total=base + upload_time, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
    )


#: what every request of dgbatch says it is, to the API and to the management endpoints
USER_AGENT = f"dgbatch/{__version__}"


def make_session(
    concurrency: int, api_url: str, *, user_agent: str = USER_AGENT
) -> aiohttp.ClientSession:
    """One session per run, its pool sized to the concurrency (no per-request setup)."""
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    return api_session(api_url, connector=connector, user_agent=user_agent)


def api_session(
    api_url: str,
    *,
    connector: aiohttp.BaseConnector | None = None,
    user_agent: str = USER_AGENT,
) -> aiohttp.ClientSession:
    """A session to Deepgram, through the proxy the environment names for it, if any
    (then traced: see ``_Wire``)."""
    proxy = proxy_for(api_url)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": user_agent},
        auto_decompress=True,
        timeout=aiohttp.ClientTimeout(total=None),
        proxy=proxy,
        trace_configs=[_WIRE_TRACE] if proxy is not None else None,
    )


class _Wire:
    """Whether a proxied request's headers went out: a proxy that drops or garbles the
    tunnel (a SOCKS port named as an http proxy) fails it before, and aiohttp then raises
    what a dropped request raises, so every item burned its retries as "attempts"."""

    __slots__ = ("headers_sent", "proxy")

    def __init__(self, proxy: URL) -> None:
        self.proxy = proxy
        self.headers_sent = False


async def _on_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    if isinstance(context.trace_request_ctx, _Wire):
        context.trace_request_ctx.headers_sent = True


_WIRE_TRACE = aiohttp.TraceConfig()
_WIRE_TRACE.on_request_headers_sent.append(_on_headers_sent)
_WIRE_TRACE.freeze()


def _cut_short(resp: aiohttp.ClientResponse) -> Answer:
    """The answer whose body a dropped connection cut short: its status and headers."""
    headers = resp.headers
    request_id = request_id_of(headers.get("dg-request-id"))
    return Answer(resp.status, b"", headers.get("Retry-After"), request_id, None, True)


class DeepgramClient:
    """Sends single requests; knows nothing about retries, state or outputs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self._session = session
        self._endpoint = api_url.rstrip("/") + "/v1/listen"
        self._auth = f"Token {api_key}"
        self._secrets = (api_key,)
        #: the proxy, if any: each request through it is traced (``_Wire``)
        self._proxy = proxy_for(api_url)
        self._timeout = timeout
        self._stall_timeout = stall_timeout
        #: per task whose request was abandoned (cancelled) while out: whether Deepgram
        #: may have had its whole body (then it may be billed); the runner takes it
        self.abandoned: dict[asyncio.Task[Any], bool] = {}

    async def send_url(self, url: str, params: Params) -> Answer:
        """Ask Deepgram to fetch ``url`` itself."""
        body = json.dumps({"url": url}).encode()
        headers = {"Content-Type": "application/json", "Authorization": self._auth}
        return await self._post(params, body, headers, len(body), lambda: None)

    async def send_stream(
        self,
        chunks: AsyncIterator[bytes],
        length: int,
        content_type: str,
        params: Params,
    ) -> Answer:
        """Stream ``length`` bytes as the body, with an explicit Content-Length
        (Deepgram lists 411 Length Required; aiohttp would otherwise send chunked).

        The upload is watched for stalls: if aiohttp takes no new chunk for
        ``stall_timeout`` seconds the request fails as a retryable timeout. Once the
        body is out, only the total timeout applies, since Deepgram may take minutes.
        """
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(length),
            "Authorization": self._auth,
        }
        sent: _SentTracker | None = None
        try:
            async with asyncio.timeout(None) as watchdog:
                sent = _SentTracker(chunks, length, watchdog, self._stall_timeout)
                return await self._post(params, sent.iterate(), headers, length, sent.finished)
        except TimeoutError as exc:  # only the watchdog's: _post translates its own
            if (task := asyncio.current_task()) is not None:
                self.abandoned.pop(task, None)  # its cancel was the watchdog's, not a stop's
            if sent is not None and sent.reading:  # the audio's source, not the connection
                stalled = f"reading the audio stalled (no data for {self._stall_timeout:g} s)"
                raise self._source_failed(TimeoutError(stalled)) from exc
            raise self._stalled() from exc
        except TransportError as exc:
            if sent is None or sent.source_error is None:
                raise
            raise self._source_failed(sent.source_error) from exc

    def _source_failed(self, exc: Exception) -> TransportError:
        """The audio's own source failed mid-upload (an S3 read, a file cut short), which
        aiohttp reports as a broken connection to Deepgram: said as what it was, and no
        attempt (Deepgram never had the whole request)."""
        text = redact_text(str(exc) or type(exc).__name__, self._secrets)
        return TransportError(text, body_sent=False, timeout=False, reached=False)

    def redacted(self, text: str) -> str:
        """``text`` from an answer (an error body's code or message) without the key this
        client sends: a proxy in front of Deepgram may echo the request it refused."""
        return redact_text(text, self._secrets)

    def _stalled(self) -> TransportError:
        text = f"timeout: upload stalled (no progress for {self._stall_timeout:g} s)"
        return TransportError(text, body_sent=False, timeout=True)

    async def _post(
        self,
        params: Params,
        data: bytes | AsyncIterator[bytes],
        headers: dict[str, str],
        size: int,
        body_sent: Callable[[], bool | None],
    ) -> Answer:
        url = f"{self._endpoint}?{encode_query(params)}" if params else self._endpoint
        answered: aiohttp.ClientResponse | None = None
        wire = _Wire(self._proxy) if self._proxy is not None else None
        try:
            async with self._session.post(
                url,
                data=data,
                headers=headers,
                timeout=request_timeout(size, self._timeout),
                allow_redirects=False,  # a redirect is reported, never followed (Action)
                trace_request_ctx=wire,
            ) as resp:
                if resp.status == 407 and self._proxy is not None:  # plain http through it
                    reason = f"HTTP 407 {resp.reason or ''}".strip()
                    raise self._proxy_refused(self._proxy, reason)
                answered = resp  # an answer began: Deepgram had the whole body
                body, truncated = await _read_body(resp)
                return Answer(
                    resp.status,
                    body,
                    resp.headers.get("Retry-After"),
                    request_id_of(resp.headers.get("dg-request-id")),
                    resp.headers.get("Location"),
                    truncated,
                )
        except asyncio.CancelledError:  # abandoned (a second signal, --grace over)
            if (task := asyncio.current_task()) is not None:
                sent = answered is not None or body_sent()
                self.abandoned[task] = sent is None or sent
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if wire is not None and not (wire.headers_sent or isinstance(exc, _NO_REQUEST)):
                raise self._proxy_refused(wire.proxy, transport_reason(exc)) from exc
            sent = answered is not None or body_sent()
            error = self._translate(exc, sent is None or sent)
            if answered is not None:
                error.partial = _cut_short(answered)
            raise error from exc

    def _proxy_refused(self, proxy: URL, reason: str) -> TransportError:
        """Nothing reached Deepgram: the proxy would not carry the request (it refused,
        dropped or garbled the tunnel). Every item would meet it: the run stops, the
        items pending."""
        text = redact_text(refused_by(proxy, reason), self._secrets)
        return TransportError(text, body_sent=False, timeout=False, connect_failed=True)

    def _translate(self, exc: BaseException, body_sent: bool) -> TransportError:
        return TransportError(
            redact_text(transport_reason(exc), self._secrets),
            body_sent=body_sent,
            timeout=isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError),
            connect_failed=no_connection(exc),
            reached=not isinstance(exc, _NO_REQUEST),
        )


def transport_reason(exc: BaseException) -> str:
    """Why a request got no answer, in words (``cannot connect to h:443: connection
    refused``), not in aiohttp's (``Connect call failed ('127.0.0.1', 1)``)."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout: no complete answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        which = "the proxy " if isinstance(exc, aiohttp.ClientProxyConnectionError) else ""
        reason = _os_reason(exc.os_error).lower()
        return f"cannot connect to {which}{exc.host}:{exc.port}: {reason}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # no tunnel: Deepgram saw nothing
        proxy, refused = exc.request_info.real_url, f"HTTP {exc.status} {exc.message}"
        return f"the proxy {proxy.host}:{proxy.port} would not connect ({refused})"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return f"connection dropped before a complete answer ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientResponseError):  # its text names the URL it asked:
        said = f"{exc.status}, {exc.message}"  # a proxy's, with the proxy's password
        return f"connection failed ({type(exc).__name__}: {said})"
    # a reset, a broken status line: what aiohttp said, after what it was
    return f"connection failed ({type(exc).__name__}: {exc})".replace(": )", ")")


#: a connection the peer began and then dropped (a server shedding load): that peer is up
_DROPPED = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})


#: failures before any request went out: no connection, or a proxy that would not tunnel
_NO_REQUEST = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ClientHttpProxyError,
)


def no_connection(exc: BaseException) -> bool:
    """No connection could be made at all (refused, DNS, TLS, no route, a proxy refusing
    the tunnel): every item would fail the same way, so the run stops rather than failing
    them all."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return True
    if not isinstance(exc, aiohttp.ClientConnectorError):
        return False
    return exc.os_error.errno not in _DROPPED


async def _read_body(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The answer's body, at most ``ERROR_BODY_LIMIT`` bytes of an error's and
    ``ANSWER_BODY_LIMIT`` of a 200's (the rest is left unread; the connection is closed),
    and whether it was cut there."""
    limit = ANSWER_BODY_LIMIT if resp.status == 200 else ERROR_BODY_LIMIT
    if resp.content_length is not None and resp.content_length <= limit:
        return await resp.read(), False  # the common case, aiohttp's own fast path
    data = bytearray()
    while len(data) <= limit:
        chunk = await resp.content.read(limit + 1 - len(data))
        if not chunk:
            return bytes(data), False
        data += chunk
    return bytes(data[:limit]), True


def _os_reason(exc: OSError) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed (...)``; a DNS
    failure in its own words (``os.strerror`` of getaddrinfo's -2 is "Unknown error -2")."""
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):  # errno 1 reads "operation not permitted"
        return f"TLS certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):  # a plain-http port, a proxy inspecting TLS
        return f"TLS error: {str(exc.reason or exc).replace('_', ' ').lower()}"
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


class _SentTracker:
    """Wraps a body iterator to know whether all of it went out before a failure, and
    pushes the stall watchdog back each time aiohttp takes another chunk.

    The body counts as sent once its last byte is handed to aiohttp: the server may
    answer (or drop the line) before aiohttp asks the iterator for more and learns that
    it has ended, and Deepgram, with the whole body, may have processed it."""

    def __init__(
        self, chunks: AsyncIterator[bytes], length: int, watchdog: asyncio.Timeout, stall: float
    ) -> None:
        self._chunks = chunks
        self._left = length
        self._watchdog = watchdog
        self._stall = stall
        self._done = False
        #: what the chunks raised (the audio's source failed, not the connection)
        self.source_error: Exception | None = None
        #: the source is being read (its stall is not the connection's)
        self.reading = False

    async def iterate(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while (chunk := await self._next_chunk()) is not None:
            self._watchdog.reschedule(loop.time() + self._stall)
            self._left -= len(chunk)
            self._done = self._left <= 0
            yield chunk
            if self._done:  # all it promised: a source slow to say it has ended (an S3
                break  # read past the last byte) must not fail a request Deepgram has whole
        self._watchdog.reschedule(None)
        self._done = True

    async def _next_chunk(self) -> bytes | None:
        """The source's next chunk, None at its end; ``reading`` while it is awaited, so
        a stall there is told from one of the connection (aiohttp not taking chunks)."""
        self.reading = True
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except Exception as exc:
            self.source_error = exc
            raise
        finally:
            self.reading = False

    def finished(self) -> bool:
        return self._done
