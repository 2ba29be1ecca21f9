"""What becomes of a paid answer: its outputs, rendered and written, and the ``done``
result that records them (also for outputs found already in place, for --dedupe
copies rendered from their leader's answer, and for answers an earlier run paid for
and kept because their outputs could not be written: ``batch.keeping``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Protocol

from batch.checks import reported_duration, transcript_warning
from batch.formats import render_all
from batch.keeping import Keeping
from batch.models import ItemStatus
from batch.outputs import OutputMeta, OutputSink
from batch.runtypes import RunnerSettings
from batch.state import Result, WorkItem
from batch.transcripts import Response, parse_transcript, transcript_request_id


class ReleaseSlot(Protocol):
    """``Runner._release_slot``: gives an item's request slot back, once."""

    def __call__(self, item_id: str, *, early: bool = False) -> None: ...


class Placer:
    """Places one run's answers in the sink, at most ``--concurrency`` of them at once."""

    def __init__(
        self,
        settings: RunnerSettings,
        sink: OutputSink,
        *,
        local: dict[str, float | None],
        release_slot: ReleaseSlot,
        captured: dict[str, bytes] | None,
        keeping: Keeping | None = None,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.settings = settings
        self.sink = sink
        #: the runner's per in-flight item local durations (mutagen), for the warning
        self._local = local
        self._release_slot = release_slot
        #: with --dedupe, leaders' answers kept for their copies (``Copies._lead``)
        self._captured = captured
        #: answers waiting for their outputs; bounded like the requests, so that a crash
        #: re-sends at most twice ``--concurrency`` items (``write``)
        self._unplaced = asyncio.Semaphore(settings.concurrency)
        self._keeping = keeping
        #: the key out of what is quoted from an answer (its warnings): a proxy may echo it
        self._redact = redact
        #: per item, the audio Deepgram billed for an answer whose outputs could not be
        #: written: the run's budget counts it (``Runner._account`` takes it back out)
        self.unwritten: dict[str, float] = {}

    async def write_paid(
        self,
        item: WorkItem,
        body: bytes,
        response: Response,
        *,
        copy_of: str | None = None,
    ) -> list[str]:
        """``write`` for an answer Deepgram billed (for this item, or for the original
        ``copy_of`` of a ``--dedupe`` copy): if its outputs cannot be written, or the item
        is abandoned before they are, the answer is kept for the next run."""
        try:
            return await self.write(item, body, response)
        except (Exception, asyncio.CancelledError):
            if copy_of is None:  # billed for this item
                self.unwritten[item.id] = reported_duration(response) or 0.0
            if self._keeping is not None:
                await self._keeping.keep(item, body, copy_of)
            raise

    async def kept_result(self, item: WorkItem) -> Result | None:
        """The item's ``done`` result from the answer an earlier run kept for it (nothing
        is sent), or None when there is none. If its outputs fail again, the answer stays
        kept as it is."""
        if self._keeping is None or not self._keeping.may_have(item):
            return None
        kept = await self._keeping.answer(item)
        if kept is None:
            return None
        body, copy_of = kept
        response = parse_transcript(body)
        if response is None:
            return None
        outputs = await self.write(item, body, response)
        result = self.done_result(item, item.attempts, response, outputs)
        return dataclasses.replace(result, kept=True, copy_of=copy_of)

    async def write(self, item: WorkItem, body: bytes, response: Response) -> list[str]:
        """Where the answer's outputs now are; the request slot goes back meanwhile."""
        if self._captured is not None:
            self._captured[item.id] = body
        length = self.settings.caption_line_length
        files = render_all(
            self.settings.formats, body, response, line_length=length, source=item.source
        )
        # The request is over, so its slot goes to the next item while the outputs are
        # written: --concurrency counts requests in flight, as Deepgram's limit does. An
        # answer waits for room among the unplaced ones first, still holding its slot,
        # so a slow disk slows the requests down instead of piling up paid answers.
        async with self._unplaced:
            self._release_slot(item.id, early=True)
            # (abandoned meanwhile, a paid answer still lands: see ``outputs.landed``)
            meta = OutputMeta(item.source, item.fingerprint, item.owner)
            return await self.sink.write(item.out_name, files, meta)

    def done_result(
        self,
        item: WorkItem,
        attempts: int,
        response: Response,
        outputs: list[str] | tuple[str, ...],
    ) -> Result:
        """Deepgram's duration is what the item is billed for; its local one (when known)
        is what tells a truncated transcript (``batch.checks``)."""
        local = self._local.get(item.id)
        return Result(
            item.id,
            ItemStatus.DONE,
            attempts,
            200,
            request_id=transcript_request_id(response),
            duration=reported_duration(response),
            outputs=tuple(outputs),
            warning=self._redact(warning)
            if (warning := transcript_warning(response, local))
            else None,
            local_duration=local,
        )
