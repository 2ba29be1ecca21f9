"""Tests for batch.naming: output names are safe, stable and stay inside ``--out``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batch.naming import (
    AUDIO_EXTENSIONS,
    TEMP_EXTRA,
    content_type_for,
    disambiguate,
    id_stem,
    name_variants,
    output_location,
    output_place_problem,
    output_relpath,
    resolve_inside,
    safe_name,
    split_s3_uri,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("day1/a.wav", "day1/a.wav"),
        ("a.wav", "a.wav"),
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/x.mp3", "abs/x.mp3"),
        ("a/./b/../c.wav", "a/b/c.wav"),
        ("..\\..\\windows\\system32", "windows/system32"),
        ("C:\\Users\\me\\a.wav", "C_/Users/me/a.wav"),
        ("a//b///c", "a/b/c"),
        (".hidden/.a.wav", "hidden/a.wav"),
        ("...", "item"),
        ("", "item"),
        ("/", "item"),
        ("../..", "item"),
        ("a\x00b.wav", "a_b.wav"),
        ("a\nb\tc.wav", "a_b_c.wav"),
        ('x:*?"<>|.mp3', "x_______.mp3"),
        ("pod cast - ep 1.mp3", "pod cast - ep 1.mp3"),
        (" spaced /  x ", "spaced/x"),
        ("émission/épisode 1.mp3", "émission/épisode 1.mp3"),
        ("e\u0301t\u00e9.wav", "\u00e9t\u00e9.wav"),
        ("日本語/音声.wav", "日本語/音声.wav"),
        ("a\u202egnp.wav", "a_gnp.wav"),
        ("id:call-42", "id_call-42"),
        ("~/x", "_/x"),
        ("$(rm -rf)", "__rm -rf_"),
        ("a\udcff.wav", "a_.wav"),
        ("con", "con"),
    ],
)
def test_safe_name_table(name: str, expected: str) -> None:
    """Traversal, absolute paths, hidden names and unsafe characters are neutralised."""
    assert safe_name(name) == expected


def test_safe_name_caps_segments_and_keeps_extension() -> None:
    """A long segment is cut to 200 bytes, keeps its extension and stays distinct from a sibling."""
    long_a = "é" * 300 + "a.wav"
    long_b = "é" * 300 + "b.wav"
    capped_a, capped_b = safe_name(long_a), safe_name(long_b)
    assert len(capped_a.encode()) <= 200
    assert capped_a.endswith(".wav")
    assert capped_a != capped_b
    assert safe_name(capped_a) == capped_a


def test_safe_name_is_deterministic() -> None:
    """The same name gives the same result every time (no randomness, no state)."""
    assert safe_name("x/../y?.wav" * 40) == safe_name("x/../y?.wav" * 40)


@given(st.text())
@example("../" * 50 + "x")
@example("\\..\\..\\x")
@example("." * 300)
def test_safe_name_properties(name: str) -> None:
    """Any input yields a non-empty relative path without dot segments that stays under its root."""
    result = safe_name(name)
    root = "/srv/out"
    joined = os.path.normpath(os.path.join(root, result))
    assert result
    assert not result.startswith("/")
    assert "\\" not in result
    assert joined.startswith(root + "/")
    for segment in result.split("/"):
        assert segment
        assert not segment.startswith(".")
        assert segment not in (".", "..")
        assert len(segment.encode("utf-8")) <= 200
    assert safe_name(result) == result


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("day1/a.wav", ("day1/a", "day1/a.wav")),
        ("a", ("a", "a")),
        ("day1.x/a", ("day1.x/a", "day1.x/a")),
        ("a.tar.gz", ("a.tar", "a.tar.gz")),
    ],
)
def test_name_variants_table(name: str, expected: tuple[str, str]) -> None:
    """The stem drops only the last extension of the last segment."""
    assert name_variants(name) == expected


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("interview.2026-01-05", "interview.2026-01-05"),
        ("Dr. Smith", "Dr. Smith"),
        ("v1.2", "v1.2"),
        ("call.wav", "call"),
        ("call.WAV", "call"),
        ("standup/day1.mp3", "standup/day1"),  # a prefix line's id/object name
        ("greeting", "greeting"),
    ],
)
def test_an_id_loses_only_an_audio_extension(name: str, stem: str) -> None:
    """A manifest id is no file name: ``interview.2026-01-05`` was named ``interview``,
    and ``interview.2026-01-06`` then met it."""
    assert id_stem(name) == stem


def test_disambiguate_is_stable_and_distinct() -> None:
    """The suffix is a short hash of the id: equal for equal ids, different otherwise."""
    first = disambiguate("a.wav", "/data/a.wav")
    assert first == disambiguate("a.wav", "/data/a.wav")
    assert first != disambiguate("a.wav", "/other/a.wav")
    assert first.startswith("a.wav-")
    assert len(first) == len("a.wav-") + 8


def test_output_relpath() -> None:
    """The format is appended as an extension."""
    assert output_relpath("day1/a", "json") == "day1/a.json"
    assert output_relpath("day1/a.wav", "srt") == "day1/a.wav.srt"


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("out", "out/day1/f01.json"),
        ("out/", "out/day1/f01.json"),
        ("/abs/out", "/abs/out/day1/f01.json"),
        ("s3://media/dry/", "s3://media/dry/day1/f01.json"),
        ("s3://media/dry", "s3://media/dry/day1/f01.json"),
        ("s3://media/a/b/", "s3://media/a/b/day1/f01.json"),
        ("s3://media", "s3://media/day1/f01.json"),
        ("s3://media/", "s3://media/day1/f01.json"),
        ("S3://media/dry", "s3://media/dry/day1/f01.json"),
    ],
)
def test_output_location_table(out: str, expected: str) -> None:
    """An S3 --out keeps its ``s3://`` and one slash before the name; a folder is a path."""
    assert output_location(out, "day1/f01.json") == expected


