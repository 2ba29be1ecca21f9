"""Hostile manifests, end to end through ``dgbatch run``: every nasty line becomes a clear
per-line error or a safe normalisation, the run never crashes, and nothing is written
outside ``--out``."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, read_state_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import make_tiny_wavs, serve_folder

from batch.emulator import Emulator
from batch.errors import SourceError
from batch.manifests import iter_manifest_stream
from batch.naming import TEMP_EXTRA, output_relpath, resolve_inside, safe_name

PASSWORD = "s3cret-Passw0rd-xyz"
NASTY = [
    "../../../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "ftp://h/a.wav",
    "https://user:pw@h/a.wav?X-Amz-Signature=abc", '{"source": "a.wav", "id": "../../x"}',
    '{"source": "/etc/x", "id": "/abs/../../y"}', '"a,b",c', "\\server\\share\\a.wav",
    "s3://bucket/key", "-", "~/a.wav", "C:\\evil\\a.wav",
]  # fmt: skip


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server for URL items."""
    make_tiny_wavs(tmp_path / "www", 1, prefix="remote")
    with serve_folder(tmp_path / "www") as host:
        yield host


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def write_manifests(base: Path, host: str) -> list[Path]:
    """A txt, a jsonl and a csv manifest full of nasty lines next to some real audio."""
    good = make_tiny_wavs(base / "m", 9, prefix="good")
    (outside,) = make_tiny_wavs(base, 1, prefix="escape")
    absolute = good[8]
    txt = base / "m" / "list.txt"
    txt.write_bytes(
        b"\xef\xbb\xbfgood00000.wav\r\n"  # BOM + CRLF: normalised
        + b"x" * 100_000
        + b"\n"  # a huge line
        + b"a\x00b.wav\n"  # NUL
        + b"bad\xc3\x28.wav\n"  # invalid UTF-8
        + b'"good00001.wav"\n'  # quotes are part of the name: no such file
        + b"../"
        + outside.name.encode()
        + b"\n"  # outside the manifest folder: a real file
        + str(absolute).encode()
        + b"\n"  # an absolute path
        + f"file://{good[2]}\n".encode()
        + b"ftp://example.com/a.wav\n"
        + f"http://user:{PASSWORD}@{host}/remote00000.wav\n".encode()
        + b"# a comment\n\n"
    )
    rows = [
        {"source": "good00003.wav", "id": "../../../../etc/evil"},
        {"source": "good00004.wav", "id": "/abs/evil"},
        {"source": "good00005.wav", "id": "dup"},
        {"source": "good00006.wav", "id": "dup"},
        {"source": "good00007.wav", "id": "..\\..\\win\\evil"},
        {"source": "good00001.wav", "id": "nul\u0000id"},
    ]
    jsonl = base / "m" / "items.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n[1, 2]\n")
    csv = base / "m" / "table.csv"
    csv.write_text(
        'source,id,diarize\n"good00001.wav","q""uote/../x",true\n"unbalanced,1,2\n'
        "good00001.wav,extra,true,surplus\n"
    )
    return [txt, jsonl, csv]


