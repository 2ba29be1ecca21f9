"""Tests for batch.sources: SOURCE arguments become a lazy, ordered stream of Items."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.errors import SourceError
from batch.models import Filters, Item, ItemKind
from batch.sources import expand_sources, hidden_clash, item_for_source, scheme_of


def _touch(path: Path, data: bytes = b"audio") -> Path:
    """Create a small file (and its folders) standing in for audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder of audio and non-audio files, nested two levels deep."""
    root = tmp_path / "calls"
    for name in (
        "b.mp3",
        "a.WAV",
        "notes.txt",
        "day1/z.flac",
        "day1/a.wav",
        "day1/tmp/scratch.wav",
        "day2/c.m4a",
        "day2/.hidden.ogg",
        ".git/objects/x.wav",
    ):
        _touch(root / name)
    return root


def _names(items: Iterator[Item] | list[Item]) -> list[str]:
    """Names of items, in order."""
    return [item.name for item in items]


def test_item_field_order_is_pinned() -> None:
    """Item's fields keep the order the URL fast path constructs them in positionally."""
    assert [f.name for f in dataclasses.fields(Item)] == [
        "id",
        "source",
        "kind",
        "name",
        "params",
        "size",
        "fingerprint",
        "error",
        "origin",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("https://h/x", "https"),
        ("HTTP://h/x", "http"),
        ("s3://b/k", "s3"),
        ("ftp://h/x", "ftp"),
        ("calls/a.wav", ""),
        ("C:\\calls\\a.wav", ""),
        ("weird:name.wav", ""),
    ],
)
def test_scheme_of_table(source: str, expected: str) -> None:
    """Only ``scheme://`` counts as a scheme; drive letters and colons in names do not."""
    assert scheme_of(source) == expected


def test_file_item_fields(tmp_path: Path) -> None:
    """A file's id is its absolute path, its name is relative to the base, with size and mtime."""
    path = _touch(tmp_path / "day1" / "a.wav", b"12345")
    item = item_for_source("day1/a.wav", base=tmp_path, origin="m.txt:3")
    st = path.stat()
    assert item == Item(
        id=str(path),
        source=str(path),
        kind=ItemKind.FILE,
        name="day1/a.wav",
        size=5,
        fingerprint=f"5:{st.st_mtime_ns}",
        origin="m.txt:3",
    )


def test_file_outside_base_is_named_by_basename(tmp_path: Path) -> None:
    """A file outside the base folder is named by its basename, never by ``../``."""
    path = _touch(tmp_path / "elsewhere" / "x.wav")
    item = item_for_source("../elsewhere/x.wav", base=tmp_path / "lists")
    assert (item.id, item.name, item.error) == (str(path), "x.wav", None)


def test_name_hint_keys_and_names(tmp_path: Path) -> None:
    """An explicit id becomes the item's key (``id:`` prefix) and its output name."""
    _touch(tmp_path / "a.wav")
    item = item_for_source("a.wav", base=tmp_path, name_hint="call-9", params=(("language", "fr"),))
    assert (item.id, item.name, item.params) == ("id:call-9", "call-9", (("language", "fr"),))


