"""Local facts about audio before it is sent: its duration (mutagen) and a size-based guess.

Durations feed the dry-run estimate, the budget's in-flight reservation and the
truncation check. mutagen reads headers only (0.2 ms a file), so probing costs nothing
next to the request; anything it cannot read is simply "unknown", never an error.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from batch.errors import UsageError
from batch.localfiles import open_regular
from batch.proxies import proxy_for
from batch.redact import redact_source, redact_url

if TYPE_CHECKING:
    from batch.s3 import S3

log = logging.getLogger("dgbatch")

#: Bytes per second assumed when only a size is known: 128 kbit/s, a common compressed
#: bitrate. Uncompressed WAV is 2-11x denser, so the guess overestimates WAV durations,
#: which is the safe direction for a budget.
GUESS_BYTES_PER_SECOND = 16_000


def local_duration(path: str) -> float | None:
    """Seconds of audio in a local file per its headers, or None when unknown.

    A mutagen FileType is dict-like (its tags), so an untagged file is falsy: the test
    must be ``is None`` (TESTING-NOTES §3). Only a regular file is read: a named pipe put
    in the file's place blocked a worker for ever, and ``/dev/zero`` filled the memory.
    """
    try:
        handle = open_regular(path)
    except OSError:
        return None
    with handle:
        return _duration_of(handle, path, os.fstat(handle.fileno()).st_size)


def guess_seconds(size: int | None) -> float | None:
    """Seconds of audio a file of ``size`` bytes probably holds (None when size unknown)."""
    if size is None:
        return None
    return size / GUESS_BYTES_PER_SECOND


# -- remote probing (``run --dry-run --probe``) ---------------------------------------------

#: Bytes fetched from the start of a remote object: enough for the headers of WAV, FLAC
#: and MP3 (a Xing/VBRI frame or the first CBR frame) even behind a large ID3 tag.
HEAD_BYTES = 65_536
#: Bytes fetched from the end of an Ogg object: its last page carries the final granule
#: position (the sample count) that mutagen needs for Ogg's duration.
TAIL_BYTES = 65_536
#: The largest single read a ``SparseReader`` serves: mutagen's biggest on these formats
#: is Ogg's last-page search (the final 64 KiB), so a probe's memory stays ~3x 64 KiB.
MAX_READ = 65_536
HEAD_RANGE = f"bytes=0-{HEAD_BYTES - 1}"
TAIL_RANGE = f"bytes=-{TAIL_BYTES}"
_CONTENT_RANGE_RE = re.compile(r"bytes\s+\d+-\d+/(\d+)")


class SparseReader(io.RawIOBase):
    """A read-only file of ``size`` bytes that holds only its head and tail.

    mutagen seeks by absolute offsets and computes durations from the file size (CBR
    MP3) or from the last page (Ogg), so it must see a file as long as the real object.
    The bytes never fetched read as zeros; at most ``len(head) + len(tail)`` bytes are
    held, whatever ``size`` is.
    """

    def __init__(self, head: bytes, size: int, tail: bytes = b"") -> None:
        super().__init__()
        self._head = head
        self._tail = tail
        self._size = max(size, len(head), len(tail))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Absolute, relative or from-the-end seeks, as on a real file."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all the rest if negative), refusing reads above ``MAX_READ``.

        ``io.RawIOBase.read`` would allocate ``size`` bytes first, and mutagen may ask
        for a length taken from corrupt data: a refused read makes the item "unknown".
        """
        available = max(0, self._size - self._pos)
        count = available if size < 0 else min(size, available)
        if count > MAX_READ:
            raise OSError(f"sparse read of {count} bytes refused")
        data = self._bytes_at(self._pos, count)
        self._pos += count
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        """Copy up to ``len(buffer)`` bytes from the current position."""
        view = memoryview(buffer).cast("B")
        count = min(len(view), max(0, self._size - self._pos), MAX_READ)
        view[:count] = self._bytes_at(self._pos, count)
        self._pos += count
        return count

    def _bytes_at(self, start: int, count: int) -> bytes:
        """Head bytes, then zeros, then tail bytes (the tail wins where they overlap)."""
        chunk = bytearray(count)
        head_end = min(start + count, len(self._head))
        if head_end > start:
            chunk[: head_end - start] = self._head[start:head_end]
        tail_start = self._size - len(self._tail)
        lo = max(start, tail_start)
        if lo < start + count:
            chunk[lo - start :] = self._tail[lo - tail_start : start + count - tail_start]
        return bytes(chunk)


def needs_tail(head: bytes, size: int | None) -> bool:
    """An Ogg object (``OggS``) longer than its head also needs its last page fetched."""
    return head[:4] == b"OggS" and (size is None or size > len(head))


