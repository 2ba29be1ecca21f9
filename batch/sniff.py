"""Recognise audio containers by their first bytes (pure), before paying for a round trip.

Deepgram auto-detects the container of an upload and answers 400 "corrupt or
unsupported data" to anything else; a text file named ``.wav`` would cost a request
and a retry-free failure. Every container a folder walk takes by its extension
(``naming.AUDIO_EXTENSIONS``) and that has a signature is here: a video the walk
takes must not be refused as "not an audio file". The same table is what the bundled
emulator accepts, so the two can never disagree about what "looks like audio" means.
"""

from __future__ import annotations

#: Bytes to read from a file to recognise it (the longest signature ends before this).
HEAD_BYTES = 16

#: top-level atoms a QuickTime (.mov) file may start with instead of ``ftyp``
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")

#: container name → every ``(offset, bytes)`` that must match.
SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("wav", ((0, b"RIFF"), (8, b"WAVE"))),
    ("wav (RF64)", ((0, b"RF64"), (8, b"WAVE"))),
    ("mp3 (ID3)", ((0, b"ID3"),)),
    ("flac", ((0, b"fLaC"),)),
    ("ogg", ((0, b"OggS"),)),
    ("mp4/m4a/mov/3gp", ((4, b"ftyp"),)),
    # QuickTime files older than ``ftyp`` start with another top-level atom
    *((f"quicktime ({atom.decode()})", ((4, atom),)) for atom in _QUICKTIME_ATOMS),
    ("avi", ((0, b"RIFF"), (8, b"AVI "))),
    ("ac-3", ((0, b"\x0b\x77"),)),
    ("webm/matroska", ((0, b"\x1a\x45\xdf\xa3"),)),
    ("aiff", ((0, b"FORM"), (8, b"AIFF"))),
    ("aiff-c", ((0, b"FORM"), (8, b"AIFC"))),
    ("amr", ((0, b"#!AMR"),)),
    ("wma/asf", ((0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),)),
    ("au", ((0, b".snd"),)),
    ("caf", ((0, b"caff"),)),
    ("mpeg-ps", ((0, b"\x00\x00\x01\xba"),)),
)


def sniff_container(head: bytes) -> str | None:
    """The container the first bytes announce, or None when they are not audio we know.

    An MPEG audio frame sync (11 set bits) covers MP3 without ID3 and ADTS AAC.
    """
    for name, parts in SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in parts):
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mpeg audio"
    return None


def describe_head(head: bytes) -> str:
    """A short printable view of the first bytes for an error message."""
    shown = head[:8]
    if all(32 <= b < 127 for b in shown):
        return repr(shown.decode("ascii"))
    return shown.hex(" ")
