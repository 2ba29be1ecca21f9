"""Every way the emulator says no: Deepgram's error bodies, and the answers faults break.

A check raises :class:`_Reject` and the handler turns it into the answer, so each refusal is
one line where it is decided; reading the credential of an ``Authorization`` header lives here
too, beside the refusals it leads to. The faults copy what reaches real clients: JSON errors, a
load balancer's HTML page, a dropped connection, a body cut short, bytes that are not JSON.
:func:`_respond` is the one place an answer is made, so that every answer, good or bad, carries
``dg-request-id``.
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

from aiohttp import web

from batch.emulator.config import RequestRecord

_JSON = "application/json"
_GARBAGE = b"\x00\x8b\xff<!-- not json -->\x89PNG\r\n\x1a\n\xfe"


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


def _token(header: str) -> str | None:
    """The credential of ``Token <k>`` or ``Bearer <k>``, schemes matched case-insensitively."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return None
    return token.strip() or None


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