def size_from_content_range(value: str | None) -> int | None:
    """The total size in ``Content-Range: bytes 0-65535/123456`` (None if absent or ``*``)."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    return int(match.group(1)) if match else None


def sparse_duration(head: bytes, size: int | None, tail: bytes = b"") -> float | None:
    """Seconds of audio per mutagen on the head (and tail) of an object of ``size`` bytes.

    With the size unknown the head is taken as the whole object: right for headers that
    state the length (WAV, FLAC, Xing MP3), an underestimate for CBR MP3 and Ogg.
    """
    if not head:
        return None
    return _duration_of(SparseReader(head, size or len(head), tail), "probed object", size)


def _duration_of(source: Any, label: str, size: int | None = None) -> float | None:
    """mutagen's length for a file object of ``size`` bytes; None for anything it cannot
    read. A WAV is held to what its bytes can hold (``pcm_ceiling``)."""
    import mutagen  # imported when first needed: URL-only runs start faster

    try:
        parsed = mutagen.File(source)
    except Exception as exc:  # mutagen raises many types for odd data; all mean "unknown"
        log.debug("no duration for %s: %s", label, type(exc).__name__)
        return None
    if parsed is None or parsed.info is None:
        return None
    length = getattr(parsed.info, "length", None)
    if not isinstance(length, int | float) or length <= 0:
        return None
    ceiling = pcm_ceiling(parsed.info, size)
    return float(length) if ceiling is None else min(float(length), ceiling)


def pcm_ceiling(info: object, size: int | None) -> float | None:
    """The most seconds ``size`` bytes of a WAV can hold; None for other formats. A WAV
    written by a stream (ffmpeg to a pipe, a recorder that crashed) states a data size of
    4 GiB, which mutagen reads as hours: a budget stopped at such a file, and its
    transcript was flagged as truncated. Not AIFF: an AIFF-C of 8-bit mu-law states
    16-bit samples, so its bytes would hold half its length."""
    from mutagen.wave import WaveStreamInfo

    bitrate = getattr(info, "bitrate", 0)
    if not (size and isinstance(info, WaveStreamInfo) and bitrate):
        return None
    return float(size * 8 / bitrate)


async def probe_s3(s3: S3, source: str, size: int | None) -> float | None:
    """Duration of an ``s3://`` object from ranged GETs of its head (and Ogg tail).

    Any S3 error means "unknown" (the caller falls back to the size guess).
    """
    from batch.s3 import parse_s3_uri

    try:
        bucket, key = parse_s3_uri(source)
        head, total = await _s3_range(s3, bucket, key, HEAD_RANGE, HEAD_BYTES)
        size = size if size is not None else total
        tail = b""
        if needs_tail(head, size):
            tail = (await _s3_range(s3, bucket, key, TAIL_RANGE, TAIL_BYTES))[0]
    except Exception as exc:  # a probe never fails the dry run
        log.debug("cannot probe %s: %s", redact_source(source), type(exc).__name__)
        return None
    return sparse_duration(head, size, tail)


async def _s3_range(
    s3: S3, bucket: str, key: str, byte_range: str, limit: int
) -> tuple[bytes, int | None]:
    """At most ``limit`` bytes of one ranged GET, and the object's size if S3 says it."""
    data, content_range = await s3.call(s3.read_range, bucket, key, byte_range, limit)
    return data, size_from_content_range(content_range)


async def probe_url(
    session: aiohttp.ClientSession, url: str, size: int | None
) -> tuple[float | None, int | None]:
    """Duration of an http(s) item from a ``Range`` GET of its head (and Ogg tail), and
    the size its server stated (``Content-Range``, or the whole body of a 200): a URL's
    state row has none.

    Reads at most ``HEAD_BYTES`` even when the server ignores ``Range`` and sends the
    whole file. Errors mean "unknown"; the URL is logged redacted (it may be presigned).
    """
    total = None
    try:
        head, total = await _url_range(session, url, HEAD_RANGE, HEAD_BYTES)
        size = total if total is not None else size
        tail = b""
        if needs_tail(head, size):
            tail = await _url_tail(session, url)
    except UsageError as exc:  # the proxy variable for this host is unusable: exit 2
        host = urlsplit(url).hostname
        msg = (
            f"{exc}; it is the proxy for {host}, a media host --probe reads: add the host "
            "to NO_PROXY, or run without --probe"
        )
        raise UsageError(msg) from None
    except Exception as exc:  # a probe never fails the dry run otherwise
        log.debug("cannot probe %s: %s", redact_url(url), type(exc).__name__)
        return None, total
    return sparse_duration(head, size, tail), total


async def _url_range(
    session: aiohttp.ClientSession, url: str, byte_range: str, limit: int
) -> tuple[bytes, int | None]:
    """Up to ``limit`` bytes of a ranged GET and the total size (Content-Range/-Length)."""
    async with session.get(url, headers={"Range": byte_range}, proxy=proxy_for(url)) as response:
        response.raise_for_status()
        data = await _read_at_most(response.content, limit)
        if response.status == 206:
            return data, size_from_content_range(response.headers.get("Content-Range"))
        if len(data) < limit:
            return data, len(data)
        return data, response.content_length


async def _url_tail(session: aiohttp.ClientSession, url: str) -> bytes:
    """The last ``TAIL_BYTES`` by a suffix range; nothing if the server ignores ranges."""
    async with session.get(url, headers={"Range": TAIL_RANGE}, proxy=proxy_for(url)) as response:
        response.raise_for_status()
        if response.status != 206:
            return b""
        return await _read_at_most(response.content, TAIL_BYTES)


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Read until ``limit`` bytes or EOF, never more (a 200 may hold a whole file)."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