@pytest.mark.parametrize(
    ("url", "item_id", "name"),
    [
        (
            "https://cdn.x.com/pod/ep1.mp3?sig=abc",
            "https://cdn.x.com/pod/ep1.mp3?sig=REDACTED",
            "pod/ep1.mp3",
        ),
        ("https://cdn.x.com/a%20b.mp3", "https://cdn.x.com/a%20b.mp3", "a b.mp3"),
        ("https://cdn.x.com", "https://cdn.x.com", "cdn.x.com"),
        ("http://127.0.0.1:8080/x.wav#t=1", "http://127.0.0.1:8080/x.wav#t=1", "x.wav"),
        ("http://[::1]:9/x.wav", "http://[::1]:9/x.wav", "x.wav"),
        ("https://u:p@h.example/a.mp3", "https://REDACTED@h.example/a.mp3", "a.mp3"),
        (
            "https://b.s3.amazonaws.com/k.wav?X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-Signature=ff",
            "https://b.s3.amazonaws.com/k.wav?X-Amz-Date=REDACTED&X-Amz-Expires=REDACTED&X-Amz-Signature=REDACTED",
            "k.wav",
        ),
        (
            "https://a.blob.core.windows.net/c/k.wav?sv=2022&se=2026&st=2025&sp=r&sig=zz",
            "https://a.blob.core.windows.net/c/k.wav?sv=2022&se=REDACTED&st=REDACTED&sp=r&sig=REDACTED",
            "c/k.wav",
        ),
    ],
)
def test_url_items_table(url: str, item_id: str, name: str) -> None:
    """A URL item keeps the real URL as source, a redacted re-sign-stable id and a path name."""
    item = item_for_source(url, base=Path("/"))
    assert (item.kind, item.source, item.id, item.name, item.error) == (
        ItemKind.URL,
        url,
        item_id,
        name,
        None,
    )
    assert item.fingerprint == ""


def test_every_whitespace_and_control_character_fails_a_url() -> None:
    """The URL check rejects exactly what str.isspace calls whitespace, plus controls."""
    rejected = [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if chr(code).isspace() or code < 0x20 or code == 0x7F
    ]
    for char in rejected:
        item = item_for_source(f"https://h/a{char}b.mp3", base=Path("/"))
        assert item.error is not None, repr(char)
        assert "whitespace or control characters" in item.error
    assert item_for_source("https://h/\u00e9\u4e2d.mp3", base=Path("/")).error is None


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("ftp://h/a.wav", "ftp://h/a.wav: unsupported scheme 'ftp'"),
        ("https://h/a b.wav", "https://h/a b.wav: URL contains whitespace or control characters"),
        ("https:///a.wav", "https:///a.wav: malformed URL or no host"),
        ("https://u:secret@/a.wav", "https://REDACTED@/a.wav: malformed URL or no host"),
        ("file://host/a.wav", "file://host/a.wav: not a local file URL"),
        ("https://h/\udcff.mp3", "https://h/\\xff.mp3: URL is not valid UTF-8"),
        ("gopher://h/\udcff", "gopher://h/\\xff: unsupported scheme 'gopher'"),
    ],
)
def test_bad_sources_are_failed_items(source: str, error: str) -> None:
    """A source that can never be sent comes back as a failed item, not an exception."""
    item = item_for_source(source, base=Path("/"), origin="m.txt:1")
    assert item.error == f"m.txt:1: {error}"
    assert "secret" not in item.id + item.source + item.name
    (item.id + item.source + item.name + item.error).encode("utf-8")


def test_directory_walk_is_recursive_sorted_and_audio_only(tree: Path) -> None:
    """A folder yields its audio files depth-first in name order, named relative to it."""
    items = list(expand_sources([str(tree)], Filters()))
    assert _names(items) == [
        ".git/objects/x.wav",
        "a.WAV",
        "b.mp3",
        "day1/a.wav",
        "day1/tmp/scratch.wav",
        "day1/z.flac",
        "day2/.hidden.ogg",
        "day2/c.m4a",
    ]
    first = items[3]
    st = (tree / "day1" / "a.wav").stat()
    assert (first.id, first.source, first.kind) == (str(tree / "day1/a.wav"),) * 2 + (
        ItemKind.FILE,
    )
    assert (first.size, first.fingerprint) == (st.st_size, f"{st.st_size}:{st.st_mtime_ns}")


