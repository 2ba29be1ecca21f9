"""stdin read so that a stop is noticed while its producer is silent.

The planner reads ``dgbatch run -`` in a thread. A blocking ``readline`` there held a
stopped run (Ctrl-C, SIGTERM, a lost lock) until the producer closed stdin, which a
``tail -f`` or an interactive terminal never does. Reading the descriptor after a
``select`` with a short timeout lets the thread look at the stop flag between waits.
"""

from __future__ import annotations

import os
import select
import threading
from typing import BinaryIO

from batch.errors import Interrupted

#: seconds between two looks at the stop flag while stdin has nothing to read
POLL = 0.1
_READ_BYTES = 1 << 16


class StoppableStream:
    """``readline`` over a file descriptor that raises :class:`Interrupted` once ``stop``
    is set and no line is ready: what the planner needs of stdin, nothing more."""

    def __init__(self, fd: int, stop: threading.Event) -> None:
        self._fd = fd
        self._stop = stop
        self._buffer = b""
        self._start = 0
        self._eof = False

    def readline(self, limit: int = -1, /) -> bytes:
        """The next line with its newline, at most ``limit`` bytes of it (as
        ``io.BufferedReader.readline``); ``b""`` at the end of input."""
        while (size := self._line_size(limit)) is None:
            self._fill()
        line = self._buffer[self._start : self._start + size]
        self._start += size
        return line

    def _line_size(self, limit: int) -> int | None:
        """Bytes of the next line that are ready, or None while more must be read."""
        ready = len(self._buffer) - self._start
        newline = self._buffer.find(b"\n", self._start)
        size = newline + 1 - self._start if newline >= 0 else (ready if self._eof else None)
        if 0 <= limit <= ready and (size is None or size > limit):
            return limit
        return size

    def _fill(self) -> None:
        while not select.select([self._fd], [], [], POLL)[0]:
            if self._stop.is_set():
                raise Interrupted(
                    "interrupted while waiting for stdin; give the same list again to resume"
                )
        data = os.read(self._fd, _READ_BYTES)
        self._buffer = self._buffer[self._start :] + data
        self._start = 0
        self._eof = not data


def stoppable(stream: BinaryIO, stop: threading.Event) -> BinaryIO | StoppableStream:
    """``stream`` read through :class:`StoppableStream` when it is a descriptor that
    ``select`` can wait on (a pipe, a terminal, a file); as it is otherwise (a test's
    in-memory stream). Nothing may have been read from ``stream``'s own buffer yet."""
    try:
        fd = stream.fileno()
        select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return stream
    return StoppableStream(fd, stop)
