"""``--dedupe``: identical audio asked with identical params is sent once per run.

The key is the sha256 of the file's bytes plus its params, so the same recording under
two paths (a copy in another folder, a re-export) costs one request; every copy gets
its own outputs, rendered from the one answer, and the report's ``copy_of`` names the
item whose request produced them. Scope: items of one run (a copy of an item finished
in an earlier run is sent again), local files only (URL and S3 bodies are not read).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from batch.models import Params

_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class Shared:
    """The answer a leading item got, for its copies to reuse."""

    item_id: str
    request_id: str | None
    body: bytes
    response: dict[str, Any]


def content_key(path: str, params: Params) -> str:
    """sha256 of the file's bytes (read in chunks) and of its params."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ):
            digest.update(chunk)
    return f"{digest.hexdigest()}:{json.dumps(sorted(params))}"


class Dedupe:
    """Who leads for each content key, and the answer copies wait for."""

    def __init__(self) -> None:
        self._leaders: dict[str, asyncio.Future[Shared | None]] = {}

    async def key(self, path: str, params: Params) -> str | None:
        """The item's content key, or None when the file cannot be read (it then fails on
        its own, with the sender's message)."""
        try:
            return await asyncio.to_thread(content_key, path, params)
        except OSError:
            return None

    def follow(self, key: str) -> asyncio.Future[Shared | None] | None:
        """The leader's future to wait for, or None: the caller leads and must ``publish``."""
        leader = self._leaders.get(key)
        if leader is None:
            self._leaders[key] = asyncio.get_running_loop().create_future()
        return leader

    def publish(self, key: str, shared: Shared | None) -> None:
        """Hand the leader's answer (None if it failed: copies then send their own)."""
        leader = self._leaders[key]
        if not leader.done():
            leader.set_result(shared)
        if shared is None:
            del self._leaders[key]
