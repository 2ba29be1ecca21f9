"""``batch.pipes``: stdin read line by line as a buffered file would be, and a stop that
does not wait for a silent producer."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator

import pytest

from batch.errors import Interrupted
from batch.pipes import StoppableStream, stoppable


def _lines(stream: io.BufferedIOBase | StoppableStream, limit: int) -> Iterator[bytes]:
    while line := stream.readline(limit):
        yield line


@pytest.mark.parametrize(
    ("data", "limit"),
    [
        (b"", -1),
        (b"a\nb\n", -1),
        (b"a\nb", -1),  # no newline at the end
        (b"\n\n\r\n", -1),
        (b"abcdefgh\nij\n", 3),  # a line longer than the limit comes in pieces
        (b"abc\nde", 4),  # a line of exactly the limit with its newline
        (b"x" * 200_000 + b"\ny\n", 70_000),  # longer than one read of the pipe
        (b"x" * 200_000, -1),
    ],
)
def test_lines_come_as_a_buffered_file_gives_them(data: bytes, limit: int) -> None:
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=_write_all, args=(write_fd, data))
    writer.start()
    try:
        got = list(_lines(StoppableStream(read_fd, threading.Event()), limit))
    finally:
        writer.join()
        os.close(read_fd)
    assert got == list(_lines(io.BytesIO(data), limit))


def _write_all(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as pipe:
        for start in range(0, len(data), 1000):  # in pieces, as a producer writes
            pipe.write(data[start : start + 1000])
            pipe.flush()


def test_a_stop_ends_the_wait_for_a_silent_producer() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"first\npartial")
    stop = threading.Event()
    stream = StoppableStream(read_fd, stop)
    try:
        assert stream.readline() == b"first\n"
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Interrupted, match="waiting for stdin"):
            stream.readline()  # the producer keeps the pipe open and writes nothing
        assert time.monotonic() - started < 5
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_line_that_is_ready_is_read_after_a_stop() -> None:
    """The stop is for waiting only: lines already there are still planned (the planner
    stops between items on its own)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"a\nb\n")
    os.close(write_fd)
    stop = threading.Event()
    stop.set()
    try:
        assert list(_lines(StoppableStream(read_fd, stop), -1)) == [b"a\n", b"b\n"]
    finally:
        os.close(read_fd)


def test_an_in_memory_stream_is_read_as_it_is() -> None:
    stream = io.BytesIO(b"a\n")
    assert stoppable(stream, threading.Event()) is stream
