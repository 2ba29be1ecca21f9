"""Paid answers kept when their outputs cannot be written, and written by a later run.

Deepgram bills a request when it answers. If that answer's outputs then cannot be
written (S3 refusing or unreachable, a full disk, a folder where a file must go) or
the run abandons the item while the answer waits to be written (a second Ctrl-C, the
end of ``--grace``), the answer would be lost and the next run would pay for it again.
Instead it is kept in the state (table ``kept_answers``, with the fingerprint of the
source it answers), and the next run that takes the item writes its outputs from it
without sending anything: a pending item by any run, a failed one by
``--retry-failed``. An answer is dropped once its item is done, or when its source
changed (another fingerprint): it no longer answers it.

Nothing of this runs per item unless an answer was kept: a run loads the kept items'
ids once, and a set lookup tells the rest.
"""

from __future__ import annotations

import asyncio
import logging

from batch.errors import StateError
from batch.state import State, WorkItem

log = logging.getLogger("dgbatch")


class Keeping:
    """A run's kept answers: those an earlier run kept, and those this run keeps."""

    def __init__(self, state: State, run_id: int) -> None:
        self.state = state
        self.run_id = run_id
        #: items with an answer kept by an earlier run (``load``)
        self._ids: set[str] = set()
        #: answers this run kept (for the summary)
        self.kept = 0

    async def load(self) -> None:
        """Read which items have an answer to write (after a crashed run's items are
        recovered: those recovered as done drop theirs)."""
        self._ids = await asyncio.to_thread(self.state.kept_ids)

    def may_have(self, item: WorkItem) -> bool:
        """Whether an answer was kept for ``item`` (a set lookup: this runs per item)."""
        return item.id in self._ids

    async def answer(self, item: WorkItem) -> bytes | None:
        """The paid answer kept for ``item``, if it still answers it."""
        return await asyncio.to_thread(self.state.kept_answer, item.id)

    async def keep(self, item: WorkItem, body: bytes) -> None:
        """Keep ``item``'s paid answer (this only runs when its outputs failed). Shielded: an
        item cancelled again meanwhile still has its answer kept."""
        keeping = asyncio.ensure_future(asyncio.to_thread(self._keep, item, body))
        await asyncio.shield(keeping)

    def _keep(self, item: WorkItem, body: bytes) -> None:
        try:
            self.state.keep_answer(item, self.run_id, body)
        except StateError as exc:  # the state's disk is full too: nothing more to do
            log.warning("%s: its paid answer could not be kept: %s", item.source, exc)
            return
        self.kept += 1
