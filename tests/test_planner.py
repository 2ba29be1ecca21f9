"""The background plan: chunks become claimable one by one, names stay deterministic."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from batch import planner
from batch.errors import BatchError, SourceError
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
