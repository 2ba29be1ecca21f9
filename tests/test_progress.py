"""Progress renderers: log lines come on time, also while nothing finishes."""

from __future__ import annotations

import io
import time

from batch.progress import BarProgress, LogProgress


def test_a_log_line_comes_while_every_request_waits() -> None:
    """``--progress log`` printed only when an item finished: a run whose requests all
    waited on a long Retry-After (or hung) printed nothing for minutes."""
    stream = io.StringIO()
    progress = LogProgress(stream, interval=60)  # a tick right after the start: too soon
    progress.start(10, 0)
    progress.tick()
    assert stream.getvalue().count("\n") == 1
    progress._last -= 61  # a minute on, without waiting one (a sleep of 50 ms was flaky)
    progress.tick()
    assert stream.getvalue().splitlines()[-1].startswith("progress: 0/10 items")
    assert stream.getvalue().count("\n") == 2


def test_the_bar_ticks_only_on_a_terminal() -> None:
    """``--progress bar`` into a log file: a refresh every second would be a line every
    second; the bar moves on its own only on a terminal."""
    stream = io.StringIO()
    progress = BarProgress(stream)
    progress.start(10, 0)
    written = stream.getvalue()
    time.sleep(1.05)
    progress.tick()
    assert stream.getvalue() == written
    progress.close()
