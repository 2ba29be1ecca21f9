"""Wire one ``dgbatch run``: open the state, plan the sources, run the pool, report.

This is where the stages meet (sources → state → runner → client → outputs); each
stage stays ignorant of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from batch import __version__
from batch.client import Answer, DeepgramClient, make_session
from batch.config import RunConfig
from batch.errors import BatchError, Interrupted, UsageError
from batch.media import SENDERS, Sender
from batch.models import Item, ItemKind
from batch.outputs import LocalSink
from batch.params import with_run_tags
from batch.progress import Progress
from batch.redact import redact_source, redact_text
from batch.report import save_report
from batch.runner import Runner, RunnerSettings, RunStats
from batch.sources import expand_sources
from batch.state import State, WorkItem

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
    with _latched_signals() as signals:
        state = State.open(config.state_path)
        try:
            run_id = state.start_run(redact_text(config.command, (config.api_key,)))
            secrets = await _plan(config, state, run_id, stdin, signals)
            stats = await _execute(config, state, run_id, secrets, progress, signals)
            counts = await asyncio.to_thread(state.counts)
            report = await _save_report(state, _report_path(config))
            stats.stop_reason = stats.stop_reason or signals.interruption()
            code = exit_code_for(counts, stats.stop_reason)
            outcome = RunOutcome(
                code, stats, counts, time.monotonic() - started, report, stats.stop_reason
            )
            state.finish_run(run_id, code, outcome.summary())
            return outcome
        finally:
            state.close()


class _SignalLatch:
    """One SIGINT/SIGTERM handler for the whole run, so that no moment of it (opening
    the state, between planning and the pool, writing the report) dies by the signal's
    default action or drops it. The phase that is running decides what a signal does
    (planning stops between items, the pool stops gracefully); every signal is also
    remembered, so one that arrives between phases still ends the run with exit 130."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._target: Callable[[signal.Signals], None] | None = None

    def __call__(self, sig: signal.Signals) -> None:
        self.received = sig
        if self._target is not None:
            self._target(sig)

    @contextlib.contextmanager
    def routed_to(self, target: Callable[[signal.Signals], None]) -> Iterator[None]:
        """Send signals to ``target`` for a phase (at once, if one came before it)."""
        self._target = target
        if self.received is not None:
            target(self.received)
        try:
            yield
        finally:
            self._target = None

    def interruption(self) -> Interrupted | None:
        """The stop reason if a signal arrived at any point of the run."""
        if self.received is None:
            return None
        name = self.received.name
        return Interrupted(f"interrupted by {name}; the same command resumes the run")


@contextlib.contextmanager
def _latched_signals() -> Iterator[_SignalLatch]:
    latch = _SignalLatch()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, latch, sig)
    try:
        yield latch
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _report_path(config: RunConfig) -> Path:
    return config.state_path.with_name("report.jsonl")


async def _save_report(state: State, path: Path) -> Path | None:
    """The report is a copy of the state for convenience: failing to write it (the disk
    that just filled up) must not hide how the run went."""
    try:
        return await asyncio.to_thread(save_report, state, path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.warning("%s: cannot write the report (%s); 'dgbatch report' can write it", path, reason)
        return None


async def _plan(
    config: RunConfig, state: State, run_id: int, stdin: TextIO | None, signals: _SignalLatch
) -> dict[str, str]:
    """Expand the sources into the state in a thread; Ctrl-C stops it between items."""
    secrets: dict[str, str] = {}
    cancel = threading.Event()
    items = _watch(expand_sources(config.sources, config.filters, stdin=stdin), secrets, cancel)
    with signals.routed_to(lambda sig: cancel.set()):
        stats = await asyncio.to_thread(
            state.plan, items, run_id=run_id, retry_failed=config.retry_failed
        )
        await asyncio.to_thread(state.assign_names)
    if stats.seen == 0:
        raise UsageError(
            f"no audio sources found in: {' '.join(map(redact_source, config.sources))}"
        )
    return secrets


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
    signals: _SignalLatch,
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
                _tagged(SENDERS, run_id),
                progress,
                run_id=run_id,
                secret_sources=secrets,
                handle_signals=False,
            )
            with signals.routed_to(runner.interrupt):
                return await runner.run()
    finally:
        sink.close()


def _tagged(senders: dict[ItemKind, Sender], run_id: int) -> dict[ItemKind, Sender]:
    """Tag every request with the run at send time (not in the state: a resumed item
    belongs to the run that sends it)."""

    def wrap(send: Sender) -> Sender:
        async def tagged(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
            params = with_run_tags(item.params, str(run_id))
            return await send(client, dataclasses.replace(item, params=params), source)

        return tagged

    return {kind: wrap(send) for kind, send in senders.items()}
