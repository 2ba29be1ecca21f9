"""The records the state hands out and takes in, and the rows they are stored as.

Pure: no connection here; ``batch.state`` runs the statements. Claims and flushes
convert every item and are benchmarked per item, so each statement's row is a plain
tuple built by one function, in the statement's order, beside the statement.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from batch.models import ItemKind, ItemStatus, Params


@dataclass(frozen=True, slots=True)
class Ownership:
    """What tells an item's own files, at its output places, from files it did not write."""

    #: its outputs as the state records them (written when it was done)
    recorded: frozenset[str] = frozenset()
    #: since when a file at its output places is a crashed attempt's: after an earlier
    #: claim of it, and after it was last queued (None: no such attempt, or nothing of it
    #: is sent now, as for a format rendered later from its json)
    queued_at: float | None = None


@dataclass(frozen=True, slots=True)
class WorkItem:
    """An item as the runner sees it: claimed from the state, ready to send."""

    rowid: int
    id: str
    source: str
    kind: ItemKind
    out_name: str
    params: Params
    attempts: int
    size: int | None
    fingerprint: str
    claimed_at: float | None
    status: ItemStatus
    #: re-queued by a ``--force``: outputs already in place are the ones it redoes
    forced: bool = False
    #: when the plan last queued it, when it was claimed before this claim (None: never),
    #: and its outputs as recorded (JSON): they tell its own files from others' (``owner``)
    queued_at: float | None = None
    recorded: str | None = None
    claimed_before: float | None = None
    #: 200s without a transcript it got since it was queued (an earlier run's count)
    paid_200s: int = 0

    @property
    def owner(self) -> Ownership | None:
        """What of its output places is its own; None replaces any (``--force``)."""
        if self.forced:
            return None
        since = self.claimed_before  # a crashed attempt's files: a claim of it since it
        if since is not None and self.queued_at is not None and since < self.queued_at:
            since = None  # was last queued (an older claim is of an attempt that ended)
        return Ownership(_recorded(self.recorded), since)

    def with_params(self, params: Params) -> WorkItem:
        """The item with the params a request sends (``dataclasses.replace`` is ~5 times slower,
        and this runs once per request)."""
        return WorkItem(
            self.rowid,
            self.id,
            self.source,
            self.kind,
            self.out_name,
            params,
            self.attempts,
            self.size,
            self.fingerprint,
            self.claimed_at,
            self.status,
            self.forced,
            self.queued_at,
            self.recorded,
            self.claimed_before,
            self.paid_200s,
        )


@dataclass(frozen=True, slots=True)
class Result:
    """What a run learned about one item; buffered, then committed in a group."""

    id: str
    status: ItemStatus
    attempts: int
    http_status: int | None = None
    error: str | None = None
    err_code: str | None = None
    request_id: str | None = None
    duration: float | None = None
    outputs: tuple[str, ...] = ()
    timeout_retries: int = 0
    warning: str | None = None
    copy_of: str | None = None
    local_duration: float | None = None
    #: written from an answer an earlier run paid for and kept (``batch.keeping``): this
    #: run sent nothing for it
    kept: bool = False
    #: it gave up on Deepgram being busy or down (429, 5xx): the next run sends it again
    retry_next: bool = False
    #: 200s without a transcript it got so far (``WorkItem.paid_200s``); kept at least
    paid_200s: int = 0
    #: outputs already there were adopted: this run sent nothing for it, so its audio is
    #: not the run's (a run adopting 100,000 outputs after a lost state said 2.78 h)
    adopted: bool = False


class Some(NamedTuple):
    """A count of items and the sources of the first few of them, to name in a message."""

    total: int
    first: list[str]

    def named(self) -> str:
        """``a.wav, b.wav and 3 more``."""
        more = self.total - len(self.first)
        return ", ".join(self.first) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True, slots=True)
class PlanStats:
    """How many items a run planned, and how many broken inputs it recorded as failed."""

    seen: int
    broken: int


# -- rows ---------------------------------------------------------------------------------

