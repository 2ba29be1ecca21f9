"""Write outputs atomically and durably, and find outputs a crashed run already wrote.

Atomic: write a temp file in the same folder, fsync it, rename it over the target,
fsync the folder. A reader (or a crash) sees the old file or the new one, never half.
File writes run in a thread pool so fsync never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from batch.errors import ItemError, OutputError
from batch.naming import output_relpath, resolve_inside

#: a crashed run's output counts as its own when written after the claim (clock slack)
CLAIM_SLACK = 0.1
#: what ``find_complete`` answers when the outputs exist but no json is kept to read back
COMPLETE_WITHOUT_JSON = b'{"metadata": {}, "results": {}}'
#: matches the ``secrets.token_hex(4)`` in a temp file's name
_TOKEN_GLOB = "[0-9a-f]" * 8


@dataclass(frozen=True, slots=True)
class OutputMeta:
    """What an output records about where it came from (S3 object metadata)."""

    source: str
    fingerprint: str


class OutputSink(Protocol):
    """Where outputs go: a local folder or an S3 prefix."""

    async def write(self, out_name: str, files: dict[str, bytes], meta: OutputMeta) -> list[str]:
        """Write every format durably; return the locations written."""
        ...

    async def find_complete(
        self, out_name: str, formats: tuple[str, ...], meta: OutputMeta, since: float | None
    ) -> bytes | None:
        """The json output if all formats exist and belong to this source, else None."""
        ...

    def describe(self) -> str:
        """Where outputs go, for messages."""
        ...


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder + fsync + rename + fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
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


def describe_os_error(path: Path, exc: OSError) -> str:
    """A message naming the path and the reason, with a hint for the usual suspects."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += " (disk full)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (output folder is not writable)"
    return f"{path}: cannot write output: {reason}"


class LocalSink:
    """Outputs under a local folder, mirroring the items' names."""

    def __init__(self, root: Path, threads: int = 8) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dgbatch-out")

    def describe(self) -> str:
        return str(self.root)

    def path_for(self, out_name: str, fmt: str) -> Path:
        """The output path, guaranteed inside the root."""
        return resolve_inside(self.root, output_relpath(out_name, fmt))

    def _safe_path(self, out_name: str, fmt: str) -> Path:
        """The path, or an item error when a symlink in --out would lead it outside."""
        try:
            return self.path_for(out_name, fmt)
        except ValueError:
            relpath = output_relpath(out_name, fmt)
            msg = f"{relpath}: output path escapes {self.root} (a symlink inside it?); not written"
            raise ItemError(msg, code="unsafe_output") from None

    async def write(self, out_name: str, files: dict[str, bytes], meta: OutputMeta) -> list[str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._write_sync, out_name, files)

    def _write_sync(self, out_name: str, files: dict[str, bytes]) -> list[str]:
        written = []
        for fmt, data in files.items():
            path = self._safe_path(out_name, fmt)
            try:
                write_atomic(path, data)
            except OSError as exc:
                raise OutputError(describe_os_error(path, exc)) from exc
            written.append(str(path))
        return written

    async def find_complete(
        self, out_name: str, formats: tuple[str, ...], meta: OutputMeta, since: float | None
    ) -> bytes | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._find_sync, out_name, formats, since)

    def _find_sync(
        self, out_name: str, formats: tuple[str, ...], since: float | None
    ) -> bytes | None:
        for fmt in formats:
            remove_partial_writes(self.path_for(out_name, fmt))
        if since is None:
            return None
        for fmt in formats:
            try:
                if self.path_for(fmt=fmt, out_name=out_name).stat().st_mtime < since - CLAIM_SLACK:
                    return None
            except OSError:
                return None
        if "json" not in formats:
            return COMPLETE_WITHOUT_JSON
        try:
            return self.path_for(out_name, "json").read_bytes()
        except OSError:
            return None

    def close(self) -> None:
        """Stop the writer threads (after every write finished)."""
        self._pool.shutdown(wait=True)