@pytest.mark.parametrize("arg", ["calls", "calls/", "./calls/../calls", "calls//day1/.."])
def test_walked_files_are_keyed_by_absolute_normalised_paths(
    tree: Path, monkeypatch: pytest.MonkeyPatch, arg: str
) -> None:
    """A folder given relative, with a trailing slash or with dots keys its files by their
    absolute, normalised paths, whichever way it was written."""
    monkeypatch.chdir(tree.parent)
    items = list(expand_sources([arg], Filters()))
    assert len(items) == 8
    assert [item.id for item in items] == [str(tree / item.name) for item in items]
    assert [item.source for item in items] == [item.id for item in items]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(include=("*.wav",)), [".git/objects/x.wav", "day1/a.wav", "day1/tmp/scratch.wav"]),
        (Filters(include=("day1/*",)), ["day1/a.wav", "day1/tmp/scratch.wav", "day1/z.flac"]),
        (
            Filters(exclude=(".*", "tmp")),
            ["a.WAV", "b.mp3", "day1/a.wav", "day1/z.flac", "day2/c.m4a"],
        ),
        (
            Filters(include=("day*",), exclude=("*/tmp/*", "*.flac")),
            ["day1/a.wav", "day2/.hidden.ogg", "day2/c.m4a"],
        ),
        (
            Filters(extensions=frozenset({"wav", ".FLAC"}), exclude=(".git",)),
            ["a.WAV", "day1/a.wav", "day1/tmp/scratch.wav", "day1/z.flac"],
        ),
        (Filters(extensions=frozenset({".txt"})), ["notes.txt"]),
        # a glob ending in / names a folder: it matched nothing at all
        (
            Filters(exclude=("day1/", ".git/")),
            ["a.WAV", "b.mp3", "day2/.hidden.ogg", "day2/c.m4a"],
        ),
        (Filters(include=("day1/",)), ["day1/a.wav", "day1/tmp/scratch.wav", "day1/z.flac"]),
        # with a wildcard, still folders only: a.WAV is no folder named a*
        (
            Filters(exclude=("a*/", "day*/")),
            [".git/objects/x.wav", "a.WAV", "b.mp3"],
        ),
        (
            Filters(include=("d*/",)),
            ["day1/a.wav", "day1/tmp/scratch.wav", "day1/z.flac", "day2/.hidden.ogg", "day2/c.m4a"],
        ),
        (Filters(include=("b*/", "a.*")), ["a.WAV", "day1/a.wav"]),
    ],
)
def test_directory_filters_table(tree: Path, filters: Filters, expected: list[str]) -> None:
    """Globs match the relative path or the basename; excluded folders are pruned whole."""
    assert _names(expand_sources([str(tree)], filters)) == expected