def test_hostile_manifests_end_to_end(
    dgbatch: Cli, emulator: Emulator, media_server: str, tmp_path: Path
) -> None:
    """Line by line: the good ones are done, the bad ones fail naming file:line and why."""
    manifests = write_manifests(tmp_path, media_server)
    out = tmp_path / "out"
    before = files_under(tmp_path)
    result = dgbatch("run", *map(str, manifests), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output

    written = files_under(tmp_path) - before
    assert written and all(p.is_relative_to(out) for p in written), written
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    failed = {str(r["error"]).split(": ", 1)[0]: str(r["error"]) for r in rows if r["error"]}
    expect_failed = {
        "list.txt:2": "line longer than",
        "list.txt:3": "NUL character",
        "list.txt:4": "invalid UTF-8",
        "list.txt:5": "no such file",
        "list.txt:9": "unsupported scheme 'ftp'",
        "items.jsonl:4": "duplicate id 'dup'",
        "items.jsonl:6": "NUL character",
        "items.jsonl:7": "invalid JSON",
        "items.jsonl:8": "expected a JSON object",
        "table.csv:3": "invalid CSV",
        "table.csv:4": "expected 3 fields",
    }
    assert set(failed) == set(expect_failed), failed
    for origin, reason in expect_failed.items():
        assert reason in failed[origin], failed[origin]
    done = {p.relative_to(out).as_posix() for p in written if p.suffix == ".json"}
    assert done == {
        "good00000.json", "escape00000.json", "good00008.json", "good00002.json",
        "remote00000.json", "etc/evil.json", "abs/evil.json", "dup.json", "win/evil.json",
        "q_uote/x.json",
    }  # fmt: skip
    assert PASSWORD not in (out / ".dgbatch" / "state.sqlite").read_text(errors="replace")


def test_symlink_inside_out_cannot_lead_outside(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """An output folder holding a symlink to elsewhere: the item fails, nothing escapes."""
    make_tiny_wavs(tmp_path / "m", 1, prefix="good")
    manifest = tmp_path / "m" / "items.jsonl"
    manifest.write_text(json.dumps({"source": "good00000.wav", "id": "etc/evil"}) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "etc").symlink_to(elsewhere, target_is_directory=True)
    result = dgbatch("run", str(manifest), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert list(elsewhere.iterdir()) == []
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert row["status"] == "failed"
    assert str(row["error"]).startswith("etc/evil.json: output path escapes"), row["error"]


def test_a_name_a_thousand_folders_deep_is_written_and_stops_nothing(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``os.makedirs`` recursed once per folder: a manifest id (or URL path) 1,000 folders
    deep raised RecursionError, which failed every write of its group and stopped every
    run on that --out (a review found it). It is written, and so is everyone else."""
    make_tiny_wavs(tmp_path / "m", 1, prefix="good")
    lines = [{"source": "good00000.wav", "id": "d/" * 1000 + "deep"}]
    lines += [{"source": "good00000.wav", "id": f"n{i}"} for i in range(20)]
    manifest = tmp_path / "m" / "items.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    try:
        result = dgbatch("run", str(manifest), "--out", str(out))
        assert result.exit_code == 0, result.output
        assert (out / ("d/" * 1000 + "deep.json")).is_file()
        assert len(list(out.glob("n*.txt"))) == 20
    finally:
        _remove_deep(out / "d")


def _remove_deep(root: Path) -> None:
    """Remove a tree too deep for ``shutil.rmtree``, which recurses once per folder: left
    in the temporary folder, pytest's own clean-up of old ones met it in every later run
    on the machine and printed a RecursionError at its end."""
    stack = [str(root)]
    while stack:
        with os.scandir(stack[-1]) as found:
            entries = list(found)
        folders = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        if folders:
            stack += folders
        else:
            os.rmdir(stack.pop())


@pytest.mark.parametrize("kind", ["id", "url"])
def test_an_output_path_too_long_to_write_fails_unsent(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, media_server: str, kind: str
) -> None:
    """A name whose output path is past PATH_MAX was sent and paid, then kept unwritten
    for a ``--retry-failed`` that could never write it (a review found it). It fails
    unsent, naming the reason; the other items are written."""
    make_tiny_wavs(tmp_path / "m", 1, prefix="good")
    deep = "/".join(["s" * 199] * 25)
    first = (
        {"source": "good00000.wav", "id": deep}
        if kind == "id"
        else {"source": f"http://{media_server}/{deep}/remote00000.wav"}
    )
    lines = [first, {"source": "good00000.wav", "id": "fine"}]
    manifest = tmp_path / "m" / "items.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    dry = dgbatch("run", str(manifest), "--out", str(out), "--dry-run", "--json")
    estimate = json.loads(dry.output[dry.output.index("{") :])
    assert (estimate["to_send"], estimate["fail_locally"]) == (1, {"output_path": 1}), estimate
    result = dgbatch("run", str(manifest), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert len(emulator.log) == 1 and (out / "fine.json").is_file()
    failed, done = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert (failed["status"], failed["attempts"], failed["err_code"]) == (
        "failed",
        0,
        "output_path",
    )
    assert "output path too long (" in str(failed["error"]) and done["status"] == "done"


@pytest.mark.parametrize("longer", ["the-folder", "the-link"])
def test_an_output_path_is_measured_where_it_is_written(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, longer: str
) -> None:
    """An --out that is a link: outputs go under the folder it leads to, and the length
    check measured the link's path. A link to a longer path was sent, paid and never
    written; a long link to a short folder was refused what it could write (a review of
    the fix found both)."""
    make_tiny_wavs(tmp_path / "m", 1, prefix="good")
    folder = tmp_path / ("f" * 200 if longer == "the-folder" else "f")
    link = tmp_path / ("l" if longer == "the-folder" else "l" * 200)
    folder.mkdir()
    link.symlink_to(folder, target_is_directory=True)
    room = 4096 - len(os.fsencode(str(tmp_path))) - len("/f/.json") - TEMP_EXTRA - 1
    name = ("d" * 99 + "/") * (room // 100) + "n" * (room % 100)  # fits under /f exactly
    manifest = tmp_path / "m" / "items.jsonl"
    manifest.write_text(json.dumps({"source": "good00000.wav", "id": name}) + "\n")
    result = dgbatch("run", str(manifest), "--out", str(link))
    (row,) = read_state_rows(folder / ".dgbatch" / "state.sqlite")
    if longer == "the-folder":  # 199 bytes too long where it is written: unsent
        assert (row["status"], row["attempts"], row["err_code"]) == ("failed", 0, "output_path")
        assert len(emulator.log) == 0, result.output
    else:
        assert result.exit_code == 0 and row["status"] == "done", result.output


def test_control_characters_of_names_never_reach_the_terminal(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A file named ``x ESC]0;PWNED BEL y.wav`` (an S3 key, a URL: others choose them) was
    printed as it is by the dry run, by warnings and by errors: a terminal ran the
    sequence (retitled, cleared, or a line forged). Each control character is shown as
    its escape (a review found it)."""
    evil = "x\x1b]0;PWNED\x07\ny"
    calls = tmp_path / "calls"
    (wav,) = make_tiny_wavs(calls, 1, prefix="ok")
    wav.rename(calls / f"{evil}.wav")
    (calls / f"{evil}-link").symlink_to(tmp_path, target_is_directory=True)
    out = ("--out", str(tmp_path / "out"))
    dry = dgbatch("run", str(calls), *out, "--dry-run")
    ran = dgbatch("run", str(calls), *out)
    missing = dgbatch("run", str(calls / f"{evil}.mp3"), *out)
    assert (dry.exit_code, ran.exit_code, missing.exit_code) == (0, 0, 2), ran.output
    shown = "x\\x1b]0;PWNED\\x07\\x0ay"
    for said in (dry.output, ran.output, missing.output):
        assert shown in said and "\x07" not in said and "\x1b" not in said, said
    assert "PWNED\\x07\\x0ay-link: link(s) to folders" in ran.output, ran.output
    assert len(list((tmp_path / "out").glob("*PWNED*.json"))) == 1  # written, named safely


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.text(max_size=60).map(str.encode),
            st.sampled_from(NASTY).map(str.encode),
        ),
        max_size=8,
    ),
    fmt=st.sampled_from(["txt", "jsonl", "csv"]),
)
def test_any_manifest_bytes_plan_safely(lines: list[bytes], fmt: str) -> None:
    """Whatever the bytes, parsing never crashes (only a whole-manifest SourceError), every
    broken line names its line, and every output name stays inside the output folder."""
    root = Path("/nonexistent-out")
    data = b"\n".join(lines)
    if fmt == "csv":
        data = b"source,id,diarize\n" + data
    try:
        items = list(
            iter_manifest_stream(io.BytesIO(data), base=Path("/nonexistent"), origin="m", fmt=fmt)
        )
    except SourceError as exc:
        assert str(exc).startswith("m: ")
        return
    for item in items:
        if item.error is not None:
            assert item.error.startswith("m:")
        name = safe_name(item.name)
        assert resolve_inside(root, output_relpath(name, "json")).is_relative_to(root)
