"""The real sources of the items whose stored form is redacted (presigned URLs, URLs with
a password or a token), for this run's requests.

The state never holds a secret, yet a run needs each real source until it sends the item,
which may be hours after planning; a million presigned URLs are a GB or more, so holding
them in a dict made memory grow with the manifest. They are kept in a private temporary
SQLite database instead: SQLite holds a few MB of it in memory whatever the count and the
rest in a file it deleted as it created it (in ``SQLITE_TMPDIR`` or ``TMPDIR``), gone when
the database is closed or the process ends. Created at the first such source: a run
without any costs nothing.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from batch.errors import ScratchError


class RealSources:
    """Item id → real source, written by the planner's thread, read by the runner's."""

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def add(self, item_id: str, source: str) -> str | None:
        """Remember ``source`` for a new id and return None; for an id already seen, keep
        the earlier source and return it (``replace`` takes the new one)."""
        with self._lock, _scratch():
            db = self._open()
            if db is None:
                return None
            sql = "INSERT INTO real (id, source) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
            if db.execute(sql, (item_id, source)).rowcount == 1:
                return None
            (earlier,) = db.execute("SELECT source FROM real WHERE id = ?", (item_id,)).fetchone()
            return str(earlier)

    def replace(self, item_id: str, source: str) -> None:
        """The item's real source is now ``source`` (signed again: the latest is sent)."""
        with self._lock, _scratch():
            if self._db is not None:
                self._db.execute("UPDATE real SET source = ? WHERE id = ?", (source, item_id))

    def get(self, item_id: str, default: str) -> str:
        """The item's real source, or ``default`` (its stored one) when it has none."""
        if self._db is None:  # no source was ever redacted: the common case, no lookup
            return default
        with self._lock, _scratch():
            if self._db is None:
                return default
            row = self._db.execute("SELECT source FROM real WHERE id = ?", (item_id,)).fetchone()
        return default if row is None else str(row[0])

    def close(self) -> None:
        """The run is over; a planner thread still adding afterwards is ignored."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def _open(self) -> sqlite3.Connection | None:
        if self._db is None and not self._closed:
            # "" is a private temporary database; never committed, never journaled: it
            # lives and dies with this connection
            db = sqlite3.connect("", check_same_thread=False)
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("CREATE TABLE real (id TEXT PRIMARY KEY, source TEXT NOT NULL)")
            self._db = db
        return self._db


@contextmanager
def _scratch() -> Iterator[None]:
    """A failure of the temporary database (its disk full) as the run's error to stop on."""
    try:
        yield
    except sqlite3.Error as exc:
        folder = tempfile.gettempdir()
        raise ScratchError(
            f"{folder}: cannot keep the real sources of redacted URLs in a temporary file "
            f"({exc}); free some space there or set TMPDIR (or SQLITE_TMPDIR) to a folder "
            "with room, then run the same command"
        ) from exc
