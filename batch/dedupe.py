"""``--dedupe``: identical audio asked with identical params is sent once per state.

The key is the sha256 of the file's bytes plus the params its request would carry (the
run's defaults and ``--param`` completed by the item's own layer, as at send time, but
without the run tags, which differ per run and say nothing about the audio), so the same
recording under two paths (a copy in another folder, a re-export, a manifest line that
spells out a default) costs one request; every copy gets its own outputs, rendered from
the one answer, and the report's ``copy_of`` names the item whose request produced them.
Scope: local files only (URL and S3 bodies are not read), across runs on one state: an
item sent and done under ``--dedupe`` leaves its key in the state (``content_keys``), and a
copy listed by a later run (a batch stopped by its budget and continued, a folder that
gets a copy tomorrow) is written from that item's json while its file is unchanged. The
dry run keys items with the same ``Dedupe.for_run``, so its count cannot drift from what
the run sends.

A copy may come at any point of the run, so every leader's answer must stay at hand until
the run ends. They stay on disk (``Spool``, an unnamed file beside the state), not in
memory: a transcript of an hour of audio is a few MB, several times that parsed, and a
run over thousands of recordings would otherwise hold them all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.attempts import Attempts
from batch.errors import BatchError
from batch.limiter import AdaptiveLimit
from batch.localfiles import file_sha256
from batch.models import ItemStatus, Params
from batch.placing import Placer
from batch.state import Result, State, WorkItem
from batch.transcripts import audio_digest, parse_transcript

if TYPE_CHECKING:
    from batch.config import RunConfig

log = logging.getLogger("dgbatch")

#: An item's own params (its manifest layer) → the params its request carries.
Completer = Callable[[Params], Params]


@dataclass(frozen=True, slots=True)
class Shared:
    """The answer a leading item got, for its copies to reuse."""

    item_id: str
    body: bytes
    response: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Spooled:
    """Where a leader's answer is in the ``Spool``."""

    item_id: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Handed:
    """A leader's answer as it arrived, for the copies already waiting for it."""

    item_id: str
    body: bytes


#: what a copy gets from its leader: the answer, where it is, or None (send on your own)
Lead = Handed | Spooled | None
#: room the spool leaves on its disk: that of the state, which must stay writable
KEEP_FREE = 1 << 30


