"""The background plan: chunks become claimable one by one, names stay deterministic."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from batch import planner
from batch.errors import BatchError, PlanCutShort, SourceError, exit_code_of
from batch.models import Item, ItemKind
from batch.planner import BackgroundPlan
from batch.state import PlanStats, State


def _items(names: list[str]) -> list[Item]:
    return [Item(f"id{i}", f"/x/{name}", ItemKind.FILE, name) for i, name in enumerate(names)]


async def test_chunks_arrive_then_planning_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk is reported once, then False; all items end up planned and named."""
    monkeypatch.setattr(planner, "CHUNK", 3)
    state = State.open(tmp_path / "state.sqlite")
    names = [f"n{i}.wav" for i in range(10)]
    plan = BackgroundPlan(state, _items(names), _chunk(state), cancel=threading.Event())
    await plan.started()
    while await plan.wait_more():
        pass
    stats = await plan.finish(stopped=False)
    rows = state.query("SELECT out_name FROM items ORDER BY rowid")
    state.close()
    assert stats.seen == 10
    assert [r[0] for r in rows] == [f"n{i}" for i in range(10)]


async def test_names_across_chunks_are_first_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stem shared within a chunk keeps both extensions; one taken by an earlier chunk
    keeps its name and the newcomer keeps its extension, as a later run would do."""
    monkeypatch.setattr(planner, "CHUNK", 2)
    state = State.open(tmp_path / "state.sqlite")
    items = _items(["a.wav", "a.mp3", "b.wav", "c.wav", "b.mp3"])
    plan = BackgroundPlan(state, items, _chunk(state), cancel=threading.Event())
    await plan.finish(stopped=False)
    rows = state.query("SELECT out_name FROM items ORDER BY rowid")
    state.close()
    assert [r[0] for r in rows] == ["a.wav", "a.mp3", "b", "c", "b.mp3"]


async def test_a_source_failing_once_items_are_planned_says_so_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 listing cut off at page 9 (credentials expired) read as a bad argument (exit
    2) after the run had sent the items of pages 1 to 8, and "0 pending" as a finished
    batch. The error says the sources stopped after those items (exit 1)."""
    monkeypatch.setattr(planner, "CHUNK", 2)

    def stream() -> Iterator[Item]:
        yield from _items(["a.wav", "b.wav", "c.wav"])
        raise SourceError("s3://b/in/: S3 refused the AWS credentials")

    state = State.open(tmp_path / "state.sqlite")
    plan = BackgroundPlan(state, stream(), _chunk(state), cancel=threading.Event())
    with pytest.raises(PlanCutShort) as caught:
        await plan.finish(stopped=False)
    state.close()
    assert exit_code_of(caught.value) == 1
    assert str(caught.value) == (
        "s3://b/in/: S3 refused the AWS credentials (the sources stopped after 2 item(s), "
        "which this run sends; the rest was not listed, and the next run lists it again)"
    )


async def test_a_failing_source_is_raised_by_wait_more(tmp_path: Path) -> None:
    """An unusable SOURCE found mid-plan reaches the runner through wait_more."""

    def stream() -> Iterator[Item]:
        yield from _items(["ok.wav"])
        raise SourceError("bad.txt: no such file")

    state = State.open(tmp_path / "state.sqlite")
    plan = BackgroundPlan(state, stream(), _chunk(state), cancel=threading.Event())
    with pytest.raises(SourceError):
        while await plan.wait_more():
            pass
    assert (await plan.finish(stopped=True)).seen == 0
    state.close()


async def test_a_bug_while_planning_stops_the_run_as_a_bad_source_does(tmp_path: Path) -> None:
    """An exception that is not dgbatch's own (a looping link once raised ``OSError`` from
    the folder walk) crashed the runner with its requests in flight, and they were paid
    again by the next run. It reaches the runner as an error that stops the run cleanly."""

    def stream() -> Iterator[Item]:
        yield from _items(["ok.wav"])
        raise OSError(40, "Too many levels of symbolic links", "/in/loop.wav")

    state = State.open(tmp_path / "state.sqlite")
    plan = BackgroundPlan(state, stream(), _chunk(state), cancel=threading.Event())
    with pytest.raises(BatchError, match=r"internal error while planning \(OSError: .*loop\.wav"):
        while await plan.wait_more():
            pass
    state.close()


def _chunk(state: State) -> Callable[[Iterable[Item]], PlanStats]:
    return functools.partial(state.plan, run_id=1, retry_failed=False)


async def test_the_total_shown_catches_up_with_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The progress total was updated at most every GROWTH_INTERVAL, by a chunk arriving
    after it; chunks of the last window were never shown, so a 100,000-file folder ran to
    its end against a total of 70,000. A last update follows the last chunk."""
    monkeypatch.setattr(planner, "CHUNK", 3)
    monkeypatch.setattr(planner, "GROWTH_INTERVAL", 0.05)
    state = State.open(tmp_path / "state.sqlite")
    shown: list[int] = []

    def slowly(items: list[Item]) -> Iterator[Item]:
        for item in items:
            time.sleep(0.004)
            yield item

    async def grew() -> None:
        shown.append(sum(state.counts().values()))

    items = slowly(_items([f"n{i}.wav" for i in range(40)]))
    plan = BackgroundPlan(state, items, _chunk(state), cancel=threading.Event())
    plan.on_growth = grew
    await plan.started()
    while await plan.wait_more():
        pass
    await asyncio.sleep(0.2)  # the run goes on sending: the total is shown meanwhile
    await plan.finish(stopped=False)
    state.close()
    assert shown and shown[-1] == 40, shown