def test_resolve_inside_accepts_children(tmp_path: Path) -> None:
    """A relative path under the root resolves to a path inside it."""
    assert resolve_inside(tmp_path, "day1/a.json") == tmp_path.resolve() / "day1" / "a.json"


@pytest.mark.parametrize("relpath", ["../x.json", "/etc/passwd", "", ".", "a/../../x"])
def test_resolve_inside_rejects_escapes(tmp_path: Path, relpath: str) -> None:
    """Paths that resolve to the root itself or outside it raise ValueError."""
    with pytest.raises(ValueError, match="escapes the output folder"):
        resolve_inside(tmp_path / "out", relpath)


def test_resolve_inside_rejects_symlink_escape(tmp_path: Path) -> None:
    """A symlink inside the root that points outside is caught."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="escapes"):
        resolve_inside(root, "link/x.json")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.wav", "audio/wav"),
        ("A.WAV", "audio/wav"),
        ("x/y.mp3", "audio/mpeg"),
        ("a.flac", "audio/flac"),
        ("a.ogg", "audio/ogg"),
        ("a.oga", "audio/ogg"),
        ("a.opus", "audio/opus"),
        ("a.webm", "audio/webm"),
        ("a.m4a", "audio/mp4"),
        ("a.mp4", "video/mp4"),
        ("a.aac", "audio/aac"),
        ("a.unknown", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("dir.wav/noext", "application/octet-stream"),
    ],
)
def test_content_type_table(path: str, expected: str) -> None:
    """The upload type follows the extension, with a safe fallback."""
    assert content_type_for(path) == expected


def test_audio_extensions_are_normalised() -> None:
    """Every audio extension is lowercase with a leading dot, and the common ones are there."""
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)
    assert {".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".webm", ".mp4"} <= AUDIO_EXTENSIONS


@pytest.mark.parametrize(
    ("uri", "split"),
    [
        ("s3://b/k.wav", ("b", "k.wav")),
        ("S3://b/in/", ("b", "in/")),
        ("s3://b", ("b", "")),
        ("s3://b//a b/%2e.wav", ("b", "/a b/%2e.wav")),
        ("s3:///k", ("", "k")),
    ],
)
def test_an_s3_uri_splits_into_bucket_and_literal_key(uri: str, split: tuple[str, str]) -> None:
    """One split for every place that takes an ``s3://`` apart; the key is never cleaned."""
    assert split_s3_uri(uri) == split


@pytest.mark.parametrize(
    ("root", "name_bytes", "problem"),
    [
        ("s3://b/out", 1024 - len("out/") - len(".json"), None),
        ("s3://b/out", 1025 - len("out/") - len(".json"), "key too long (1025 bytes, at most"),
        ("s3://b", 1024 - len(".json"), None),
        ("/o", 4096 - len("/o/") - len(".json") - TEMP_EXTRA - 1, None),
        ("/o", 4097 - len("/o/") - len(".json") - TEMP_EXTRA - 1, "path too long (4097 bytes"),
        ("/o/", 4097 - len("/o/") - len(".json") - TEMP_EXTRA - 1, "path too long (4097 bytes"),
    ],
)  # fmt: skip
def test_an_output_place_too_long_is_told_before_sending(
    root: str, name_bytes: int, problem: str | None
) -> None:
    """The longest output (``json`` here) decides; a local one counts its temporary file."""
    name = ("d" * 99 + "/") * (name_bytes // 100) + "n" * (name_bytes % 100)  # 100-byte folders
    assert len(name) == name_bytes
    found = output_place_problem(root, name, ("txt", "json", "srt"))
    assert (found is None) if problem is None else (problem in str(found)), found


def test_a_long_extension_is_no_extension_when_a_name_is_capped() -> None:
    """``v1.final cut of the interview …``: splitext calls 280 bytes an extension, and a
    name kept with it was 279 bytes, never writable (a mutation test found nothing
    checked it)."""
    name = safe_name("v1." + "final cut of the interview " * 10)
    assert len(name.encode()) <= 200
