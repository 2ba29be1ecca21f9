"""The process's standard streams as a command-line tool needs them: closed ones
reopened on /dev/null (a scheduler may start a job so), stdout's failures told apart (a
reader that left, a full disk), and a run that goes on when its readers are gone."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import sys
from typing import Any

from batch.errors import OutputError

__all__ = ["Answer", "outlive_readers", "reader_gone", "reopen_closed"]


def reopen_closed() -> None:
    """A stream started closed (``<&-``, ``>&-``) reads as /dev/null (empty) and writes
    into it (discarded), as if the job had been started so."""
    for name, mode in _STANDARD_STREAMS:
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))  # noqa: SIM115 - the process's


_STANDARD_STREAMS = (("stdin", "r"), ("stdout", "w"), ("stderr", "w"))


#: a write whose reader is gone: a closed pipe, a terminal that was closed (EIO)
_READER_GONE = frozenset({errno.EPIPE, errno.EIO})


class _Wrapped:
    """A stream whose failed writes and flushes go through ``_failed``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as exc:
            self._failed(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        raise exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Answer(_Wrapped):
    """stdout, where a failed write (``> /dev/full``) is said as such, not as an internal
    error; a reader gone stays a ``BrokenPipeError`` (``cli``)."""

    def _failed(self, exc: OSError) -> None:
        if exc.errno in _READER_GONE:
            raise exc
        raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from exc


class _Unread(_Wrapped):
    """A stream that goes on when its reader is gone (``dgbatch run … | logger`` whose
    logger died, ``2>&1 | head``, a closed terminal): from the first broken pipe on, what
    is written goes to /dev/null. A run stopped by it left items in flight, re-sent and
    paid again by the next run; it finishes instead, as under ``nohup``."""

    def _failed(self, exc: OSError) -> None:
        if exc.errno not in _READER_GONE:
            raise exc
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)
        with contextlib.suppress(OSError):
            self._stream.flush()  # what was buffered for the reader that left


def outlive_readers() -> None:
    """Keep a run going whatever becomes of the readers of its stdout and stderr."""
    sys.stdout, sys.stderr = _Unread(sys.stdout), _Unread(sys.stderr)


def reader_gone(stream: Any) -> bool:
    """Whether ``stream`` is a pipe or socket whose reading end is closed (POLLERR)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), 0)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