def test_symlinked_dirs_are_not_followed(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A symlink to a folder (here a loop) is skipped, and said (the recordings under it
    were left out of an exit-0 run without a word), unless excluded; a symlink to a file
    is taken."""
    (tree / "day1" / "loop").symlink_to(tree)
    (tree / "skipped").symlink_to(tree / "day1")
    (tree / "link.wav").symlink_to(tree / "b.mp3")
    names = _names(expand_sources([str(tree)], Filters(exclude=(".git", "skipped/"))))
    assert "link.wav" in names
    assert not any(name.startswith("day1/loop") for name in names)
    said = [r.getMessage() for r in caplog.records if "not walked" in r.getMessage()]
    assert said == [f"{tree / 'day1' / 'loop'}: link(s) to folders, not walked; give them "
                    "as SOURCEs to send what is in them"]  # fmt: skip


def test_links_to_folders_are_said_once_per_walk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per link was noise (300 folders each with ``up -> ..``), and the links
    before the first file were said twice (the SOURCE is tried up to its first item,
    then walked): one line at the end of the walk, naming three."""
    for n in range(5):
        (tmp_path / f"d{n}").mkdir()
        (tmp_path / f"d{n}" / "a.wav").write_bytes(b"RIFF")
        (tmp_path / f"d{n}" / "up").symlink_to("..")
    assert len(list(expand_sources([str(tmp_path)], Filters()))) == 5
    said = [r.getMessage() for r in caplog.records if "not walked" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'd0' / 'up'}, ")
    assert " and 2 more: link(s) to folders" in said[0]


def test_broken_symlink_is_failed_item(tmp_path: Path) -> None:
    """A dangling audio symlink in a folder becomes a failed item, not a crash."""
    _touch(tmp_path / "ok.wav")
    (tmp_path / "gone.wav").symlink_to(tmp_path / "missing.wav")
    gone, ok = list(expand_sources([str(tmp_path)], Filters()))
    assert gone.error is not None and gone.error.endswith("gone.wav: broken symlink")
    assert ok.error is None


def test_a_looping_symlink_is_a_failed_item_and_the_walk_goes_on(tmp_path: Path) -> None:
    """Links that loop (``l1.wav`` → ``l2.wav`` → ``l1.wav``) stopped the walk with an
    internal error: nothing after them was found. Each is a failed item naming why."""
    _touch(tmp_path / "a.wav")
    (tmp_path / "l1.wav").symlink_to("l2.wav")
    (tmp_path / "l2.wav").symlink_to("l1.wav")
    _touch(tmp_path / "z" / "z.wav")
    found = {
        Path(item.source).name: item.error for item in expand_sources([str(tmp_path)], Filters())
    }
    assert found.keys() == {"a.wav", "l1.wav", "l2.wav", "z.wav"}
    assert found["a.wav"] is None and found["z.wav"] is None
    assert all(
        str(found[n]).endswith("Too many levels of symbolic links") for n in ("l1.wav", "l2.wav")
    )


def test_undecodable_file_name_is_printable_failed_item(tmp_path: Path) -> None:
    """A file name that is not UTF-8 fails as an item whose fields can all be encoded."""
    _touch(tmp_path / "ok.wav")
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.wav"), "wb") as out:
        out.write(b"audio")
    bad, ok = list(expand_sources([str(tmp_path)], Filters()))
    assert bad.error is not None and bad.error.endswith(
        "bad\\xff.wav: file name is not valid UTF-8 (rename the file)"
    )
    for text in (bad.id, bad.source, bad.name, bad.error):
        text.encode("utf-8")
    assert ok.error is None


def test_undecodable_argument_is_printable_source_error(tmp_path: Path) -> None:
    """A command-line path that is not UTF-8 gives an error message that can be printed."""
    arg = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"gone\xff.wav"))
    with pytest.raises(SourceError) as caught:
        list(expand_sources([arg], Filters()))
    str(caught.value).encode("utf-8")
    assert "gone\\xff.wav: no such file or directory" in str(caught.value)


def test_empty_directory_is_source_error(tmp_path: Path) -> None:
    """A folder without audio is a usage error listing the extensions looked for."""
    _touch(tmp_path / "readme.md")
    with pytest.raises(SourceError, match=r": no audio files found \(extensions: .*\.wav"):
        list(expand_sources([str(tmp_path)], Filters()))


def test_an_unusable_later_argument_fails_before_the_first_item(tmp_path: Path) -> None:
    """Every argument is opened before any item is yielded: an empty folder named last
    raises at the first item, not after the items of the arguments before it (which the
    runner would have sent by then)."""
    audio = _touch(tmp_path / "a.wav")
    (tmp_path / "empty").mkdir()
    stream = expand_sources([str(audio), str(tmp_path / "empty")], Filters())
    with pytest.raises(SourceError, match="empty: no audio files found"):
        next(stream)