class Spool:
    """Leaders' answers for the rest of the run, in one unnamed file (gone when it is
    closed, or when the process dies) in ``folder``, created at the first answer."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._fd: int | None = None
        self._end = 0

    def put(self, item_id: str, body: bytes) -> Spooled | None:
        """Store ``body``; None when it cannot be, or when its disk (the state's) would be
        left with less than ``KEEP_FREE`` (later copies are then sent on their own)."""
        try:
            disk = os.statvfs(self._folder)
            if disk.f_bavail * disk.f_frsize < len(body) + KEEP_FREE:
                raise OSError(errno.ENOSPC, "less than 1 GiB would be left for the state")
            if self._fd is None:
                self._fd, name = tempfile.mkstemp(dir=self._folder, prefix=".dgbatch-answers-")
                os.unlink(name)  # unnamed: gone with the run, however it ends
            view, offset = memoryview(body), self._end
            while view:
                view = view[os.pwrite(self._fd, view, self._end) :]
                self._end = offset + len(body) - len(view)
        except OSError as exc:
            log.warning("%s: answer not kept for its --dedupe copies: %s", self._folder, exc)
            return None
        return Spooled(item_id, offset, len(body))

    def get(self, where: Spooled) -> bytes:
        """The answer stored at ``where`` (read in a thread: it may be megabytes)."""
        assert self._fd is not None  # put() returned ``where``
        chunks, read = [], 0
        while read < where.length:
            chunk = os.pread(self._fd, where.length - read, where.offset + read)
            if not chunk:
                raise OSError(f"answer spool ended at {where.offset + read}")
            chunks.append(chunk)
            read += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """The run is over: no copy can come any more."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def content_key(path: str, params: Params) -> str:
    """sha256 of the file's bytes (read in chunks) and of its params."""
    return _key(file_sha256(path), params)


def _key(digest: str, params: Params) -> str:
    return f"{digest}:{json.dumps(sorted(params))}"


def answers(response: dict[str, Any], key: str) -> bool:
    """Whether Deepgram's answer is of the audio ``key`` names: its ``metadata.sha256`` is
    the digest of the bytes it was sent, so a json written over since (the item sent again
    for a changed file meanwhile) never serves another recording's copy."""
    return audio_digest(response) == key.split(":", 1)[0]


def kept_answer(kept: tuple[str, bytes, str] | None, key: str) -> Shared | None:
    """A kept original answer (``State.kept_content``: its item, body and the request
    ``key`` remembers) that serves a copy of ``key``: that very request, of that audio."""
    if kept is None:
        return None
    item_id, body, request_id = kept
    response = parse_transcript(body)
    if response is None or not answers(response, key):
        return None
    same = response["metadata"].get("request_id") == request_id
    return Shared(item_id, body, response) if same else None


def stored_key(key: str) -> str:
    """A content key as the state stores it: hashed, since params may hold a secret."""
    return hashlib.sha256(key.encode()).hexdigest()


class Dedupe:
    """Who leads for each content key, and the answer copies wait for."""

    def __init__(
        self,
        complete: Completer,
        spool: Spool,
        answering: Callable[[Params], tuple[Params, ...]] = lambda sent: (sent,),
    ) -> None:
        #: an item's own params → its request's: two items are copies only if they would
        #: ask the same, whichever layer said it
        self._complete = complete
        #: an item's own params → the params of requests whose answer serves it (as a
        #: kept answer is served: ``RunConfig.answering_params``)
        self._answering = answering
        self._leaders: dict[str, asyncio.Future[Lead]] = {}
        self.spool = spool

    @classmethod
    def for_run(cls, config: RunConfig) -> Dedupe:
        """Keyed on the params ``job._completing`` sends, without the run tags: they differ
        per run and say nothing about the audio (a ``tag`` the user set is kept). Answers
        are spooled beside the state."""
        return cls(config.sent_params, Spool(config.state_path.parent), config.answering_params)

    def answering_keys(self, key: str, own: Params) -> list[str]:
        """``key`` and the keys of the same audio asked by a run of other formats (with or
        without the ``utterances=true`` captions add): an earlier answer to any of them
        serves the item, as a kept answer does."""
        digest = key.split(":", 1)[0]
        others = (_key(digest, sent) for sent in self._answering(own))
        return list(dict.fromkeys([key, *others]))

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

    async def answered(self, key: str) -> bool:
        """Whether this run's answer for ``key`` is at hand for any copy (spooled), once
        the item leading it, if any, has ended."""
        leader = self._leaders.get(key)
        if leader is not None and not leader.done():
            await asyncio.wait([leader])
        later = self._leaders.get(key)
        return later is not None and later.done() and isinstance(later.result(), Spooled)

    def follow(self, key: str) -> asyncio.Future[Lead] | None:
        """The leader's future to wait for, or None: the caller leads and must ``publish``."""
        leader = self._leaders.get(key)
        if leader is None:
            self._leaders[key] = asyncio.get_running_loop().create_future()
        return leader

    def publish(self, key: str, answer: tuple[str, bytes] | None) -> None:
        """Hand the leader's id and answer (None if it failed: copies then send their own)
        to the copies waiting for it, as it is; later copies find it in the spool (or,
        when it cannot be spooled, send their own)."""
        leader = self._leaders.pop(key)
        if not leader.done():
            leader.set_result(None if answer is None else Handed(*answer))
        spooled = None if answer is None else self.spool.put(*answer)
        if spooled is not None:
            self._leaders[key] = later = asyncio.get_running_loop().create_future()
            later.set_result(spooled)


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
        captured: dict[str, bytes],
        stopped: asyncio.Event,
        state: State,
    ) -> None:
        self.dedupe = dedupe
        #: where items sent and done leave their keys, for the copies of later runs
        self._state = state
        self.limit = limit
        #: copies the budget let through for free (``Runner._free_copy``): they never send
        self.free: set[str] = set()
        #: items dispatched that have not yet taken their place for their key (leading it,
        #: or following): a copy the budget asks about waits for them (``answered``)
        self._unkeyed: set[str] = set()
        self._all_keyed = asyncio.Event()
        self._all_keyed.set()
        self._attempts = attempts
        self._placer = placer
        #: the runner's leaders' answers, kept by ``Placer.write`` for their copies
        self._captured = captured
        self._stopped = stopped

    def expect(self, item_id: str) -> None:
        """An item is dispatched to ``process``: until it has its key, it might lead the
        key of a copy the budget asks about."""
        self._unkeyed.add(item_id)
        self._all_keyed.clear()

    def keyed(self, item_id: str) -> None:
        """The item has its place for its key, or will never take one (it ended)."""
        self._unkeyed.discard(item_id)
        if not self._unkeyed:
            self._all_keyed.set()

    async def answered(self, item: WorkItem, key: str) -> bool:
        """Whether the answer for ``item``'s ``key`` is at hand: this run's, once every
        item dispatched before has its key and the one leading ``key``, if any, has ended,
        or an earlier run's that ``process`` will take (``_earlier``: checked the same)."""
        await self._all_keyed.wait()
        if await self.dedupe.answered(key):
            return True
        return await self._earlier(item, key) is not None

    async def process(self, item: WorkItem) -> Result:
        """A local file's result: sent when it leads its key (or its key is unknown),
        copied from its leader's answer otherwise."""
        try:
            key = await self.dedupe.key(item.source, item.params)  # a path: never redacted
            leader = None if key is None else self.dedupe.follow(key)
        finally:
            self.keyed(item.id)
        if key is None:
            return await self._sent(item)
        while leader is not None:
            # A copy sends nothing while it waits, so its slot goes back: held, it could be
            # the one slot its leader needs after a 429 cut the limit, and neither would go
            # on. Shielded: a copy cancelled at shutdown must not cancel the answer for the
            # others.
            lead = await self.limit.without_slot(asyncio.shield(leader))
            shared = None if lead is None else await self._answer(lead)
            if shared is not None and shared.item_id == item.id:  # its own kept answer,
                return await self._sent(item)  # which a copy took: written as kept
            if shared is not None:
                return await self._copy(item, shared)
            if self._stopped.is_set():  # the leader was stopped: do not send after a stop
                return Result(item.id, ItemStatus.PENDING, item.attempts)
            if lead is not None:  # its answer cannot be read back: sent on its own
                return await self._sent(item)
            leader = self.dedupe.follow(key)  # it failed: one copy leads, the others wait
        earlier = await self._earlier(item, key)
        if earlier is not None:  # an item of an earlier run has its answer
            self.dedupe.publish(key, (earlier.item_id, earlier.body))
            return await self._copy(item, earlier)
        if item.id in self.free:  # its answer went meanwhile: do not lead, past the cap
            self.dedupe.publish(key, None)
            return Result(item.id, ItemStatus.PENDING, item.attempts)
        return await self._lead(item, key)

    async def _earlier(self, item: WorkItem, key: str) -> Shared | None:
        """The answer an item of an earlier run got for ``key``, read from its json; None
        for an item ``--force`` re-queued (it asks for a new answer), or when there is none
        or it cannot be read (the item is then sent)."""
        if item.forced:
            return None
        for candidate in self.dedupe.answering_keys(key, item.params):
            shared = await self._earlier_of(item, candidate)
            if shared is not None:
                return shared
        return None

    async def _earlier_of(self, item: WorkItem, key: str) -> Shared | None:
        """``_earlier`` for one key: a done original's json, else a kept original answer."""
        found = await asyncio.to_thread(self._state.done_content, stored_key(key), item.id)
        if found is None:
            return await self._kept_earlier(item, key)
        try:
            body = await self._placer.sink.read(found[1], "json")
        except (OSError, BatchError) as exc:
            log.warning("json of %s unreadable for its --dedupe copy: %s", found[0], exc)
            return None
        response = None if body is None else parse_transcript(body)
        if body is None or response is None or not answers(response, key):
            return None
        return Shared(found[0], body, response)

    async def _kept_earlier(self, item: WorkItem, key: str) -> Shared | None:
        """The answer an original of an earlier run got for ``key`` and keeps unwritten
        (its outputs failed): a copy read before that original, in the run that writes it,
        led its key and was paid again."""
        kept = await asyncio.to_thread(self._state.kept_content, stored_key(key), item.id)
        return kept_answer(kept, key)

    async def _sent(self, item: WorkItem) -> Result:
        """The item sent on its own; a copy the budget let through for free stays pending."""
        if item.id in self.free:
            return Result(item.id, ItemStatus.PENDING, item.attempts)
        return await self._attempts.process(item)

    async def _lead(self, item: WorkItem, key: str) -> Result:
        """The leader's result; its answer goes to its copies also when its own outputs
        failed (its path in the way, the run stopping): they need not pay for it again."""
        try:
            result = await self._attempts.process(item)
        finally:
            captured = self._captured.pop(item.id, None)
            self.dedupe.publish(key, None if captured is None else (item.id, captured))
        sent = result.attempts > item.attempts  # not adopted: its params are this run's
        answered = result.status is ItemStatus.DONE or captured is not None  # or kept
        if answered and result.copy_of is None and sent and result.request_id:
            remember = self._state.remember_content
            await asyncio.to_thread(remember, stored_key(key), item, result.request_id)
        return result

    async def _answer(self, lead: Handed | Spooled) -> Shared | None:
        """The leader's answer, handed over or read back from the spool (None if it cannot
        be read: the copy is then sent on its own)."""
        if isinstance(lead, Handed):
            body = lead.body
        else:
            try:
                body = await asyncio.to_thread(self.dedupe.spool.get, lead)
            except OSError as exc:
                log.warning("answer of %s unreadable for its --dedupe copy: %s", lead.item_id, exc)
                return None
        response = parse_transcript(body)
        return None if response is None else Shared(lead.item_id, body, response)

    async def _copy(self, item: WorkItem, shared: Shared) -> Result:
        """Outputs of a copy, rendered from its leader's answer; nothing is sent (and if
        they cannot be written, the answer is kept for the copy, as for a paid one)."""
        outputs = await self._placer.write_paid(
            item, shared.body, shared.response, copy_of=shared.item_id
        )
        result = self._placer.done_result(item, item.attempts, shared.response, outputs)
        return dataclasses.replace(result, copy_of=shared.item_id)
