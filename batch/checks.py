"""Checks of a finished transcript that flag an item without failing it (pure).

A 200 with an empty transcript (silence) or with ``metadata.duration`` well short of
the audio we sent (a truncated upload or a decoder that gave up) is still a result the
user paid for; it is kept, and the report's ``warning`` column says what looks wrong.
"""

from __future__ import annotations

import math
from typing import Any

from batch.captions import is_empty_transcript
from batch.redact import redact_text, whole_words

#: A transcript covering less than this share of the local audio is flagged.
TRUNCATION_RATIO = 0.9

EMPTY_TRANSCRIPT = "empty transcript"
UNUSUAL_SHAPE = "answer not of the usual shape: its transcript could not be checked"


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


def reported_duration(response: dict[str, Any]) -> float | None:
    """``metadata.duration`` when it is a length of audio: not a string, a bool, a negative
    number or an infinity (which would make the report invalid JSON and every budget
    spent)."""
    return audio_seconds((response.get("metadata") or {}).get("duration"))


def audio_seconds(duration: object) -> float | None:
    """``duration`` when it is a length of audio (see ``reported_duration``), else None."""
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        return None
    try:
        seconds = float(duration)
    except OverflowError:  # an int of 400 digits
        return None
    return seconds if 0 <= seconds < math.inf else None


def transcript_warning(response: dict[str, Any], local_duration: float | None) -> str | None:
    """Every warning for one response, joined with ``; `` (None when all is well)."""
    warnings = []
    try:
        if is_empty_transcript(response):
            warnings.append(EMPTY_TRANSCRIPT)
    except (LookupError, TypeError, ValueError, AttributeError):
        warnings.append(UNUSUAL_SHAPE)
    truncated = truncation_warning(reported_duration(response), local_duration)
    if truncated is not None:
        warnings.append(truncated)
    warnings += deepgram_warnings(response)
    return "; ".join(warnings) or None


def deepgram_warnings(response: dict[str, Any]) -> list[str]:
    """Deepgram's own ``metadata.warnings`` (``{parameter, type, message}``): a parameter
    it ignored, ``keywords`` on a model without them, say. The batch was paid for as if
    it had worked, so the item says so."""
    found = (response.get("metadata") or {}).get("warnings")
    if found in (None, [], {}, ""):
        return []
    said = []
    for warning in (found if isinstance(found, list) else [found])[:_MOST_WARNINGS]:
        parts = (
            [warning.get(key) for key in ("parameter", "type", "message")]
            if isinstance(warning, dict)
            else [warning]  # a string, say: not Deepgram's shape, but said all the same
        )
        text = ": ".join(str(part) for part in parts if part not in (None, ""))
        if text:
            said.append(f"Deepgram: {whole_words(redact_text(text), _WARNING_CHARS)}")
    return said


#: how many of Deepgram's warnings an item keeps, and how much of each
_MOST_WARNINGS = 5
_WARNING_CHARS = 300
