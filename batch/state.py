"""The SQLite state file: the run's queue, its memory across crashes, and the report's source.

WAL mode with ``synchronous=NORMAL``: a commit is a write to the WAL, not an fsync,
so it survives ``kill -9`` (the OS has the bytes) and costs little; a power cut may
lose the last few commits but never corrupts the file. Claims are committed before
any request is sent, so an item can only be re-sent after a crash if it was in
flight. Results are buffered and committed in groups by the runner's flusher.

``State`` runs the transactions. What they run sits in modules below it, which never
import this one: the records and their rows (``batch.records``), the plan's upsert
and rows (``batch.planrows``), the opening and locking of the file (``batch.statefile``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from batch.errors import StateError, StateWriteError
from batch.migrations import LISTED_INDEX
from batch.models import Item, ItemStatus, Params
from batch.naming import disambiguate
from batch.planrows import (
    FIELDS,
    FREE,
    ID,
    KEPT_DURATION,
    KEPT_TEXT,
    PARAMS,
    STATEMENT_ROWS,
    STEM,
    TAIL,
    Batch,
    PlanRow,
    fitting_rows,
    plan_stats,
    same_params,
)
from batch.records import (
    COLUMNS,
    FLUSH,
    TRIES,
    PlanStats,
    Result,
    Some,
    WorkItem,
    result_row,
    stored_params,
    work_item,
)
from batch.statefile import (
    MAGIC,
    StateLock,
    check_readable,
    connect,
    file_id,
    prepare,
    take_lock,
    write_back_if_gone,
)
from batch.urls import same_recording

__all__ = ["MAGIC", "PLAN_BATCH", "PlanStats", "Result", "State", "WorkItem", "stored_params"]

#: the most items one ``plan`` call names as they go in; a bigger call is stored first
#: and named by ``assign_names`` afterwards (the background plan's chunks always fit)
PLAN_BATCH = 5000
#: a kept answer still to write: its item is not done and is still the source (path or
#: URL, size and mtime or ETag) that the answer answers (the params sent depend on the
#: run's options too: ``kept_answer`` compares them)
_KEPT_FOR_ITEM = (
    "items.id = kept_answers.id AND items.status != 'done' "
    "AND same_recording(items.source, kept_answers.source) "
    "AND items.fingerprint = kept_answers.fingerprint"
)
#: the same, as a condition on a row of ``kept_answers``
_KEPT_LIVE = f"EXISTS (SELECT 1 FROM items WHERE {_KEPT_FOR_ITEM})"
#: per Deepgram request of the kept answers still to write, its duration (see
#: ``kept_durations``); an answer without a request id counts on its own. A --dedupe
#: copy's is its leader's request, counted with the leader (done, kept, or billed before
#: a re-queue)
_KEPT_DURATIONS = f"""
SELECT MAX({KEPT_DURATION}) FROM (
    SELECT kept_answers.id AS kept_id, {KEPT_TEXT} AS text
    FROM kept_answers WHERE {_KEPT_LIVE} AND kept_answers.copy_of IS NULL)
WHERE json_valid(text)
GROUP BY COALESCE(json_extract(text, '$.metadata.request_id'), 'kept:' || kept_id)
HAVING COALESCE(json_extract(text, '$.metadata.request_id'), '') NOT IN (
    SELECT request_id FROM items
    WHERE status = 'done' AND copy_of IS NULL AND request_id IS NOT NULL)
