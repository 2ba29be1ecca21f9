"""Outputs: atomic writes, collision-free names, no escape from --out, txt rendering."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from pathlib import Path

import pytest
from conftest import (
    Cli,
    dgbatch_subprocess_cmd,
    make_wav,
    make_wavs,
    on_read_only_mount,
    outputs_under,
    read_state_rows,
    sha256_of,
)

from batch.emulator import Emulator, build_response
from batch.errors import ItemError, OutputError
from batch.formats import render_txt
from batch.models import ItemKind, ItemStatus
from batch.outputguard import OutputPlaces, check_not_foreign, output_error
from batch.outputs import Found, LocalSink, OutputMeta, write_atomic
from batch.records import Ownership, WorkItem


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_write_atomic_replaces_the_target_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """The target holds the new bytes and nothing else is left in the folder."""
    target = tmp_path / "deep" / "a.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert _files(tmp_path) == ["deep/a.json"]


def test_write_atomic_failure_keeps_the_old_file_and_removes_its_temp(tmp_path: Path) -> None:
    """When the rename fails (the target is a folder) the temp file is cleaned up."""
    target = tmp_path / "a.json"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert _files(tmp_path) == ["a.json/keep"]


@pytest.mark.parametrize("name", ["../evil", "../../x/y", "/etc/passwd", "a/../../b"])
def test_the_sink_refuses_any_path_outside_its_root(tmp_path: Path, name: str) -> None:
    """Even a raw, unsanitised name cannot make the sink write outside its folder."""
    sink = LocalSink(tmp_path / "out")
    try:
        with pytest.raises(ValueError, match="escapes the output folder"):
            sink.path_for(name, "json")
    finally:
        sink.close()


def test_a_folder_in_the_place_of_an_output_fails_that_item(tmp_path: Path) -> None:
    """A write that fails because of its own path names the path and the reason, as the
    item's error (the run goes on)."""
    sink = LocalSink(tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").mkdir()
    try:
        with pytest.raises(ItemError, match=r"a\.json: is a folder, where an output goes"):
            asyncio.run(sink.write("a", {"json": b"{}"}, OutputMeta("a.wav", "")))
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (errno.EISDIR, ItemError, "Is a directory"),
        (errno.EEXIST, ItemError, "File exists"),
        (errno.ENAMETOOLONG, ItemError, "File name too long"),
        (errno.ENOTDIR, OutputError, "Not a directory"),
        (errno.ELOOP, OutputError, "Too many levels of symbolic links"),
        (errno.ENOSPC, OutputError, "No space left on device (disk full)"),
        (errno.EROFS, OutputError, "Read-only file system (output folder is not writable)"),
        (errno.EACCES, OutputError, "Permission denied (output folder is not writable)"),
        (errno.EIO, OutputError, "Input/output error"),
    ],
)
def test_an_output_error_stops_the_run_only_when_every_item_would_meet_it(
    code: int, kind: type[Exception], reason: str
) -> None:
    """A path's own problem fails its item; a disk's or a folder's stops the run (the
    items stay pending for when it is fixed, instead of each being paid and failed)."""
    error = output_error(Path("/out/a.json"), OSError(code, os.strerror(code)))
    assert type(error) is kind
    assert str(error) == f"/out/a.json: cannot write output: {reason}"


def test_shared_stems_keep_their_extension(tmp_path: Path, dgbatch: Cli) -> None:
    """``a.wav`` + ``a.mp3`` in one folder give ``a.wav.json`` + ``a.mp3.json``; ``b`` is plain."""
    src, out = tmp_path / "calls", tmp_path / "out"
    wav = make_wav(src / "a.wav")
    mp3 = make_wav(src / "a.mp3", tone=1)  # WAV bytes: the emulator sniffs, not the name
    make_wav(src / "b.wav", tone=2)
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    visible = [f for f in _files(out) if not f.startswith(".dgbatch/")]
    assert visible == ["a.mp3.json", "a.mp3.txt", "a.wav.json", "a.wav.txt", "b.json", "b.txt"]
    assert sha256_of(wav) in (out / "a.wav.json").read_text()
    assert sha256_of(mp3) in (out / "a.mp3.json").read_text()


