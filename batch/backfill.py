"""Formats asked for after an item was done, rendered from its stored json.

The json output is Deepgram's response exactly as returned, so a format added later
(``--formats json,txt,srt`` on a finished batch) is rendered from it instead of being
paid for again. Done items are never sent again for a format; those kept without their
json (an earlier ``--formats txt``) cannot be rendered, and the run's summary counts
them (``done_without``): ``--force`` re-sends them. A json that is listed but gone (or
not a transcript) is struck from the item's outputs, so no later run looks for it again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batch.errors import ItemError, OutputError
from batch.formats import render_all
from batch.outputs import OutputMeta, OutputSink
from batch.records import Ownership
from batch.state import State
from batch.transcripts import parse_transcript

log = logging.getLogger("dgbatch")

_DONE = "FROM items WHERE status = 'done' AND outputs IS NOT NULL"


def _has(locations: list[str], fmt: str) -> bool:
    return any(loc.endswith(f".{fmt}") for loc in locations)


def _lacks(fmt: str) -> str:
    """A LIKE pattern for an ``outputs`` list (JSON) holding an output of ``fmt``."""
    return f'%.{fmt}"%'


def done_without(state: State, formats: tuple[str, ...]) -> dict[str, int]:
    """Per format asked for, the done items that have no such output and no json to
    render it from: only ``--force`` (paid) can give them that format."""
    if not formats:
        return {}
    sums = ", ".join("COALESCE(SUM(outputs NOT LIKE ? AND outputs NOT LIKE ?), 0)" for _ in formats)
    args = tuple(itertools.chain.from_iterable((_lacks(fmt), _lacks("json")) for fmt in formats))
    ((*missing,),) = state.query(f"SELECT {sums} {_DONE}", args)
    return {fmt: int(n) for fmt, n in zip(formats, missing, strict=True) if n}


def done_to_render(state: State, formats: tuple[str, ...]) -> int:
    """Done items that lack a format asked for and have the json it is rendered from: a run
    stopped before (or while) rendering them leaves them to the next, which sends nothing."""
    wanted = [fmt for fmt in formats if fmt != "json"]
    if not wanted:
        return 0
    lacking = " OR ".join("outputs NOT LIKE ?" for _ in wanted)
    sql = f"SELECT COUNT(*) {_DONE} AND outputs LIKE ? AND ({lacking})"
    ((count,),) = state.query(sql, (_lacks("json"), *map(_lacks, wanted)))
    return int(count)


@dataclass
class Backfilled:
    """What ``backfill`` did: items given the formats they lacked, and items whose json
    a format cannot be made from (not Deepgram's usual shape), which keep what they have
    and lack it still (named in a warning each run)."""

    rendered: int = 0
    unrenderable: int = 0


async def backfill(
    state: State,
    sink: OutputSink,
    formats: tuple[str, ...],
    *,
    line_length: int | None,
    workers: int,
    cancel: threading.Event,
) -> Backfilled:
    """Render the formats done items lack from their json. Stops between items once
    ``cancel`` is set.

    Raises:
        OutputError: the outputs cannot be written or read at all (disk full, S3
            refusing): every item would meet it.
    """
    done = Backfilled()
    if not formats:
        return done
    lacking = " OR ".join("outputs NOT LIKE ?" for _ in formats)
    rows: Iterator[Any] = state.iter_tuples(
        f"SELECT id, source, fingerprint, out_name, outputs {_DONE} AND ({lacking})",
        tuple(map(_lacks, formats)),
    )
    failures: list[OutputError] = []

    async def worker() -> None:
        for row in rows:
            if cancel.is_set():
                return
            try:
                given, lacking = await _fill(state, sink, row, formats, line_length)
            except OutputError as exc:  # the others stop at their next item
                failures.append(exc)
                cancel.set()
                return
            except BaseException:  # nor do the others go on behind a bug's back
                cancel.set()
                raise
            done.rendered += given  # not ``+= await``: that reads it before the wait
            done.unrenderable += lacking

    await asyncio.gather(*(worker() for _ in range(workers)))
    if failures:
        raise failures[0]
    return done


async def _fill(
    state: State, sink: OutputSink, row: Any, formats: tuple[str, ...], line_length: int | None
) -> tuple[bool, bool]:
    """One item's missing formats, from its json: whether it was given any, and whether
    one of them cannot be made from it (it keeps what it has, named in a warning)."""
    item_id, source, fingerprint, out_name, outputs = row
    have: list[str] = json.loads(outputs)
    missing = tuple(fmt for fmt in formats if not _has(have, fmt))
    if not _has(have, "json"):
        return False, False
    body = await sink.read(out_name, "json")
    response = parse_transcript(body) if body is not None else None
    if body is None or response is None:
        log.warning("%s: its json output is gone or not a transcript; not listed any more", source)
        kept = [loc for loc in have if not loc.endswith(".json")]
        await asyncio.to_thread(state.set_outputs, item_id, kept)
        return False, False
    files, unrenderable = _rendered(missing, body, response, line_length, source)
    if not files:
        return False, bool(unrenderable)
    try:
        owner = Ownership(frozenset(have))  # nothing of it is sent now: no crashed attempt
        written = await sink.write(out_name, files, OutputMeta(source, fingerprint, owner))
    except ItemError as exc:  # this item's own path: it keeps what it has, the summary counts it
        log.warning("%s", exc)
        return False, bool(unrenderable)
    await asyncio.to_thread(state.set_outputs, item_id, [*have, *written])
    return True, bool(unrenderable)


def _rendered(
    formats: tuple[str, ...],
    body: bytes,
    response: dict[str, Any],
    line_length: int | None,
    source: str,
) -> tuple[dict[str, bytes], list[str]]:
    """The formats that can be made from the answer, and those that cannot (named in one
    warning: an answer not of Deepgram's usual shape, such as words without times)."""
    files: dict[str, bytes] = {}
    failed: list[str] = []
    reason = ""
    for fmt in formats:
        try:
            files.update(render_all((fmt,), body, response, line_length=line_length, source=source))
        except ItemError as exc:  # render_all's, raised from what the renderer met
            failed.append(fmt)
            reason = f"{type(exc.__cause__).__name__}: {exc.__cause__}"[:200]
    if failed:
        log.warning(
            "%s: cannot render %s from its json, not of Deepgram's usual shape (%s); it keeps "
            "the outputs it has",
            source,
            ", ".join(failed),
            reason,
        )
    return files, failed
