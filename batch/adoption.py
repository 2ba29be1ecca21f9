"""Outputs already in place for an item, adopted so that it is not paid for twice.

Two cases: items a crashed run left ``running``, whose outputs it may have written after
claiming them (``recover``), and, with ``skip_existing``, items whose outputs the sink
already holds for the same source fingerprint, under their name or their other one
(``existing_outputs``, then ``under_other_name``).
"""

from __future__ import annotations

import asyncio
import dataclasses

from batch.errors import ForeignOutputs
from batch.localfiles import file_sha256
from batch.models import ItemStatus
from batch.outputguard import foreign_message
from batch.outputs import LocalSink, OutputMeta, OutputSink
from batch.placing import Placer
from batch.runtypes import RunnerSettings, RunStats
from batch.state import Result, State, WorkItem
from batch.transcripts import audio_digest, parse_transcript


class Adoption:
    """Finds one run's items' outputs in the sink and records them ``done``."""

    def __init__(
        self,
        settings: RunnerSettings,
        state: State,
        sink: OutputSink,
        placer: Placer,
        stats: RunStats,
        *,
        local: dict[str, float | None],
    ) -> None:
        self.settings = settings
        self.state = state
        self.sink = sink
        self.stats = stats
        self._placer = placer
        #: the runner's per in-flight item local durations (mutagen)
        self._local = local

    async def recover(self) -> None:
        """Items a crashed run left ``running``: adopt outputs it wrote after claiming them
        (so they are not paid for twice), put the rest back to ``pending``."""
        leftovers = await asyncio.to_thread(self.state.running)
        for item in leftovers:
            # a forced item's undated outputs may be the very ones it was redoing
            undated = item.forced and not self.settings.dated_outputs
            done = None if undated else await self._own_outputs(item, item.claimed_at)
            if done is not None:
                self.stats.recovered += 1
                self.state.record(done)
            else:
                self.state.record(Result(item.id, ItemStatus.PENDING, item.attempts))
        await asyncio.to_thread(self.state.flush)

    async def elsewhere(self, item: WorkItem) -> WorkItem | None:
        """The item named by its other name (its full one, ``a.wav`` for ``a``), when
        outputs of another source hold its own and nothing of another source is there:
        where a state that knew the other item would have named it (an S3 ``--out``
        whose state was lost, a dated prefix per night). None when there is no such name."""
        meta = OutputMeta(item.source, item.fingerprint)
        for name in await asyncio.to_thread(self.state.other_names, item.id):
            found = await self.sink.find_complete(name, self.settings.formats, meta, None)
            if found is None and await asyncio.to_thread(self.state.adopt_name, item.id, name):
                return dataclasses.replace(item, out_name=name)
        return None

    async def same_audio(self, item: WorkItem) -> Result | None:
        """A local file's outputs already in a local ``--out`` that this state did not
        record (it was lost, or this is another state), adopted when the json's
        ``metadata.sha256`` is the file's: Deepgram transcribed this very audio, so it is
        not paid for again (as an S3 ``--out`` adopts by its objects' metadata). A json
        of other audio is left to the writer's guard (``output_exists``)."""
        if not isinstance(self.sink, LocalSink) or not self.sink.has(item.out_name, "json"):
            return None  # (the common case, answered without a thread)
        body = await self.sink.read(item.out_name, "json")
        response = parse_transcript(body) if body is not None else None
        said = audio_digest(response)
        if said is None:
            return None
        try:
            if await asyncio.to_thread(file_sha256, item.source) != said:
                return None
        except OSError:
            return None  # gone or changed: the send says so
        return await self.existing_outputs(item, 0.0)  # every output there (since 1970)

    async def under_other_name(self, item: WorkItem) -> Result | None:
        """Outputs found under the other name the item could have (its stem or its full
        name, as the items planned beside it decide: a state that was lost named them
        among other items, say before ``a.mp3`` arrived beside ``a.wav``). The item then
        takes that name, unless another item has it."""
        for name in await asyncio.to_thread(self.state.other_names, item.id):
            done = await self._own_outputs(item, None, name)
            if done is not None and await asyncio.to_thread(self.state.adopt_name, item.id, name):
                return done
        return None

    async def _own_outputs(
        self, item: WorkItem, since: float | None, name: str | None = None
    ) -> Result | None:
        """``existing_outputs``, another source's being none of the item's."""
        try:
            return await self.existing_outputs(item, since, name)
        except ForeignOutputs:
            return None

    async def existing_outputs(
        self, item: WorkItem, since: float | None, name: str | None = None
    ) -> Result | None:
        """The item's ``done`` result when the sink already holds all its outputs (under
        its name, or under ``name``).

        Raises:
            ForeignOutputs: another source's outputs hold the item's name (S3).
        """
        meta = OutputMeta(item.source, item.fingerprint)
        formats = self.settings.formats
        found = await self.sink.find_complete(name or item.out_name, formats, meta, since)
        if found is not None and found.foreign is not None:
            raise ForeignOutputs(foreign_message(*found.foreign))
        if found is None:
            return None
        if found.json is None:  # complete, without a transcript to read: nothing to warn of
            local = self._local.get(item.id)
            outputs = tuple(found.locations)
            return Result(
                item.id, ItemStatus.DONE, item.attempts, 200, outputs=outputs, local_duration=local
            )
        response = parse_transcript(found.json)
        if response is None:
            return None
        return self._placer.done_result(item, item.attempts, response, found.locations)