def test_names_stay_the_same_when_a_colliding_file_arrives_later(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """Outputs already written keep their names; the newcomer keeps its extension."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "a.wav")
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    make_wav(src / "a.mp3", tone=1)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    assert [p.name for p in outputs_under(out)] == ["a.json", "a.mp3.json"]


def test_json_is_the_response_byte_for_byte_and_txt_is_its_transcript(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """``json`` is Deepgram's body as returned; ``txt`` is the paragraphs' transcript."""
    wav = make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(wav), "--out", str(out)).exit_code == 0
    body = (out / "a.json").read_bytes()
    assert body.startswith(b'{"metadata": {"transaction_key"')  # the emulator's own spelling
    data = json.loads(body)
    paragraphs = data["results"]["channels"][0]["alternatives"][0]["paragraphs"]["transcript"]
    assert (out / "a.txt").read_text() == paragraphs.strip() + "\n"
    size = wav.stat().st_size
    assert (out / "a.txt").read_text() == f"Audio {sha256_of(wav)[:16]} has {size} bytes.\n"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ((), "audio abc has 3 bytes\n"),
        ((("smart_format", "true"),), "Audio abc has 3 bytes.\n"),
        (
            (("diarize", "true"), ("paragraphs", "true")),
            "Speaker 0: Audio abc.\n\nSpeaker 1: Has 3 bytes.\n",
        ),
    ],
)
def test_txt_renders_paragraphs_when_present(
    params: tuple[tuple[str, str], ...], expected: str
) -> None:
    """Plain transcript without paragraphs, the paragraphs' text (with speakers) when present."""
    response = build_response(request_id="r", sha256="abc", size=3, duration=1.0, params=params)
    assert render_txt(b"", response).decode() == expected


def test_txt_labels_each_channel_when_there_are_several() -> None:
    """A two-channel response gives one labelled block per channel."""
    response = {
        "results": {
            "channels": [
                {"alternatives": [{"transcript": "left side"}]},
                {"alternatives": [{"transcript": "right side"}]},
            ]
        }
    }
    assert render_txt(b"", response) == b"Channel 0:\nleft side\n\nChannel 1:\nright side\n"


def test_formats_option_chooses_the_outputs(tmp_path: Path, dgbatch: Cli) -> None:
    """``--formats json`` writes only json; an unknown format is a usage error."""
    wav = make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(wav), "--out", str(out), "--formats", "json").exit_code == 0
    assert [f for f in _files(out) if not f.startswith(".dgbatch/")] == ["a.json"]
    bad = dgbatch("run", str(wav), "--out", str(out), "--formats", "json,pdf")
    assert bad.exit_code == 2
    assert "pdf" in bad.output


