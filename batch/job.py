"""Wire one ``dgbatch run``: open the state, plan the sources, run the pool, report.

This is where the stages meet (sources → state → runner → client → outputs); each
stage stays ignorant of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets as tokens
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from batch.account import check_key
from batch.backfill import Backfilled, backfill, done_to_render, done_without
from batch.billing import check_budget, make_budget
from batch.budget import Budget
from batch.client import DeepgramClient, make_session
from batch.config import RunConfig, report_path
from batch.dedupe import Dedupe
from batch.errors import (
    BatchError,
    Interrupted,
    OutputError,
    UsageError,
    exit_code_of,
)
from batch.keeping import Keeping
from batch.models import Item, Params
from batch.naming import is_s3_uri
from batch.outputguard import run_inputs
from batch.outputs import LocalSink, OutputSink
from batch.params import project_limit, run_tags
from batch.planner import BackgroundPlan
from batch.pricing import price_params
from batch.progress import Progress
from batch.realsources import RealSources
from batch.records import Some
from batch.redact import redact_source, redact_text
from batch.report import save_report
from batch.runner import Runner, RunnerSettings, RunStats
from batch.runreport import (
    RunReport,
    report_place_taken,
    save_run_report,
)
from batch.s3 import S3, S3Options
from batch.s3lock import LockWatch, output_lock
from batch.s3sink import S3Sink
from batch.s3sources import expand as expand_s3
from batch.sending import make_senders
from batch.shard import Shard
from batch.signals import SignalLatch, latched_signals, note_late_signals
from batch.sources import expand_sources, hidden_clash, manifest_paths
from batch.state import State
from batch.statefile import remove_unused

log = logging.getLogger("dgbatch")


@dataclass
class RunOutcome:
    """How a run ended: what ``cli`` prints and the exit code it returns."""

    exit_code: int
    stats: RunStats
    counts: dict[str, int]
    wall_seconds: float
    report_path: Path | None
    error: BatchError | None = None
    #: per format asked for, done items (of any run) that have no such output nor a json
    missing: dict[str, int] = field(default_factory=dict)
    #: done items that lack a format asked for and have a json: the next run renders it
    to_render: int = 0
    #: failed items of earlier runs that this run's sources did not list (a source since
    #: deleted, a manifest line since fixed): not in the exit code
    unlisted_failed: int = 0
    #: failed items of this run that the next run sends again by itself (``retry_next``)
    sent_next: int = 0

    def summary(self) -> dict[str, Any]:
        """The numbers recorded in the runs table and printed at the end."""
        return {
            "exit_code": self.exit_code,
            "counts": self.counts,
            "sent": self.stats.sent,
            "done_this_run": self.stats.done,
            "failed_this_run": self.stats.failed,
            "retries": self.stats.retries,
            "timeout_retries": self.stats.timeout_retries,
            "recovered": self.stats.recovered,
            "skipped_existing": self.stats.skipped,
            "audio_hours": round(self.stats.audio_seconds / 3600, 4),
            "warnings": self.stats.warnings,
            "copies": self.stats.copies,
            "answers_kept": self.stats.kept,
            "written_from_kept": self.stats.from_kept,
            "wall_seconds": round(self.wall_seconds, 3),
            "rendered_from_json": self.stats.rendered,
            "done_without_format": self.missing,
            "done_to_render_from_json": self.to_render,
            "failed_not_listed": self.unlisted_failed,
            **({"error": redact_text(str(self.error))} if self.error is not None else {}),
        }


def exit_code_for(counts: dict[str, int], stop: BatchError | None) -> int:
    """0 only when every item of the run (``State.run_counts``) is done; a stop reason wins
    over counts."""
    if stop is not None:
        return exit_code_of(stop)
    if counts["failed"] or counts["pending"] or counts["running"]:
        return 1
    return 0


async def run_batch(
    config: RunConfig, progress: Progress, stdin: TextIO | None = None
) -> RunOutcome:
    """Plan, run and report one batch; raises ``BatchError`` for unusable input or state.

    The ``--run-report`` is written however the run ends, refusals included, so a
    monitor always learns the exit code.
    """
    try:
        with latched_signals() as signals:
            return await _run_batch(config, progress, stdin, signals)
    finally:
        note_late_signals()


async def _run_batch(
    config: RunConfig, progress: Progress, stdin: TextIO | None, signals: SignalLatch
) -> RunOutcome:
    check_budget(config)
    warn_over_deepgrams_limit(config)
    s3 = S3(S3Options(endpoint_url=config.s3_endpoint_url, threads=config.concurrency + 8))
    report = RunReport(
        started=time.time(),
        command=redact_text(config.command, (config.api_key,)),
        out=redact_source(config.out),
        shard=config.shard.suffix() if config.shard else None,
    )
    taken = False
    outcome: RunOutcome | None = None
    try:
        try:
            await refuse_report_place(config, s3)
        except UsageError:
            taken = True
            raise
        if config.preflight:  # a refused key is the commonest nightly failure: reported too
            details = await check_key(config.api_url, config.api_key)
            if details is not None:
                log.info("%s", details.describe())
        outcome = await _run_locked(config, progress, stdin, s3, report, signals)
        report.exit_code = outcome.exit_code
        report.error = str(outcome.error) if outcome.error else None
    except BatchError as exc:
        report.exit_code, report.error = exit_code_of(exc), redact_text(str(exc))
        raise
    finally:
        report.finished = time.time()
        try:  # not where something else is (``taken``): that is what the run stops for
            unsaved = None if taken else await _save_run_report(config, report, s3)
        finally:
            s3.close()
        if unsaved is not None and (outcome is None or outcome.exit_code != 0):
            log.error("%s", unsaved)  # beside the error the run stops for, which cli prints
    if unsaved is not None and outcome.exit_code == 0:  # a monitor would read last night's
        return dataclasses.replace(outcome, exit_code=1, error=unsaved)  # cli prints it
    return outcome


def warn_over_deepgrams_limit(config: RunConfig) -> None:
    """Deepgram takes 100 requests of a project at once (5 with Whisper, 10 or 5 with
    Audio Intelligence): above that, it answers 429 until the run's limit comes down,
    which makes it slower, not faster."""
    limit = project_limit(config.params)
    if config.concurrency > limit:
        log.warning(
            "--concurrency %d is above the %d requests Deepgram takes at once for this "
            "run's params: the rest get 429 and wait; -c %d is as fast",
            config.concurrency,
            limit,
            limit,
        )


async def refuse_report_place(config: RunConfig, s3: S3) -> None:
    """Refuse a ``--run-report`` place before anything is paid for, not at the end.

    Raises:
        UsageError: something else than an earlier run report is there, or no bucket.
    """
    if config.run_report is None:
        return
    taken = await report_place_taken(config.run_report, s3)
    if taken is not None:
        raise UsageError(f"--run-report {redact_source(config.run_report)!r}: {taken}")


async def _save_run_report(config: RunConfig, report: RunReport, s3: S3) -> OutputError | None:
    """Write the run report, if asked for (its place was checked before the run began);
    why it is not written, returned: a clean run's exit code becomes 1 for it."""
    dest = config.run_report
    if dest is None:
        return None
    try:
        await save_run_report(dest, report, s3)
    except OutputError as exc:
        return exc
    return None