"""
#: a result written from a kept answer: the run that paid for it stays the one that sent it
#: (``dgbatch usage`` matches its request to that run), and the answer is dropped
_KEPT_WRITTEN = (
    "UPDATE items SET run_id = (SELECT run_id FROM kept_answers WHERE kept_answers.id = items.id) "
    "WHERE id = ?1 AND EXISTS (SELECT 1 FROM kept_answers WHERE kept_answers.id = ?1)",
    "DELETE FROM kept_answers WHERE id = ?",
)


def _in_the_way(path: Path, exc: OSError) -> str:
    """Why the state's folder could not be made: which parent is a file, when one is (the
    bare "File exists" or "Not a directory" did not say)."""
    for parent in path.parents:
        if parent.is_file():
            return f"{str(parent)!r} is a file, not a folder"
    return exc.strerror or str(exc)


def _asked_again(fn: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    """``fn``, answering without calling it again when asked about the two texts it was
    asked about last: ``PLAN`` asks ``same_recording`` in each ``CASE`` of a row it
    updates, eight times a row, and a manifest of URLs signed again asks it of every row
    (58 µs a row, against 13 µs for one that keeps its URL)."""
    last: tuple[str, str, bool] | None = None

    def answer(stored: str, planned: str) -> bool:
        nonlocal last
        if last is None or last[0] != stored or last[1] != planned:
            last = (stored, planned, fn(stored, planned))
        return last[2]

    return answer


class State:
    """One open state file. Thread-safe: every call holds the connection's lock."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_file: StateLock | None) -> None:
        self.path = path
        self._db = db
        db.create_function("same_params", 2, same_params, deterministic=True)  # for PLAN
        db.create_function("same_recording", 2, _asked_again(same_recording), deterministic=True)
        self._lock_file = lock_file
        #: the file this run holds, to tell when it was deleted or replaced under it
        self._file_id = file_id(path) if lock_file is not None else None
        self._mutex = threading.Lock()
        #: results not yet committed: appended by the event loop without the mutex (a deque's
        #: append and popleft are atomic), so recording never waits for a statement that
        #: another thread is running; flushes drain it under the mutex
        self._buffer: deque[Result] = deque()
        #: (attempts, paid 200s, billed retries, id) of items to try again (``note_tries``)
        self._tries: deque[tuple[int, int, int, str]] = deque()
        #: rows per plan statement, from SQLite's parameter limit (0: not asked yet)
        self._statement_rows = 0
        #: earlier runs left items pending: claim only what this run listed (``claim``)
        self._hold_unlisted = False

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False, private: bool = False) -> State:
        """Open (creating if needed) and lock a state file; refuse anything that is not ours.
        ``private``: a copy no other run can find (the dry run's), locked beside itself
        only, so it leaves no lock file behind under the temporary folder."""
        if readonly:
            if not path.exists():
                raise StateError(f"{path}: no such state file")
            return cls(path, check_readable(connect(path, readonly=True), path), None)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"{path}: cannot create state folder: {_in_the_way(path, exc)}"
            ) from exc
        lock_file = take_lock(path, host=not private)
        try:
            db = connect(path, readonly=False)
            prepare(db, path)
        except BaseException:
            lock_file.close()
            raise
        return cls(path, db, lock_file)

    def close(self) -> None:
        """Commit what is buffered and release the lock (even when the commit fails)."""
        try:
            with self._mutex:
                if self._lock_file is not None:
                    self._flush_locked()
                    write_back_if_gone(self._db, self.path, self._file_id)
        finally:
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    # -- runs ----------------------------------------------------------------------------

    def start_run(self, command: str, priced: Params = ()) -> int:
        """Record a new run, with the params that price what it sends (``priced``: its
        model and language), and return its id."""
        with self._mutex, self._writing(), self._db:
            cur = self._db.execute(
                "INSERT INTO runs (started_at, pid, host, command, priced) VALUES (?, ?, ?, ?, ?)",
                (time.time(), os.getpid(), socket.gethostname(), command, json.dumps(priced)),
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, exit_code: int, summary: dict[str, Any]) -> None:
        """Record how a run ended."""
        with self._mutex, self._writing(), self._db:
            self._db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE id = ?",
                (time.time(), exit_code, json.dumps(summary), run_id),
            )

    def set_run_tag(self, run_id: int, tag: str) -> None:
        """Remember the Deepgram ``tag`` this run's requests carry (for ``dgbatch usage``)."""
        with self._mutex, self._writing(), self._db:
            self._db.execute("UPDATE runs SET tag = ? WHERE id = ?", (tag, run_id))

    # -- planning ------------------------------------------------------------------------

    def forget_stale_lines(self, manifests: Iterable[str], run_id: int) -> int:
        """Forget the broken lines of ``manifests`` (read whole by run ``run_id``) that
        earlier runs recorded and this one did not meet again: the line was fixed, or the
        lines moved. Never sent, nothing paid; kept, each stayed a failure of a line that
        may be fine now, one more every time lines shift. (A clash's id names its manifest
        by file name only, which another manifest may share: clashes stay.) How many were
        forgotten."""
        sql = (
            "DELETE FROM items WHERE id >= ? AND id < ? AND length(id) > ? "
            "AND substr(id, ?) NOT GLOB '*[^0-9]*' AND status = 'failed' AND attempts = 0 "
            "AND outputs IS NULL AND seen_run IS NOT ?"
        )
        forgotten = 0
        with self._mutex, self._writing(), self._db:
            for path in manifests:  # ids "<path>:<lineno>": the range from ':' to ';'
                head = len(path) + 1
                args = (f"{path}:", f"{path};", head, head + 1, run_id)
                forgotten += self._db.execute(sql, args).rowcount
        return forgotten

    def plan(
        self,
        items: Iterable[Item],
        *,
        run_id: int,
        retry_failed: bool = False,
        force_since: float | None = None,
    ) -> PlanStats:
        """Upsert items in large transactions; done items whose fingerprint changed go back
        to pending (with ``force_since``, all of them last changed before it: a forced run
        that was stopped and is run again redoes only what it had not redone yet), failed
        ones only with ``retry_failed``.
        Only the item's own params (from its manifest line) are stored: the run's layers
        are added at send time, so a resumed run sends with the current options.

        Up to ``PLAN_BATCH`` items (a background plan's chunk) are named in the same
        transaction, exactly as ``assign_names`` would name them, so they are never
        claimable unnamed and their rows are written once. A bigger call stores them
        unnamed, in batches, for ``assign_names`` to name together afterwards."""
        force = "0" if force_since is None else f"(items.updated_at < {force_since!r})"
        flags = {"force": force, "retry": int(retry_failed)}
        with self._writing():
            try:
                return self._plan(items, run_id, flags)
            finally:
                if force_since is not None:
                    self._drop_kept_before(force_since)

    def _plan(self, items: Iterable[Item], run_id: int, flags: dict[str, object]) -> PlanStats:
        now = time.time()
        stream = iter(items)
        chunks = iter(lambda: list(itertools.islice(stream, PLAN_BATCH)), [])
        batches = (Batch.of(chunk, now, run_id, flags) for chunk in chunks)
        first = next(batches, Batch.of([], now, run_id, flags))
        second = next(batches, None)
        if second is None:
            return plan_stats(first.rows, self._insert_named(first))
        seen = broken = 0
        for batch in itertools.chain((first, second), batches):
            with self._mutex, self._db:
                clashes = self._insert(batch.unnamed())
            stats = plan_stats(batch.rows, clashes)
            seen, broken = seen + stats.seen, broken + stats.broken
        return PlanStats(seen, broken)

    def other_names(self, item_id: str) -> list[str]:
        """The output names the item does not have but could have had in another state:
        its stem or its full name (which one it gets depends on the items beside it)."""
        with self._mutex:
            row = self._db.execute(
                "SELECT out_stem, out_full, out_name FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        return [] if row is None else [n for n in dict.fromkeys(row[:2]) if n != row[2]]

    def adopt_name(self, item_id: str, name: str) -> bool:
        """Give the item ``name`` (its outputs were found under it), unless another item
        has it; True if it took it."""
        with self._mutex, self._writing(), self._db:
            cursor = self._db.execute(
                "UPDATE items SET out_name = ? WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM items WHERE out_name = ? AND id != ?)",
                (name, item_id, name, item_id),
            )
            return cursor.rowcount == 1

    def set_outputs(self, item_id: str, outputs: list[str]) -> None:
        """A done item's outputs, grown by formats rendered later (``batch.backfill``);
        ``updated_at`` stays: the item was not redone."""
        with self._mutex, self._writing(), self._db:
            self._db.execute(
                "UPDATE items SET outputs = ? WHERE id = ?", (json.dumps(outputs), item_id)
            )

    # -- kept answers (``batch.keeping``) -------------------------------------------------

    def keep_answer(
        self, item: WorkItem, params: str, run_id: int, body: bytes, copy_of: str | None
    ) -> None:
        """Keep the answer run ``run_id`` paid for ``item`` (sent with ``params``, a JSON
        list of pairs; a --dedupe copy's is its original's, ``copy_of``) and could not
        write, at once."""
        row = (item.id, item.source, params, item.fingerprint, run_id, body, copy_of)
        with self._mutex, self._writing(), self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO kept_answers "
                "(id, source, params, fingerprint, run_id, body, copy_of, kept_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, time.time()),
            )

    def kept_answer(
        self, item_id: str, params: tuple[str, ...], since: float
    ) -> tuple[bytes, str | None] | None:
        """The answer kept for this item and the original it was a copy of (if any), if it
        answers the item as the state has it now, asked with one of ``params``, and was
        kept at ``since`` or later."""
        marks = ", ".join("?" * len(params))
        with self._mutex, self._writing():
            row = self._db.execute(
                "SELECT body, kept_answers.copy_of FROM kept_answers "
                f"JOIN items ON {_KEPT_FOR_ITEM} "
                f"WHERE kept_answers.id = ? AND kept_answers.params IN ({marks}) "
                "AND kept_at >= ? ORDER BY kept_at DESC",
                (item_id, *params, since),
            ).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def _drop_kept_before(self, force_since: float) -> None:
        """A ``--force`` asks for new answers: the answers kept before it began for the
        items it re-queued are dropped (those its own requests keep stay)."""
        with self._mutex, self._writing(), self._db:
            self._db.execute(
                "DELETE FROM kept_answers WHERE kept_at < ? AND EXISTS (SELECT 1 FROM items "
                "WHERE items.id = kept_answers.id AND items.forced = 1)",
                (force_since,),
            )

    def kept_ids(self) -> set[str]:
        """Items with a kept answer still to write; answers of items done since, or of a
        source changed since (another fingerprint), are dropped first."""
        with self._mutex, self._writing(), self._db:
            self._db.execute(f"DELETE FROM kept_answers WHERE NOT {_KEPT_LIVE}")
            rows = self._db.execute("SELECT id FROM kept_answers").fetchall()
        return {row[0] for row in rows}

    def remember_content(self, key: str, item: WorkItem, request_id: str) -> None:
        """``item`` was sent and is done: its json, Deepgram's answer ``request_id``, answers
        ``key`` (``--dedupe``) while its file keeps the fingerprint it has now."""
        with self._mutex, self._writing(), self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO content_keys (key, item_id, fingerprint, request_id) "
                "VALUES (?, ?, ?, ?)",
                (key, item.id, item.fingerprint, request_id),
            )

    def done_content(self, key: str, other_than: str) -> tuple[str, str] | None:
        """(id, out_name) of a done item (not ``other_than``) whose json answers ``key``:
        its file unchanged since it was sent, its answer still the one it got then (sent
        again with other params, by ``--force``, it answers another key), its json among
        its outputs."""
        rows = self.query(
            "SELECT items.id, items.out_name FROM content_keys JOIN items "
            "ON items.id = content_keys.item_id AND items.fingerprint = content_keys.fingerprint "
            "AND items.request_id = content_keys.request_id "
            "WHERE content_keys.key = ? AND items.status = 'done' AND items.id != ? "
            "AND items.outputs LIKE '%.json\"%'",
            (key, other_than),
        )
        return None if not rows else (str(rows[0][0]), str(rows[0][1]))

    def kept_content(self, key: str, other_than: str) -> tuple[str, bytes, str] | None:
        """(id, body, request id) of the answer kept for an original (not ``other_than``),
        live (its item not done, its file unchanged), whose request answered ``key``
        (``--dedupe``; ``dedupe.kept_answer`` checks the body is that request's)."""
        rows = self.query(
            "SELECT kept_answers.id, kept_answers.body, content_keys.request_id "
            "FROM content_keys JOIN kept_answers ON kept_answers.id = content_keys.item_id "
            "AND kept_answers.fingerprint = content_keys.fingerprint "
            f"AND kept_answers.copy_of IS NULL AND {_KEPT_LIVE} "
            "WHERE content_keys.key = ? AND kept_answers.id != ?",
            (key, other_than),
        )
        return None if not rows else (str(rows[0][0]), bytes(rows[0][1]), str(rows[0][2]))

    def kept_count(self) -> int:
        """Kept answers still to write (none in a state older than migration m005)."""
        try:
            ((count,),) = self.query(f"SELECT COUNT(*) FROM kept_answers WHERE {_KEPT_LIVE}")
        except sqlite3.OperationalError:  # no such table: read-only, not migrated
            return 0
        return int(count)

    def kept_durations(self) -> list[object]:
        """``metadata.duration`` of the kept answers still to write, as found (SQLite parses
        the bodies: none is loaded): one per Deepgram request (a --dedupe copy keeps its
        leader's answer), none for a request whose audio a done item already counts."""
        return [row[0] for row in self.query(_KEPT_DURATIONS)]

    def failed_since(self, moment: float) -> int:
        """Items that became ``failed`` at ``moment`` or later (while planning or sending)."""
        with self._mutex:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM items WHERE status = 'failed' AND updated_at >= ?", (moment,)
            ).fetchone()
        return int(count)

    def begin_force(self, requested: bool) -> tuple[float | None, bool]:
        """When the ``--force`` underway began, and whether it begins now: a forced run
        that did not finish is continued (by a run with ``--force`` or without it), a new
        one begins now; None when no force is asked for or underway. Kept in the state
        until ``end_force``."""
        with self._mutex, self._writing(), self._db:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'force_since'").fetchone()
            if row is not None:
                return float(row[0]), False
            if not requested:
                return None, False
            now = time.time()
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('force_since', ?)", (repr(now),)
            )
            return now, True

    def end_force(self) -> None:
        """The forced run finished: every item is redone (or failed), none is left."""
        with self._mutex, self._writing(), self._db:
            self._db.execute("DELETE FROM meta WHERE key = 'force_since'")

    def _insert_named(self, batch: Batch) -> int:
        """Insert and name one batch; an earlier crash's unnamed items (a state written
        by an older dgbatch) make it fall back to ``assign_names``'s way for all of them.
        The number of clashes planned (see ``_insert``)."""
        if not batch.rows:
            return 0
        with self._mutex, self._db:
            db = self._db
            if db.execute("SELECT 1 FROM items WHERE out_name IS NULL LIMIT 1").fetchone():
                return self._insert(batch.unnamed())
            (last,) = db.execute("SELECT MAX(rowid) FROM items").fetchone()
            clashes = self._insert(batch.crowded(self._crowded_stems(batch.rows)))
            self._break_name_ties((last or 0) + 1)
            return clashes

    def _insert(self, batch: Batch) -> int:
        """Run ``PLAN`` on a batch, in order, many rows per statement. A row whose id this
        run planned already with other params changes nothing (``PLAN``): a failed item is
        planned in its place (``Batch.clashes``); their number is returned."""
        if self._statement_rows == 0:
            limit = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._statement_rows = fitting_rows(STATEMENT_ROWS, (limit - TAIL) // FIELDS)
        skipped = self._execute(batch)
        if skipped:  # a clash's own clash (one origin, id and other params) is not kept
            clashes = batch.clashes(skipped)
            if clashes.rows[0][FREE]:  # named as they go in: two with one stem, as in a batch
                clashes = clashes.crowded(self._crowded_stems(clashes.rows))
            self._execute(clashes)
        return len(skipped)

    def _execute(self, batch: Batch) -> list[int]:
        """``PLAN`` over the batch's rows; the positions of the rows it skipped."""
        rows, start, skipped = batch.rows, 0, []
        tail = (batch.now, batch.now, batch.run_id, batch.run_id)
        while start < len(rows):
            count = fitting_rows(self._statement_rows, len(rows) - start)
            part = rows[start : start + count]
            before = self._db.total_changes
            self._db.execute(batch.sql(count), [*itertools.chain.from_iterable(part), *tail])
            if self._db.total_changes - before < count:  # rare: find which rows
                skipped += self._skipped(part, start)
            start += count
        return skipped

    def _skipped(self, rows: list[PlanRow], start: int) -> list[int]:
        """The positions (from ``start``) of the rows ``PLAN`` skipped: their id's stored
        params are not theirs (an id it planned or updated has its row's params)."""
        stored = "SELECT params FROM items WHERE id = ?"
        return [
            start + i
            for i, row in enumerate(rows)
            if not same_params(self._db.execute(stored, (row[ID],)).fetchone()[0], str(row[PARAMS]))
        ]

    def _crowded_stems(self, rows: list[PlanRow]) -> set[object]:
        """Stems of two or more new items of a batch: these items take their full names.
        ``PLAN`` only sees the items stored before the batch.

        Only ids that are new count (an id seen twice is one item, a stored one keeps
        the stem it has), so the few ids whose stems repeat are looked up."""
        stems = {row[ID]: row[STEM] for row in reversed(rows)}  # first row of an id wins
        if len(set(stems.values())) == len(stems):
            return set()
        repeated = {stem for stem, n in Counter(stems.values()).items() if n > 1}
        exists = "SELECT 1 FROM items WHERE id = ?"
        new = Counter(
            stem
            for item_id, stem in stems.items()
            if stem in repeated and self._db.execute(exists, (item_id,)).fetchone() is None
        )
        return {stem for stem, n in new.items() if n > 1}

    def assign_names(self) -> None:
        """Give every new item a unique output name: the stem, or the stem with its
        extension when another item shares the stem, or a hashed name as a last resort.

        Only unnamed items are looked at, through the indexes, so naming each chunk of
        a plan that is still growing costs the chunk, not the whole state."""
        with self._mutex, self._writing(), self._db:
            db = self._db
            (first,) = db.execute("SELECT MIN(rowid) FROM items WHERE out_name IS NULL").fetchone()
            if first is None:
                return
            db.execute(
                "UPDATE items SET out_name = CASE WHEN EXISTS (SELECT 1 FROM items AS other "
                "WHERE other.out_stem = items.out_stem AND other.rowid != items.rowid) "
                "THEN out_full ELSE out_stem END WHERE out_name IS NULL"
            )
            self._break_name_ties(first)

    def _break_name_ties(self, first: int) -> None:
        while True:
            # NOT INDEXED: read the new rows by rowid; through the out_name index (the
            # planner's choice otherwise) every chunk would scan the whole state.
            ties = self._db.execute(
                "SELECT DISTINCT out_name FROM items AS new NOT INDEXED WHERE rowid >= ? "
                "AND EXISTS (SELECT 1 FROM items AS other WHERE other.out_name = new.out_name "
                "AND other.rowid != new.rowid)",
                (first,),
            ).fetchall()
            if not ties:
                return
            for (name,) in ties:
                rows = self._db.execute(
                    "SELECT rowid, id, out_full FROM items WHERE out_name = ? "
                    "ORDER BY status = 'done' DESC, rowid",
                    (name,),
                ).fetchall()
                for rowid, item_id, out_full in rows[1:]:
                    self._db.execute(
                        "UPDATE items SET out_name = ? WHERE rowid = ?",
                        (disambiguate(out_full, item_id), rowid),
                    )

    # -- claiming ------------------------------------------------------------------------

    def running(self) -> list[WorkItem]:
        """Items a previous run claimed and never finished (it crashed or was killed)."""
        with self._mutex:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM items WHERE status = 'running' ORDER BY rowid"
            ).fetchall()
        return [work_item(row) for row in rows]

    def hold_unlisted(self) -> None:
        """Before a run plans: when earlier runs left items pending (or running: a crash),
        ``claim(listed=True)`` takes only rows this run's plan listed again, until the
        plan is over (a row's params and real source are its line's as listed now), and
        the index that keeps that claim a range is made. A run without such rows needs
        neither: every pending row is one it listed."""
        with self._mutex, self._writing(), self._db:
            found = self._db.execute(
                "SELECT 1 FROM items WHERE status IN ('pending', 'running') LIMIT 1"
            ).fetchone()
            if found is not None:
                self._db.execute(LISTED_INDEX)
        self._hold_unlisted = found is not None

    def claim(
        self, limit: int, after_rowid: int, run_id: int, *, listed: bool = False
    ) -> list[WorkItem]:
        """Mark the next pending items ``running`` and commit before anything is sent;
        ``listed``: only those this run's plan listed (again) while it is growing, when
        earlier runs left some pending (``hold_unlisted``)."""
        listed = listed and self._hold_unlisted
        now = time.time()
        with self._mutex, self._writing(), self._db:
            self._flush_locked()
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM items WHERE status = 'pending' AND rowid > ? "
                + ("AND seen_run = ? " if listed else "")
                + "ORDER BY rowid LIMIT ?",
                (after_rowid, run_id, limit) if listed else (after_rowid, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE items SET status = 'running', claimed_at = ?, run_id = ?, "
                "sent_params = params WHERE rowid = ?",
                [(now, run_id, row[0]) for row in rows],
            )
        return [work_item(row, claimed_at=now) for row in rows]

    # -- results -------------------------------------------------------------------------

    def record(self, result: Result) -> None:
        """Buffer a result; ``flush`` (called by the runner's flusher) commits the group."""
        self._buffer.append(result)

    def note_tries(self, item_id: str, attempts: int, paid_200s: int, billed: int) -> None:
        """Buffer the tries of an item that will try again (its result comes later), and
        ``billed``, 1 when this retry is of a request Deepgram may have billed: a
        ``kill -9`` in its backoff lost them, and the next run sent it as if new, so
        neither ``--max-retries`` nor "a 200 without a transcript once more at most" held
        across kills, and the possibly billed request went uncounted. Committed with the
        next group of results."""
        self._tries.append((attempts, paid_200s, billed, item_id))

    def pending_results(self) -> int:
        """How many results (and tries) wait to be committed."""
        return len(self._buffer) + len(self._tries)

    def flush(self) -> None:
        """Commit every buffered result in one transaction."""
        with self._mutex:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer and not self._tries:
            return
        batch = [self._buffer.popleft() for _ in range(len(self._buffer))]
        tries = [self._tries.popleft() for _ in range(len(self._tries))]
        now = time.time()
        with self._writing(batch, tries), self._db:
            self._db.executemany(TRIES, tries)  # first: FLUSH's retry_next reads them
            self._db.executemany(FLUSH, [result_row(r, now) for r in batch])
            kept = [(r.id,) for r in batch if r.kept]
            for statement in _KEPT_WRITTEN if kept else ():
                self._db.executemany(statement, kept)

    def release_running(self) -> int:
        """Put every ``running`` item back to ``pending`` (end of an interrupted run)."""
        with self._mutex, self._writing(), self._db:
            self._flush_locked()
            return self._db.execute(
                "UPDATE items SET status = 'pending' WHERE status = 'running'"
            ).rowcount

    @contextlib.contextmanager
    def _writing(
        self,
        unsaved: list[Result] | None = None,
        tries: list[tuple[int, int, int, str]] | None = None,
    ) -> Iterator[None]:
        """Turn a failed write (disk full, I/O error) into a ``StateError`` naming the file;
        results that were not committed stay buffered. The transaction rolled back, so
        the file is as consistent as before: the next run recovers from it."""
        try:
            yield
        except sqlite3.Error as exc:
            if unsaved:
                self._buffer.extendleft(reversed(unsaved))
            if tries:
                self._tries.extendleft(reversed(tries))
            msg = (
                f"{self.path}: cannot write the state file ({exc}); the run stopped and the "
                "state is consistent: free some space (or fix the disk) and run the same command"
            )
            raise StateWriteError(msg) from exc

    # -- queries -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of items per status (every status present, zeros included)."""
        return self._counts("")

    def run_counts(self, run_id: int) -> dict[str, int]:
        """``counts`` of the items run ``run_id`` planned (its sources listed them) or
        sent: what its exit code is about."""
        return self._counts("WHERE run_id = ? OR seen_run = ?", (run_id, run_id))

    def done_asked_anew(self, run_id: int, named: int = 3) -> Some:
        """Done items whose lines, as run ``run_id`` planned them, ask for other params
        than those they were sent with (a manifest line edited): they are not sent again.
        The sources of the first ``named`` of them come along: a count alone left the user
        to search a manifest for the lines edited."""
        where = (
            "FROM items WHERE status = 'done' AND seen_run = ? "
            "AND sent_params != params AND NOT same_params(sent_params, params)"
        )
        ((count,),) = self.query(f"SELECT COUNT(*) {where}", (run_id,))
        first = self.query(f"SELECT source {where} ORDER BY rowid LIMIT ?", (run_id, named))
        return Some(int(count), [str(source) for (source,) in first] if count else [])

    def failed_sent_next(self, run_id: int) -> int:
        """Failed items of run ``run_id`` that the next run sends again by itself
        (``retry_next``: Deepgram or the media host was busy, nothing billed), not those
        that wait for their URL to be listed again (``source_needed``)."""
        ((count,),) = self.query(
            "SELECT COUNT(*) FROM items WHERE status = 'failed' AND retry_next "
            "AND err_code IS NOT 'source_needed' AND (run_id = ? OR seen_run = ?)",
            (run_id, run_id),
        )
        return int(count)

    def _counts(self, where: str, args: tuple[object, ...] = ()) -> dict[str, int]:
        with self._mutex:
            rows = self._db.execute(
                f"SELECT status, COUNT(*) FROM items {where} GROUP BY status", args
            )
            found = dict(rows.fetchall())
        return {s.value: int(found.get(s.value, 0)) for s in ItemStatus}

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (used by status and report)."""
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    def iter_rows(self, where: str = "", args: tuple[object, ...] = ()) -> Iterator[sqlite3.Row]:
        """Stream item rows as mappings, in plan order, without loading them all."""
        with self._mutex:
            cur = self._db.cursor()
            cur.row_factory = sqlite3.Row
            cur.execute(f"SELECT * FROM items {where} ORDER BY rowid", args)
        return self._fetch_all(cur)

    def iter_tuples(self, select: str, args: tuple[object, ...] = ()) -> Iterator[Any]:
        """Stream the rows of ``select`` over items, in plan order (raises at once, not on
        the first ``next``, when the query is invalid)."""
        with self._mutex:
            cur = self._db.execute(f"{select} ORDER BY rowid", args)
        return self._fetch_all(cur)

    def _fetch_all(self, cur: sqlite3.Cursor) -> Iterator[Any]:
        while True:
            with self._mutex:
                rows = cur.fetchmany(1000)
            if not rows:
                return
            yield from rows
