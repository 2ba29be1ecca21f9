"""How many requests may be in flight: a slot limit that adapts to Deepgram's 429s.

Deepgram limits concurrent requests per project (100 for Nova, 5 for Whisper, 10 or
fewer with Audio Intelligence) and answers 429 above it. Retrying harder at the same
concurrency only burns requests, so the whole pool slows down: the limit halves on a
429 (at most once per ``cooldown``, as TCP does once per window) and grows back by one
slot per full window of successes, never above the user's ``--concurrency``.
Slots are taken *before* a task is created, so a million-item plan never holds more
than ``maximum`` coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("dgbatch")


class AdaptiveLimit:
    """Slots for in-flight requests with additive increase, multiplicative decrease."""

    def __init__(
        self,
        maximum: int,
        *,
        adaptive: bool = True,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.maximum = maximum
        self.in_flight = 0
        self._limit = float(maximum)
        self._adaptive = adaptive
        self._cooldown = cooldown
        self._clock = clock
        self._last_decrease = -float("inf")
        self._on_change = on_change
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def limit(self) -> int:
        """The current number of slots (1 … maximum)."""
        return max(1, int(self._limit))

    async def acquire(self) -> bool:
        """Wait for a free slot; False when the limiter was closed (the run is stopping)."""
        while not self._closed and self.in_flight >= self.limit:
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1
        self._changed.set()

    def close(self) -> None:
        """Wake every waiter with False: nothing more is dispatched."""
        self._closed = True
        self._changed.set()

    def on_throttle(self) -> None:
        """A 429: halve the limit, once per cooldown so one burst counts once."""
        now = self._clock()
        if not self._adaptive or now - self._last_decrease < self._cooldown:
            return
        self._last_decrease = now
        self._set(max(1.0, self._limit / 2))

    def on_success(self) -> None:
        """A success: one more slot per window of ``limit`` successes."""
        if self._adaptive and self._limit < self.maximum:
            self._set(min(float(self.maximum), self._limit + 1.0 / self._limit))

    def _set(self, value: float) -> None:
        before = self.limit
        self._limit = value
        if self.limit != before:
            log.debug("concurrency limit %d -> %d", before, self.limit)
            if self._on_change is not None:
                self._on_change(self.limit)
            self._changed.set()
