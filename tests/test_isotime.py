"""The one timestamp format dgbatch writes (run reports, the S3 lock, usage windows)."""

from __future__ import annotations

import pytest

from batch.isotime import utc_iso


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_795_808_225, "2026-11-27T19:37:05Z"),
        (1_795_808_225.999, "2026-11-27T19:37:05Z"),  # a fraction is dropped, not rounded
        (951_782_400, "2000-02-29T00:00:00Z"),
    ],
)
def test_utc_iso(epoch: float, text: str) -> None:
    """UTC, whole seconds, a trailing ``Z``."""
    assert utc_iso(epoch) == text
