"""What the emulator reads from the audio it receives: its transcript, container and duration.

Every transcript is derived from the audio it answers (:func:`transcript_for`), and
``metadata.sha256`` is the real digest of the bytes received, so a test can prove that each
output belongs to its input. A WAV whose samples are all zero is silence, and gets an empty
transcript as silence does on Deepgram.

Nothing here touches the network: uploads and fetched media alike stream through
:class:`_Sink`, which keeps only the head that the other functions read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from batch.sniff import sniff_container

_HEAD_BYTES = 4096  # enough for magic bytes and a WAV header with a LIST chunk before ``data``
_GUESS_BYTES_PER_SECOND = 16_000  # ~128 kbit/s, a plausible compressed bitrate


def transcript_for(sha256_hex: str, size: int, channel: int = 0) -> str:
    """The transcript of ``size`` bytes whose digest is ``sha256_hex``, whatever the flags.

    Naming the digest and the size lets a test prove that an output belongs to its input;
    with ``multichannel``, channels after the first name themselves too, so a test can tell
    them apart (the first reads as a mono answer does).
    """
    text = f"audio {sha256_hex[:16]} has {size} bytes"
    return f"{text} on channel {channel}" if channel else text


def looks_like_audio(head: bytes) -> bool:
    """Whether the first bytes are a container Deepgram would auto-detect.

    The table is ``batch.sniff``'s, the one dgbatch checks local files with before sending.
    """
    return sniff_container(head) is not None


def wav_duration(head: bytes, size: int) -> float | None:
    """Seconds of audio in a WAV whose first bytes are ``head`` and total size is ``size``.

    Uses the data length from the header but never more than the bytes actually received, so a
    truncated file or a streaming header (size 0xFFFFFFFF) still gives a sane answer.
    """
    chunk = wav_data_chunk(head)
    if chunk is None:
        return None
    start, declared, byte_rate = chunk
    available = max(size - start, 0)
    return min(declared, available) / byte_rate if byte_rate else None


def wav_data_chunk(head: bytes) -> tuple[int, int, int] | None:
    """``(offset of the samples, their declared length, byte rate)`` of a WAV header."""
    byte_rate = 0
    for chunk_id, start, size in _wav_chunks(head):
        if chunk_id == b"fmt " and start + 12 <= len(head):
            byte_rate = int.from_bytes(head[start + 8 : start + 12], "little")
        elif chunk_id == b"data":
            return start, size, byte_rate
    return None


def wav_channels(head: bytes) -> int | None:
    """The channel count a WAV header declares (None: not a WAV, or no usable ``fmt``)."""
    for chunk_id, start, _ in _wav_chunks(head):
        if chunk_id == b"fmt " and start + 4 <= len(head):
            return int.from_bytes(head[start + 2 : start + 4], "little") or None
    return None


def _wav_chunks(head: bytes) -> Iterator[tuple[bytes, int, int]]:
    """``(id, offset of its data, declared size)`` of each RIFF chunk whose header is in
    ``head``; nothing for what is not a WAV."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos + 4 : pos + 8], "little")
        yield head[pos : pos + 4], pos + 8, size
        pos += 8 + size + (size & 1)


def estimate_duration(head: bytes, size: int, params: Sequence[tuple[str, str]]) -> float:
    """A plausible ``metadata.duration``: exact for WAV and raw linear16, else a bitrate guess."""
    seconds = wav_duration(head, size)
    if seconds is None:
        seconds = size / _raw_byte_rate(dict(params))
    return round(seconds, 6)


def _raw_byte_rate(query: dict[str, str]) -> float:
    """Bytes per second of headerless audio, when ``encoding``/``sample_rate`` say what it is."""
    rate, channels = query.get("sample_rate", ""), query.get("channels", "1")
    if query.get("encoding") == "linear16" and rate.isdigit() and channels.isdigit():
        return max(int(rate) * 2 * int(channels), 1)
    return _GUESS_BYTES_PER_SECOND


class _Sink:
    """Hashes audio as it streams past and keeps only its head, so 1 GB costs no memory."""

    __slots__ = ("_hash", "head", "last_nonzero", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.head = b""
        self.size = 0
        #: offset of the last non-zero byte seen (-1: none), to recognise a silent WAV
        self.last_nonzero = -1

    def feed(self, chunk: bytes) -> None:
        """Account for the next piece of audio."""
        self._hash.update(chunk)
        kept = len(chunk.rstrip(b"\0"))
        if kept:
            self.last_nonzero = self.size + kept - 1
        self.size += len(chunk)
        if len(self.head) < _HEAD_BYTES:
            self.head += chunk[: _HEAD_BYTES - len(self.head)]

    def is_silent_wav(self) -> bool:
        """A WAV with samples, every one of them zero."""
        chunk = wav_data_chunk(self.head)
        return chunk is not None and self.size > chunk[0] and self.last_nonzero < chunk[0]

    def hexdigest(self) -> str:
        """The digest Deepgram reports as ``metadata.sha256``."""
        return self._hash.hexdigest()
