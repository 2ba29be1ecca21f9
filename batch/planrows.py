"""The plan's upsert and the rows it takes: one statement inserts, updates and names
many items, and one function builds each item's row.

Pure: statements and row tuples, no connection; ``batch.state`` runs them in its
transactions. Building a row is the per-item cost of planning, which is benchmarked
per item: hence tuples, no None, and few distinct statements for sqlite3 to prepare.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace

from batch.failed_items import error_item
from batch.models import Item, ItemKind
from batch.naming import id_stem, safe_name, stem_of
from batch.records import PlanStats
from batch.redact import redact_source, redact_text, url_may_hold_secret

# One statement inserts, updates and names many items (``new``: one row per item, see
# ``plan_row``). ``out_name`` is chosen as a row goes in (``free`` is the name it takes
# if no other item has its stem; '' leaves it NULL for ``assign_names``), so a new
# item's row and index entries are written once, not inserted and then rewritten.
# ``name`` and ``out_full`` are the same safe name. The run's flags are literals.
#
# Many rows per statement, not executemany: sqlite3 lets other threads run during each
# step of a statement and then waits for the GIL, so row by row a busy event loop made
# every row of the plan wait for it. A row whose id this run already planned with other
# params (one file on two manifest lines, each with its own params) changes nothing: the
# first stays, and ``batch.state`` fails the later one (see ``clash_item``). No parameter
# is None and none is a bool: sqlite3 looks those up in its adapters, several times the
# cost of binding a str or an int, so "no error" is '' and "no size" is -1 here.
PLAN = """
WITH new (id, source, kind, name, stem, params, status, error, size, fingerprint, free)
AS (VALUES {values})
INSERT INTO items (id, source, kind, name, out_stem, out_full, out_name, params, status, error,
                   size, fingerprint, created_at, updated_at, run_id, seen_run)
SELECT id, source, kind, name, stem, name,
       CASE WHEN free = '' THEN NULL
            WHEN EXISTS (SELECT 1 FROM items AS other WHERE other.out_stem = new.stem)
            THEN name ELSE free END,
       params, status, CASE status WHEN 'failed' THEN error END, NULLIF(size, -1),
       fingerprint, ?, ?, ?, ?
FROM new WHERE true
ON CONFLICT (id) DO UPDATE SET
    source = excluded.source,
    kind = excluded.kind,
    params = excluded.params,
    size = excluded.size,
    status = CASE
        WHEN excluded.status = 'failed' AND items.status != 'done' THEN 'failed'
        WHEN {changed} OR {force} THEN 'pending'
        WHEN {requeued} THEN 'pending'
        ELSE items.status END,
    error = CASE
        WHEN excluded.status = 'failed' AND items.status != 'done' THEN excluded.error
        WHEN {changed} OR {force} THEN NULL
        WHEN {requeued} THEN NULL
        ELSE items.error END,
    attempts = CASE
        WHEN {changed} OR {force} THEN 0
        WHEN {requeued} THEN 0
        ELSE items.attempts END,
    paid_200s = CASE
        WHEN {changed} OR {force} THEN 0
        WHEN {requeued} THEN 0
        ELSE items.paid_200s END,
    timeout_retries = CASE
        WHEN {changed} OR {force} THEN 0
        WHEN {requeued} THEN 0
        ELSE items.timeout_retries END,
    billed_before = CASE
        WHEN {changed} OR {force} THEN items.billed_before + {billed} + {kept}
        WHEN {requeued} THEN items.billed_before + {billed}
        ELSE items.billed_before END,
    billed_run = CASE
        WHEN ({changed} OR {force}) AND {billed} + {kept} > 0 THEN items.run_id
        WHEN ({requeued}) AND {billed} > 0 THEN items.run_id
        ELSE items.billed_run END,
    fingerprint = excluded.fingerprint,
    seen_run = excluded.run_id,
    forced = CASE WHEN {force} THEN 1
        WHEN {changed} THEN 0 ELSE items.forced END,
    updated_at = CASE
        WHEN {changed} OR {force}
            OR ({requeued})
        THEN excluded.updated_at ELSE items.updated_at END,
    queued_at = CASE
        WHEN {changed} OR {force}
            OR ({requeued})
        THEN excluded.updated_at ELSE items.queued_at END
