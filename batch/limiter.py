"""How many requests may be in flight: a slot limit that adapts to Deepgram's 429s.

Deepgram limits concurrent requests per project (100 for Nova, 5 for Whisper, 10 or
fewer with Audio Intelligence) and answers 429 above it. Retrying harder at the same
concurrency only burns requests, so the whole pool slows down (AIMD, as TCP does):

- the limit starts at the user's ``--concurrency``: no slow start. The user chose it,
  and probing from below would cost several round trips, which with Deepgram's
  minute-long requests is minutes of a half-idle pool; a 429 costs one round trip and
  nothing billed, and the first burst of them cuts the limit once;
- a 429 cuts the limit to ``decrease`` of itself (70 % by default), but only when the
  throttled request was sent under the current limit: the other 429s of the same
  burst were caused by the old, higher limit and must not cut it again. That is
  TCP's "once per window" without a clock, so it suits a 50 ms emulator and a
  Deepgram request that takes a minute alike;
- any 429 also caps the limit at the number of other requests still in flight: the
  project is full with those. The late 429s of a burst each find fewer in flight, so
  a start at ``--concurrency 64`` against a limit of 8 lands near 8 within one
  round trip instead of after several multiplicative cuts;
- each success adds ``1/limit``: one slot per full window of successes, never above
  the user's ``--concurrency`` (``maximum``);
- an item throttled by a 429 gives its slot back while it waits and asks again
  with priority (``acquire(retry=True)``), so a retry obeys the shrunken limit and
  new items never overtake it.

Slots are taken *before* a task is created, and a task gives its slot back when its
answer arrives, once it has one of ``maximum`` places among the answers waiting for
their outputs (``Placer.write``): a million-item plan never holds more than
twice ``maximum`` coroutines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("dgbatch")
_T = TypeVar("_T")


class AdaptiveLimit:
    """Slots for in-flight requests with additive increase, multiplicative decrease."""

    def __init__(
        self,
        maximum: int,
        *,
        adaptive: bool = True,
        decrease: float = 0.7,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.maximum = maximum
        self.in_flight = 0
        self._limit = float(maximum)
        self._adaptive = adaptive
        self._decrease = decrease
        self._epoch = 0
        self._retries_waiting = 0
        self._on_change = on_change
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def limit(self) -> int:
        """The current number of slots (1 … maximum)."""
        return max(1, int(self._limit))

    @property
    def epoch(self) -> int:
        """How many times the limit was cut; note it when a request is sent."""
        return self._epoch

    async def acquire(self, *, retry: bool = False) -> bool:
        """Wait for a free slot; False when the limiter was closed (the run is stopping).

        ``retry`` marks an item that gave its slot back after a 429: it goes before new
        items, and it gets its slot even when the limiter is closed (returning False) or
        when it is cancelled while waiting, so its owner's single ``release`` stays
        balanced.
        """
        self._retries_waiting += retry
        try:
            while not self._closed and not self._free(retry):
                self._changed.clear()
                await self._changed.wait()
        except asyncio.CancelledError:
            self.in_flight += retry
            raise
        finally:
            self._retries_waiting -= retry
            self._changed.set()
        if self._closed and not retry:
            return False
        self.in_flight += 1
        return not self._closed

    def _free(self, retry: bool) -> bool:
        return self.in_flight < self.limit and (retry or not self._retries_waiting)

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1
        self._changed.set()

    async def without_slot(self, waiting: Awaitable[_T]) -> _T:
        """Await ``waiting`` with the item's request slot given back, then take one back
        with priority over new items (also when stopped or cancelled meanwhile, so the
        item's single release stays balanced)."""
        self.release()
        try:
            return await waiting
        finally:
            await self.acquire(retry=True)

    def close(self) -> None:
        """Wake every waiter with False: nothing more is dispatched."""
        self._closed = True
        self._changed.set()

    def on_throttle(self, epoch: int) -> None:
        """A 429 on a request sent at ``epoch`` (whose slot is still held): cut the limit
        once per window, and never leave it above the other requests still in flight,
        which the project is evidently full with. The second rule is what brings the
        first burst down at once: each late 429 of it finds fewer requests in flight."""
        if not self._adaptive:
            return
        target = float(max(1, self.in_flight - 1))
        if epoch == self._epoch:
            target = min(target, self._limit * self._decrease)
        target = max(1.0, target)
        if target < self._limit:
            # a new epoch only for a cut of whole slots: at one slot nothing is cut, and
            # a retry that counted it as one would skip its backoff (see covers_backoff)
            self._epoch += max(1, int(target)) < self.limit
            self._set(target)

    def covers_backoff(self, epoch: int) -> bool:
        """Whether a request throttled at ``epoch`` will wait for its slot anyway: the
        limit was cut since, and the other requests in flight fill it. Waiting for that
        slot is then its backoff; otherwise (one slot, nothing else in flight) a retry
        sent at once would only meet the same full project again."""
        return self._adaptive and self._epoch != epoch and self.in_flight - 1 >= self.limit

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