def test_a_format_added_later_is_rendered_from_the_json_not_sent_again(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """Done items are not sent again for a format asked for later: it is rendered from
    their json output (Deepgram's answer as returned), and recorded among their outputs.
    Items kept without their json are named in the summary, with how to redo them."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "a.wav")
    make_wav(src / "b.wav", tone=1)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    more = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt")
    assert more.exit_code == 0, more.output
    assert len(emulator.log) == 2
    assert "rendered the formats 2 done item(s) lacked from their json" in more.output
    assert "have no" not in more.output
    fresh = dgbatch("run", str(src / "a.wav"), "--out", str(tmp_path / "fresh"), "--formats", "srt")
    assert fresh.exit_code == 0 and len(emulator.log) == 3
    assert (out / "a.srt").read_bytes() == (tmp_path / "fresh" / "a.srt").read_bytes()
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert json.loads(str(rows[0]["outputs"])) == [
        str(out / f"a.{f}") for f in ("json", "txt", "srt")
    ]
    again = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt")
    assert "rendered" not in again.output and len(emulator.log) == 3
    (out / "b.json").unlink()  # its json gone: b cannot be rendered, and is named
    vtt = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt,vtt")
    assert "rendered the formats 1 done item(s)" in vtt.output
    assert "its json output is gone or not a transcript" in vtt.output
    assert "1 done item(s) have no vtt output and no json" in vtt.output
    assert len(emulator.log) == 3
    again = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt,vtt")
    assert "gone" not in again.output  # struck from its outputs: not looked for again
    assert "1 done item(s) have no vtt output" in again.output

    bare = tmp_path / "bare"
    assert dgbatch("run", str(src), "--out", str(bare), "--formats", "txt").exit_code == 0
    lacking = dgbatch("run", str(src), "--out", str(bare), "--formats", "txt,vtt")
    assert lacking.exit_code == 0 and len(emulator.log) == 5
    assert "2 done item(s) have no vtt output" in lacking.output and "--force" in lacking.output


def test_a_json_that_a_format_added_later_cannot_be_made_from_skips_that_item_alone(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """One done item whose json lacks what captions need (words without times) is named
    and keeps what it has; the others get the format and the run ends as usual (it ended
    with exit 1 at the first such item, without a summary or a report)."""
    src, out = tmp_path / "calls", tmp_path / "out"
    for n in range(3):
        make_wav(src / f"f{n}.wav", tone=n)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0
    odd = json.loads((out / "f0.json").read_text())
    odd["results"].pop("utterances", None)
    for word in odd["results"]["channels"][0]["alternatives"][0]["words"]:
        word.pop("start")
    (out / "f0.json").write_text(json.dumps(odd))
    formats = ("--formats", "json,txt,srt,vtt,md")
    said = []
    for _ in range(2):  # named every run, and never promised to "the next run"
        more = dgbatch("run", str(src), "--out", str(out), *formats)
        assert more.exit_code == 0, more.output
        assert "f0.wav: cannot render srt, vtt from its json" in more.output
        assert "1 done item(s) have a json a format asked for cannot be made from" in more.output
        assert "the next run renders it" not in more.output
        said.append(more.output)
    assert "rendered the formats 3 done item(s) lacked" in said[0]  # f0's md too
    assert sorted(p.name for p in out.glob("*.srt")) == ["f1.srt", "f2.srt"]
    assert (out / "f0.md").is_file() and not (out / "f0.vtt").exists()
    assert len(emulator.log) == 3


def test_a_full_disk_stops_rendering_formats_added_later(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendering formats added later stops at a full disk, as a run does (exit 1, the
    reason named); the next run renders them."""
    import batch.outputs

    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "a.wav")
    make_wav(src / "b.wav", tone=1)
    assert dgbatch("run", str(src), "--out", str(out)).exit_code == 0

    def full(path: str, data: bytes, created: list[str]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(batch.outputs, "_write_new_file", full)
    stopped = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt")
    assert stopped.exit_code == 1 and "No space left on device (disk full)" in stopped.output
    assert not list(out.glob("*.srt"))
    # they have their json: the next run renders them, no paid --force is suggested
    assert "2 done item(s) lack a format asked for: the next run renders it" in stopped.output
    assert "have no" not in stopped.output and "--force" not in stopped.output
    monkeypatch.undo()
    again = dgbatch("run", str(src), "--out", str(out), "--formats", "json,txt,srt")
    assert again.exit_code == 0 and "rendered the formats 2 done item(s)" in again.output


def state_of(out: Path) -> Path:
    return out / ".dgbatch" / "state.sqlite"


def test_an_output_where_another_items_folder_goes_fails_only_that_item(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """``q.wav`` writes ``q.json``, where ``q.json/z.wav``'s folder must go: that stopped
    every run (a file where a folder goes: "Not a directory"), the item pending for ever.
    One of the two fails, its answer kept, and the run goes on."""
    make_wav(tmp_path / "in" / "q.wav")
    make_wav(tmp_path / "in" / "q.json" / "z.wav", tone=1)
    make_wav(tmp_path / "in" / "r.wav", tone=2)
    (tmp_path / "in" / "list.txt").write_text("q.wav\nq.json/z.wav\nr.wav\n")  # q.wav first
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in" / "list.txt"), "--out", str(out), "-c", "1")
    assert result.exit_code == 1, result.output
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(state_of(out))}
    assert {name: row["status"] for name, row in rows.items()} == {
        "q.wav": "done", "z.wav": "failed", "r.wav": "done",
    }  # fmt: skip
    failed = rows["z.wav"]
    assert failed["err_code"] == "output_path" and failed["http_status"] == 200
    assert f"{out / 'q.json'} (another item's output) is where its folder goes" in str(
        failed["error"]
    )
    assert "paid answer(s) whose outputs could not be written are kept" in result.output


def test_manifest_ids_cannot_escape_the_output_folder(tmp_path: Path, dgbatch: Cli) -> None:
    """Ids like ``../../evil``, ``/etc/x`` or with control characters land inside --out."""
    make_wav(tmp_path / "in" / "a.wav")
    make_wav(tmp_path / "in" / "b.wav", tone=1)
    make_wav(tmp_path / "in" / "c.wav", tone=2)
    manifest = tmp_path / "in" / "m.jsonl"
    manifest.write_text(
        '{"source": "a.wav", "id": "../../evil"}\n'
        '{"source": "b.wav", "id": "/etc/x"}\n'
        '{"source": "c.wav", "id": "tab\\there\\u0007"}\n'
    )
    out = tmp_path / "deep" / "out"
    result = dgbatch("run", str(manifest), "--out", str(out))
    assert result.exit_code == 0, result.output
    visible = [f for f in _files(out) if not f.startswith(".dgbatch/")]
    assert visible == [
        "etc/x.json",
        "etc/x.txt",
        "evil.json",
        "evil.txt",
        "tab_here_.json",
        "tab_here_.txt",
    ]
    assert not (tmp_path / "evil.json").exists()
    assert not list(tmp_path.glob("*.json"))
    outputs = [
        p
        for r in read_state_rows(out / ".dgbatch" / "state.sqlite")
        for p in json.loads(str(r["outputs"]))
    ]
    assert all(Path(p).resolve().is_relative_to(out.resolve()) for p in outputs)


def test_an_output_that_cannot_be_written_fails_its_item_and_a_retry_recovers(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """A folder in an output's place: the item fails naming the path, the others are
    done, and once it is moved away --retry-failed finishes the item."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "a.wav")
    make_wav(src / "b.wav", tone=1)
    (out / "a.json").mkdir(parents=True)
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 1
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert [(r["status"], r["error"], r["attempts"]) for r in rows] == [
        ("failed", f"{out}/a.json: is a folder, where an output goes", 1),  # it was paid
        ("done", None, 1),
    ]
    (out / "a.json").rmdir()
    result = dgbatch("run", str(src), "--out", str(out), "--retry-failed")
    assert result.exit_code == 0, result.output
    assert (out / "a.json").is_file()


def test_outputs_without_json_written_after_the_claim_count_as_complete(tmp_path: Path) -> None:
    """A txt-only run's outputs, written after the claim, are found complete (with no
    transcript to read back); older ones are not."""
    sink = LocalSink(tmp_path)
    meta = OutputMeta("a.wav", "1:1")
    try:
        before = asyncio.run(sink.find_complete("a", ("txt",), meta, since=0.0))
        (tmp_path / "a.txt").write_text("hello\n")
        after = asyncio.run(sink.find_complete("a", ("txt",), meta, since=0.0))
        stale = asyncio.run(sink.find_complete("a", ("txt",), meta, since=4e9))
    finally:
        sink.close()
    assert before is None and stale is None
    assert after == Found([str(tmp_path / "a.txt")], None)


def _owner_table(tmp: Path) -> list[tuple[str, Ownership | None, bytes | None, str | None]]:
    """(what is at the place, the item's ownership, what it writes, the code refused)."""
    mine = os.path.realpath(tmp / "a.json")
    return [
        ("nothing", Ownership(), b"{}", None),
        ("old", None, b"{}", None),  # --force replaces it
        ("old", Ownership(frozenset({mine})), b"{}", None),  # recorded as its output
        ("old", Ownership(queued_at=time.time() - 7200), b"{}", None),  # a crash's leftover
        ("old", Ownership(queued_at=time.time()), b"{}", "output_exists"),  # older: another's
        ("old", Ownership(), b"{}", "output_exists"),  # a format rendered later: not its own
        ("future", Ownership(queued_at=time.time()), b"{}", "output_exists"),
        ("old", Ownership(), b"same", None),  # holds what it would write: nothing changes
        ("input", None, b"{}", "output_path"),  # a SOURCE of the run, even with --force
        ("folder", None, b"{}", "output_path"),
    ]


@pytest.mark.parametrize("row", range(10))
def test_a_file_the_item_did_not_write_is_not_replaced(tmp_path: Path, row: int) -> None:
    there, owner, data, refused = _owner_table(tmp_path)[row]
    target = tmp_path / "a.json"
    inputs: frozenset[tuple[int, int]] = frozenset()
    if there == "folder":
        target.mkdir()
    elif there != "nothing":
        target.write_bytes(b"same")
        when = time.time() + (86400 if there == "future" else -3600)
        os.utime(target, (when, when))
        info = target.stat()
        inputs = frozenset({(info.st_dev, info.st_ino)}) if there == "input" else inputs
    if refused is None:
        check_not_foreign(str(target), owner, inputs, data)
        return
    with pytest.raises(ItemError) as caught:
        check_not_foreign(str(target), owner, inputs, data)
    assert caught.value.code == refused


@pytest.mark.parametrize("most", [100_000, 1])
def test_the_check_before_sending_lists_each_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, most: int
) -> None:
    """Before an item is sent, its places are looked up in one listing of their folder
    (a lookup on the event loop waited on the folder's lock while the writer renamed into
    it); a file that was there is checked as the writer checks it, and a folder too big to
    keep listed is looked up name by name."""
    monkeypatch.setattr(OutputPlaces, "MOST", most)
    (tmp_path / "day1").mkdir()
    for name in ("a.json", "other.json"):
        (tmp_path / "day1" / name).write_text("{}")
        os.utime(tmp_path / "day1" / name, (1, 1))
    places = OutputPlaces(str(tmp_path), frozenset())
    with pytest.raises(ItemError, match=r"day1/a\.json: is already there"):
        places.check_free("day1/a", ("json", "txt"), Ownership())
    places.check_free("day1/b", ("json", "txt"), Ownership())
    places.check_free("day2/a", ("json",), Ownership())  # a folder not there yet
    (tmp_path / "day1" / "c.json").write_text("{}")  # mid-run: the writer meets it
    os.utime(tmp_path / "day1" / "c.json", (1, 1))
    if most == 1:
        with pytest.raises(ItemError):
            places.check_free("day1/c", ("json",), Ownership())
    else:
        places.check_free("day1/c", ("json",), Ownership())


def test_a_recorded_output_of_the_same_name_elsewhere_is_no_claim_here(tmp_path: Path) -> None:
    """Recorded outputs were told by name alone: ``outA/a.txt`` recorded made the user's
    ``outB/a.txt`` the item's own (one --state, two --out). By name only when the
    recorded file is gone: the --out was moved."""
    (tmp_path / "outA").mkdir()
    (tmp_path / "outB").mkdir()
    recorded = tmp_path / "outA" / "a.txt"
    recorded.write_text("transcript")
    mine = tmp_path / "outB" / "a.txt"
    mine.write_text("my notes")
    os.utime(mine, (1, 1))
    owner = Ownership(frozenset({str(recorded)}))
    with pytest.raises(ItemError, match="is already there"):
        check_not_foreign(str(mine), owner, frozenset())
    recorded.unlink()  # outA moved to outB: the name is its own
    check_not_foreign(str(mine), owner, frozenset())


@pytest.mark.parametrize(
    ("claimed_before", "queued_at", "since"),
    [
        (None, 100.0, None),  # never claimed: no crashed attempt
        (200.0, 100.0, 200.0),  # claimed since it was queued: that attempt's files
        (50.0, 100.0, None),  # an older claim: its attempt ended, then it was queued again
    ],
)
def test_a_crashed_attempt_is_one_since_the_item_was_last_queued(
    claimed_before: float | None, queued_at: float, since: float | None
) -> None:
    item = WorkItem(
        1, "u", "/a.wav", ItemKind.FILE, "a", (), 0, None, "", None, ItemStatus.PENDING,
        queued_at=queued_at, claimed_before=claimed_before,
    )  # fmt: skip
    assert item.owner is not None and item.owner.queued_at == since


def test_an_out_nothing_can_be_written_into_stops_the_run_unsent(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A read-only ``--out`` was warned of (no lock) and sent to: each answer was paid for,
    then kept unwritten (a review paid 20). The run stops before its first request, and
    the dry run says it would (it said it would send them)."""
    make_wavs(tmp_path / "in", 3)
    cmd = " ".join([*dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out",
                    str(tmp_path / "ro" / "out"), "--state", str(tmp_path / "state.sqlite"),
                    "--api-url", emulator.url, "--progress", "none"])  # fmt: skip
    done = on_read_only_mount(
        tmp_path / "ro",
        f"mkdir {tmp_path}/ro/out; mount -o remount,ro {tmp_path}/ro; {cmd} --dry-run; {cmd}",
    )
    assert done.returncode == 1, done.stderr
    assert "cannot write outputs there (Read-only file system)" in done.stderr
    assert "(Read-only file system): the run would stop before its first" in done.stdout
    assert emulator.log == []


def test_a_read_only_out_with_nothing_left_to_write_is_no_problem(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A finished batch on a mount made read-only since: the run goes on without its lock
    and ends well, and the dry run does not say it would stop (it said so)."""
    make_wavs(tmp_path / "in", 2)
    cmd = " ".join([*dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out",
                    str(tmp_path / "ro" / "out"), "--state", str(tmp_path / "state.sqlite"),
                    "--api-url", emulator.url, "--progress", "none"])  # fmt: skip
    done = on_read_only_mount(
        tmp_path / "ro", f"{cmd}; mount -o remount,ro {tmp_path}/ro; {cmd} --dry-run; {cmd}"
    )
    assert done.returncode == 0, done.stderr
    assert "would send 0 item(s)" in done.stdout and "cannot write" not in done.stdout
    assert len(emulator.log) == 2


def test_a_folder_that_cannot_be_made_is_named_with_its_own_reason(
    tmp_path: Path, emulator: Emulator
) -> None:
    """An output subfolder that cannot be made on a read-only mount under ``--out`` was
    reported as "No such file or directory" (its makedirs error was dropped), per item."""
    make_wav(tmp_path / "in" / "s" / "deep" / "g1.wav")
    out = tmp_path / "out"
    (out / "s").mkdir(parents=True)
    cmd = " ".join([*dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out", str(out),
                    "--api-url", emulator.url, "--progress", "none"])  # fmt: skip
    done = on_read_only_mount(
        tmp_path / "ro",
        f"mount -o remount,ro {tmp_path}/ro; mount --bind {tmp_path}/ro {out}/s; {cmd}",
    )
    assert done.returncode == 1, done.stderr
    assert "cannot write output: Read-only file system" in done.stderr, done.stderr
    assert "No such file" not in done.stderr
