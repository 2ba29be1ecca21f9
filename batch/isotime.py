"""Timestamps as text, in the one form dgbatch writes them: run reports, the S3 lock
object, and the time windows it asks Deepgram's usage API about."""

from __future__ import annotations

import time


def utc_iso(epoch: float) -> str:
    """``2026-11-27T19:37:05Z``: UTC, whole seconds (a fraction is dropped)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