def test_opened_arguments_still_yield_lazily_in_order(tmp_path: Path) -> None:
    """Opening every argument takes only its first item; the items still come in the
    order of the arguments, each argument whole."""
    for name in ("x1.wav", "x2.wav", "y1.wav", "y2.wav"):
        _touch(tmp_path / name[0] / name)
    stream = expand_sources([str(tmp_path / "x"), str(tmp_path / "y")], Filters())
    assert [Path(item.source).name for item in stream] == ["x1.wav", "x2.wav", "y1.wav", "y2.wav"]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("nope/missing.wav", "nope/missing.wav: no such file or directory"),
        ("ftp://h/a.wav", "ftp://h/a.wav: unsupported scheme 'ftp'"),
        ("https://u:pw@h/a b.wav", "https://REDACTED@h/a b.wav: URL contains whitespace"),
        ("s3://bucket/prefix/", "s3://bucket/prefix/: S3 support is not configured"),
        ("file://remote/x.wav", "file://remote/x.wav: not a local file URL"),
    ],
)
def test_unusable_arguments_are_source_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arg: str, message: str
) -> None:
    """A command-line source that cannot be used raises SourceError naming it, without secrets."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as caught:
        list(expand_sources([arg], Filters()))
    assert str(caught.value).startswith(message)
    assert "pw" not in str(caught.value)


def test_unreadable_root_dir_is_source_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder argument that cannot be listed is a SourceError with the reason."""
    real_scandir = os.scandir

    def refuse(path: str) -> object:
        """Fail to list the walked folder itself, like a permission error would."""
        if os.fspath(path) == str(tmp_path):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(SourceError, match="cannot read directory: Permission denied"):
        list(expand_sources([str(tmp_path)], Filters()))


def test_unreadable_subdir_is_failed_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-folder that cannot be listed fails as one item while the walk goes on."""
    _touch(tmp_path / "locked" / "x.wav")
    _touch(tmp_path / "open" / "y.wav")
    real_scandir = os.scandir

    def refuse(path: str) -> object:
        """Fail to list only the ``locked`` sub-folder."""
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    locked, opened = list(expand_sources([str(tmp_path)], Filters()))
    assert locked.error is not None and locked.error.endswith("locked: Permission denied")
    assert opened.name == "open/y.wav"


def test_explicit_file_is_taken_whatever_its_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file named on the command line is an item even without an audio extension."""
    _touch(tmp_path / "calls" / "recording.bin")
    monkeypatch.chdir(tmp_path)
    (item,) = expand_sources(["calls/recording.bin"], Filters())
    assert (item.name, item.source, item.id) == (
        "calls/recording.bin",
        str(tmp_path / "calls/recording.bin"),
        str(tmp_path / "calls/recording.bin"),
    )


def test_explicit_fifo_is_source_error(tmp_path: Path) -> None:
    """A named pipe on the command line is refused: an upload needs a known length."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=f"^{re.escape(str(fifo))}: not a regular file$"):
        list(expand_sources([str(fifo)], Filters()))


def test_manifest_argument_is_expanded(tmp_path: Path) -> None:
    """A ``.txt``/``.jsonl``/``.csv`` argument is read as a manifest, relative to its folder."""
    _touch(tmp_path / "a.wav")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"source": "a.wav", "id": "one"}\n{"source": "https://h/b.mp3"}\n')
    items = list(expand_sources([str(manifest)], Filters()))
    assert [(item.id, item.kind) for item in items] == [
        ("id:one", ItemKind.FILE),
        ("https://h/b.mp3", ItemKind.URL),
    ]


def test_an_id_is_unique_across_manifest_arguments(tmp_path: Path) -> None:
    """One id in two manifests of a run fails the second use instead of replacing the first."""
    _touch(tmp_path / "monday.wav")
    _touch(tmp_path / "tuesday.wav")
    (tmp_path / "m1.jsonl").write_text('{"source": "monday.wav", "id": "standup"}\n')
    (tmp_path / "m2.jsonl").write_text('{"source": "tuesday.wav", "id": "standup"}\n')
    args = [str(tmp_path / "m1.jsonl"), str(tmp_path / "m2.jsonl")]
    monday, tuesday = expand_sources(args, Filters())
    assert (monday.id, monday.source, monday.error) == (
        "id:standup",
        str(tmp_path / "monday.wav"),
        None,
    )
    assert tuesday.id != monday.id
    assert tuesday.error == "m2.jsonl:1: duplicate id 'standup' (first at m1.jsonl:1)"


def test_url_argument(tmp_path: Path) -> None:
    """An http(s) argument becomes one URL item."""
    (item,) = expand_sources(["https://cdn.x.com/a.mp3?token=t0k3n"], Filters())
    assert (item.kind, item.name, item.id) == (
        ItemKind.URL,
        "a.mp3",
        "https://cdn.x.com/a.mp3?token=REDACTED",
    )


def test_stdin_text_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-`` reads a plain list from a text stream, relative to the working directory."""
    _touch(tmp_path / "a.wav")
    monkeypatch.chdir(tmp_path)
    stdin = io.StringIO("# list\na.wav\n\nhttps://h/x.mp3\n")
    items = list(expand_sources(["-"], Filters(), stdin))
    assert [(item.source, item.origin) for item in items] == [
        (str(tmp_path / "a.wav"), "<stdin>:2"),
        ("https://h/x.mp3", "<stdin>:4"),
    ]


