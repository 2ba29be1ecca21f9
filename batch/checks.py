"""Checks of a finished transcript that flag an item without failing it (pure).

A 200 with an empty transcript (silence) or with ``metadata.duration`` well short of
the audio we sent (a truncated upload or a decoder that gave up) is still a result the
user paid for; it is kept, and the report's ``warning`` column says what looks wrong.
"""

from __future__ import annotations

from typing import Any

from batch.captions import is_empty_transcript

#: A transcript covering less than this share of the local audio is flagged.
TRUNCATION_RATIO = 0.9

EMPTY_TRANSCRIPT = "empty transcript"


def truncation_warning(reported: float | None, local: float | None) -> str | None:
    """A warning when Deepgram heard much less audio than the file holds, else None."""
    if reported is None or local is None or local <= 0:
        return None
    if reported >= local * TRUNCATION_RATIO:
        return None
    share = reported / local * 100
    return (
        f"possibly truncated: transcript covers {reported:.1f} s of {local:.1f} s "
        f"of audio ({share:.0f} %)"
    )


def transcript_warning(response: dict[str, Any], local_duration: float | None) -> str | None:
    """Every warning for one response, joined with ``; `` (None when all is well)."""
    warnings = []
    if is_empty_transcript(response):
        warnings.append(EMPTY_TRANSCRIPT)
    duration = (response.get("metadata") or {}).get("duration")
    reported = float(duration) if isinstance(duration, int | float) else None
    truncated = truncation_warning(reported, local_duration)
    if truncated is not None:
        warnings.append(truncated)
    return "; ".join(warnings) or None