async def _run_locked(
    config: RunConfig,
    progress: Progress,
    stdin: TextIO | None,
    s3: S3,
    report: RunReport,
    signals: SignalLatch,
) -> RunOutcome:
    """Hold the state lock (and the output lock of an S3 ``--out``) for the whole run."""
    started = time.monotonic()
    fresh = not os.path.lexists(config.state_path)
    state = State.open(config.state_path)
    secrets = RealSources()
    locked = False
    try:
        shard = config.shard.suffix() if config.shard else ""
        async with output_lock(s3, config.out, shard, config.state_path) as lock_watch:
            locked = True
            command = redact_text(config.command, (config.api_key,))
            run_id = state.start_run(command, price_params(config.params))
            with _recorded_if_stopped(state, run_id):
                run = _LockedRun(config, state, run_id, s3, signals, secrets, lock_watch)
                sent = await run.plan_and_send(progress, stdin)
                outcome = await run.conclude(sent, started)
                report.counts, report.summary = outcome.counts, outcome.summary()
                await asyncio.to_thread(report.read_failures, state)
                return outcome
    finally:
        secrets.close()
        state.close()
        if fresh and not locked:  # another run writes there (exit 4): the state this run
            remove_unused(config.state_path)  # made is not left, empty, for status to read


@dataclass
class _Sent:
    """What sending left for the run's conclusion."""

    stats: RunStats
    began: float  # wall clock: items failed since then are this run's
    budget: Budget | None
    force_since: float | None


