"""Progress as an observer of the runner: a tqdm bar, periodic log lines, or nothing.

The runner calls the same methods whatever the renderer; "off" is a class whose
methods do nothing, not a branch at every call site.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress(Protocol):
    """What the runner tells whoever watches it."""

    def start(self, total: int, done: int, failed: int = 0) -> None: ...
    def item_finished(self, ok: bool, audio_seconds: float | None) -> None: ...
    def retried(self) -> None: ...
    def limit_changed(self, limit: int) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """``--quiet``: nothing at all."""

    def start(self, total: int, done: int, failed: int = 0) -> None:
        pass

    def item_finished(self, ok: bool, audio_seconds: float | None) -> None:
        pass

    def retried(self) -> None:
        pass

    def limit_changed(self, limit: int) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Counts:
    """This run's counts, over the state's when it started (``start``): the line says
    ``failed=`` as the summary does, earlier runs' and planning's failures included."""

    def __init__(self) -> None:
        self.total = self.done = self.failed = self.retries = 0
        self.failed_before = 0
        self.audio = 0.0
        self.limit: int | None = None

    def finished(self, ok: bool, audio_seconds: float | None) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.audio += audio_seconds or 0.0  # a failed item's: its paid answer, kept unwritten

    def postfix(self) -> str:
        failed = self.failed_before + self.failed
        text = f"failed={failed} retries={self.retries} audio={self.audio / 3600:.2f}h"
        return f"{text} limit={self.limit}" if self.limit is not None else text


class BarProgress(_Counts):
    """A tqdm bar on a terminal; refreshes at most twice a second to stay off the hot path."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream or sys.stderr
        self._bar: tqdm[Any] | None = None
        self._last = 0.0

    def start(self, total: int, done: int, failed: int = 0) -> None:
        self.total, self.failed_before = total, failed
        if self._bar is not None:  # again, once a plan that grew while running is complete
            self._bar.total = total
            self._bar.refresh()
            return
        from tqdm import tqdm  # only a terminal needs it: 10 ms off every other start

        self._bar = tqdm(
            total=total,
            initial=done,
            unit="item",
            file=self._stream,
            mininterval=0.5,
            smoothing=0.1,
        )

    def item_finished(self, ok: bool, audio_seconds: float | None) -> None:
        self.finished(ok, audio_seconds)
        if self._bar is not None:
            self._bar.update(1)
            self._maybe_postfix()

    def retried(self) -> None:
        self.retries += 1

    def limit_changed(self, limit: int) -> None:
        self.limit = limit

    def tick(self) -> None:
        """A second passed: the bar's clock and rate move while every request waits (on
        a terminal: written to a log, each refresh would be a line)."""
        if self._bar is None or not self._stream.isatty():
            return
        if time.monotonic() - self._last >= 1.0:
            self._last = time.monotonic()
            self._bar.set_postfix_str(self.postfix(), refresh=False)
            self._bar.refresh()

    def _maybe_postfix(self) -> None:
        now = time.monotonic()
        if self._bar is not None and now - self._last >= 0.5:
            self._last = now
            self._bar.set_postfix_str(self.postfix(), refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix(), refresh=False)
            self._bar.close()


class LogProgress(_Counts):
    """Not a terminal (cron, CI, a container): a plain line every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        super().__init__()
        self._stream = stream or sys.stderr
        self._interval = interval
        self._last = time.monotonic()
        self._base = 0

    def start(self, total: int, done: int, failed: int = 0) -> None:
        self.total, self._base, self.failed_before = total, done, failed
        self._line()

    def item_finished(self, ok: bool, audio_seconds: float | None) -> None:
        self.finished(ok, audio_seconds)
        if time.monotonic() - self._last >= self._interval:
            self._line()

    def retried(self) -> None:
        self.retries += 1

    def limit_changed(self, limit: int) -> None:
        self.limit = limit

    def tick(self) -> None:
        """The line is due even when no item finishes (every request waits on a
        Retry-After, or hangs): silence looked like a stuck run."""
        if time.monotonic() - self._last >= self._interval:
            self._line()

    def _line(self) -> None:
        self._last = time.monotonic()
        finished = self._base + self.done + self.failed
        print(f"progress: {finished}/{self.total} items {self.postfix()}", file=self._stream)
        self._stream.flush()

    def close(self) -> None:
        self._line()


def make_progress(mode: str, stream: TextIO | None = None) -> Progress:
    """``auto`` picks a bar on a terminal and log lines otherwise."""
    stream = stream or sys.stderr
    if mode == "none":
        return NullProgress()
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        return BarProgress(stream)
    return LogProgress(stream)
