"""Timeouts: a stalled upload fails fast, a slow one or a slow answer does not, size scales."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiofiles
import aiohttp
import pytest

from batch.client import DEFAULT_TIMEOUT, DeepgramClient, TransportError, request_timeout
from batch.media import file_chunks

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = json.dumps({"metadata": {}, "results": {}}).encode()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A bare TCP server on loopback, so a test controls exactly when bytes are read."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def _read_headers(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            return int(line.split(":")[1])
    return 0


async def _answer(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
        + ANSWER
    )
    await writer.drain()
    writer.close()


async def _upload(url: str, path: Path, stall: float) -> int:
    async with aiohttp.ClientSession() as session:
        client = DeepgramClient(session, url, "k-123456", stall_timeout=stall)
        size = path.stat().st_size
        try:
            async with aiofiles.open(path, "rb") as handle:
                chunks = file_chunks(handle, size, str(path))
                answer = await client.send_stream(chunks, size, "audio/wav", ())
        finally:  # a stall's cancel is the watchdog's: no request was abandoned by a stop
            assert client.abandoned == {}
        return answer.status


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


async def test_stalled_upload_times_out(tmp_path: Path) -> None:
    """A peer that stops reading fails the attempt after the stall timeout, not the total."""
    hold = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_headers(reader)
        await hold.wait()

    body = _sparse(tmp_path / "big.wav", 256 << 20)  # far more than the socket buffers
    async with raw_server(never_reads) as url:
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            await _upload(url, body, stall=0.3)
        hold.set()
    assert time.monotonic() - started < 10
    assert "upload stalled" in str(caught.value)
    assert caught.value.timeout and not caught.value.body_sent


async def test_a_stalled_source_is_not_a_stalled_connection() -> None:
    """An S3 read that hangs mid-upload was reported as Deepgram's upload stall and
    counted as an attempt: the source stalled, and Deepgram never had the request."""

    async def reads_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_headers(reader)
        while await reader.read(65536):
            pass

    async def hangs_after_one_chunk() -> AsyncIterator[bytes]:
        yield bytes(1000)
        await asyncio.sleep(3600)
        yield b""  # pragma: no cover - never reached

    async with raw_server(reads_all) as url, aiohttp.ClientSession() as session:
        client = DeepgramClient(session, url, "k-123456", stall_timeout=0.3)
        with pytest.raises(TransportError) as caught:
            await client.send_stream(hangs_after_one_chunk(), 10_000, "audio/wav", ())
    assert "reading the audio stalled" in str(caught.value)
    assert not caught.value.reached and not caught.value.body_sent


async def test_a_source_slow_to_end_after_its_last_byte_is_no_stall() -> None:
    """A source that has given every byte and is slow to say it has ended (an S3 read past
    the last byte, its thread pool busy) failed a request Deepgram had whole as "reading
    the audio stalled": unbilled, no attempt, and its retry paid again."""

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remaining = await _read_headers(reader)
        while remaining:
            remaining -= len(await reader.read(remaining))
        await asyncio.sleep(0.6)  # Deepgram thinks
        await _answer(writer)

    async def slow_to_end() -> AsyncIterator[bytes]:
        yield bytes(10_000)
        await asyncio.sleep(3600)

    async with raw_server(answers) as url, aiohttp.ClientSession() as session:
        client = DeepgramClient(session, url, "k-123456", stall_timeout=0.3)
        answer = await client.send_stream(slow_to_end(), 10_000, "audio/wav", ())
    assert answer.status == 200


async def test_slow_upload_and_slow_answer_are_not_stalls(tmp_path: Path) -> None:
    """Steady progress, then a long think after the upload (Deepgram's processing) is fine."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remaining = await _read_headers(reader)
        while remaining:
            remaining -= len(await reader.read(min(remaining, 256 << 10)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # longer than the stall timeout
        await _answer(writer)

    body = _sparse(tmp_path / "a.wav", 6 << 20)
    async with raw_server(slow) as url:
        assert await _upload(url, body, stall=0.5) == 200


def test_total_timeout_grows_with_the_upload() -> None:
    """A 1 GB upload gets its transfer time on top of the base, never a fixed total."""
    small = request_timeout(1000).total
    big = request_timeout(10**9).total
    assert small is not None and big is not None
    assert small == pytest.approx(DEFAULT_TIMEOUT, abs=1)
    assert big > DEFAULT_TIMEOUT + 3000


async def test_connection_refused_is_named() -> None:
    """Nothing listening reads as "connection refused", not asyncio's wording."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        client = DeepgramClient(session, f"http://127.0.0.1:{port}", "k-123456")
        with pytest.raises(TransportError) as caught:
            await client.send_url("https://example.com/a.wav", ())
    assert "connection refused" in str(caught.value)
    assert not caught.value.timeout


