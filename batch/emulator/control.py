"""The emulator's control endpoints, for tests and benchmarks driving it from another process.

::

    GET  /_emulator/log            JSON list of RequestRecord (asdict, key hidden), oldest first
    GET  /_emulator/stats          {"requests": N, "in_flight": N, "in_flight_max": N}
    POST /_emulator/auth?mode=M    M in ok|401|402|403: every /v1/listen then answers that error
    POST /_emulator/reset          clear the log and the in-flight high-water mark

They have no auth. On loopback (the default ``--host``) only this machine can reach them;
bound to another address, they answer 403 to every peer that is not loopback, so a client
elsewhere can still use ``/v1/listen`` but cannot read the log or switch the auth mode.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from batch.emulator.config import AUTH_MODES, EmulatorConfig, RequestRecord

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(address: str | None) -> bool:
    """Whether a host or peer address is this machine only (``localhost``, 127/8, ``::1``,
    and IPv4 loopback mapped into IPv6); a name that is not an address is not."""
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def control_allowed(host: str, peer: str | None) -> bool:
    """A control request is served when the emulator listens on loopback only, or when its
    peer is loopback; an unknown peer (None) is refused."""
    return is_loopback(host) or is_loopback(peer)


class ControlApi:
    """The ``/_emulator`` routes and the measurement they serve, which
    :class:`~batch.emulator.server.Emulator` inherits."""

    config: EmulatorConfig
    log: list[RequestRecord]
    _auth_mode: str
    _in_flight: int
    _in_flight_max: int

    def in_flight(self) -> int:
        """The ``/v1/listen`` requests in flight now."""
        return self._in_flight

    def in_flight_max(self) -> int:
        """The most ``/v1/listen`` requests that were in flight at once (reset clears it)."""
        return self._in_flight_max

    def reset(self) -> None:
        """Start a fresh measurement; the list object is kept so references to it stay valid."""
        self.log.clear()
        self._in_flight_max = self._in_flight

    def _add_control_routes(self, app: web.Application) -> None:
        """Under ``/_emulator`` so they never clash with Deepgram's paths."""
        app.router.add_get("/_emulator/log", self._guarded(self._control_log))
        app.router.add_get("/_emulator/stats", self._guarded(self._control_stats))
        app.router.add_post("/_emulator/auth", self._guarded(self._control_auth))
        app.router.add_post("/_emulator/reset", self._guarded(self._control_reset))

    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` for loopback peers, 403 for the others; unchanged when the emulator
        listens on loopback, where every peer is."""
        if is_loopback(self.config.host):
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not control_allowed(self.config.host, request.remote):
                refusal = {"error": "the /_emulator endpoints answer loopback peers only"}
                return web.json_response(refusal, status=403)
            return await handler(request)

        return guarded

    async def _control_log(self, request: web.Request) -> web.Response:
        """The log for a test driving an emulator in another process. The key a client
        sent is not shown (only its scheme): anyone who can reach this endpoint can read it,
        and a real key may have been sent to the emulator by mistake."""
        return web.json_response([_shown(record) for record in list(self.log)])

    async def _control_stats(self, request: web.Request) -> web.Response:
        """Counters a benchmark can read without downloading the whole log."""
        stats = {
            "requests": len(self.log),
            "in_flight": self._in_flight,
            "in_flight_max": self._in_flight_max,
        }
        return web.json_response(stats)

    async def _control_auth(self, request: web.Request) -> web.Response:
        """Switch the auth mode to simulate a key revoked or out of credit mid-run."""
        mode = request.query.get("mode", "")
        if mode not in AUTH_MODES:
            return web.json_response({"error": f"mode must be one of {AUTH_MODES}"}, status=400)
        self._auth_mode = mode
        return web.json_response({"auth_mode": mode})

    async def _control_reset(self, request: web.Request) -> web.Response:
        """:meth:`reset` for a test driving an emulator in another process."""
        self.reset()
        return web.json_response({"ok": True})


def _shown(record: RequestRecord) -> dict[str, Any]:
    entry = asdict(record)
    scheme, _, key = record.authorization.partition(" ")
    entry["authorization"] = f"{scheme} REDACTED" if key else scheme
    return entry
