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
