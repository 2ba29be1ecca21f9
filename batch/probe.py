"""Local facts about audio before it is sent: its duration (mutagen) and a size-based guess.

Durations feed the dry-run estimate, the budget's in-flight reservation and the
truncation check. mutagen reads headers only (0.2 ms a file), so probing costs nothing
next to the request; anything it cannot read is simply "unknown", never an error.
"""

from __future__ import annotations

import logging

import mutagen

log = logging.getLogger("dgbatch")

#: Bytes per second assumed when only a size is known: 128 kbit/s, a common compressed
#: bitrate. Uncompressed WAV is 2-11x denser, so the guess overestimates WAV durations,
#: which is the safe direction for a budget.
GUESS_BYTES_PER_SECOND = 16_000


def local_duration(path: str) -> float | None:
    """Seconds of audio in a local file per its headers, or None when unknown.

    A mutagen FileType is dict-like (its tags), so an untagged file is falsy: the test
    must be ``is None`` (TESTING-NOTES §3).
    """
    try:
        parsed = mutagen.File(path)
    except Exception as exc:  # mutagen raises many types for odd files; all mean "unknown"
        log.debug("no duration for %s: %s", path, exc)
        return None
    if parsed is None or parsed.info is None:
        return None
    length = getattr(parsed.info, "length", None)
    if not isinstance(length, int | float) or length <= 0:
        return None
    return float(length)


def guess_seconds(size: int | None) -> float | None:
    """Seconds of audio a file of ``size`` bytes probably holds (None when size unknown)."""
    if size is None:
        return None
    return size / GUESS_BYTES_PER_SECOND
