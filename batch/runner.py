"""The worker pool: claim items from the state, send them, write outputs, record results.

Shutdown is one code path: a signal, a fatal API answer or an output failure sets a
stop reason and closes the limiter; nothing new is dispatched, in-flight requests
finish (or, after the grace period, are cancelled), every unfinished item goes back
to ``pending`` and the buffered results are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable

from batch.adoption import Adoption
from batch.attempts import Attempts
from batch.budget import Budget, Reservation
from batch.client import DeepgramClient
from batch.dedupe import Copies, Dedupe
from batch.errors import BatchError, Interrupted, ItemError, StateError
from batch.keeping import Keeping
from batch.limiter import AdaptiveLimit
from batch.media import Sender, local_problem, size_problem
from batch.models import ItemKind, ItemStatus
from batch.outputs import OUTPUT_GRACE, LocalSink, OutputSink
from batch.placing import Placer
from batch.probe import guess_seconds, local_duration
from batch.progress import Progress
from batch.realsources import RealSources
from batch.redact import redact_text
from batch.runtypes import RunnerSettings, RunStats, until_stopped
from batch.state import Result, State, WorkItem

__all__ = ["FLUSH_INTERVAL", "RunStats", "Runner", "RunnerSettings"]

log = logging.getLogger("dgbatch")

FLUSH_INTERVAL = 0.2
#: an abandoned item still alive this long after its cancel is cancelled again: past the
#: grace its paid answer's outputs get to land (``outputs.landed``), and a turn of drain
_RECANCEL_AFTER = OUTPUT_GRACE + 0.25


class Runner:
    """One run of the pool over a planned state."""

    def __init__(
        self,
        settings: RunnerSettings,
        state: State,
        client: DeepgramClient,
        sink: OutputSink,
        senders: dict[ItemKind, Sender],
        progress: Progress,
        *,
        run_id: int,
        secret_sources: RealSources,
        keeping: Keeping,
        budget: Budget | None = None,
        dedupe: Dedupe | None = None,
        more: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.progress = progress
        self.run_id = run_id
        self.secret_sources = secret_sources
        self.stats = RunStats()
        self.limit = AdaptiveLimit(
            settings.concurrency, adaptive=settings.adaptive, on_change=progress.limit_changed
        )
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._signals = 0
        self.budget = budget
        self.dedupe = dedupe
        #: per in-flight item: local duration (mutagen) and budget reservation
        self._local: dict[str, float | None] = {}
        self._reserved: dict[str, Reservation] = {}
        #: set each time an item settles its budget reservation (``_wait_for_budget``)
        self._settled = asyncio.Event()
        #: leaders' answers kept for their --dedupe copies (``Placer.write``, ``Copies``)
        self._captured: dict[str, bytes] = {}
        self._done_before = self._failed_before = 0
        #: per in-flight item: (attempts, 200s without a transcript) so far, for the result
        #: of an item that an exception or a cancel takes out of ``Attempts.process``
        self._tries: dict[str, tuple[int, int]] = {}
        #: the in-flight items were abandoned (and the user told so)
        self._grace_over = False
        #: items whose slot went back when their answer arrived (``_release_slot``)
        self._early: set[str] = set()
        #: items alive at once: those in flight and those placing their outputs (each
        #: at most --concurrency), so a crash leaves at most this many ``running``; it binds
        #: only --dedupe copies, which wait for their leader without a request slot
        self._live = asyncio.Semaphore(2 * settings.concurrency)
        self._more = more  # a plan still growing: waits for its next chunk (batch.planner)
        #: paid answers whose outputs could not be written, for the next run to write
        self.keeping = keeping
        self._placer, self._adoption, self._attempts = self._stages(client, sink, senders)
        self._copies = (
            None
            if dedupe is None
            else Copies(
                dedupe,
                self._attempts,
                self._placer,
                self.limit,
                captured=self._captured,
                stopped=self._stopped,
                state=state,
            )
        )

    def _stages(
        self, client: DeepgramClient, sink: OutputSink, senders: dict[ItemKind, Sender]
    ) -> tuple[Placer, Adoption, Attempts]:
        """What one item goes through, each piece handed the bookkeeping above it needs
        (shared, not copied: the runner reads it back when an item ends or is cut short)."""
        settings, state = self.settings, self.state
        placer = Placer(
            settings,
            sink,
            local=self._local,
            release_slot=self._release_slot,
            captured=self._captured if self.dedupe is not None else None,
            keeping=self.keeping,
            redact=client.redacted,
        )
        adoption = Adoption(settings, state, sink, placer, self.stats, local=self._local)
        attempts = Attempts(
            settings,
            client,
            senders,
            self.limit,
            placer,
            adoption,
            self.progress,
            self.stats,
            secret_sources=self.secret_sources,
            tries=self._tries,
            note_tries=state.note_tries,
            stopped=self._stopped,
            stop=self.stop,
        )
        return placer, adoption, attempts

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> RunStats:
        """Recover a crashed run's items, then dispatch until the queue is empty or a stop."""
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            await self._adoption.recover()
            await self.keeping.load()
            counts = await asyncio.to_thread(self.state.counts)
            self._done_before = counts["done"] + counts["failed"]
            self._failed_before = counts["failed"]
            self.progress.start(sum(counts.values()), self._done_before, self._failed_before)
            if self.settings.adaptive:
                self.progress.limit_changed(self.limit.limit)
            try:
                await self._dispatch()
            except BatchError as exc:  # the in-flight items still land (or stay pending)
                self.stop(exc)
            await self._drain()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await asyncio.to_thread(self.state.release_running)
            if self.dedupe is not None:  # no copy can come any more
                self.dedupe.spool.close()
            self.stats.kept = self.keeping.kept
            self.progress.close()
        return self.stats

    def stop(self, reason: BatchError) -> None:
        """Stop dispatching; the first reason wins."""
        if self.stats.stop_reason is None:
            self.stats.stop_reason = reason
        self._stopped.set()
        self.limit.close()

    @property
    def stopping(self) -> bool:
        """True once anything asked the run to stop."""
        return self._stopped.is_set()

    # -- dispatch --------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        queue: deque[WorkItem] = deque()
        cursor = 0
        ahead: asyncio.Task[list[WorkItem]] | None = None  # the next claim, started early
        while await self._room():
            if not queue:
                batch = await ahead if ahead is not None else await self._claim(cursor)
                ahead = None
                while not batch and await self._more_planned():
                    cursor = 0  # the chunk may have sent earlier rows back to pending
                    batch = await self._claim(cursor)
                if not batch:
                    self._no_room_used()
                    break
                cursor = batch[-1].rowid
                queue.extend(batch)
            if not await self._admit(queue[0]):
                self._no_room_used()
                break
            item = queue.popleft()
            if self._copies is not None and item.kind is ItemKind.FILE:
                self._copies.expect(item.id)  # a copy the budget asks about waits for it
            task = asyncio.create_task(self._work(item))
            self._tasks.add(task)
            task.add_done_callback(self._ended)
            if ahead is None and len(queue) < self.settings.concurrency // 2:
                ahead = asyncio.create_task(self._claim(cursor))
        if ahead is not None:
            queue.extend(await ahead)
        for item in queue:
            self.state.record(Result(item.id, ItemStatus.PENDING, item.attempts))

    async def _room(self) -> bool:
        """Wait for room among the live items, then for a request slot; False when the
        limiter closed (the run is stopping)."""
        await self._live.acquire()
        if await self.limit.acquire():
            return True
        self._live.release()
        return False

    def _no_room_used(self) -> None:
        self.limit.release()
        self._live.release()

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._live.release()

    async def _measure(self, item: WorkItem) -> float | None:
        """A local file's duration per its headers (once per item), for the truncation
        check and the budget; None for URL/S3 items and unreadable files."""
        if item.id not in self._local:
            local = None
            if item.kind is ItemKind.FILE:  # a path: never stored redacted
                local = await asyncio.to_thread(local_duration, item.source)
            self._local[item.id] = local
        return self._local[item.id]

    async def _admit(self, item: WorkItem) -> bool:
        """Reserve the item's audio against the budget; False (and the run stops) when it
        would pass the cap. Without a budget, nothing is measured here: the worker does it,
        so the dispatch loop never waits on a file's headers."""
        if self.budget is None:
            return True
        if self.keeping.may_have(item) and await self.keeping.answer(item) is not None:
            return True  # paid for already: writing it costs nothing (``Placer.kept_result``)
        rate = self.budget.rate(item.params)
        if rate is None:  # priced at no model's price, it could pass the cap unseen
            self.stop(self.budget.unpriced(item.source, item.params))
            return False
        reservation = await self._reservation(self.budget, item, await self._estimate(item), rate)
        if reservation is None:
            return False
        self._reserved[item.id] = reservation
        return True

    async def _estimate(self, item: WorkItem) -> float | None:
        """The audio the item will be billed for: measured (a local file's headers), else
        guessed from its size; none for one adopted or failing unsent (it is not sent)."""
        local = await self._measure(item)
        if self._outputs_there(item) or await self._fails_unsent(item, sniff=local is None):
            return 0.0
        return local if local is not None else guess_seconds(item.size)

    async def _reservation(
        self, budget: Budget, item: WorkItem, estimate: float | None, rate: float
    ) -> Reservation | None:
        """The item's share of the budget, waited for while items in flight hold it; None
        when the run stops: a signal came meanwhile, or the item would pass the cap."""
        if budget.must_wait(estimate):
            # without the request slot taken for it: the item it waits for may need that
            # very slot to retry (a 429 cuts the limit to one)
            await self.limit.without_slot(self._wait_for_budget(budget, estimate))
        if self.stopping:
            return None
        reservation = await self._reserve(budget, estimate, rate)
        if reservation is None and self.stopping:  # a signal while it waited
            return None
        if reservation is None and self._copies is not None:
            free = await self._free_copy(item)
            if self.stopping:  # a signal while it waited: nothing more is dispatched
                return None
            # else its original ended meanwhile, giving back what it had reserved
            reservation = Reservation(0.0) if free else budget.admit(estimate, rate)
        if reservation is None:
            self.stop(budget.exceeded(item.source, estimate, rate))
        return reservation

    async def _reserve(
        self, budget: Budget, estimate: float | None, rate: float
    ) -> Reservation | None:
        """``Budget.admit``, waiting (without a request slot) while items in flight hold
        what it lacks: one may cost less than it reserved (outputs found in S3, a file
        that fails unsent), and the run stopped for good at the next item."""
        while True:
            reservation = budget.admit(estimate, rate)
            if reservation is not None or not budget.holds() or self.stopping:
                return reservation
            await self.limit.without_slot(self._next_settle())

    def _outputs_there(self, item: WorkItem) -> bool:
        """A json already where the item's goes in a local ``--out``, written by no run
        this state knows (a state lost): the item is adopted (the json is of its audio) or
        fails unsent (another's), free either way, unless ``--force`` redoes it."""
        sink = self._placer.sink
        if not isinstance(sink, LocalSink) or item.forced or item.recorded is not None:
            return False  # adopted only with every format asked for: json first
        return "json" in self.settings.formats and sink.has_file(item.out_name, "json")

    async def _fails_unsent(self, item: WorkItem, *, sniff: bool) -> bool:
        """A local file the send-time checks will refuse (gone, changed, empty, over 2 GB:
        ``check_path``; not audio, when ``sniff``: ``sniff_path``), or an S3 object listed
        empty or over 2 GB: it costs nothing."""
        if item.kind is ItemKind.S3:
            return size_problem(item.size) is not None
        if item.kind is not ItemKind.FILE:
            return False
        sniff = sniff and self.settings.sniff
        problem = await asyncio.to_thread(
            local_problem, item.source, item.fingerprint, item.params, sniff=sniff
        )
        return problem is not None

    async def _free_copy(self, item: WorkItem) -> bool:
        """With ``--dedupe``, an item the cap would stop at is let through if it is a copy
        whose answer this run has (waiting, without a request slot, for the item that leads
        it to end): it costs nothing, and stopped here it would be paid for by the next run.
        Such a copy never sends (``Copies.free``): if its answer cannot be had after all, it
        stays pending."""
        if self._copies is None or item.kind is not ItemKind.FILE:
            return False
        key = await self._copies.dedupe.key(item.source, item.params)
        if key is None:
            return False
        answered = self._copies.answered(item, key)
        waited = await self.limit.without_slot(until_stopped(answered, self._stopped))
        if waited is None or not waited.result():
            return False
        self._copies.free.add(item.id)
        return True

    async def _wait_for_budget(self, budget: Budget, estimate: float | None) -> None:
        """Hold the dispatch while the budget asks an item to wait (``Budget.must_wait``),
        or until the run stops."""
        while budget.must_wait(estimate) and not self.stopping:
            await self._next_settle()

    async def _next_settle(self) -> None:
        """Until an item settles its budget reservation, or the run stops. Cleared here,
        with no await since the caller's look at the budget: no settle is missed."""
        self._settled.clear()
        await until_stopped(self._settled.wait(), self._stopped)

    def _account(self, item: WorkItem, result: Result) -> None:
        """Settle the item's budget reservation and forget its per-item bookkeeping."""
        local = self._local.pop(item.id, None)
        self._captured.pop(item.id, None)
        unwritten = self._placer.unwritten.pop(item.id, 0.0)  # billed, outputs failed: kept
        paid = (  # not a copy, a kept answer written, nor outputs adopted: no request
            result.status is ItemStatus.DONE
            and result.copy_of is None
            and not result.kept
            and result.attempts > item.attempts
        )
        self.stats.audio_seconds += unwritten  # paid for by this run, all the same
        if self.budget is not None:
            reservation = self._reserved.pop(item.id, None)
            billed = result.duration if paid else unwritten
            garbage = max(0, result.paid_200s - item.paid_200s)  # billed without a transcript
            length = result.duration or local or (reservation.seconds if reservation else 0.0)
            self.budget.settle(reservation, billed, garbage * length)
            self._settled.set()
        self.stats.warnings += result.warning is not None
        self.stats.copies += result.copy_of is not None

    async def _claim(self, cursor: int) -> list[WorkItem]:
        """The next items, or none when the state cannot be written (the run stops)."""
        try:
            listed = self._more is not None  # the plan grows: what it listed again only
            return await asyncio.to_thread(
                self.state.claim, self.settings.concurrency, cursor, self.run_id, listed=listed
            )
        except StateError as exc:
            self.stop(exc)
            return []

    async def _more_planned(self) -> bool:
        """Wait for the plan's next chunk; False when planning is over or the run stops.
        True once more when the plan ends: earlier runs' pending items it did not list
        (claimed only now) are sent too."""
        if self._more is None or self.stopping:
            return False
        more = await until_stopped(self._more(), self._stopped)
        if more is None:
            return False
        try:
            if more.result() and not self.stopping:
                return True
        except BatchError as exc:  # planning failed: stop as for any other fatal reason
            self.stop(exc)
            return False
        self._more = None
        await self.plan_grew()
        return not self.stopping

    async def plan_grew(self) -> None:
        """The plan added items while running: show the new total."""
        try:
            counts = await asyncio.to_thread(self.state.counts)
        except (StateError, sqlite3.Error) as exc:  # the display waits for the next one
            log.debug("progress total not updated: %s", exc)
            return
        self.progress.start(sum(counts.values()), self._done_before, self._failed_before)

    async def _drain(self) -> None:
        """Wait for in-flight items; after a signal, only for the grace period."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while self._tasks:
            if deadline is None and (
                self._signals or isinstance(self.stats.stop_reason, Interrupted)
            ):
                deadline = loop.time() + self.settings.grace
            if deadline is not None and loop.time() >= deadline:
                if not self._grace_over:
                    self._say_abandoning(f"--grace {self.settings.grace:g}s is over")
                _abandon(self._tasks, again=loop.time() >= deadline + _RECANCEL_AFTER)
            await asyncio.wait(set(self._tasks), timeout=0.25)

    # -- one item --------------------------------------------------------------------------

    async def _work(self, item: WorkItem) -> None:
        try:
            result = await self._deduped(item)
        except asyncio.CancelledError:
            self.state.record(self._cut_short(item, ItemStatus.PENDING, abandoned=True))
            self.stats.audio_seconds += self._placer.unwritten.pop(item.id, 0.0)  # kept
            raise
        except ItemError as exc:  # raised after the answer, e.g. an unusable output path
            result = self._cut_short(item, ItemStatus.FAILED, str(exc), exc.code)
        except BatchError as exc:  # an output, or the run's temporary files: not the item's
            self.stop(exc)
            result = self._cut_short(item, ItemStatus.PENDING)
        except Exception as exc:  # a bug must cost one item, not the run
            log.debug("unexpected error on %s", item.source, exc_info=True)
            error = redact_text(f"internal error: {type(exc).__name__}: {exc}")
            result = self._cut_short(item, ItemStatus.FAILED, error)
        finally:
            self._release_slot(item.id)
            self._tries.pop(item.id, None)
            if self._copies is not None:  # however it ended
                self._copies.keyed(item.id)
                self._copies.free.discard(item.id)
        if result.local_duration is None and result.paid_200s > item.paid_200s:
            # stored: the next run's budget counts its 200s without a transcript at it
            result = dataclasses.replace(result, local_duration=self._local.get(item.id))
        self._record(result)
        self._account(item, result)

    def _cut_short(
        self,
        item: WorkItem,
        status: ItemStatus,
        error: str | None = None,
        code: str | None = None,
        *,
        abandoned: bool = False,
    ) -> Result:
        """The result of an item taken out of ``Attempts.process`` by an exception or a cancel,
        with the attempts it made (they were paid for). A request ``abandoned`` while out
        (a second signal, the end of ``--grace``) once its whole body was out may have been
        processed: it counts as a possibly billed retry, as a timeout does, since the next
        run sends it again."""
        attempts, paid_200s = self._tries.get(item.id, (item.attempts, 0))
        timeouts = 0
        task = asyncio.current_task()
        if abandoned and task is not None and self._attempts.client.abandoned.pop(task, False):
            timeouts = 1
            self.stats.timeout_retries += 1
        return Result(
            item.id,
            status,
            attempts,
            error=error,
            err_code=code,
            timeout_retries=timeouts,
            paid_200s=paid_200s,
        )

    async def _deduped(self, item: WorkItem) -> Result:
        """Measure the item, then process it (``batch.attempts``); with ``--dedupe``, a
        local file is sent only if it leads its content key (``batch.dedupe``)."""
        await self._measure(item)
        if self._copies is None or item.kind is not ItemKind.FILE or await self._has_kept(item):
            return await self._attempts.process(item)
        return await self._copies.process(item)

    async def _has_kept(self, item: WorkItem) -> bool:
        """Whether a --dedupe copy's kept answer (its original's) will be written for the
        item: it is written as that copy, outside the run's --dedupe leads. Leading its
        key, it made its original a copy of it, and the request that was paid counted
        nowhere (a review found such pairs). An original's kept answer leads its key, so
        that its copies get it rather than pay again."""
        if not self.keeping.may_have(item):
            return False
        kept = await self.keeping.answer(item)
        return kept is not None and kept[1] is not None

    def _release_slot(self, item_id: str, *, early: bool = False) -> None:
        """Give the item's request slot back, once. ``early``: its answer is in, so the
        next request need not wait for the outputs to be written (``Placer.write``)."""
        if early:
            self._early.add(item_id)
        elif item_id in self._early:
            self._early.discard(item_id)
            return
        self.limit.release()

    def _record(self, result: Result) -> None:
        self.state.record(result)
        if result.status is ItemStatus.DONE:
            self.stats.done += 1
            self.stats.from_kept += result.kept  # paid for by the run that kept it
            sent = not (result.kept or result.adopted or result.copy_of is not None)
            seconds = (result.duration or 0.0) if sent else None  # no audio this run sent
            self.stats.audio_seconds += seconds or 0.0
            self.progress.item_finished(True, seconds)
        elif result.status is ItemStatus.FAILED:
            self.stats.failed += 1
            kind = result.err_code or (result.error or "error").split(":")[0]
            self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
            kept = self._placer.unwritten.get(result.id)  # paid, outputs failed: the run's audio
            self.progress.item_finished(False, kept)

    # -- plumbing --------------------------------------------------------------------------

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.progress.tick()
            if self.state.pending_results():
                try:
                    await asyncio.to_thread(self.state.flush)
                except StateError as exc:
                    self.stop(exc)
                    return

    def interrupt(self, sig: signal.Signals) -> None:
        """SIGINT/SIGTERM/SIGHUP: stop dispatching; a second one cancels in-flight requests,
        unless it is a SIGHUP: a closed terminal sends it twice (the kernel, then the
        shell), and no one is there to ask twice."""
        if sig == signal.SIGHUP and self._signals:
            return
        self._signals += 1
        name = signal.Signals(sig).name
        self.stop(Interrupted(f"interrupted by {name}; the same command resumes the run"))
        if self._signals == 1:
            log.warning("%s: finishing %d in-flight item(s)…", name, len(self._tasks))
            return
        self._say_abandoning(f"{name} again")
        _abandon(self._tasks)

    def _say_abandoning(self, why: str) -> None:
        """Tell, once, that the in-flight items are abandoned, and what that may cost."""
        self._grace_over = True
        log.warning(
            "%s: abandoning %d in-flight item(s): an answer that came and waits for its "
            "outputs is kept in the state, for the next run to write unsent; Deepgram may have "
            "those whose request was still out (counted as possibly billed), which the next "
            "run sends again",
            why,
            len(self._tasks),
        )


def _abandon(tasks: set[asyncio.Task[None]], *, again: bool = False) -> None:
    """Cancel each task once (``again``: even if it was already): a second cancel would
    cut short the grace the first gives a paid answer's outputs to land."""
    for task in list(tasks):
        if again or not task.cancelling():
            task.cancel()
