"""URL submissions: the JSON that names the media, the checks on its URL, reading the media.

Deepgram fetches a submitted ``{"url": ...}`` itself, and so does the emulator, refusing what
Deepgram refuses (an unusable URL, a private host, a non-2xx answer, more than the file-size
limit) with the bodies Deepgram sends. Messages name the URL through :func:`safe_url` only: a
query string may carry a presigned URL's signature.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from batch.emulator.audio import _Sink
from batch.emulator.config import MAX_UPLOAD_BYTES
from batch.emulator.faults import _err, _Reject

_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
_UNROUTABLE = "Could not determine if URL for audio download is publicly routable."
_REMOTE = "The remote server hosting the media"


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
