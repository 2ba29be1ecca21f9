"""Paid answers kept when their outputs cannot be written, and written by a later run.

Deepgram bills a request when it answers. If that answer's outputs then cannot be
written (S3 refusing or unreachable, a full disk, a folder where a file must go) or
the run abandons the item while the answer waits to be written (a second Ctrl-C, the
end of ``--grace``), the answer would be lost and the next run would pay for it again.
Instead it is kept in the state (table ``kept_answers``, with the fingerprint of the
source and the params it answers), and the next run that takes the item writes its
outputs from it without sending anything: a pending item by any run, a failed one by
``--retry-failed``. An answer is dropped once its item is done, or when its source
changed (another fingerprint); it is not written for a run that would send other params
(``--param`` changed) nor by a ``--force`` begun after it was kept.

Nothing of this runs per item unless an answer was kept: a run loads the kept items'
ids once, and a set lookup tells the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable

from batch.checks import audio_seconds
from batch.config import RunConfig
from batch.errors import StateError
from batch.models import Params
from batch.state import State, WorkItem

log = logging.getLogger("dgbatch")


class Keeping:
    """A run's kept answers: those an earlier run kept, and those this run keeps."""

    def __init__(
        self,
        state: State,
        run_id: int,
        *,
        sent: Callable[[Params], tuple[Params, ...]] = lambda own: (own,),
        not_before: float | None = None,
    ) -> None:
        self.state = state
        self.run_id = run_id
        #: the params of the requests whose answer serves an item of this run, for its own
        #: ones (tags left out; the first as this run sends it): an answer is written only
        #: for the params it answers
        self._sent = sent
        #: when the ``--force`` underway began: answers kept before it are what it redoes
        self._not_before = not_before
        #: items with an answer kept by an earlier run (``load``)
        self._ids: set[str] = set()
        #: answers this run kept (for the summary)
        self.kept = 0

    @classmethod
    def for_run(
        cls, config: RunConfig, state: State, run_id: int, force_since: float | None
    ) -> Keeping:
        """Keyed on the params a request sends (``RunConfig.answering_params``): a
        ``--param`` changed since is another request, a caption format added is not."""
        return cls(state, run_id, sent=config.answering_params, not_before=force_since)

    async def load(self) -> None:
        """Read which items have an answer to write (after a crashed run's items are
        recovered: those recovered as done drop theirs)."""
        self._ids = await asyncio.to_thread(self.state.kept_ids)

    def may_have(self, item: WorkItem) -> bool:
        """Whether an answer was kept for ``item`` (a set lookup: this runs per item)."""
        return item.id in self._ids

    async def answer(self, item: WorkItem) -> tuple[bytes, str | None] | None:
        """The paid answer kept for ``item``, if it answers it as this run would ask, and
        the original it was a --dedupe copy of (if any)."""
        return await asyncio.to_thread(self.answer_now, item.id, item.params)

    def answer_now(self, item_id: str, own: Params) -> tuple[bytes, str | None] | None:
        """``answer`` for an item whose own params are ``own``, in this thread (the dry
        run's estimate asks it per item, without a loop)."""
        asked = tuple(json.dumps(params) for params in self._sent(own))
        return self.state.kept_answer(item_id, asked, self._not_before or 0.0)

    async def keep(self, item: WorkItem, body: bytes, copy_of: str | None) -> None:
        """Keep ``item``'s paid answer (a --dedupe copy's: its original's, ``copy_of``);
        this only runs when its outputs failed. Shielded: an item cancelled again meanwhile
        still has its answer kept."""
        keeping = asyncio.ensure_future(asyncio.to_thread(self._keep, item, body, copy_of))
        await asyncio.shield(keeping)

    def _keep(self, item: WorkItem, body: bytes, copy_of: str | None) -> None:
        params = json.dumps(self._sent(item.params)[0])  # as this run sent it
        try:
            self.state.keep_answer(item, params, self.run_id, body, copy_of)
        except (StateError, sqlite3.Error) as exc:  # a full disk, or the state closed
            log.warning("%s: its paid answer could not be kept: %s", item.source, exc)
            return
        self.kept += 1


def kept_audio(state: State) -> list[float]:
    """The audio of each request whose answer is still kept: Deepgram billed it, so a
    budget counts it (and no longer does once the answer is written: its item is then
    done, and counts it)."""
    return [audio_seconds(duration) or 0.0 for duration in state.kept_durations()]
