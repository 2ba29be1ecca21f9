"""Deepgram's management API, answered from the emulator's request log.

Usage reconciliation compares what dgbatch recorded with what Deepgram reports; these routes
(``Token`` auth) report the emulator's log, so it can be tested end to end::

    GET  /v1/auth/token                                        the key's details
    GET  /v1/projects/{id}/requests?start=&end=&limit=&page=   newest first, paged
    GET  /v1/projects/{id}/usage?start=&end=&tag=              one bucket: hours, requests
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from batch.emulator.config import EmulatorConfig, RequestRecord
from batch.emulator.faults import _AUTH_ERRORS, _token
from batch.emulator.responses import _iso_time, model_info

_ACCESSOR_UUID = "0c6e8a5e-51f4-4cb5-9a7e-6d1f2b3c4d5e"


class ManagementApi:
    """The management routes, which :class:`~batch.emulator.server.Emulator` inherits.

    They only read what the emulator keeps; the annotations name it (its key, its
    ``auth_mode`` and its log), so these routes stay apart from the handling of
    ``/v1/listen``.
    """

    config: EmulatorConfig
    log: list[RequestRecord]
    _auth_mode: str

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
            r for r in self._window(request) if _billed(r) and (not tags or tags & set(_tags_of(r)))
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


def _billed(record: RequestRecord) -> bool:
    """Whether Deepgram would bill the request: it processed the audio, and answered it
    (or a fault spoiled the answer on its way), not with an injected error status."""
    return record.duration is not None and not (record.fault or "").isdigit()


def _log_entry(record: RequestRecord, project: str) -> dict[str, Any]:
    """One request as Deepgram's management API lists it. A request the emulator processed
    counts as a 200 even if a fault then spoiled the answer on its way (cut short, garbage,
    a dropped connection): Deepgram bills those too. One answered with an error status
    (an injected 429 or 5xx) was not processed, and is listed with that status, unbilled."""
    billed = _billed(record)
    seconds = record.duration if billed else None
    code = 200 if billed else record.status
    query = "&".join(f"{key}={value}" for key, value in record.params)
    created = _iso_time(record.time)
    details: dict[str, Any] = {
        "usd": round((seconds or 0.0) / 60 * 0.0043, 6),
        "duration": seconds or 0.0,
        "total_audio": seconds or 0.0,
        "channels": 1,
        "streams": 1,
        "method": "sync",
        "models": [model_info(record.params)[0]],
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
