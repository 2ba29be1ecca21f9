"""Wire one ``dgbatch run``: open the state, plan the sources, run the pool, report.

This is where the stages meet (sources → state → runner → client → outputs); each
stage stays ignorant of the others.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from batch import __version__
from batch.client import DeepgramClient, make_session
from batch.config import RunConfig
from batch.errors import BatchError, Interrupted, UsageError
from batch.media import SENDERS
from batch.models import Item
from batch.outputs import LocalSink
from batch.planner import BackgroundPlan
from batch.progress import Progress
from batch.redact import redact_source, redact_text
from batch.report import save_report
from batch.runner import Runner, RunnerSettings, RunStats
from batch.sources import expand_sources
from batch.state import State


@dataclass
class RunOutcome:
    """How a run ended: what ``cli`` prints and the exit code it returns."""

    exit_code: int
    stats: RunStats
    counts: dict[str, int]
    wall_seconds: float
    report_path: Path | None
    error: BatchError | None = None

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
            "audio_hours": round(self.stats.audio_seconds / 3600, 4),
            "wall_seconds": round(self.wall_seconds, 3),
        }


def exit_code_for(counts: dict[str, int], stop: BatchError | None) -> int:
    """0 only when every item in the state is done; a stop reason wins over counts."""
    if stop is not None:
        return stop.exit_code
    if counts["failed"] or counts["pending"] or counts["running"]:
        return 1
    return 0


async def run_batch(
    config: RunConfig, progress: Progress, stdin: TextIO | None = None
) -> RunOutcome:
    """Plan, run and report one batch; raises ``BatchError`` for unusable input or state."""
    started = time.monotonic()
    state = State.open(config.state_path)
    try:
        run_id = state.start_run(redact_text(config.command, (config.api_key,)))
        secrets: dict[str, str] = {}
        plan = await _plan(config, state, run_id, stdin, secrets)
        stats = await _execute(config, state, run_id, secrets, progress, plan)
        await plan.finish(stopped=stats.stop_reason is not None)
        counts = await asyncio.to_thread(state.counts)
        code = exit_code_for(counts, stats.stop_reason)
        report = await asyncio.to_thread(save_report, state, _report_path(config))
        outcome = RunOutcome(
            code, stats, counts, time.monotonic() - started, report, stats.stop_reason
        )
        state.finish_run(run_id, code, outcome.summary())
        return outcome
    finally:
        state.close()


def _report_path(config: RunConfig) -> Path:
    return config.state_path.with_name("report.jsonl")


async def _plan(
    config: RunConfig, state: State, run_id: int, stdin: TextIO | None, secrets: dict[str, str]
) -> BackgroundPlan:
    """Start expanding the sources into the state in a thread; return once its first
    chunk is planned (the runner starts on it) or the whole plan when it is small.
    Ctrl-C stops it between items."""
    cancel = threading.Event()
    items = _watch(expand_sources(config.sources, config.filters, stdin=stdin), secrets, cancel)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cancel.set)
    try:
        plan = BackgroundPlan(
            state, items, run_id=run_id, retry_failed=config.retry_failed, cancel=cancel
        )
        await plan.started()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if plan.done and (await plan.finish(stopped=False)).seen == 0:
        raise UsageError(
            f"no audio sources found in: {' '.join(map(redact_source, config.sources))}"
        )
    return plan


def _watch(
    items: Iterable[Item], secrets: dict[str, str], cancel: threading.Event
) -> Iterator[Item]:
    """Remember real sources whose stored form is redacted; stop on Ctrl-C."""
    for item in items:
        if cancel.is_set():
            raise Interrupted("interrupted while planning; the same command resumes the run")
        if redact_source(item.source) != item.source:
            secrets[item.id] = item.source
        yield item


async def _execute(
    config: RunConfig,
    state: State,
    run_id: int,
    secrets: dict[str, str],
    progress: Progress,
    plan: BackgroundPlan,
) -> RunStats:
    settings = RunnerSettings(
        concurrency=config.concurrency,
        max_retries=config.max_retries,
        formats=config.formats,
        backoff_base=config.backoff_base,
        backoff_cap=config.backoff_cap,
        grace=config.grace,
    )
    sink = LocalSink(Path(config.out), threads=min(32, max(4, config.concurrency)))
    try:
        async with make_session(config.concurrency, user_agent=f"dgbatch/{__version__}") as session:
            client = DeepgramClient(session, config.api_url, config.api_key, timeout=config.timeout)
            runner = Runner(
                settings,
                state,
                client,
                sink,
                dict(SENDERS),
                progress,
                run_id=run_id,
                secret_sources=secrets,
                more=plan.wait_more,
            )
            plan.on_growth = runner.plan_grew
            return await runner.run()
    finally:
        sink.close()