WHERE items.seen_run IS NOT excluded.seen_run OR items.params = excluded.params
    OR same_params(items.params, excluded.params)
"""

#: the item's source is another than the one its row was made for: a file's size or
#: mtime (its fingerprint), an S3 object's ETag, or, for a URL (which has no fingerprint),
#: the URL itself (a manifest ``id`` given to another recording), but not the URL signed
#: again (``same_recording``: a presigned URL's date and expiry change at every signing)
_CHANGED = (
    "(items.fingerprint != excluded.fingerprint OR (excluded.fingerprint = ''"
    " AND items.source != excluded.source AND NOT same_recording(items.source, excluded.source)))"
)
#: a failed item this plan sends again: with ``--retry-failed``, or one that gave up on
#: Deepgram being busy or down (``retry_next``); not when it failed in this very run (a
#: source listed again in a later chunk: it was sent, maybe paid, and would be again)
_REQUEUED = (
    "items.status = 'failed' AND ({retry} OR items.retry_next)"
    " AND items.seen_run IS NOT excluded.seen_run"
)

#: seconds of audio Deepgram billed for an item since it was last queued: its transcript
#: (not a ``--dedupe`` copy's), and each 200 without one, at the answer's or the file's
#: length; a re-queue adds them to ``billed_before``, the budget counts both
BILLED = (
    "(CASE WHEN items.status = 'done' AND items.copy_of IS NULL "
    "THEN COALESCE(items.duration, 0) ELSE 0 END "
    "+ items.paid_200s * COALESCE(items.duration, items.local_duration, 0))"
)

#: the seconds of a paid answer kept for an item (not a --dedupe copy's: its leader's
#: request), while it still counts (``state._KEPT_LIVE``): a changed source or a ``--force``
#: drops it, so the re-queue adds it to ``billed_before``; ``--retry-failed`` keeps it, to
#: be written (and then counted as the item's transcript)
#: a kept answer's body as text, a UTF-8 byte order mark left out (``kept_answers.body``)
KEPT_TEXT = (
    "CAST(CASE WHEN substr(body, 1, 3) = X'EFBBBF' THEN substr(body, 4) ELSE body END AS TEXT)"
)
#: its ``metadata.duration`` when it is a number (on text known to be valid JSON)
KEPT_DURATION = (
    "CASE WHEN json_type(text, '$.metadata.duration') IN ('integer', 'real') "
    "THEN json_extract(text, '$.metadata.duration') END"
)
BILLED_KEPT = f"""COALESCE((
    SELECT CASE WHEN json_valid(text) THEN {KEPT_DURATION} END
    FROM (SELECT {KEPT_TEXT} AS text
          FROM kept_answers
          WHERE kept_answers.id = items.id AND kept_answers.copy_of IS NULL
              AND kept_answers.fingerprint = items.fingerprint AND items.status != 'done')
), 0)"""

#: a plan row: one item's fields as ``PLAN``'s ``new`` has them (see ``plan_row``)
PlanRow = tuple[str | int, ...]
FIELDS = 11
#: where a plan row has the fields that are read back
ID, NAME, STEM, PARAMS, STATUS, FREE = 0, 3, 4, 5, 6, 10
#: parameters of ``PLAN`` after its rows: created_at, updated_at, run_id, seen_run
TAIL = 4
_KINDS = {kind: kind.value for kind in ItemKind}
#: most rows one statement plans: a power of two, so that a batch needs few distinct
#: statements (each is prepared once and cached by sqlite3): 5,000 rows are 12 of them
STATEMENT_ROWS = 512


@dataclass(frozen=True, slots=True)
class Batch:
    """Plan rows on their way into the state, with what every row of them shares."""

    rows: list[PlanRow]
    now: float
    run_id: int
    flags: dict[str, object]
    #: the items of ``rows``, in order (a clash is told by its item's origin)
    items: list[Item] = field(default_factory=list)

    @classmethod
    def of(cls, items: list[Item], now: float, run_id: int, flags: dict[str, object]) -> Batch:
        """The batch of ``items``: their rows (``plan_row``), the per-item cost of planning."""
        return cls([plan_row(item) for item in items], now, run_id, flags, items)

    def sql(self, count: int) -> str:
        """``PLAN`` for ``count`` rows."""
        values = ", ".join(itertools.repeat(_ROW_VALUES, count))
        requeued = _REQUEUED.format(**self.flags)
        return PLAN.format(
            values=values,
            requeued=requeued,
            changed=_CHANGED,
            billed=BILLED,
            kept=BILLED_KEPT,
            **self.flags,
        )

    def unnamed(self) -> Batch:
        """The same rows, left for ``assign_names``."""
        return replace(self, rows=[(*row[:FREE], "") for row in self.rows])

    def clashes(self, indices: list[int]) -> Batch:
        """The failed items planned instead of the rows at ``indices`` (``clash_item``),
        left unnamed as these rows are, or named by their stems."""
        items = [clash_item(self.items[i]) for i in indices]
        rows = [plan_row(item) for item in items]
        if self.rows[indices[0]][FREE] == "":
            rows = [(*row[:FREE], "") for row in rows]
        return replace(self, rows=rows, items=items)

    def crowded(self, stems: set[object]) -> Batch:
        """The same rows; those with one of ``stems`` take their full names."""
        if not stems:
            return self
        rows = [(*row[:FREE], row[NAME]) if row[STEM] in stems else row for row in self.rows]
        return replace(self, rows=rows)


_ROW_VALUES = "(" + ", ".join(itertools.repeat("?", FIELDS)) + ")"


def fitting_rows(most: int, wanted: int) -> int:
    """The largest power of two up to ``most`` and ``wanted`` (at least 1): rows for the
    next statement."""
    return 1 << max(0, min(most, wanted).bit_length() - 1)


def plan_row(item: Item) -> PlanRow:
    """One item's fields for ``PLAN``: the per-item cost of planning, so constant cases
    (no params, no error, no URL secrets) skip their function calls. A source that
    cannot hold a secret (``url_may_hold_secret``, ``redact_url``'s own test) is stored as
    it is, without the two calls that would say so."""
    name = safe_name(item.name)
    stem = id_stem(name) if item.id[:3] == "id:" else stem_of(name)
    source = item.source
    error = item.error
    params = item.params
    size = item.size
    return (
        item.id,
        redact_source(source) if url_may_hold_secret(source) else source,
        _KINDS[item.kind],
        name,
        stem,
        json.dumps(params) if params else "[]",
        "pending" if error is None else "failed",
        "" if error is None else redact_text(error),
        -1 if size is None else size,
        item.fingerprint,
        stem,  # FREE: the name it takes if no other item has the stem
    )


def same_params(stored: str, planned: str) -> bool:
    """Whether two params lists (JSON, as ``plan_row`` stores them) ask for the same
    request, whatever their order (a CSV's columns, a JSONL line's keys): ``PLAN`` calls
    it as an SQL function when the strings differ."""
    if stored == planned:
        return True
    try:
        return sorted(map(tuple, json.loads(stored))) == sorted(map(tuple, json.loads(planned)))
    except (TypeError, ValueError):
        return False


def clash_item(item: Item) -> Item:
    """The failed item planned instead of ``item``, whose id this run already planned with
    other params: both would be one item, and one line's params would never be sent. Its
    id is its line's (or folder's, or prefix's) and its own, so that no two clashes share
    one."""
    clash_id = f"clash:{item.origin}:{item.id}" if item.origin else f"clash:{item.id}"
    reason = (
        f"{redact_source(item.source)} is already an item of this run with other params "
        "(an earlier line or source): list it once, or give each line its own id (a .jsonl "
        "or .csv manifest)"
    )
    return error_item(clash_id, item.source, clash_id, reason, item.origin, item.params, item.kind)


def plan_stats(rows: list[PlanRow], clashes: int = 0) -> PlanStats:
    """Count a batch's items and the broken ones (stored as failed with their error, or
    ``clashes``: rows a failed item replaced, see ``clash_item``)."""
    return PlanStats(len(rows), sum(row[STATUS] == "failed" for row in rows) + clashes)
