"""Transcript checks (truncation, empty) and the local preflight of files (sniff)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import KEY, Cli, make_wav, read_state_rows

from batch.checks import (
    deepgram_warnings,
    reported_duration,
    transcript_warning,
    truncation_warning,
)
from batch.emulator import EmulatorConfig, run_in_thread
from batch.sniff import sniff_container


@pytest.mark.parametrize(
    ("reported", "local", "flagged"),
    [
        (10.0, 10.0, False),
        (9.0, 10.0, False),
        (8.9, 10.0, True),
        (1.0, 60.0, True),
        (5.0, None, False),
        (None, 10.0, False),
        (11.0, 10.0, False),
    ],
)
def test_truncation_warning(reported: float | None, local: float | None, flagged: bool) -> None:
    """A transcript covering under 90 % of the local audio is flagged; unknowns never are."""
    assert (truncation_warning(reported, local) is not None) is flagged


def test_transcript_warning_joins_reasons() -> None:
    """An empty and short transcript gets both warnings."""
    response = {"metadata": {"duration": 1.0}, "results": {"channels": [{"alternatives": [{}]}]}}
    warning = transcript_warning(response, 10.0)
    assert warning is not None and warning.startswith("empty transcript; possibly truncated")


def test_short_transcript_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    """When Deepgram's duration is half the file's, the item is done with a warning that
    ``status`` counts and ``report --warnings`` lists."""
    make_wav(tmp_path / "in" / "long.wav", 2.0)
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"
    with run_in_thread(EmulatorConfig(key=KEY, duration_ratio=0.5)) as short:
        result = Cli(short)("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 0, result.output
    (row,) = read_state_rows(state)
    assert row["status"] == "done" and row["local_duration"] == pytest.approx(2.0)
    assert "possibly truncated: transcript covers 1.0 s of 2.0 s" in str(row["warning"])
    listed = Cli(None)("report", "--state", str(state), "--warnings")
    assert [json.loads(line)["source"] for line in listed.output.splitlines()] == [
        str(tmp_path / "in" / "long.wav")
    ]
    assert "warnings: 1 item(s)" in Cli(None)("status", "--state", str(state)).output


@pytest.mark.parametrize(
    ("head", "container"),
    [
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00", "mp3 (ID3)"),
        (b"\xff\xfb\x90\x00", "mpeg audio"),
        (b"\xff\xf1\x50\x80", "mpeg audio"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x00\x00\x00\x20ftypM4A ", "mp4/m4a/mov/3gp"),
        (b"\x1a\x45\xdf\xa3\x9f", "webm/matroska"),
        (b"FORM\x00\x00\x00\x00AIFF", "aiff"),
        (b"#!AMR\n", "amr"),
        (b"hello, world", None),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        (b"\x00\x00\x00\x08wide\x00\x00\x03\xe8mdat", "quicktime (wide)"),
        (b"\x00\x00\x00\x10moov", "quicktime (moov)"),
        (b"\x0b\x77\x11\x11", "ac-3"),
        (b"RIFF\x00\x00\x00\x00RMID", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_container(head: bytes, container: str | None) -> None:
    """The magic-byte table knows the common audio containers and nothing else."""
    assert sniff_container(head) == container


def test_text_named_wav_fails_without_a_request(dgbatch: Cli, tmp_path: Path) -> None:
    """A text file named .wav fails locally (no request); --no-sniff sends it and gets 400."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.wav").write_text("meeting notes, not audio\n")
    make_wav(tmp_path / "in" / "real.wav")
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert result.exit_code == 1
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == 1
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(out / ".dgbatch/state.sqlite")}
    assert rows["notes.wav"]["err_code"] == "not_audio"
    assert "not an audio file (starts with 'meeting '" in str(rows["notes.wav"]["error"])
    again = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--retry-failed", "--no-sniff")
    assert again.exit_code == 1 and len(emulator.log) == 2
    assert emulator.log[1].status == 400


def test_old_state_files_gain_the_new_columns(tmp_path: Path) -> None:
    """A state written before migration m002 upgrades on open: warning, copy_of, run tags."""

    from batch import migrations
    from batch.state import State

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    migrations.m001_initial(db)
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 'then')")
    db.execute("INSERT INTO meta VALUES ('format', 'dgbatch-state')")
    db.commit()
    db.close()
    State.open(path).close()
    db = sqlite3.connect(path)
    columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    run_columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    db.close()
    assert {"warning", "copy_of", "local_duration"} <= columns and "tag" in run_columns


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (12.5, 12.5),
        (3, 3.0),
        (0, 0.0),
        (-1.0, None),
        (float("inf"), None),
        (10**400, None),
        (float("nan"), None),
        ("12.5", None),
        (True, None),
        (None, None),
    ],
)
def test_reported_duration_is_a_length_of_audio(duration: object, expected: float | None) -> None:
    """Only a finite, non-negative number is a duration: an infinity would be stored, make
    the report invalid JSON (``Inf``) and spend every budget."""
    assert reported_duration({"metadata": {"duration": duration}}) == expected


@pytest.mark.parametrize(
    ("warnings", "said"),
    [
        ([{"parameter": "keywords", "type": "unsupported_model", "message": "m"}],
         ["Deepgram: keywords: unsupported_model: m"]),
        ("plain string", ["Deepgram: plain string"]),  # not Deepgram's shape: said all the same
        (["a", 42, None], ["Deepgram: a", "Deepgram: 42"]),
        ([{}, {"parameter": None}], []),  # nothing to say: no "Deepgram: ?"
        (None, []),
        ([{"message": "x"}] * 9, ["Deepgram: x"] * 5),
    ],
)  # fmt: skip
def test_deepgrams_warnings_of_every_shape(warnings: object, said: list[str]) -> None:
    assert deepgram_warnings({"metadata": {"warnings": warnings}}) == said
