"""LocalSink's group commit: many concurrent writes, each durable and atomic, errors per item."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch import outputs
from batch.errors import ItemError, OutputError
from batch.outputs import LocalSink, OutputMeta

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


async def test_placed_fires_once_the_files_are_whole_and_before_the_write_returns(
    tmp_path: Path,
) -> None:
    """``placed`` (the runner frees the request slot there) runs only when the outputs are
    in place with their bytes, and before ``write`` returns; not at all for a failed item."""
    sink = LocalSink(tmp_path / "out")
    seen: list[bytes] = []

    def placed() -> None:
        seen.append((tmp_path / "out" / "a.json").read_bytes())

    returned = await sink.write("a", {"json": b"{}"}, META, placed=placed)
    assert seen == [b"{}"] and returned == [str((tmp_path / "out" / "a.json").resolve())]
    calls: list[str] = []
    with pytest.raises(ItemError):
        await sink.write("../escape", {"json": b"{}"}, META, placed=lambda: calls.append("x"))
    sink.close()
    assert calls == []


async def test_a_group_sync_also_makes_the_previous_renames_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per item: temp files, a sync, the rename, ``placed``, another sync, then ``write``
    returns. Back to back groups share that second sync with the next group's first, so
    two groups cost three syncs, not four."""
    log: list[tuple[str, str]] = []
    write_temps, rename_temps = outputs._write_temps, outputs._rename_temps

    def logged(event: str, real: Callable[..., None]) -> Callable[..., None]:
        def run(job: Any, *args: Any) -> None:
            log.append((event, job.out_name))
            real(job, *args)

        return run

    monkeypatch.setattr(outputs, "_write_temps", logged("temps", write_temps))
    monkeypatch.setattr(outputs, "_rename_temps", logged("rename", rename_temps))
    monkeypatch.setattr(outputs, "_syncfs", lambda folders: log.append(("sync", "")))
    sink = LocalSink(tmp_path / "out")
    second: list[asyncio.Task[list[str]]] = []

    async def write(name: str) -> list[str]:
        paths = await sink.write(name, {"json": b"{}"}, META, placed=lambda: placed(name))
        log.append(("returned", name))
        return paths

    def placed(name: str) -> None:
        log.append(("placed", name))
        if name == "a":  # queued while the group of "a" still waits for its names' sync
            second.append(asyncio.ensure_future(write("b")))

    await write("a")
    await second[0]
    sink.close()
    assert log == [
        ("temps", "a"), ("sync", ""), ("rename", "a"), ("placed", "a"),
        ("temps", "b"), ("sync", ""), ("rename", "b"), ("placed", "b"), ("returned", "a"),
        ("sync", ""), ("returned", "b"),
    ]  # fmt: skip


async def test_a_failed_shared_sync_fails_both_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the sync shared by two groups fails, neither group's outputs are known to be
    durable: both writes raise ``OutputError`` naming the folder, and no temp file is left."""
    syncs: list[int] = []

    def syncfs(folders: Any) -> None:
        syncs.append(1)
        if len(syncs) == 2:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(outputs, "_syncfs", syncfs)
    sink = LocalSink(tmp_path / "out")
    second: list[asyncio.Future[list[str]]] = []

    def placed() -> None:
        second.append(asyncio.ensure_future(sink.write("b", {"json": b"{}"}, META)))

    with pytest.raises(OutputError, match="Input/output error"):
        await sink.write("a", {"json": b"{}"}, META, placed=placed)
    with pytest.raises(OutputError, match="Input/output error"):
        await second[0]
    sink.close()
    assert not list((tmp_path / "out").glob(".*.tmp"))