def _run_first_try_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: Exception, then: Exception | None
) -> tuple[str, dict[str, object]]:
    """Run one file whose first try raises ``first`` and whose next raises ``then`` (or is
    sent, when None); the output and the item's row."""
    from conftest import Cli, make_wav, read_state_rows

    import batch.sending
    from batch.emulator import EmulatorConfig, run_in_thread
    from batch.media import send_file

    tries = iter([first, then])

    async def sender(client: DeepgramClient, item: object, source: str) -> object:
        error = next(tries, None)
        if error is not None:
            raise error
        return await send_file(client, item, source)  # type: ignore[arg-type]

    monkeypatch.setattr(batch.sending, "send_sniffed_file", sender)
    make_wav(tmp_path / "in" / "a.wav")
    with run_in_thread(EmulatorConfig()) as emu:
        result = Cli(emu)("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    (row,) = read_state_rows(tmp_path / "out" / ".dgbatch" / "state.sqlite")
    return result.output, row


def test_retries_after_a_timeout_stay_on_the_row_however_the_item_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout after the upload (possibly billed), then a failure found before the next
    request: the row keeps its retry after a timeout, as the summary does."""
    from batch.errors import ItemError

    timeout = TransportError("timeout: no complete answer in time", body_sent=True, timeout=True)
    gone = ItemError(f"{tmp_path / 'in' / 'a.wav'}: file no longer exists", code="missing")
    output, row = _run_first_try_failing(tmp_path, monkeypatch, timeout, gone)
    assert "retried 0, possibly billed 1" in output  # the second try was never sent
    assert (row["status"], row["attempts"], row["timeout_retries"]) == ("failed", 1, 1)


def test_a_try_that_reached_no_one_is_neither_an_attempt_nor_billed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset or a timeout while connecting, for a URL item (whose body always counts as
    sent): no request reached Deepgram, so it is no attempt, and no possibly billed retry
    (it was counted as one once "connect failed" no longer covered a reset)."""
    reset = TransportError(
        "cannot connect: connection reset by peer", body_sent=True, timeout=False, reached=False
    )
    output, row = _run_first_try_failing(tmp_path, monkeypatch, reset, None)
    assert "possibly billed 0" in output
    assert (row["status"], row["attempts"], row["timeout_retries"]) == ("done", 1, 0)


@pytest.mark.parametrize(
    ("exc", "reached", "connect_failed"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), False, False),
        (aiohttp.ServerTimeoutError("read"), True, False),
        (aiohttp.ServerDisconnectedError(), True, False),
    ],
)
async def test_what_reached_deepgram_is_told_apart(
    exc: BaseException, reached: bool, connect_failed: bool
) -> None:
    """A timeout while connecting reached no one; one while reading the answer did."""
    async with aiohttp.ClientSession() as session:
        client = DeepgramClient(session, "http://127.0.0.1:9", "k" * 40)
        error = client._translate(exc, True)
    assert (error.reached, error.connect_failed) == (reached, connect_failed)


def test_an_answer_over_the_limit_is_not_bought_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 longer than dgbatch reads (1 GiB; 300 bytes here) is cut the same way at
    every try: retried, each try was paid again. It fails at once, saying why."""
    from conftest import Cli, make_wav, read_state_rows

    import batch.client
    from batch.emulator import EmulatorConfig, run_in_thread

    monkeypatch.setattr(batch.client, "ANSWER_BODY_LIMIT", 300)
    make_wav(tmp_path / "in" / "a.wav")
    with run_in_thread(EmulatorConfig()) as emu:
        result = Cli(emu)("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
        sent = len(emu.log)
    assert result.exit_code == 1, result.output
    (row,) = read_state_rows(tmp_path / "out" / ".dgbatch" / "state.sqlite")
    assert (row["status"], row["attempts"], row["http_status"], sent) == ("failed", 1, 200, 1)
    assert "answer too long to read" in str(row["error"])
