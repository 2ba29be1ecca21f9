"""Get an item's audio to Deepgram: a URL as JSON, a local file streamed from disk.

S3 objects are handled by ``batch.s3``, which registers a sender for ``ItemKind.S3``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedReader

from batch.client import CHUNK_SIZE, Answer, DeepgramClient
from batch.errors import ItemError
from batch.localfiles import NotRegular, file_fingerprint, open_regular
from batch.models import ItemKind, Params
from batch.naming import content_type_for
from batch.records import WorkItem
from batch.sniff import HEAD_BYTES, describe_head, sniff_container

#: Deepgram's limit for one file, "Maximum 2 GB" (DEEPGRAM-API.md §4): a larger one is
#: refused before its upload, not after gigabytes have been sent for a 413
MAX_UPLOAD_BYTES = 2 * 1024**3

Sender = Callable[[DeepgramClient, WorkItem, str], Awaitable[Answer]]
"""Send one item; the ``str`` is the item's real source (it may carry secrets)."""


def check_file(item: WorkItem, path: str) -> int:
    """Stat the file at send time; refuse it if it vanished, emptied or changed since planning."""
    return check_path(path, item.fingerprint)


def check_path(path: str, fingerprint: str) -> int:
    """``check_file`` of a file planned with ``fingerprint`` (the dry run has no WorkItem)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ItemError(f"{path}: file no longer exists", code="missing") from None
    except OSError as exc:
        raise ItemError(f"{path}: cannot read file: {exc.strerror}", code="unreadable") from exc
    if fingerprint and file_fingerprint(st) != fingerprint:
        msg = f"{path}: file changed between planning and sending; run again to re-plan it"
        raise ItemError(msg, code="changed")
    if not stat.S_ISREG(st.st_mode):  # a pipe or a device put in its place since planning
        raise ItemError(f"{path}: not a regular file", code="unreadable")
    check_size(path, st.st_size)
    return st.st_size


def check_size(shown: str, size: int, noun: str = "file") -> None:
    """Refuse what Deepgram refuses whatever it holds: nothing, or over 2 GB (a 413 after
    uploading gigabytes, or after Deepgram fetched them)."""
    if size == 0:
        raise ItemError(f"{shown}: {noun} is empty", code="empty")
    if size > MAX_UPLOAD_BYTES:
        msg = f"{shown}: {size:,} bytes, over Deepgram's 2 GB limit for a file (not sent)"
        raise ItemError(msg, code="too_large")


def size_problem(size: int | None) -> str | None:
    """The ``err_code`` of ``check_size`` for a size known without reading (an S3
    object's, listed), or None: such an item costs nothing (the dry run and the budget)."""
    try:
        if size is not None:
            check_size("", size)
    except ItemError as exc:
        return exc.code
    return None


class FileShrank(OSError):
    """The file ended before the size its request promised (truncated while being sent)."""


async def file_chunks(handle: AsyncBufferedReader, size: int, path: str) -> AsyncIterator[bytes]:
    """Read ``size`` bytes of an open file in chunks off the event loop; never the whole
    file in memory. A file cut short meanwhile raises: the request's ``Content-Length``
    promised ``size`` bytes, and Deepgram would wait for the rest (minutes) instead of
    answering; the request fails as a transport error, and its retry finds the file
    changed. A file that grew is sent as planned, never past its ``Content-Length``."""
    left = size
    while left > 0:
        chunk = await handle.read(min(CHUNK_SIZE, left))
        if not chunk:
            raise FileShrank(f"{path}: file ended {left} bytes short of its planned size")
        left -= len(chunk)
        yield chunk


async def send_file(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
    """Stream a local file as the request body. The file is opened before the request
    starts, so an unreadable file fails its item instead of looking like a network error."""
    size = check_file(item, source)
    try:
        handle = await aiofiles.open(source, "rb")
    except OSError as exc:
        raise ItemError(f"{source}: cannot read file: {exc.strerror}", code="unreadable") from exc
    try:
        return await client.send_stream(
            file_chunks(handle, size, source), size, content_type_for(source), item.params
        )
    finally:
        await handle.close()


def sniff_file(item: WorkItem, path: str) -> None:
    """Refuse a file whose first bytes are no audio container we know, before sending it.

    Headerless audio (``encoding=`` in the params, e.g. raw linear16) has no magic bytes
    and is never refused. Unreadable files are left to ``send_file``'s own message.
    """
    sniff_path(path, item.params)


def local_problem(path: str, fingerprint: str, params: Params, *, sniff: bool) -> str | None:
    """The ``err_code`` a local file fails with before it is sent (gone, changed, empty,
    over 2 GB: ``check_path``; not audio, when ``sniff``: ``sniff_path``), or None: such
    an item costs nothing (the dry run's count and the budget ask it)."""
    try:
        check_path(path, fingerprint)
        if sniff:
            sniff_path(path, params)
    except ItemError as exc:
        return exc.code
    return None


def sniff_path(path: str, params: Params) -> None:
    """``sniff_file`` of a file to be sent with ``params`` (the dry run has no WorkItem)."""
    if any(key == "encoding" for key, _ in params):
        return
    try:
        with open_regular(path) as handle:  # a pipe in the file's place must not stop the loop
            head = handle.read(HEAD_BYTES)
    except NotRegular:
        raise ItemError(f"{path}: not a regular file", code="unreadable") from None
    except OSError:
        return
    if head and sniff_container(head) is None:
        msg = (
            f"{path}: not an audio file (starts with {describe_head(head)}); "
            "not sent (pass --no-sniff to send it anyway)"
        )
        raise ItemError(msg, code="not_audio")


async def send_sniffed_file(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
    """``send_file`` after the magic-byte check (the default; ``--no-sniff`` skips it)."""
    sniff_file(item, source)
    return await send_file(client, item, source)


async def send_url(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
    """Let Deepgram fetch the URL."""
    return await client.send_url(source, item.params)


SENDERS: dict[ItemKind, Sender] = {ItemKind.FILE: send_file, ItemKind.URL: send_url}