def test_stdin_binary_buffer_isolates_bad_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When stdin has a byte buffer, invalid UTF-8 fails its own line instead of the whole read."""
    _touch(tmp_path / "a.wav")
    monkeypatch.chdir(tmp_path)
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9.wav\n./a.wav\n"), encoding="utf-8")
    bad, good = list(expand_sources(["-"], Filters(), stdin))
    assert bad.error == "<stdin>:1: invalid UTF-8 at byte offset 3"
    assert good.name == "a.wav"


def test_s3_arguments_use_the_hook_with_filters() -> None:
    """``s3://`` arguments are handed to the S3 hook together with the filters."""
    calls: list[tuple[str, Filters]] = []

    def fake_s3(url: str, filters: Filters) -> Iterator[Item]:
        """Record the call and list one object."""
        calls.append((url, filters))
        yield Item(id=url + "k.wav", source=url + "k.wav", kind=ItemKind.S3, name="k.wav")

    filters = Filters(include=("*.wav",))
    items = list(expand_sources(["s3://b/p/", "https://h/x.mp3"], filters, s3=fake_s3))
    assert calls == [("s3://b/p/", filters)] * 2  # tried first (its first page), then read
    assert [item.kind for item in items] == [ItemKind.S3, ItemKind.URL]


def test_manifest_ids_are_claimed_in_argument_order(tmp_path: Path) -> None:
    """Every argument is tried before any is read, yet an id repeated in a later manifest
    is still that one's duplicate (it took the id from the earlier manifest's second
    line when every argument was opened up to its first item at once)."""
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "b.wav")
    (tmp_path / "m1.jsonl").write_text(
        '{"source": "a.wav"}\n{"source": "a.wav", "id": "standup"}\n'
    )
    (tmp_path / "m2.jsonl").write_text('{"source": "b.wav", "id": "standup"}\n')
    items = list(
        expand_sources([str(tmp_path / "m1.jsonl"), str(tmp_path / "m2.jsonl")], Filters())
    )
    assert items[1].id == "id:standup" and items[1].error is None
    assert items[2].error == "m2.jsonl:1: duplicate id 'standup' (first at m1.jsonl:2)"


