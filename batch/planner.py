"""Plan in the background, so that the first request of a big run goes out at once.

Sources are expanded and upserted into the state by a thread, in chunks of ``CHUNK``
items; each chunk is committed and named before the runner may claim its items, and
the runner waits for the next chunk when it runs out. A million-line manifest thus
starts sending after its first chunk instead of after the whole plan.

Output names are assigned per chunk against everything already in the state, exactly
as a later run names the items it adds: an item whose stem is taken by an item of an
earlier chunk keeps its extension (``a.mp3.json``), the earlier one keeps its name.
Chunks are cut by count, never by time, so names stay deterministic.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterable

from batch.errors import BatchError, PlanCutShort, SourceError
from batch.models import Item
from batch.redact import redact_text
from batch.state import PlanStats, State

#: items per chunk: large enough that most runs are named in one chunk, small enough
#: that the first one is planned in well under a second
CHUNK = 5_000
#: seconds between two progress updates while the plan grows
GROWTH_INTERVAL = 2.0


#: what a source that fails once items are planned adds to its error (an S3 listing whose
#: credentials expired at page 9 read as a finished batch: "0 pending", exit 2)
_CUT_SHORT = (
    "(the sources stopped after {seen} item(s), which this run sends; the rest was not "
    "listed, and the next run lists it again)"
)


class BackgroundPlan:
    """A plan running in a thread; the runner asks it for more with :meth:`wait_more`."""

    def __init__(
        self,
        state: State,
        items: Iterable[Item],
        plan_chunk: Callable[[Iterable[Item]], PlanStats],
        *,
        cancel: threading.Event,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._chunks = self._taken = 0
        self.cancel = cancel
        #: called (at most every GROWTH_INTERVAL) when chunks were added; the runner
        #: updates its progress total with it
        self.on_growth: Callable[[], Awaitable[None]] | None = None
        self._last_growth = self._loop.time()
        self._growth: asyncio.Task[None] | None = None
        self._growth_timer: asyncio.TimerHandle | None = None
        work = asyncio.to_thread(self._plan, state, items, plan_chunk)
        self._task: asyncio.Task[PlanStats] = asyncio.ensure_future(work)
        self._task.add_done_callback(lambda _: self._changed.set())

    def _plan(
        self,
        state: State,
        items: Iterable[Item],
        plan_chunk: Callable[[Iterable[Item]], PlanStats],
    ) -> PlanStats:
        try:
            return self._plan_chunks(state, items, plan_chunk)
        except BatchError:
            raise
        except Exception as exc:  # a bug: the runner stops as for a bad source, not crashes
            msg = f"internal error while planning ({type(exc).__name__}: {exc})"
            raise BatchError(redact_text(msg)) from exc

    def _plan_chunks(
        self,
        state: State,
        items: Iterable[Item],
        plan_chunk: Callable[[Iterable[Item]], PlanStats],
    ) -> PlanStats:
        seen = broken = 0
        stream = iter(items)
        while True:
            try:
                chunk = plan_chunk(itertools.islice(stream, CHUNK))
            except SourceError as exc:
                if not seen:
                    raise
                raise PlanCutShort(f"{exc} {_CUT_SHORT.format(seen=seen)}") from exc
            if chunk.seen == 0:
                return PlanStats(seen, broken)
            seen, broken = seen + chunk.seen, broken + chunk.broken
            state.assign_names()
            self._loop.call_soon_threadsafe(self._chunk_ready)

    def _chunk_ready(self) -> None:
        self._chunks += 1
        self._changed.set()
        self._grow_soon()

    def _grow_soon(self) -> None:
        """Show the new total at most every ``GROWTH_INTERVAL``, and once more after the
        last chunk: the chunks of a window were never shown (a 100,000-file folder ran
        to its end against a total of 70,000, its ETA wrong)."""
        if self.on_growth is None or self._growth_timer is not None:
            return
        wait = max(0.0, self._last_growth + GROWTH_INTERVAL - self._loop.time())
        self._growth_timer = self._loop.call_later(wait, self._grow)

    def _grow(self) -> None:
        self._growth_timer = None
        if self._growth is not None and not self._growth.done():  # the last one is slow
            self._last_growth = self._loop.time()
            self._grow_soon()
            return
        if self.on_growth is not None:
            self._last_growth = self._loop.time()
            self._growth = asyncio.ensure_future(self.on_growth())

    @property
    def done(self) -> bool:
        """True once every item is planned (or planning failed)."""
        return self._task.done()

    async def started(self) -> None:
        """Wait for the first chunk, or for the end of a plan too small for one."""
        while not self._chunks and not self._task.done():
            self._changed.clear()
            await self._changed.wait()

    async def wait_more(self) -> bool:
        """Wait for a chunk the runner has not seen; False once planning is over.

        Raises:
            BatchError: planning failed (an unusable SOURCE, an interrupt, a bad state).
        """
        while self._taken == self._chunks and not self._task.done():
            self._changed.clear()
            await self._changed.wait()
        if self._taken < self._chunks:
            self._taken = self._chunks
            return True
        self._task.result()  # raise what stopped the plan, if anything
        return False

    async def finish(self, *, stopped: bool) -> PlanStats:
        """What was planned. A run that ``stopped`` no longer needs the rest of the plan:
        it is cancelled, and the error that stopped the run is not raised again.

        Raises:
            BatchError: planning failed and the run did not stop for it.
        """
        if stopped and not self._task.done():
            self.cancel.set()
        try:
            return await self._task
        except BatchError:
            if stopped:
                return PlanStats(0, 0)
            raise
        finally:
            await self._stop_growing()

    async def _stop_growing(self) -> None:
        """No progress update after the run: it reads the state, which is then closed."""
        if self._growth_timer is not None:
            self._growth_timer.cancel()
            self._growth_timer = None
        if self._growth is not None and not self._growth.done():
            await asyncio.gather(self._growth, return_exceptions=True)
