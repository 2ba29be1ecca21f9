"""Callback mode: ``callback=<url>`` answers ``{"request_id"}`` at once, the transcript comes later.

Deepgram (``DEEPGRAM-API.md`` §4) POSTs, or PUTs with ``callback_method=put``, the normal
response body to the callback URL once processing is done, with a ``dg-token`` header naming
the submitting key's identifier, and retries a receiver that fails up to 10 times, 30 s apart.
The emulator does the same from background tasks, so a client's callback receiver can be
tested; each attempt's status is recorded on the request's :class:`RequestRecord`.

The ``dg-token`` is the emulator's fixed key identifier (the ``accessor`` of
``GET /v1/auth/token``), never the key the client sent: a receiver must not learn the key.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from batch.emulator.config import RequestRecord
from batch.emulator.faults import _JSON, _err, _Reject
from batch.emulator.fetch import _fetchable
from batch.emulator.management import _ACCESSOR_UUID

#: further attempts after the first, for a receiver that fails
CALLBACK_RETRIES = 10
#: the only ports Deepgram delivers callbacks to (checked when ``callback_ports_only``)
CALLBACK_PORTS = frozenset({80, 443, 8080, 8443})
_METHODS = ("POST", "PUT")
_DELIVERY_TIMEOUT = aiohttp.ClientTimeout(total=60)


def callback_target(url: str, method: str | None, ports_only: bool) -> tuple[URL, str]:
    """The receiver and HTTP method of a callback request, refused with Deepgram's 400 before
    any audio is read (a bad query fails fast)."""
    try:
        target = _fetchable(url)  # the same rules as a media URL, signatures kept byte for byte
    except _Reject as exc:
        raise _invalid("Invalid callback url.") from exc
    if ports_only and target.port not in CALLBACK_PORTS:
        raise _invalid("Invalid callback url.")
    verb = (method or "POST").upper()
    if verb not in _METHODS:
        raise _invalid(f"Failed to deserialize query parameters: unknown callback_method {method}")
    return target, verb


def _invalid(message: str) -> _Reject:
    return _Reject(400, _err("INVALID_QUERY_PARAMETER", message))


class Deliveries:
    """The emulator's pending callback deliveries; :meth:`cancel` ends them all on stop."""

    __slots__ = ("_gap", "_tasks")

    def __init__(self, gap: float) -> None:
        self._gap = gap
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        session: aiohttp.ClientSession,
        record: RequestRecord,
        target: tuple[URL, str],
        body: bytes,
        delay: float,
    ) -> None:
        """Deliver ``body`` after ``delay`` (the request's processing time) in the background."""
        job = _deliver(session, record, target, body, delay, self._gap)
        task = asyncio.get_running_loop().create_task(job, name=f"callback {record.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until every delivery started so far has succeeded or given up (for tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel what is still pending and wait for it, so no task outlives the server."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _deliver(
    session: aiohttp.ClientSession,
    record: RequestRecord,
    target: tuple[URL, str],
    body: bytes,
    delay: float,
    gap: float,
) -> None:
    """The first attempt after ``delay``, then up to :data:`CALLBACK_RETRIES` more, ``gap``
    apart, until the receiver answers 2xx."""
    await asyncio.sleep(delay)
    for attempt in range(1 + CALLBACK_RETRIES):
        if attempt:
            await asyncio.sleep(gap)
        status = await _attempt(session, target, body)
        record.callback_attempts.append(status)
        if 200 <= status < 300:
            return


async def _attempt(session: aiohttp.ClientSession, target: tuple[URL, str], body: bytes) -> int:
    """One delivery: the receiver's status, or 0 when it could not be reached or timed out."""
    url, method = target
    headers = {"Content-Type": _JSON, "dg-token": _ACCESSOR_UUID}
    try:
        async with session.request(
            method, url, data=body, headers=headers, timeout=_DELIVERY_TIMEOUT
        ) as answer:
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return 0
