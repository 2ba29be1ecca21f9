"""What the worker pool is given (``RunnerSettings``), what it counts (``RunStats``), and
how its pieces wait for something unless the run stops (``until_stopped``).

Apart from ``batch.runner`` so that the pieces it hands work to (``batch.attempts``,
``batch.adoption``, ``batch.placing``) share them without importing the runner back;
``batch.runner`` re-exports both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from batch.errors import BatchError

_T = TypeVar("_T")


@dataclass(frozen=True)
class RunnerSettings:
    """The knobs the pool needs (a subset of ``RunConfig``)."""

    concurrency: int = 10
    max_retries: int = 5
    formats: tuple[str, ...] = ("json", "txt")
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    grace: float = 30.0
    adaptive: bool = True
    #: words per SRT/WebVTT cue (None: deepgram-captions' default of 8)
    caption_line_length: int | None = None
    #: before sending an item, ask the sink whether its outputs already exist for the same
    #: source fingerprint, under its name or its other one (an S3 ``--out`` seen from a
    #: fresh state, or an item stopped while its outputs were being put)
    skip_existing: bool = False
    #: the sink tells outputs written after a claim from older ones (local files, by
    #: mtime); S3 objects are matched by source and fingerprint only
    dated_outputs: bool = True
    #: local files are sniffed before they are sent (``--no-sniff`` turns it off): one
    #: that is not audio fails unsent, so a budget sets nothing aside for it
    sniff: bool = False


@dataclass
class RunStats:
    """What this run did (the state holds the totals)."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    retries: int = 0
    timeout_retries: int = 0
    #: done items given formats they lacked, rendered from their json (``batch.backfill``)
    rendered: int = 0
    #: done items whose json a format asked for cannot be made from (named in warnings)
    unrenderable: int = 0
    recovered: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    stop_reason: BatchError | None = None
    errors: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    copies: int = 0
    #: paid answers this run kept because their outputs could not be written (``batch.keeping``)
    kept: int = 0
    #: done items written from an answer an earlier run paid for and kept (not sent)
    from_kept: int = 0


async def until_stopped(
    waiting: Awaitable[_T], stopped: asyncio.Event
) -> asyncio.Future[_T] | None:
    """Await ``waiting`` unless ``stopped`` is set first: its finished future, or None when
    the stop came first (``waiting`` is then cancelled, as it is when the caller is)."""
    task = asyncio.ensure_future(waiting)
    stopper = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        finished = task.done()
        if not finished:
            task.cancel()
    return task if finished else None
