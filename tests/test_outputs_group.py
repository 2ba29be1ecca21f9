"""LocalSink's group commit: many concurrent writes, each durable and atomic, errors per item."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from pathlib import Path

import pytest

from batch import outputs
from batch.errors import ItemError, OutputError
from batch.outputs import LocalSink, OutputMeta, landed

META = OutputMeta("src", "fp")


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-fallback"])
async def test_concurrent_writes_all_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    """Writes that overlap are grouped, and every one returns its own paths with its bytes."""
    if not syncfs:
        monkeypatch.setattr(outputs, "_SYNCFS", None)
    sink = LocalSink(tmp_path / "out", threads=4)
    names = [f"day{i % 3}/item{i}" for i in range(50)]
    results = await asyncio.gather(
        *(sink.write(n, {"json": n.encode(), "txt": b"t"}, META) for n in names)
    )
    sink.close()
    for name, paths in zip(names, results, strict=True):
        assert [Path(p).read_bytes() for p in paths] == [name.encode(), b"t"]
    assert not list((tmp_path / "out").rglob(".*.tmp"))


async def test_escaping_name_fails_only_that_item(tmp_path: Path) -> None:
    """A name that would leave the output folder fails its own write, not its group's."""
    sink = LocalSink(tmp_path / "out")
    good, bad = await asyncio.gather(
        sink.write("ok", {"json": b"{}"}, META),
        sink.write("../escape", {"json": b"{}"}, META),
        return_exceptions=True,
    )
    sink.close()
    assert isinstance(bad, ItemError) and bad.code == "unsafe_output"
    assert good == [str((tmp_path / "out" / "ok.json").resolve())]


async def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    """An output folder that is a file cannot take outputs: OutputError names the path."""
    (tmp_path / "out").write_text("not a folder")
    sink = LocalSink(tmp_path / "out")
    with pytest.raises(OutputError, match="cannot write output"):
        await sink.write("a", {"json": b"{}"}, META)
    sink.close()


def test_a_write_left_behind_is_not_logged_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A put that outlives ``--grace`` and then the grace of its answer is left behind
    (the answer is kept); the loop cancelled it at shutdown and asyncio logged
    "_GatheringFuture exception was never retrieved" with three tracebacks, into syslog."""
    monkeypatch.setattr("batch.outputs.OUTPUT_GRACE", 0.01)
    said: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: said.append(ctx["message"]))
        write = asyncio.gather(asyncio.sleep(10), asyncio.sleep(10))
        waiter = asyncio.ensure_future(landed(write))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # as the loop does at shutdown
        await asyncio.sleep(0.01)

    asyncio.run(main())
    gc.collect()
    assert said == []


async def test_a_symlink_loop_fails_only_the_items_under_it(tmp_path: Path) -> None:
    """A link in ``--out`` that loops (``out/day1 -> day1``) raised RuntimeError out of the
    group writer (Python 3.11): the whole group failed, asyncio logged "Task exception was
    never retrieved", and every later run stopped the same way. Only items under it fail."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "day1").symlink_to("day1")
    sink = LocalSink(tmp_path / "out")
    said: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: said.append(ctx["message"]))
    good, bad = await asyncio.gather(
        sink.write("day2/ok", {"json": b"{}"}, META),
        sink.write("day1/loop", {"json": b"{}"}, META),
        return_exceptions=True,
    )
    assert isinstance(bad, ItemError) and bad.code == "unsafe_output", bad
    assert good == [str((tmp_path / "out" / "day2" / "ok.json").resolve())]
    assert await sink.find_complete("day1/loop", ("json",), META, 0.0) is None
    sink.close()
    assert said == []


async def test_a_group_that_fails_whole_leaves_the_next_ones_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unforeseen error of one group's writer failed its items and ended the committer
    with the error unretrieved; writes queued meanwhile waited for a committer for good."""
    run = outputs._GroupWriter.run
    failed: list[bool] = []

    def first_fails(self: outputs._GroupWriter, jobs: list[outputs._Job]) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("unforeseen")
        run(self, jobs)

    monkeypatch.setattr(outputs._GroupWriter, "run", first_fails)
    sink = LocalSink(tmp_path / "out")
    first = asyncio.ensure_future(sink.write("a", {"json": b"{}"}, META))
    await asyncio.sleep(0)
    later = [sink.write(f"b{i}", {"json": b"{}"}, META) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 10)
    sink.close()
    assert isinstance(results[0], OutputError) and "unforeseen" in str(results[0])
    assert all(isinstance(paths, list) for paths in results[1:]), results
