"""``--dedupe``: identical audio asked with identical params is sent once per run.

The key is the sha256 of the file's bytes plus the params its request would carry (the
run's defaults and ``--param`` completed by the item's own layer, as at send time, but
without the run tags, which differ per run and say nothing about the audio), so the same
recording under two paths (a copy in another folder, a re-export, a manifest line that
spells out a default) costs one request; every copy gets its own outputs, rendered from
the one answer, and the report's ``copy_of`` names the item whose request produced them.
Scope: items of one run (a copy of an item finished in an earlier run is sent again),
local files only (URL and S3 bodies are not read). The dry run keys items with the same
``Dedupe.for_run``, so its count cannot drift from what the run sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batch import retry
from batch.attempts import Attempts
from batch.limiter import AdaptiveLimit
from batch.models import ItemStatus, Params
from batch.placing import Placer
from batch.state import Result, WorkItem

if TYPE_CHECKING:
    from batch.config import RunConfig

_READ = 1 << 20

#: An item's own params (its manifest layer) → the params its request carries.
Completer = Callable[[Params], Params]


@dataclass(frozen=True, slots=True)
class Shared:
    """The answer a leading item got, for its copies to reuse."""

    item_id: str
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

    def __init__(self, complete: Completer) -> None:
        #: an item's own params → its request's: two items are copies only if they would
        #: ask the same, whichever layer said it
        self._complete = complete
        self._leaders: dict[str, asyncio.Future[Shared | None]] = {}

    @classmethod
    def for_run(cls, config: RunConfig) -> Dedupe:
        """Keyed on the params ``job._completing`` sends, without the run tags: they differ
        per run and say nothing about the audio (a ``tag`` the user set is kept)."""
        return cls(config.sent_params)

    def key_now(self, path: str, own: Params) -> str:
        """The content key of a file whose own params are ``own`` (reads the whole file;
        raises ``OSError`` when it cannot)."""
        return content_key(path, self._complete(own))

    async def key(self, path: str, own: Params) -> str | None:
        """The item's content key, or None when the file cannot be read (it then fails on
        its own, with the sender's message)."""
        try:
            return await asyncio.to_thread(self.key_now, path, own)
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


class Copies:
    """One run's --dedupe items: the first of each content key is sent, and its copies
    wait for its answer and have their outputs rendered from it."""

    def __init__(
        self,
        dedupe: Dedupe,
        attempts: Attempts,
        placer: Placer,
        limit: AdaptiveLimit,
        *,
        captured: dict[str, tuple[bytes, retry.Response]],
        stopped: asyncio.Event,
        secret_sources: dict[str, str],
    ) -> None:
        self.dedupe = dedupe
        self.limit = limit
        self.secret_sources = secret_sources
        self._attempts = attempts
        self._placer = placer
        #: the runner's leaders' answers, kept by ``Placer.write`` for their copies
        self._captured = captured
        self._stopped = stopped

    async def process(self, item: WorkItem) -> Result:
        """A local file's result: sent when it leads its key (or its key is unknown),
        copied from its leader's answer otherwise."""
        key = await self.dedupe.key(self.secret_sources.get(item.id, item.source), item.params)
        if key is None:
            return await self._attempts.process(item)
        leader = self.dedupe.follow(key)
        if leader is None:
            return await self._lead(item, key)
        # A copy sends nothing while it waits, so its slot goes back: held, it could be the
        # one slot its leader needs after a 429 cut the limit, and neither would go on.
        # Shielded: a copy cancelled at shutdown must not cancel the answer for the others.
        shared = await self.limit.without_slot(asyncio.shield(leader))
        if shared is not None:
            return await self._copy(item, shared)
        if self._stopped.is_set():  # the leader was stopped, not failed: do not send after a stop
            return Result(item.id, ItemStatus.PENDING, item.attempts)
        return await self._attempts.process(item)

    async def _lead(self, item: WorkItem, key: str) -> Result:
        """The leader's result; its answer goes to its copies also when its own outputs
        failed (its path in the way, the run stopping): they need not pay for it again."""
        try:
            return await self._attempts.process(item)
        finally:
            captured = self._captured.pop(item.id, None)
            self.dedupe.publish(key, None if captured is None else Shared(item.id, *captured))

    async def _copy(self, item: WorkItem, shared: Shared) -> Result:
        """Outputs of a copy, rendered from its leader's answer; nothing is sent (and if
        they cannot be written, the answer is kept for the copy, as for a paid one)."""
        outputs = await self._placer.write_paid(item, shared.body, shared.response, billed=False)
        result = self._placer.done_result(item, item.attempts, shared.response, outputs)
        return dataclasses.replace(result, copy_of=shared.item_id)
