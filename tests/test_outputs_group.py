"""LocalSink's group commit: many concurrent writes, each durable and atomic, errors per item."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