@dataclass
class _LockedRun:
    """One run inside its locks: the steps share its state, its id and its watchers."""

    config: RunConfig
    state: State
    run_id: int
    s3: S3
    signals: SignalLatch
    secrets: RealSources
    lock_watch: LockWatch

    async def plan_and_send(self, progress: Progress, stdin: TextIO | None) -> _Sent:
        """Plan in the background and send as the plan grows; a ``--force`` whose plan
        could not start sent nothing, so it did not begin."""
        config, state, run_id = self.config, self.state, self.run_id
        run_tag = f"dgbatch-run-{run_id}-{tokens.token_hex(3)}"
        state.set_run_tag(run_id, run_tag)
        force_since, new_force = state.begin_force(config.force)
        state.hold_unlisted()  # before the plan lists anything again
        began = time.time()
        try:
            plan = await start_plan(
                config, state, run_id, stdin, self.s3, self.signals, self.secrets, force_since
            )
        except BatchError:
            if new_force:
                state.end_force()
            raise
        budget = await asyncio.to_thread(make_budget, config, state)
        stats = await self._send(progress, run_tags(run_tag), budget, plan, force_since)
        await plan.finish(stopped=stats.stop_reason is not None)
        return _Sent(stats, began, budget, force_since)

    async def _send(
        self,
        progress: Progress,
        tags: Params,
        budget: Budget | None,
        plan: BackgroundPlan,
        force_since: float | None,
    ) -> RunStats:
        """Run the pool. While a ``--force`` is underway (``force_since``), an S3 ``--out``'s
        outputs are not adopted and answers kept before it are not written: they are what
        it redoes."""
        config, state, watch = self.config, self.state, self.lock_watch
        remote = is_s3_uri(config.out)
        threads = min(32, max(4, config.concurrency))
        inputs = frozenset() if remote else run_inputs(config.sources)  # stat'ed once
        local = None if remote else LocalSink(Path(config.out), threads, inputs)
        sink: OutputSink = local or S3Sink(self.s3, config.out)
        try:
            async with make_session(config.concurrency, config.api_url) as session:
                client = DeepgramClient(
                    session, config.api_url, config.api_key, timeout=config.timeout
                )
                runner = Runner(
                    runner_settings(config, force_since),
                    state,
                    client,
                    sink,
                    make_senders(config, tags, self.s3, inputs, watch),
                    progress,
                    run_id=self.run_id,
                    secret_sources=self.secrets,
                    budget=budget,
                    dedupe=Dedupe.for_run(config) if config.dedupe else None,
                    keeping=Keeping.for_run(config, state, self.run_id, force_since),
                    more=plan.wait_more,
                )
                plan.on_growth = runner.plan_grew
                watch.stop_with(runner.stop)
                with self.signals.routed_to(runner.interrupt):
                    stats = await runner.run()
                if stats.stop_reason is None:
                    await self._render_added(stats, sink)
                return stats
        finally:
            if local is not None:
                local.close()

    async def _render_added(self, stats: RunStats, sink: OutputSink) -> None:
        """Formats asked for now that done items lack, rendered from their json; a lost
        output lock stops the run as an output error does."""
        try:
            filled = await _render_added_formats(
                self.config, self.state, sink, self.signals, self.lock_watch
            )
            stats.rendered, stats.unrenderable = filled.rendered, filled.unrenderable
        except OutputError as exc:
            stats.stop_reason = exc
        stats.stop_reason = stats.stop_reason or self.lock_watch.lost

    async def conclude(self, sent: _Sent, started: float) -> RunOutcome:
        """Count what the run did, decide its exit code and record both in the state."""
        state, stats = self.state, sent.stats
        _say_asked_anew(await asyncio.to_thread(state.done_asked_anew, self.run_id))
        if stats.stop_reason is None:  # every manifest was read whole
            lines = manifest_paths(self.config.sources)
            await asyncio.to_thread(state.forget_stale_lines, lines, self.run_id)
        # broken inputs fail while planning, not sending: the state counts both
        stats.failed = await asyncio.to_thread(state.failed_since, sent.began)
        counts = await asyncio.to_thread(state.counts)
        mine = await asyncio.to_thread(state.run_counts, self.run_id)
        saved = await _save_report(state, report_path(self.config.state_path))
        stats.stop_reason = stats.stop_reason or self.signals.interruption()
        code = _exit_code(mine, stats.stop_reason, sent.budget)
        finished = stats.stop_reason is None and counts["pending"] == counts["running"] == 0
        if sent.force_since is not None and finished:
            state.end_force()
        wall = time.monotonic() - started
        outcome = RunOutcome(code, stats, counts, wall, saved, stats.stop_reason)
        await self._left_over(outcome, mine)
        state.finish_run(self.run_id, code, outcome.summary())
        return outcome

    async def _left_over(self, outcome: RunOutcome, mine: dict[str, int]) -> None:
        """What the summary says is left for later: formats missing or still to render,
        failures of earlier runs, failures the next run sends by itself."""
        state, formats = self.state, self.config.formats
        outcome.missing = await asyncio.to_thread(done_without, state, formats)
        lacking = await asyncio.to_thread(done_to_render, state, formats)
        outcome.to_render = lacking - outcome.stats.unrenderable  # those never will be
        outcome.unlisted_failed = outcome.counts["failed"] - mine["failed"]
        outcome.sent_next = await asyncio.to_thread(state.failed_sent_next, self.run_id)


