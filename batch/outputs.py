"""Write outputs atomically and durably, and find outputs a crashed run already wrote.

Atomic: write a temp file in the same folder, make it durable, rename it over the
target, make the folder durable. A reader (or a crash) sees the old file or the new
one, never half. File writes run in a thread pool so syncing never blocks the event loop.

Durability is group-committed: the outputs of every item that finished while the
previous group was being synced are written together and made durable by one
``syncfs`` per filesystem (Linux), then renamed, then synced again, instead of an
``fsync`` per file and per folder. Each ``write`` still returns only once its own
files are durable, so an item is never recorded ``done`` before its outputs are.
Where ``syncfs`` is missing, every temp file and folder is fsynced, in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from batch.errors import ItemError, OutputError
from batch.naming import output_relpath, resolve_inside
from batch.outputguard import (
    CLAIM_SLACK,
    Inputs,
    check_not_foreign,
    check_spares_source,
    describe_os_error,
    output_error,
)
from batch.records import Ownership

#: seconds an abandoned item's outputs may take to land, once its answer is in (a group
#: write is a few ms; a second Ctrl-C must still end the run promptly)
OUTPUT_GRACE = 2.0
#: matches the ``secrets.token_hex(4)`` in a temp file's name
_TOKEN_GLOB = "[0-9a-f]" * 8
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OutputMeta:
    """What an output records about where it came from (S3 object metadata)."""

    source: str
    fingerprint: str
    #: which files at the item's output places are its own, to replace (a local
    #: ``--out``, ``check_not_foreign``); None replaces any (``--force``)
    owner: Ownership | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """An item's outputs, found complete in place (written by a run that did not record
    them): where they are, and the json to read the transcript from, when it is kept and
    was read (None: only other formats are written, or S3, where only HEADs are made)."""

    locations: list[str]
    json: bytes | None
    #: none of the item's own, but an output of another source is there (S3 metadata
    #: names it): its location, and that source
    foreign: tuple[str, str] | None = None


class OutputSink(Protocol):
    """Where outputs go: a local folder or an S3 prefix."""

    async def write(self, out_name: str, files: dict[str, bytes], meta: OutputMeta) -> list[str]:
        """Write every format durably; return the locations written."""
        ...

    async def find_complete(
        self, out_name: str, formats: tuple[str, ...], meta: OutputMeta, since: float | None
    ) -> Found | None:
        """The outputs, if all formats exist and belong to this source; only the json, if
        it does and other formats do not (they are rendered from it, see
        ``batch.backfill``: a run with a longer ``--formats`` adopts what an earlier one
        wrote); else None."""
        ...

    async def read(self, out_name: str, fmt: str) -> bytes | None:
        """An output written earlier, or None when it is not there.

        Raises:
            OutputError: it may be there, but cannot be read.
        """
        ...

    def describe(self) -> str:
        """Where outputs go, for messages."""
        ...


async def landed(write: asyncio.Future[_T]) -> _T:
    """What ``write`` gives, even when the item waiting for it is abandoned meanwhile (a
    second Ctrl-C, the end of ``--grace``): its answer is paid for, so the write is let
    finish, for up to ``OUTPUT_GRACE``, and the item is recorded done instead of being
    sent again. A shield on a future, not a task: this runs once per item."""
    try:
        return await asyncio.shield(write)
    except asyncio.CancelledError:
        finished, _ = await asyncio.wait({write}, timeout=OUTPUT_GRACE)
        if write not in finished or write.cancelled() or write.exception() is not None:
            write.add_done_callback(_retrieved)  # nobody waits for it any more
            raise
        return write.result()


def _retrieved(write: asyncio.Future[Any]) -> None:
    """Take the outcome of a write left behind, so that asyncio does not log it with a
    traceback ("exception was never retrieved") when the loop cancels it at shutdown:
    the item's answer is kept, and the summary says so."""
    if not write.cancelled():
        write.exception()


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder + fsync + rename + fsync of the folder."""
    with atomic_file(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file that replaces it, durably, only if the block ends
    without an error: a large file (the run report) is streamed, never held in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_partial_writes(path: Path) -> None:
    """Delete the temp files a killed run left while writing ``path`` (only items a
    crashed run left ``running`` are asked about, under the state lock, so no live
    writer owns them)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{_TOKEN_GLOB}.tmp"):
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """``syncfs(2)`` from the C library, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_SYNCFS = _load_syncfs()


def _syncfs(folders: Iterable[str]) -> None:
    """One ``syncfs`` per filesystem holding ``folders``: every dirty page and inode on it."""
    synced: set[int] = set()
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            device = os.fstat(fd).st_dev
            if device not in synced and _SYNCFS is not None and _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(folder))
            synced.add(device)
        finally:
            os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Job:
    """The files of one ``write`` call, and what became of them. Paths are plain strings:
    the writer handles two files per item, and ``pathlib`` cost more than the syscalls."""

    out_name: str
    files: dict[str, bytes]
    owner: Ownership | None = None
    paths: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    error: Exception | None = None

    def fail(self, exc: Exception) -> None:
        self.error = exc
        for tmp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.temps = []


def adoptable(found: dict[str, _T], formats: tuple[str, ...]) -> dict[str, _T]:
    """Of an item's outputs ``found`` in place, those it is adopted with: every format
    asked for, or else its json alone, from which ``batch.backfill`` renders the rest;
    else none (it is sent)."""
    if len(found) == len(formats):
        return found
    return {"json": found["json"]} if "json" in found else {}


def _written_since(path: Path, since: float) -> bool:
    """The file is there, written after ``since`` (less the clock slack), not before."""
    try:
        return path.stat().st_mtime >= since - CLAIM_SLACK
    except OSError:
        return False


class _GroupWriter:
    """Writes the jobs of one group: temp files, a durability barrier, renames, another."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        threads: int,
        path_for: Callable[[str, str], str],
        inputs: Inputs = frozenset(),
    ) -> None:
        self._pool = pool
        self._parallel = threads > 1  # run() itself holds one of the pool's threads
        self._path_for = path_for
        self._inputs = inputs

    def run(self, jobs: list[_Job]) -> None:
        """Write ``jobs``: every temp file, one barrier, the renames, another barrier."""
        for job in jobs:
            self._place(job)
        unmade = _make_folders(_folders_of(jobs))
        for job in jobs:  # why a folder could not be made (read-only, full): not ENOENT
            path = next((p for p in job.paths if os.path.dirname(p) in unmade), None)
            if job.error is None and path is not None:
                job.fail(output_error(Path(path), unmade[os.path.dirname(path)]))
        tag = secrets.token_hex(4)  # temp names differ by their output's name already
        for job in jobs:  # one thread: more would fight the event loop for the GIL
            if job.error is None:
                _write_temps(job, tag)
        live = [job for job in jobs if job.error is None]
        folders = _folders_of(live)  # only those written into: a failed one is its items'
        try:
            self._barrier([tmp for job in live for tmp in job.temps], folders)
            for job in live:
                _rename_temps(job)
            self._barrier([], folders)
        except OSError as exc:
            where = exc.filename if isinstance(exc.filename, str) else min(folders)
            for job in live:
                job.fail(OutputError(describe_os_error(Path(where), exc)))

    def _place(self, job: _Job) -> None:
        fmt = ""
        try:
            for fmt, data in job.files.items():
                job.paths.append(self._path_for(job.out_name, fmt))
                check_not_foreign(job.paths[-1], job.owner, self._inputs, data)
        except ValueError:  # a symlink in --out leads outside or loops: this item fails
            relpath = output_relpath(job.out_name, fmt)
            msg = (
                f"{relpath}: output path escapes --out or cannot be resolved (a symlink "
                "inside it?); not written"
            )
            job.fail(ItemError(msg, code="unsafe_output"))
        except ItemError as exc:
            job.fail(exc)

    def _barrier(self, files: list[str], folders: set[str]) -> None:
        """Make ``files`` and the entries of ``folders`` durable."""
        if _SYNCFS is not None:
            _syncfs(sorted(folders))
            return
        paths = [*files, *folders]
        if not self._parallel:
            for path in paths:
                _fsync_file(path)
            return
        for _ in self._pool.map(_fsync_file, paths):
            pass