#: the columns a claim reads, in ``work_item``'s order
COLUMNS = (
    "rowid, id, source, kind, out_name, params, attempts, size, fingerprint, claimed_at, status, "
    "forced, COALESCE(queued_at, created_at), outputs, paid_200s"
)
#: kinds and statuses of rows read from the state: a dict lookup, cheaper than calling the enum
_ITEM_KINDS = {kind.value: kind for kind in ItemKind}
_STATUSES = {status.value: status for status in ItemStatus}


def work_item(row: tuple[Any, ...], claimed_at: float | None = None) -> WorkItem:
    """The item a ``COLUMNS`` row holds; a claim passes its own ``claimed_at``, as it read the
    row before marking it claimed."""
    rowid, item_id, source, kind, out_name, params, attempts, size, fp, claimed, status = row[:11]
    forced, queued_at, recorded, paid_200s = row[11:]
    return WorkItem(
        rowid,
        item_id,
        source,
        _ITEM_KINDS[kind],
        out_name or item_id,
        stored_params(params),
        attempts,
        size,
        fp,
        claimed_at if claimed_at is not None else claimed,
        _STATUSES[status],
        bool(forced),
        queued_at,
        recorded,
        claimed,
        paid_200s,
    )


def _recorded(outputs: str | None) -> frozenset[str]:
    """An item's recorded outputs (the ``outputs`` column), read only when asked for."""
    if not outputs:
        return frozenset()
    try:
        found = json.loads(outputs)
    except ValueError:
        return frozenset()
    return frozenset(str(path) for path in found) if isinstance(found, list) else frozenset()


@functools.lru_cache(maxsize=1024)
def stored_params(text: str) -> Params:
    """An item's params as the state stores them (its ``params`` column); cached, since
    every claimed item is decoded and most items share theirs."""
    return tuple((str(k), str(v)) for k, v in json.loads(text))


# One buffered result; '' and -1 stand for "not known" (see ``result_row``): no error,
# warning or copy is stored as NULL (an empty one too: it says nothing), and an unknown
# duration or output list keeps the stored one.
FLUSH = """
UPDATE items SET status = ?, attempts = ?, http_status = NULLIF(?, -1), error = NULLIF(?, ''),
    err_code = NULLIF(?, ''), request_id = NULLIF(?, ''),
    duration = COALESCE(NULLIF(?, -1.0), duration), outputs = COALESCE(NULLIF(?, ''), outputs),
    timeout_retries = timeout_retries + ?, warning = NULLIF(?, ''), copy_of = NULLIF(?, ''),
    local_duration = COALESCE(NULLIF(?, -1.0), local_duration), updated_at = ?,
    forced = CASE ? WHEN 'done' THEN 0 ELSE forced END,
    retry_next = ? * (timeout_retries + ? = 0), paid_200s = MAX(paid_200s, ?)
WHERE id = ?
"""


# The tries of an item that waits to try again (its result, when it comes, has the same
# attempts and 200s or more), and its retries of requests Deepgram may have billed, which
# are counted here only. Run before ``FLUSH``: its ``retry_next`` reads them.
TRIES = """
UPDATE items SET attempts = MAX(attempts, ?), paid_200s = MAX(paid_200s, ?),
    timeout_retries = timeout_retries + ?
WHERE id = ?
"""


def result_row(r: Result, now: float) -> tuple[object, ...]:
    """``FLUSH``'s parameters. No None: sqlite3 runs each None through its adapter lookup,
    so "not known" is '' for text and -1 for numbers, as in ``batch.planrows.PLAN``."""
    return (
        r.status.value,
        r.attempts,
        -1 if r.http_status is None else r.http_status,
        r.error or "",
        r.err_code or "",
        r.request_id or "",
        -1.0 if r.duration is None else r.duration,
        json.dumps(list(r.outputs)) if r.outputs else "",
        r.timeout_retries,
        r.warning or "",
        r.copy_of or "",
        -1.0 if r.local_duration is None else r.local_duration,
        now,
        r.status.value,  # a forced item done again is an item like any other
        int(r.retry_next),  # only if no try of it, in any run, may have been billed
        r.timeout_retries,
        r.paid_200s,
        r.id,
    )
