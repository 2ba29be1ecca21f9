"""Deepgram's management endpoints: key details (preflight, ``check``), request log, usage.

``client.py`` is the only module that sends audio; this one only reads account facts
with small GETs, and translates aiohttp errors into ``AccountError`` at this boundary.
A 401/403 means the key is refused: ``FatalApiError`` (exit 3), as for ``/v1/listen``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from batch.client import api_session, transport_reason
from batch.errors import AccountError, FatalApiError
from batch.proxies import proxy_for, refused_by
from batch.redact import redact_text
from batch.retry import parse_error_body, status_reason

log = logging.getLogger("dgbatch")

TOKEN_PATH = "/v1/auth/token"
TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
#: Preflight tries: the first plus retries after 0.5 s and 1 s.
PREFLIGHT_ATTEMPTS = 3

Sleep = Callable[[float], Coroutine[Any, Any, None]]


class TransientAccountError(AccountError):
    """A network failure, a timeout, 429 or 5xx: worth another try."""


@dataclass(frozen=True, slots=True)
class KeyDetails:
    """What ``GET /v1/auth/token`` says about a key (never the key itself)."""

    accessor: str | None
    username: str | None
    scopes: tuple[str, ...]
    expiration: str | None

    def describe(self) -> str:
        """One human line for ``check`` and the run log."""
        scopes = ", ".join(self.scopes) or "(none listed)"
        return (
            f"key accepted: accessor {self.accessor or '?'}, user {self.username or '?'}, "
            f"scopes {scopes}, expires {self.expiration or 'never'}"
        )


class AccountClient:
    """GETs against the management API with the run's key."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str, api_key: str) -> None:
        self._session = session
        self._base = api_url.rstrip("/")
        self._headers = {"Authorization": f"Token {api_key}"}
        self._secrets = (api_key,)
        self._proxy = proxy_for(api_url)  # a 407 is its, never Deepgram's

    async def get_json(self, path: str, query: list[tuple[str, str]] | None = None) -> Any:
        """The parsed JSON of a 200; typed errors for everything else."""
        try:
            async with self._session.get(
                self._base + path,
                params=query or [],
                headers=self._headers,
                timeout=TIMEOUT,
                allow_redirects=False,  # as /v1/listen: the key is not sent on elsewhere
            ) as resp:
                status, body = resp.status, await resp.read()
                location = resp.headers.get("Location", "")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            text = redact_text(transport_reason(exc), self._secrets)
            raise TransientAccountError(f"GET {path}: no answer ({text})") from exc
        if 300 <= status < 400:
            to = redact_text(location, self._secrets)
            raise AccountError(
                f"GET {path}: the API answered HTTP {status} (a redirect"
                f"{f' to {to}' if to else ''}), which dgbatch does not follow: point "
                "--api-url (or DEEPGRAM_API_URL) at the API itself"
            )
        if status == 407 and self._proxy is not None:  # not passing: no use trying again
            raise AccountError(f"GET {path}: no answer ({refused_by(self._proxy, 'HTTP 407')})")
        if status != 200:
            raise _status_error(path, status, body, self._secrets)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise AccountError(f"GET {path}: the answer is not JSON") from exc

    async def key_details(self) -> KeyDetails:
        """``GET /v1/auth/token``: the documented way to check a key without paying."""
        doc = await self.get_json(TOKEN_PATH)
        doc = doc if isinstance(doc, dict) else {}
        scopes = doc.get("scopes") or []
        expiration = doc.get("expiration") or doc.get("expiration_date")
        return KeyDetails(
            accessor=_opt_str(doc.get("accessor")),
            username=_opt_str(doc.get("username")),
            scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list) else (),
            expiration=_opt_str(expiration),
        )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _status_error(
    path: str, status: int, body: bytes, secrets: tuple[str, ...]
) -> AccountError | FatalApiError:
    """401/403 are fatal (the key is refused); 429 and 5xx transient; the rest plain. The
    body is read as a ``/v1/listen`` error is: any of Deepgram's shapes, or a gateway's text."""
    detail = redact_text(status_reason(status, parse_error_body(body)), secrets)
    if status in (401, 403):
        return FatalApiError(f"Deepgram refused the API key ({detail}); no audio was sent")
    if status == 429 or status >= 500:
        return TransientAccountError(f"GET {path}: {detail}")
    return AccountError(f"GET {path}: {detail}")


async def preflight(
    client: AccountClient,
    *,
    attempts: int = PREFLIGHT_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
) -> KeyDetails | None:
    """Check the key before anything is planned or sent.

    A refused key raises ``FatalApiError`` (exit 3, zero listen requests). When the check
    itself cannot be answered (network down after ``attempts`` tries, a 404 from a proxy
    without the endpoint, 5xx) the run proceeds with a warning and None: the first
    ``/v1/listen`` answer stops the run just as surely if the key is bad, and a flaky
    management endpoint must not block a batch.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await client.key_details()
        except TransientAccountError as exc:
            if attempt == attempts:
                log.warning("key check failed (%s); proceeding without it", exc)
                return None
            await sleep(0.5 * 2 ** (attempt - 1))
        except FatalApiError:
            raise
        except AccountError as exc:
            log.warning("key check not possible (%s); proceeding without it", exc)
            return None
    return None  # pragma: no cover - the loop always returns


async def check_key(api_url: str, api_key: str) -> KeyDetails | None:
    """The run's preflight (see ``preflight``) on a short-lived session."""
    async with api_session(api_url) as session:
        return await preflight(AccountClient(session, api_url, api_key))


async def fetch_key_details(api_url: str, api_key: str) -> KeyDetails:
    """``dgbatch check``: the key's details, every failure raised."""
    async with api_session(api_url) as session:
        return await AccountClient(session, api_url, api_key).key_details()
