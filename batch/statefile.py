"""Opening a state file: the lock that keeps a second run out, the connection, and the
checks and migrations that make sure the file is ours before anything writes to it.

A file that is not ours, is damaged or was written by a newer dgbatch is refused with
a ``StateError`` naming it, and left untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import sqlite3
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from batch import migrations
from batch.errors import StateError, StateLocked, StateWriteError
from batch.shard import lock_tag, overlap, overlap_message

log = logging.getLogger("dgbatch")

#: the ``format`` that ``meta`` holds in every state file
MAGIC = "dgbatch-state"


@dataclass(slots=True)
class StateLock:
    """The locks a run holds on its state file, released by ``close``."""

    beside: IO[str]
    #: the same lock outside the state's folder (``_host_lock``), where one could be made
    host: IO[str] | None

    def close(self) -> None:
        self.beside.close()
        if self.host is not None:
            self.host.close()


_STATE_BUSY = (
    "{path}: state file is in use by another dgbatch run ({holder}); "
    "wait for it to finish or pass another --state"
)
_OUT_BUSY = (
    "{out}: another dgbatch run ({holder}) writes its transcripts there, with another state "
    "file; both would send every item: wait for it to finish, or give each its own --out"
)


def take_lock(path: Path, *, host: bool = True) -> StateLock:
    """Keep other runs out of ``path`` while the run holds it: a lock beside the file and,
    with ``host``, one outside its folder (``_host_lock``)."""
    beside = _lock_beside(path, _STATE_BUSY.format(path=path, holder="{holder}"))
    try:
        return StateLock(beside, _host_lock(path) if host else None)
    except BaseException:
        beside.close()
        raise


def _host_lock(path: Path) -> IO[str] | None:
    """The lock again, in a folder of this user's under the system's temporary folder,
    named after the state's real path: ``rm -rf OUT/.dgbatch`` mid-run deletes the lock
    beside the file, and a run started then got in and sent every item again. None where
    no such folder can be made (the lock beside the file still holds)."""
    folder = Path(tempfile.gettempdir()) / f"dgbatch-locks-{os.getuid()}"
    digest = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if not _own_private_folder(folder):  # made by someone else: not to be trusted
            return None
        fd = os.open(folder / f"{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        handle = os.fdopen(fd, "a+")
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        msg = (
            f"{path}: state file is in use by another dgbatch run on this host (its folder "
            "was deleted and made again while that run held it); wait for it to finish"
        )
        raise StateLocked(msg) from None
    return handle


def _own_private_folder(folder: Path) -> bool:
    """Whether ``folder`` is a real folder of this user that nobody else can write to:
    another user could make it first, and hold the lock of a state they guess the path
    of (keeping every run out), or plant a link as a lock file."""
    st = os.lstat(folder)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def take_output_lock(out: Path, suffix: str = "", *, state: Path | None = None) -> IO[str] | None:
    """A local ``--out``'s own lock, ``OUT/.dgbatch/out[-<suffix>].lock``, held for the
    run: two runs with two state files (a ``--state`` elsewhere) and one ``--out`` each
    planned every item as new and sent it. A shard (``suffix``) locks its own share.

    None, with a warning, where it cannot be made (a read-only ``--out`` with nothing
    left to write), and where it is the lock of ``state`` itself (a state named
    ``OUT/.dgbatch/out``), which the run holds already."""
    folder = out / ".dgbatch"
    lock_path = folder / (f"out-{suffix}" if suffix else "out")
    if state is not None and os.path.realpath(lock_path) == os.path.realpath(state):
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = _lock_beside(lock_path, _OUT_BUSY.format(out=out, holder="{holder}"))
    except (OSError, StateError) as exc:  # StateLocked, another run holding it, is raised
        log.warning("%s: no lock on the output folder (%s); go on without it", out, exc)
        return None
    try:
        _refuse_overlapping_shards(out, suffix)
    except BaseException:
        handle.close()
        raise
    return handle


def unwritable_reason(out: Path) -> str | None:
    """Why nothing can be written into ``out`` (a read-only mount, no permission), None
    where a file can be made there: asked when its lock could not be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out, prefix=".dgbatch-probe-")
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def _refuse_overlapping_shards(out: Path, suffix: str) -> None:
    """Refuse a run while another one with other ``--shard`` settings holds its lock on
    this ``--out`` (one without ``--shard`` and a shard, or shards of two N): each has its
    own state, so both would send the items they share. Taken after the run's own lock,
    so that of two such runs starting together at least one sees the other.

    Raises:
        StateLocked: naming that run and its shard.
    """
    with contextlib.suppress(OSError), os.scandir(out / ".dgbatch") as entries:
        for entry in entries:
            tag = lock_tag(entry.name, "out", "lock")  # take_output_lock's
            if tag is not None and tag != suffix and overlap(suffix, tag):
                holder = _held_by(Path(entry.path))
                if holder is not None:
                    raise StateLocked(overlap_message(str(out), holder, tag, suffix))


