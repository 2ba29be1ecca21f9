"""Progress renderers: log lines come on time, also while nothing finishes."""

from __future__ import annotations

import io
import time

from batch.progress import LogProgress


def test_a_log_line_comes_while_every_request_waits() -> None:
    """``--progress log`` printed only when an item finished: a run whose requests all
    waited on a long Retry-After (or hung) printed nothing for minutes."""
    stream = io.StringIO()
    progress = LogProgress(stream, interval=0.05)
    progress.start(10, 0)
    progress.tick()  # too soon: nothing
    assert stream.getvalue().count("\n") == 1
    time.sleep(0.06)
    progress.tick()
    assert stream.getvalue().splitlines()[-1].startswith("progress: 0/10 items")
    assert stream.getvalue().count("\n") == 2
