"""The real sources of the items whose stored form is redacted (presigned URLs, URLs with
a password or a token), for this run's requests.

The state never holds a secret, yet a run needs each real source until it sends the item,
which may be hours after planning; a million presigned URLs are a GB or more, so holding
them in a dict made memory grow with the manifest. They are kept in a private temporary
SQLite database instead: SQLite holds a few MB of it in memory whatever the count and the
rest in a file it deleted as it created it (see ``scratch_folder``), gone when the
database is closed or the process ends. What reaches that disk is sealed with a key that
only this process's memory holds (a SHAKE-256 keystream, a fresh nonce per source), so the
blocks the file leaves behind hold no signature. Created at the first such source: a run
without any costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from batch.errors import ScratchError

_NONCE = 16


class RealSources:
    """Item id → real source, written by the planner's thread, read by the runner's."""

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._key = os.urandom(32)

    def add(self, item_id: str, source: str) -> str | None:
        """Remember ``source`` for a new id and return None; for an id already seen, keep
        the earlier source and return it (``replace`` takes the new one)."""
        with self._lock, _scratch():
            db = self._open()
            if db is None:
                return None
            sql = "INSERT INTO real (id, source) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
            if db.execute(sql, (item_id, self._seal(source))).rowcount == 1:
                return None
            (earlier,) = db.execute("SELECT source FROM real WHERE id = ?", (item_id,)).fetchone()
            return self._unseal(earlier)

    def replace(self, item_id: str, source: str) -> None:
        """The item's real source is now ``source`` (signed again: the latest is sent)."""
        with self._lock, _scratch():
            if self._db is not None:
                sealed = self._seal(source)
                self._db.execute("UPDATE real SET source = ? WHERE id = ?", (sealed, item_id))

    def get(self, item_id: str, default: str) -> str:
        """The item's real source, or ``default`` (its stored one) when it has none."""
        if self._db is None:  # no source was ever redacted: the common case, no lookup
            return default
        with self._lock, _scratch():
            if self._db is None:
                return default
            row = self._db.execute("SELECT source FROM real WHERE id = ?", (item_id,)).fetchone()
        return default if row is None else self._unseal(row[0])

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
            db.execute("CREATE TABLE real (id TEXT PRIMARY KEY, source BLOB NOT NULL)")
            self._db = db
        return self._db

    def _seal(self, source: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._xor(source.encode("utf-8", "surrogatepass"), nonce)

    def _unseal(self, sealed: bytes) -> str:
        data = self._xor(sealed[_NONCE:], sealed[:_NONCE])
        return data.decode("utf-8", "surrogatepass")

    def _xor(self, data: bytes, nonce: bytes) -> bytes:
        pad = hashlib.shake_256(self._key + nonce).digest(len(data))
        mixed = int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")
        return mixed.to_bytes(len(data), "big")


def scratch_folder() -> str:
    """Where SQLite puts its temporary files, as its Unix build looks for them:
    ``SQLITE_TMPDIR``, ``TMPDIR``, then ``/var/tmp``, ``/usr/tmp``, ``/tmp``, ``.``."""
    candidates = [os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR")]
    for folder in [*candidates, "/var/tmp", "/usr/tmp", "/tmp", "."]:
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return "."


@contextmanager
def _scratch() -> Iterator[None]:
    """A failure of the temporary database (its disk full) as the run's error to stop on."""
    try:
        yield
    except sqlite3.Error as exc:
        raise ScratchError(
            f"{scratch_folder()}: cannot keep the real sources of redacted URLs in a temporary "
            f"file ({exc}); free some space there or set SQLITE_TMPDIR (or TMPDIR) to a "
            "folder with room, then run the same command"
        ) from exc