def _exit_code(mine: dict[str, int], stop: BatchError | None, budget: Budget | None) -> int:
    """The run's exit code; a budget passed on the way (said here) makes a clean run's 1."""
    code = exit_code_for(mine, stop)
    passed = budget.passed() if budget is not None else None
    if passed is not None:
        log.warning("%s", passed)
        code = code or exit_code_of(passed)
    return code


def asked_anew_text(asked: Some) -> str | None:
    """Done items are not sent again for params their manifest lines ask for now: say so,
    naming them, or the edit would seem to have been applied."""
    if not asked.total:
        return None
    return (
        f"{asked.total} done item(s) are listed with other params than they were sent with "
        f"({asked.named()}): not sent again (their transcripts keep the earlier params; "
        "--force with their sources re-sends them, paid)"
    )


def _say_asked_anew(asked: Some) -> None:
    text = asked_anew_text(asked)
    if text is not None:
        log.warning("%s", text)


@contextmanager
def _recorded_if_stopped(state: State, run_id: int) -> Iterator[None]:
    """A run stopped by an error (an unusable SOURCE or a signal while planning, a full
    disk) is recorded with its exit code, not left "running or crashed" in ``status``."""
    try:
        yield
    except BatchError as exc:
        code = exit_code_of(exc)
        summary = {"exit_code": code, "error": redact_text(str(exc))}
        with contextlib.suppress(sqlite3.Error, BatchError):  # the state may be the problem
            state.finish_run(run_id, code, summary)
        raise