def test_many_manifests_are_not_all_open_at_once(tmp_path: Path) -> None:
    """Trying every argument first closes each again: 1,100 manifests under a limit of
    1,024 open files plan (every one was held open until its turn)."""
    import resource

    _touch(tmp_path / "a.wav")
    paths = []
    for n in range(1100):
        (tmp_path / f"m{n}.txt").write_text("a.wav\n")
        paths.append(str(tmp_path / f"m{n}.txt"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        items = list(expand_sources(paths, Filters()))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(items) == 1100


def test_arguments_keep_their_order(tree: Path) -> None:
    """Items come out in argument order, each argument fully expanded before the next."""
    items = list(
        expand_sources(["https://h/1.mp3", str(tree / "day2"), "https://h/2.mp3"], Filters())
    )
    assert _names(items) == ["1.mp3", ".hidden.ogg", "c.m4a", "2.mp3"]


def test_expansion_is_lazy(tmp_path: Path) -> None:
    """Nothing is read until the stream is iterated; then a bad later argument fails at
    the first item."""
    stream = expand_sources(["https://h/1.mp3", str(tmp_path / "missing")], Filters())
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "a.wav").write_bytes(b"x")
    assert next(stream).name == "1.mp3"
    stream = expand_sources(["https://h/1.mp3", str(tmp_path / "gone")], Filters())
    with pytest.raises(SourceError, match="gone: no such file or directory"):
        next(stream)


_SIGNED = "https://b.s3.amazonaws.com/a.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"


@pytest.mark.parametrize(
    ("first", "later", "clash"),
    [
        ("https://h/a.wav?key=file1", "https://h/a.wav?key=file1", False),
        ("https://h/a.wav?key=file1", "https://h/a.wav?key=file2", True),
        ("https://h/a.wav?token=abcd&x=1", "https://h/a.wav?token=wxyz&x=1", True),
        ("https://u:one@h/a.wav", "https://u:two@h/a.wav", True),
        (  # the same object signed twice: one recording
            f"{_SIGNED}&X-Amz-Date=20261127T000000Z&X-Amz-Signature=aaaa",
            f"{_SIGNED}&X-Amz-Date=20261128T000000Z&X-Amz-Signature=bbbb",
            False,
        ),
        ("https://h/a.wav?sig=aaaa&se=2026-11-27", "https://h/a.wav?sig=bbbb&se=2026-11-28", False),
        ("https://h/a.wav?Signature=aa&Expires=1", "https://h/a.wav?Signature=bb&Expires=2", False),
        # secrets that may name the recording (a file's digest): told apart, not merged
        ("https://h/get?md5=aaa111", "https://h/get?md5=bbb222", True),
        ("https://h/get?sign=1-r-0-aa&t=1", "https://h/get?sign=1-r-0-bb&t=1", True),
    ],
)
def test_hidden_clash_table(first: str, later: str, clash: bool) -> None:
    """Two URLs with one id (secrets hidden) are one recording only if they differ in
    nothing but a signature; else the later one fails, naming itself without its secrets."""
    item = item_for_source(later, base=Path("/"), origin="urls.txt:2")
    assert item.id == item_for_source(first, base=Path("/")).id
    failed = hidden_clash(first, item)
    if not clash:
        assert failed is None
        return
    assert failed is not None and failed.error is not None
    assert failed.id != item.id  # the first one's row is left alone
    assert failed.error.startswith("urls.txt:2: ")
    assert "give each its own id" in failed.error
    for secret in ("file2", "wxyz", "two"):
        assert secret not in failed.error + failed.source + failed.id


def test_a_named_pipe_manifest_is_read_once(tmp_path: Path) -> None:
    """A manifest from a named pipe (``mkfifo``, ``<(producer)``) gives its lines once:
    it is not tried first (the run hung, its lines spent on the try)."""
    import threading

    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "b.wav")
    fifo = tmp_path / "list.txt"
    os.mkfifo(fifo)

    def produce() -> None:
        with fifo.open("w") as pipe:
            pipe.write("a.wav\nb.wav\n")

    found: list[Item] = []

    def consume() -> None:
        found.extend(expand_sources([str(fifo), str(tmp_path / "a.wav")], Filters()))

    threading.Thread(target=produce, daemon=True).start()
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "the plan hung on the pipe"
    assert [Path(item.source).name for item in found] == ["a.wav", "b.wav", "a.wav"]