def _held_by(lock_path: Path) -> str | None:
    """Who holds the lock file at ``lock_path``, or None when nobody does."""
    try:
        with open(lock_path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip() or "another process"
    except OSError:
        return None
    return None


def holder_of(path: Path) -> str | None:
    """Who holds the state's lock now (``pid N on HOST``), or None: for the dry run, whose
    snapshot of a state a run is writing is only that."""
    return _held_by(_lock_file(path))


def _lock_file(path: Path) -> Path:
    """The lock file beside the state file ``path``."""
    return path.with_name(path.name + ".lock")


def _lock_beside(path: Path, busy: str) -> IO[str]:
    """Keep other runs out of ``path`` for as long as the handle is open: flock, so a
    crashed run's lock goes with its process. The holder is written in the lock file for
    the message (``busy``, with ``{holder}``) another run shows."""
    lock_path = _lock_file(path)
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the run's lifetime
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot open lock file: {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StateLocked(busy.format(holder=holder)) from None
    handle.seek(0)
    handle.truncate()
    owner = f"pid {os.getpid()} on {socket.gethostname()}".encode()
    with contextlib.suppress(OSError):  # a full disk: the flock holds all the same (and
        os.write(handle.fileno(), owner)  # unbuffered: nothing left to fail at close)
    return handle


#: what SQLite keeps under a state file's name: the file, and its write-ahead log, shared
#: memory and rollback journal beside it
SQLITE_TAILS = ("", "-wal", "-shm", "-journal")


def remove_unused(path: Path) -> None:
    """Remove a state file a run made and never used (and SQLite's files beside it; the
    run lock stays: a run waiting on it must find the one it waits on)."""
    for tail in SQLITE_TAILS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.with_name(path.name + tail))


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Connect and read the schema at once, so that a file that is not SQLite is refused
    here, named, before anything writes to it."""
    try:
        try:
            db = _open(path, "mode=ro" if readonly else None)
        except sqlite3.OperationalError:
            if not readonly or not _read_only_folder(path):
                raise
            db = _open(path, "immutable=1")  # nothing can write it, nor its WAL (none)
    except sqlite3.DatabaseError as exc:
        if _disk_error(exc):
            raise StateWriteError(_DISK.format(path=path, exc=exc)) from exc
        raise StateError(
            f"{path}: not a usable dgbatch state file ({exc}); not touching it"
        ) from exc
    return db


def _open(path: Path, mode: str | None) -> sqlite3.Connection:
    """A connection that has read the schema (a file that is not SQLite fails here)."""
    if mode is None:
        db = sqlite3.connect(path, check_same_thread=False)
    else:  # quoted: a '?' or '#' in the path would end it and open another file
        db = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _read_only_folder(path: Path) -> bool:
    """Whether the state lies in a folder nothing can write (a read-only mount, no
    permission) and has no write-ahead log to read: SQLite then cannot make the
    ``-shm`` file a read of a WAL-mode file needs, and reads it as immutable instead
    (status and report called such a state "not a usable dgbatch state file")."""
    wal = path.with_name(path.name + "-wal")
    return not os.access(path.parent, os.W_OK) and not (wal.exists() and wal.stat().st_size)


_DISK = (
    "{path}: cannot read or write the state file ({exc}): a full disk? free some space "
    "(or fix the disk) and run the same command; the state is as it was"
)


def _disk_error(exc: sqlite3.DatabaseError) -> bool:
    """The disk failed SQLite (full, or an I/O error), not the file's contents."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def check_readable(db: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """``db``, when it holds a state to read (status, report, usage); an empty file or
    another program's SQLite file is refused by name, not failed on its first query."""
    tables = _tables(db)
    try:
        _refuse_lost(path, tables)
        if not {"meta", "items"} <= tables:
            what = "an empty file" if not tables else "an SQLite file of another program"
            raise StateError(f"{path}: {what}, not a dgbatch state file")
        _refuse_newer(db, path, tables)
    except StateError:
        db.close()
        raise
    return db


def _refuse_lost(path: Path, tables: set[str]) -> None:
    """Refuse, for a run and for a reader alike, a state whose ``-wal`` went missing."""
    if _lost_wal(path, tables):
        raise StateError(_LOST_WAL.format(path=path))


def _refuse_newer(db: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    """Refuse, for a run and for a reader alike, a state a newer dgbatch migrated (once
    the file is known to be ours: another program's ``_migrations`` has other columns)."""
    if "_migrations" in tables and migrations.unknown_migrations(db):
        raise StateError(_NEWER.format(path=path))


_NEWER = "{path}: written by a newer dgbatch; upgrade dgbatch to use it"
_LOST_WAL = (
    "{path}: its -wal file is missing or empty, and until its first checkpoint a state "
    "holds everything there: it was copied or moved without {path}-wal (put that back "
    "beside it), or it was being made when a full disk or a kill cut it short, before "
    "anything was recorded (delete {path}, and the next run starts it afresh)"
)


def _lost_wal(path: Path, tables: set[str]) -> bool:
    """A state file in WAL mode with no tables and no (or an empty) ``-wal``: dgbatch
    writes its schema in the WAL and the file keeps only the header until the first
    checkpoint, so this is a state whose WAL went missing (a ``kill -9`` and then a copy
    of the file alone), not a new one; planning it as new would send every item again."""
    if tables:
        return False
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
        if header[18:20] != b"\x02\x02":
            return False
        wal = Path(f"{path}-wal")  # opening the file made an empty one if there was none
        return not wal.exists() or wal.stat().st_size == 0
    except OSError:
        return False


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """Make a new file a state file or bring ours up to date (WAL, migrations); refuse an
    SQLite file that is not ours, or one a newer dgbatch wrote."""
    try:
        tables = _tables(db)
        _refuse_lost(path, tables)
        if tables and "meta" not in tables and not _first_migration_undone(db, tables):
            raise StateError(
                f"{path}: an SQLite file but not a dgbatch state file; not touching it"
            )
        _refuse_newer(db, path, tables)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        with db:
            migrations.migrate(db)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (MAGIC,))
    except sqlite3.DatabaseError as exc:
        if _disk_error(exc):  # "damaged" would invite deleting it, and paying again
            raise StateWriteError(_DISK.format(path=path, exc=exc)) from exc
        raise StateError(f"{path}: state file is damaged ({exc}); not touching it") from exc


def _first_migration_undone(db: sqlite3.Connection, tables: set[str]) -> bool:
    """Whether the file holds only our empty ``_migrations`` table: a state whose first
    migration a full disk undid, to be made a state again, not refused as another
    program's file (which then had to be deleted by hand)."""
    if tables != {"_migrations"}:
        return False
    columns = [row[1] for row in db.execute("PRAGMA table_info(_migrations)")]
    empty = db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == 0
    return columns == ["name", "applied_at"] and empty


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def file_id(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (device and inode), None when nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def write_back_if_gone(db: sqlite3.Connection, path: Path, opened: tuple[int, int] | None) -> None:
    """A state file deleted while the run held it (``rm -rf OUT/.dgbatch``, a cleaner)
    lives on only in this connection, and without it the next run would send every item
    again: copy it back where it was. A file put there meanwhile (another run's) is left
    alone and the copy goes beside it. Never raises: it runs on the way out."""
    if opened is None or file_id(path) == opened:
        return
    target = path
    if os.path.lexists(target):
        target = target.with_name(f"{target.name}.recovered-{int(time.time())}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = sqlite3.connect(target)
        try:
            db.backup(copy)
        finally:
            copy.close()
    except (OSError, sqlite3.Error) as exc:
        log.error(
            "%s: the state file was deleted during the run and cannot be written back (%s): "
            "the next run will send its items again",
            path,
            exc,
        )
        return
    log.warning(
        "%s: the state file was deleted or replaced during the run; this run's record is "
        "written back to %s",
        path,
        target,
    )
