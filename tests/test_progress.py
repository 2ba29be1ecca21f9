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


def test_a_log_line_counts_failures_as_the_summary_does() -> None:
    """``failed=`` counted only what this run's requests failed: a rerun of a batch with
    two failed items said ``5/5 items failed=0`` (a review found it). The state's
    failures when the run started (earlier runs', planning's) count too."""
    stream = io.StringIO()
    progress = LogProgress(stream, interval=60)
    progress.start(9, 5, 2)
    progress.item_finished(False, None)
    progress.item_finished(True, 1.0)
    progress.close()
    assert stream.getvalue().splitlines()[0].startswith("progress: 5/9 items failed=2 ")
    assert stream.getvalue().splitlines()[-1].startswith("progress: 7/9 items failed=3 ")