def _make_folders(folders: set[str]) -> dict[str, OSError]:
    """Make each folder (and its parents); the error of each that could not be made, but
    for a file in its place, which the write into it tells better (``output_error``)."""
    unmade = {}
    for folder in folders:
        try:
            _make_folder(folder)
        except FileExistsError:
            pass
        except OSError as exc:
            unmade[folder] = exc
    return unmade


def _make_folder(folder: str) -> None:
    """``os.makedirs(folder, exist_ok=True)`` without its recursion: a name 1,000 folders
    deep raised RecursionError, which failed every write of its group and stopped the run."""
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):  # a file in the way: the write tells it better
                raise


def _folders_of(jobs: list[_Job]) -> set[str]:
    return {os.path.dirname(path) for job in jobs if job.error is None for path in job.paths}


def _write_temps(job: _Job, tag: str) -> None:
    for path, data in zip(job.paths, job.files.values(), strict=True):
        folder, _, leaf = path.rpartition("/")
        try:
            _write_new_file(f"{folder}/.{leaf}.{tag}.tmp", data, job.temps)
        except OSError as exc:
            job.fail(output_error(Path(path), exc))
            return


def _write_new_file(tmp: str, data: bytes, created: list[str]) -> None:
    """Create ``tmp`` (never an existing file) and write ``data``; durability comes later."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    created.append(tmp)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _rename_temps(job: _Job) -> None:
    for path, tmp in zip(job.paths, job.temps, strict=True):
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. a folder where the output should go: this item fails
            job.fail(output_error(Path(path), exc))
            return


class LocalSink:
    """Outputs under a local folder, mirroring the items' names."""

    def __init__(self, root: Path, threads: int = 8, inputs: Inputs = frozenset()) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dgbatch-out")
        self._writer = _GroupWriter(self._pool, threads, self._write_path, inputs)
        self._folders: dict[str, str] = {}
        self._queue: list[tuple[_Job, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return str(self.root)

    def has(self, out_name: str, fmt: str) -> bool:
        """Whether a file is at the output's place (cheap: no thread, no resolving)."""
        return os.access(f"{self.root}/{output_relpath(out_name, fmt)}", os.F_OK)

    def has_file(self, out_name: str, fmt: str) -> bool:
        """Whether a regular file (not a folder in the way) is at the output's place."""
        return os.path.isfile(f"{self.root}/{output_relpath(out_name, fmt)}")

    def path_for(self, out_name: str, fmt: str) -> Path:
        """The output path, guaranteed inside the root."""
        return resolve_inside(self.root, output_relpath(out_name, fmt))

    def _write_path(self, out_name: str, fmt: str) -> str:
        """``path_for`` with each folder resolved once: outputs are renamed into place,
        so only the folder can redirect a write (a symlinked last component is replaced)."""
        folder, _, leaf = output_relpath(out_name, fmt).rpartition("/")
        if leaf in ("", ".", ".."):
            return str(self.path_for(out_name, fmt))
        resolved = self._folders.get(folder)
        if resolved is None:
            parent = resolve_inside(self.root, f"{folder}/{leaf}" if folder else leaf).parent
            resolved = str(parent)
            if len(self._folders) >= 10_000:
                self._folders.clear()
            self._folders[folder] = resolved
        return f"{resolved}/{leaf}"

    async def write(self, out_name: str, files: dict[str, bytes], meta: OutputMeta) -> list[str]:
        """Queue the files for the next group commit; return once they are durable. Never
        over the item's own recording (a ``--dedupe`` copy, a kept answer: nothing checked
        them before they were sent)."""
        check_spares_source(self.root, out_name, files, meta.source)
        loop = asyncio.get_running_loop()
        job = _Job(out_name, files, meta.owner)
        done = loop.create_future()
        self._queue.append((job, done))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups())
        await landed(done)
        if job.error is not None:
            raise job.error
        return job.paths

    async def _commit_groups(self) -> None:
        """Write whatever queued up while the previous group was being synced, until idle."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    jobs = [job for job, _ in group]
                    await loop.run_in_executor(self._pool, self._writer.run, jobs)
                except BaseException as exc:
                    for job, _ in group:
                        job.error = job.error or OutputError(
                            f"{self.root}: output write failed: {exc!r}"
                        )
                    if not isinstance(exc, Exception):
                        raise
                    # each job carries the error to its writer; the groups queued
                    # meanwhile still need a committer, or their writers wait for good
                finally:
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
                # No pause between groups: a group is whatever finished while the previous
                # one was being written (pauses of 10 to 50 ms were measured: none helped).
                # The yield lets the writers just woken run first.
                await asyncio.sleep(0)
        finally:
            self._committer = None

    async def find_complete(
        self, out_name: str, formats: tuple[str, ...], meta: OutputMeta, since: float | None
    ) -> Found | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._find_sync, out_name, formats, since)

    def _find_sync(
        self, out_name: str, formats: tuple[str, ...], since: float | None
    ) -> Found | None:
        try:
            paths = {fmt: self.path_for(out_name, fmt) for fmt in formats}
        except ValueError:  # a symlink leads outside or loops: nothing there is the item's
            return None
        for path in paths.values():
            remove_partial_writes(path)
        if since is None:
            return None
        fresh = {fmt: path for fmt, path in paths.items() if _written_since(path, since)}
        found = adoptable(fresh, formats)
        if not found:
            return None
        try:
            body = found["json"].read_bytes() if "json" in found else None
        except OSError:
            return None
        return Found([str(path) for path in found.values()], body)

    async def read(self, out_name: str, fmt: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_sync, out_name, fmt)

    def _read_sync(self, out_name: str, fmt: str) -> bytes | None:
        try:
            path = self.path_for(out_name, fmt)
        except ValueError:  # a symlink in --out leads outside: not ours to read
            return None
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise OutputError(f"{path}: cannot read output: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Stop the writer threads (after every write finished)."""
        self._pool.shutdown(wait=True)
