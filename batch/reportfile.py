"""Where ``dgbatch report -o`` writes: a file replaced only once the report is whole, or
one of this process's descriptors, a pipe or a terminal written into as it is (so that
``-o /dev/stdout >> log`` goes on appending); each failure named with the path."""

from __future__ import annotations

import errno
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TextIO, TypeVar

from batch.errors import OutputError, UsageError
from batch.outputs import atomic_file

__all__ = ["atomic_text", "open_output"]

_T = TypeVar("_T")


@contextmanager
def open_output(path: str) -> Iterator[TextIO]:
    """Open where ``report -o`` writes (``-`` is stdout), through a temp file that
    replaces it only once the report is whole: a full disk must not leave half a report
    where the last one was.

    A file that cannot be created is bad input (exit 2), named with the reason;
    click's own ``File`` type would make it a generic error (exit 1).

    Raises:
        UsageError: the folder is missing, not writable, or the path is a folder.
        OutputError: the report could not be written whole (a full disk).
    """
    if path == "-":
        yield sys.stdout
        return
    given = Path(path)
    fd = _own_descriptor(path)
    if fd is not None or (given.exists() and not given.is_file() and not given.is_dir()):
        with _opened(path, lambda: _direct(given, fd), replaced=False, stdout=fd == 1) as stream:
            yield stream
        return
    target = Path(os.path.realpath(path))  # a link's file is replaced, not the link
    problem = os.strerror(errno.EISDIR) if target.is_dir() else None
    if problem is None and not target.parent.is_dir():
        problem = os.strerror(errno.ENOENT)
    if problem is not None:
        raise UsageError(f"-o {path!r}: cannot write the report: {problem}")
    mode = target.stat().st_mode & 0o7777 if target.exists() else None
    with _opened(path, lambda: atomic_text(target, mode), replaced=True) as stream:
        yield stream


@contextmanager
def atomic_text(path: Path, mode: int | None = None) -> Iterator[TextIO]:
    """``atomic_file`` as text: ``path`` replaced only once the block ends without an
    error, with ``mode`` (the permissions of the file it replaces) when given."""
    with atomic_file(path) as raw:
        if mode is not None:
            os.fchmod(raw.fileno(), mode)
        stream = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        yield stream
        stream.flush()
        stream.detach()  # atomic_file closes the file itself


def _direct(given: Path, fd: int | None) -> TextIO:
    """Where a report is written as it is, with no temp file: one of this process's own
    descriptors (``/dev/stdout`` appended to a log goes on being appended to), a pipe, a
    terminal."""
    if fd is not None:
        return os.fdopen(os.dup(fd), "w", encoding="utf-8")
    return open(given, "w", encoding="utf-8")


_DESCRIPTOR_RE = re.compile(r"/(?:proc/(self|thread-self|\d+)|dev)/fd/(\d+)")
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}


def _own_descriptor(path: str) -> int | None:
    """The descriptor of this process that ``path`` is, so that a report is written into
    it (``/dev/stdout``, ``/dev/fd/3``, a link to one: ``3>> log`` goes on appending): one
    it names through its links, or stdout or stderr when the path is their file."""
    named = _named_descriptor(path)
    if named is not None:
        return named
    try:
        target = os.stat(path)
    except OSError:
        return None
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return fd
    return None


def _ours(process: str | None, fd: str) -> int | None:
    """``fd`` when the ``/proc/<process>/fd`` (or ``/dev/fd``) it is in is this process's:
    another process's descriptor 1 is not this one's stdout."""
    mine = process in (None, "self", "thread-self") or process == str(os.getpid())
    return int(fd) if mine else None


def _named_descriptor(path: str) -> int | None:
    """The open descriptor ``path`` or one of the links it leads through names."""
    current = _folder_resolved(path)
    for _ in range(40):
        match = _DESCRIPTOR_RE.fullmatch(current)
        fd = _STANDARD.get(current) if match is None else _ours(*match.groups())
        if fd is not None:
            try:
                os.fstat(fd)
            except OSError:
                return None
            return fd
        if not os.path.islink(current):
            return None
        current = _folder_resolved(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def _folder_resolved(path: str) -> str:
    """``path`` with its folders' links and ``..`` resolved, its last part left as it is
    (``fds/3`` with ``fds`` → ``/dev/fd``: ``/proc/<pid>/fd/3``)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


@contextmanager
def _opened(
    path: str,
    opener: Callable[[], AbstractContextManager[_T]],
    *,
    replaced: bool,
    stdout: bool = False,
) -> Iterator[_T]:
    """``opener``'s file; one that cannot be opened is bad input (exit 2), one that cannot
    be written whole (a full disk) an output error (exit 1), each naming ``path``. Into
    ``stdout``, a reader gone stays a ``BrokenPipeError``: one that read what it wanted
    (``-o /dev/stdout | head``) is no failure (``cli``)."""
    opened = False
    try:
        with opener() as handle:
            opened = True
            yield handle
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if not opened:
            raise UsageError(f"-o {path!r}: cannot write the report: {reason}") from exc
        if isinstance(exc, BrokenPipeError) and stdout:
            raise
        unchanged = "; the file there is unchanged" if replaced else ""
        raise OutputError(f"-o {path!r}: cannot write the report: {reason}{unchanged}") from exc
