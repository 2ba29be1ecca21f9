"""Real sources of items stored redacted (presigned URLs): at hand until each is sent, never
in the state, and not in Python's memory either (``batch.realsources``)."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

from batch.job import _watch
from batch.models import Filters
from batch.realsources import RealSources
from batch.sources import expand_sources

SIGNED = "X-Amz-Credential=AKIAEXAMPLE&X-Amz-Security-Token={token}&X-Amz-Signature={n:064x}"


def test_the_first_source_of_an_id_stays_until_replaced() -> None:
    sources = RealSources()
    assert sources.get("a", "stored") == "stored"  # none yet: no database at all
    assert sources.add("a", "https://x/a?sig=1") is None
    assert sources.add("a", "https://x/a?sig=2") == "https://x/a?sig=1"
    assert sources.get("a", "stored") == "https://x/a?sig=1"
    sources.replace("a", "https://x/a?sig=2")
    assert sources.get("a", "stored") == "https://x/a?sig=2"
    assert sources.get("b", "stored b") == "stored b"
    sources.close()
    assert sources.add("c", "https://x/c?sig=3") is None  # a planner still running: ignored
    assert sources.get("a", "stored") == "stored"


def test_planning_keeps_presigned_urls_out_of_python_memory(tmp_path: Path) -> None:
    """A run needs each presigned URL until it sends it, maybe hours after planning; a
    million of them are over a GB. 20,000 URLs of ~1 KB held in a dict were 30 MB of traced
    memory; in the temporary database, none (its few MB of cache are SQLite's)."""
    manifest = tmp_path / "urls.txt"
    token = "IQoJb3JpZ2luX2VjEJr" * 40
    urls = [
        f"https://b.s3.amazonaws.com/c{n}.wav?{SIGNED.format(token=token, n=n)}\n"
        for n in range(20_000)
    ]
    manifest.write_text("".join(urls))
    sources = RealSources()
    tracemalloc.start()
    try:
        items = list(_watch(expand_sources([str(manifest)], Filters()), sources, threading.Event()))
        held, _ = tracemalloc.get_traced_memory()
        del items[1:]
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "REDACTED" in items[0].id
    assert sources.get(items[0].id, "") == urls[0].strip()
    assert held > 10e6  # the list of items itself: the measure sees what is held
    assert after < 3e6, f"{after / 1e6:.1f} MB still traced once the items are dropped"
    sources.close()