async def _render_added_formats(
    config: RunConfig,
    state: State,
    sink: OutputSink,
    signals: SignalLatch,
    lock_watch: LockWatch,
) -> Backfilled:
    """Formats done items lack, rendered from their json (nothing is sent); a signal or
    the loss of the output lock stops it between items, and the next run goes on."""
    cancel = threading.Event()
    lock_watch.stop_with(lambda reason: cancel.set())
    with signals.routed_to(lambda sig: cancel.set()):
        return await backfill(
            state,
            sink,
            config.formats,
            line_length=config.caption_line_length,
            workers=config.concurrency,
            cancel=cancel,
        )


async def _save_report(state: State, path: Path) -> Path | None:
    """The report is a copy of the state for convenience: failing to write it (the disk
    that just filled up) must not hide how the run went."""
    try:
        return await asyncio.to_thread(save_report, state, path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.warning("%s: cannot write the report (%s); 'dgbatch report' can write it", path, reason)
        return None


async def start_plan(
    config: RunConfig,
    state: State,
    run_id: int,
    stdin: TextIO | None,
    s3: S3,
    signals: SignalLatch,
    secrets: RealSources,
    force_since: float | None,
) -> BackgroundPlan:
    """Start expanding the sources into the state in a thread; return once its first
    chunk is planned (the runner starts on it) or the whole plan when it is small.
    Ctrl-C stops it between items."""
    cancel = threading.Event()
    listed = [0]
    sources = expand_sources(
        config.sources,
        config.filters,
        stdin=stdin,
        s3=functools.partial(expand_s3, s3),
        stop=cancel,
    )
    items = _watch(_counted(sources, listed, config.shard), secrets, cancel)
    chunk = functools.partial(
        state.plan,
        run_id=run_id,
        retry_failed=config.retry_failed,
        force_since=force_since,
    )
    with signals.routed_to(lambda sig: cancel.set()):
        plan = BackgroundPlan(state, items, chunk, cancel=cancel)
        await plan.started()
        if plan.done:
            await plan.finish(stopped=False)
    if plan.done and listed[0] == 0:
        if signals.received is not None:  # stdin was being read: a stop, not bad input
            raise Interrupted(f"interrupted by {signals.received.name} while reading sources")
        raise UsageError(
            f"no audio sources found in: {' '.join(map(redact_source, config.sources))}"
        )
    return plan


def _counted(items: Iterable[Item], listed: list[int], shard: Shard | None) -> Iterator[Item]:
    """Count every item found, keep this shard's: an empty shard of a full prefix is fine."""
    for item in items:
        listed[0] += 1
        if shard is None or shard.takes(item.name):
            yield item


def _watch(items: Iterable[Item], secrets: RealSources, cancel: threading.Event) -> Iterator[Item]:
    """Remember real sources whose stored form is redacted (a later one with the same id
    that differs in a secret fails, see ``hidden_clash``; one signed again replaces it, so
    the freshest signature is sent); stop on Ctrl-C."""
    clashes: Counter[str] = Counter()
    for item in items:
        if cancel.is_set():
            raise Interrupted("interrupted while planning; the same command resumes the run")
        if redact_source(item.source) != item.source:
            first = secrets.add(item.id, item.source)
            clash = None if first is None else hidden_clash(first, item, clashes[item.id] + 1)
            if clash is not None:
                clashes[item.id] += 1
                yield clash
                continue
            if first is not None:
                secrets.replace(item.id, item.source)  # signed again: the latest is sent
        yield item


def runner_settings(config: RunConfig, force_since: float | None) -> RunnerSettings:
    """What the runner needs of the config: an S3 ``--out``'s outputs already there are
    skipped unless a ``--force`` is underway (it redoes them), a local one's are dated."""
    remote = is_s3_uri(config.out)
    return RunnerSettings(
        concurrency=config.concurrency,
        max_retries=config.max_retries,
        formats=config.formats,
        backoff_base=config.backoff_base,
        backoff_cap=config.backoff_cap,
        grace=config.grace,
        skip_existing=remote and force_since is None,
        dated_outputs=not remote,
        caption_line_length=config.caption_line_length,
        sniff=config.sniff and "encoding" not in dict(config.params),  # none is sniffed
    )
