"""Tests for batch.manifests: every format, streamed, with bad lines failing alone."""

from __future__ import annotations

import codecs
import io
import itertools
import json
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch.errors import SourceError
from batch.manifest_lines import _json_value
from batch.manifests import (
    MAX_LINE_BYTES,
    SeenIds,
    iter_lines_manifest,
    iter_manifest,
    iter_manifest_stream,
)
from batch.models import Filters, Item, ItemKind
from batch.report import error_kind


def _write(path: Path, data: bytes | str) -> Path:
    """Write a manifest (or an audio stand-in) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    """A folder with a few small files that stand in for audio."""
    for name in ("a.wav", "b.mp3", "sub/c.flac"):
        _write(tmp_path / "audio" / name, b"RIFF" + name.encode())
    return tmp_path / "audio"


def test_txt_comments_blank_crlf_bom(audio: Path) -> None:
    """A txt manifest skips comments and blank lines and copes with CRLF and a BOM."""
    manifest = _write(
        audio / "list.txt",
        codecs.BOM_UTF8 + b"a.wav\r\n\r\n# a comment\r\n   \r\n  b.mp3  \r\nsub/c.flac",
    )
    items = list(iter_manifest(manifest))
    assert [item.name for item in items] == ["a.wav", "b.mp3", "sub/c.flac"]
    assert all(item.error is None and item.kind is ItemKind.FILE for item in items)
    assert [item.origin for item in items] == ["list.txt:1", "list.txt:5", "list.txt:6"]


def test_txt_relative_paths_resolve_against_manifest_folder(
    audio: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative sources are found next to the manifest, whatever the working directory."""
    manifest = _write(audio / "lists" / "l.txt", "../a.wav\n../sub/c.flac\n")
    monkeypatch.chdir(tmp_path)
    items = list(iter_manifest(Path("audio/lists/l.txt")))
    assert [item.source for item in items] == [str(audio / "a.wav"), str(audio / "sub/c.flac")]
    assert [item.id for item in items] == [str(audio / "a.wav"), str(audio / "sub/c.flac")]
    assert [item.name for item in items] == ["a.wav", "c.flac"]
    size = (audio / "a.wav").stat()
    assert items[0].size == size.st_size
    assert items[0].fingerprint == f"{size.st_size}:{size.st_mtime_ns}"
    assert manifest.exists()


def test_txt_urls_and_absolute_paths(audio: Path) -> None:
    """URLs become URL items named by their path; absolute paths are used as they are."""
    manifest = _write(
        audio.parent / "m.list",
        f"https://cdn.x.com/pod/ep%201.mp3?sig=s3cr3t&v=2\n{audio / 'b.mp3'}\n",
    )
    url, path = list(iter_manifest(manifest))
    assert url.kind is ItemKind.URL
    assert url.source == "https://cdn.x.com/pod/ep%201.mp3?sig=s3cr3t&v=2"
    assert url.id == "https://cdn.x.com/pod/ep%201.mp3?sig=REDACTED&v=2"
    assert url.name == "pod/ep 1.mp3"
    assert url.fingerprint == ""
    assert path.source == str(audio / "b.mp3")
    assert path.name == "audio/b.mp3"


def test_missing_file_is_failed_item_not_exception(audio: Path) -> None:
    """A manifest naming a missing file yields a failed item and carries on."""
    manifest = _write(audio / "m.txt", "nope.wav\na.wav\n")
    missing, found = list(iter_manifest(manifest))
    assert missing.error == f"m.txt:1: {audio / 'nope.wav'}: no such file"
    assert missing.id == str(audio / "nope.wav")
    assert found.error is None


def test_jsonl_source_id_params(audio: Path) -> None:
    """JSONL lines carry a source, an optional id and a params object."""
    lines = [
        {"source": "a.wav", "id": "call-1", "params": {"diarize": True, "keyterm": ["x", "y"]}},
        {"source": "https://h/x.mp3"},
        {"source": "b.mp3", "id": 7, "params": {"language": None, "utt_split": 1.5}},
    ]
    manifest = _write(audio / "m.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    first, second, third = list(iter_manifest(manifest))
    assert (first.id, first.name) == ("id:call-1", "call-1")
    assert first.params == (("diarize", "true"), ("keyterm", "x"), ("keyterm", "y"))
    assert first.source == str(audio / "a.wav")
    assert (second.kind, second.name, second.params) == (ItemKind.URL, "x.mp3", ())
    assert (third.id, third.params) == ("id:7", (("utt_split", "1.5"),))


def test_ndjson_bad_lines_fail_alone(audio: Path) -> None:
    """Malformed JSONL lines become failed items naming file:line while the rest streams on."""
    manifest = _write(
        audio / "m.ndjson",
        '{"source": "a.wav"}\n{not json\n[1, 2]\n{"id": "x"}\n\n{"source": "b.mp3"}\n',
    )
    items = list(iter_manifest(manifest))
    assert [item.error is None for item in items] == [True, False, False, False, True]
    errors = [item.error or "" for item in items if item.error]
    assert errors[0].startswith("m.ndjson:2: invalid JSON")
    assert errors[1] == "m.ndjson:3: expected a JSON object, got list"
    assert errors[2] == "m.ndjson:4: missing 'source'"
    assert items[1].id == f"{manifest}:2"
    assert items[1].source == "{not json"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ([("a", 0, 1), ("b", 0, 2)], [None, None]),
        ([("a", 0, 1), ("a", 0, 7)], [None, "line 1"]),
        ([("a", 0, 3), ("a", 1, 1)], [None, "m1.jsonl:3"]),
        ([("a", 1, 2), ("a", 0, 5)], [None, "m2.csv:2"]),
        ([("a", 0, 1), ("a", 1, 1), ("a", 1, 2)], [None, "m1.jsonl:1", "m1.jsonl:1"]),
        ([("a", 1, 2**40 - 1), ("a", 0, 1)], [None, f"m2.csv:{2**40 - 1}"]),
    ],
)
def test_seen_ids_name_the_first_use(
    claims: list[tuple[str, int, int]], expected: list[str | None]
) -> None:
    """A second use of an id, in any manifest of the run, names the line of the first."""
    seen = SeenIds()
    assert [seen.add_manifest("m1.jsonl"), seen.add_manifest("m2.csv")] == [0, 1]
    assert [seen.claim(item_id, manifest, line) for item_id, manifest, line in claims] == expected


def test_an_id_used_by_an_earlier_manifest_fails_the_later_line(audio: Path) -> None:
    """Two manifests sharing the run's ids: the second use fails, the first is untouched."""
    m1 = _write(audio / "m1.jsonl", '{"source": "a.wav", "id": "standup"}\n')
    m2 = _write(audio / "m2.csv", "source,id\nb.mp3,other\nsub/c.flac,standup\n")
    seen = SeenIds()
    (first,) = iter_manifest(m1, seen_ids=seen)
    other, second = iter_manifest(m2, seen_ids=seen)
    assert (first.id, first.error, other.error) == ("id:standup", None, None)
    assert second.error == "m2.csv:3: duplicate id 'standup' (first at m1.jsonl:1)"
    assert second.id == f"{m2}:3"


def test_csv_header_id_and_param_columns(audio: Path) -> None:
    """CSV columns other than source and id are params; empty cells are simply absent."""
    manifest = _write(
        audio / "m.csv",
        'Source,id,language,diarize\r\na.wav,c1,en,True\r\n"b.mp3",,"",\r\n'
        '"https://h/x,y.mp3",c3,fr,\r\n',
    )
    first, second, third = list(iter_manifest(manifest))
    assert (first.id, first.params) == ("id:c1", (("language", "en"), ("diarize", "true")))
    assert (second.id, second.params) == (str(audio / "b.mp3"), ())
    assert (third.source, third.name) == ("https://h/x,y.mp3", "c3")


def test_jsonl_params_named_as_deepgram_params_are_sent_lowercase(audio: Path) -> None:
    """``{"LANGUAGE": "fr"}`` in a line's params means ``language``, as a CSV column does."""
    line = {"source": "a.wav", "params": {"LANGUAGE": "fr", "Diarize": True, "My_Custom": 1}}
    (item,) = iter_manifest(_write(audio / "m.jsonl", json.dumps(line) + "\n"))
    assert item.params == (("language", "fr"), ("diarize", "true"), ("My_Custom", "1"))


def test_csv_columns_named_as_deepgram_params_are_sent_lowercase(audio: Path) -> None:
    """A ``Language`` column means ``language`` (Deepgram's names are lowercase; it was
    sent as ``Language=fr``, which Deepgram does not know); other names are kept."""
    manifest = _write(audio / "m.csv", "Source,ID,Language,Diarize,My_Custom\na.wav,c1,fr,true,x\n")
    (item,) = iter_manifest(manifest)
    assert item.params == (("language", "fr"), ("diarize", "true"), ("My_Custom", "x"))


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({"source": "a.wav", "param": {"language": "fr"}}, "key(s) 'param' not read"),
        ({"source": "a.wav", "ID": "x", "Params": {}}, "key(s) 'ID', 'Params' not read"),
        ({"source": "a.wav", "language": "fr"}, "key(s) 'language' not read"),
        ({"source": "a.wav", "prams": {}, "params ": {}}, "key(s) 'prams', 'params ' not read"),
        ({"source": "a.wav", "sources": "b.wav"}, "key(s) 'sources' not read"),
        ({"source": "a.wav", "title": "Q3 call", "account": 7}, None),  # the user's own
        ({"source": "a.wav", "name": "Ana", "url": "https://crm/2", "path": "/x"}, None),
        ({"source": "a.wav", "id": "x", "params": {"diarize": True}}, None),
    ],
)
def test_jsonl_keys_meant_to_be_read_are_not_dropped(
    audio: Path, line: dict[str, object], error: str | None
) -> None:
    """A JSONL key that means a param or a line's own key, misspelt, fails the line (it was
    dropped, and the line paid for with the defaults); a key of the user's own is fine."""
    manifest = _write(audio / "m.jsonl", json.dumps(line) + "\n")
    (item,) = iter_manifest(manifest)
    if error is None:
        assert item.error is None
    else:
        assert (item.error or "").startswith(f"m.jsonl:1: {error}: a line has 'source'")


def test_csv_bad_rows_fail_alone(audio: Path) -> None:
    """A CSV row with an empty source, extra cells or a broken quote fails only itself."""
    manifest = _write(
        audio / "m.csv",
        'source,id\n,x\na.wav,y,extra\n"b.mp3,z\nb.mp3,w\na.wav,v,\n',
    )
    items = list(iter_manifest(manifest))
    assert [item.error for item in items[:3]] == [
        "m.csv:2: empty 'source'",
        "m.csv:3: expected 2 fields, got 3",
        "m.csv:4: invalid CSV: unexpected end of data",
    ]
    assert [item.id for item in items[3:]] == ["id:w", "id:v"]


def test_csv_quoted_fields_may_span_lines(audio: Path) -> None:
    """A quoted cell with line breaks, as Excel writes it, is one record numbered by its
    first line: its second line was a record of its own, and a source there was sent
    (``calls/b.wav,phantom"``). A quote never closed fails its line alone, and the lines
    after it are records again."""
    manifest = _write(
        audio / "m.csv",
        "source,id,keyterm\r\n"
        'a.wav,first,"Acme\r\nb.mp3,phantom"\r\n'
        'b.mp3,second,"two ""quoted""\nlines\nhere"\n'
        '"a.wav,stray,x\n'
        "b.mp3,after,y\n",
    )
    items = list(iter_manifest(manifest))
    assert [(item.id, item.origin) for item in items] == [
        ("id:first", "m.csv:2"),
        ("id:second", "m.csv:4"),
        (f"{manifest}:7", "m.csv:7"),
        ("id:after", "m.csv:8"),
    ]
    assert items[0].params == (("keyterm", "Acme\r\nb.mp3,phantom"),)
    assert items[1].params == (("keyterm", 'two "quoted"\nlines\nhere'),)
    assert items[2].error == "m.csv:7: invalid CSV: unexpected end of data"


def test_a_line_joined_to_a_broken_one_is_read_again(audio: Path) -> None:
    """``a.wav,"broken`` leaves a quote open; joined with the next line it is still not CSV
    (``',' expected``): the broken line fails alone and the next is a record of its own
    (it vanished, taken into the broken record)."""
    manifest = _write(audio / "m.csv", 'source,id\na.wav,"broken\nb.mp3,"ok"\na.wav,c\n')
    items = list(iter_manifest(manifest))
    assert [(item.origin, item.id, item.error is None) for item in items] == [
        ("m.csv:2", f"{manifest}:2", False),
        ("m.csv:3", "id:ok", True),
        ("m.csv:4", "id:c", True),
    ]


def test_a_quote_inside_an_unquoted_cell_is_text(audio: Path) -> None:
    """``12" single`` is a cell with a quote in it, as CSV reads it: counting quotes joined
    it with the next such line, and the rows between were lost."""
    manifest = _write(
        audio / "m.csv", 'source,id\na.wav,vinyl 12" single\nb.mp3,b\na.wav,cassette 7" tape\n'
    )
    items = list(iter_manifest(manifest))
    assert [(item.id, item.error) for item in items] == [
        ('id:vinyl 12" single', None),
        ("id:b", None),
        ('id:cassette 7" tape', None),
    ]


def test_a_quote_left_open_reads_ahead_only_so_far(audio: Path) -> None:
    """A stray quote looks for its close over 100 lines at most, then fails alone: the
    lines it read ahead are records of their own again."""
    rows = "".join(f"a.wav,r{n}\n" for n in range(150))
    manifest = _write(audio / "m.csv", f'source,id\n"a.wav,open\n{rows}')
    items = list(iter_manifest(manifest))
    assert items[0].error == "m.csv:2: invalid CSV: unexpected end of data"
    assert [item.id for item in items[1:]] == [f"id:r{n}" for n in range(150)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,language\na.wav,en\n", "m.csv: CSV header has no 'source' column"),
        ("source,id,ID\n", "m.csv: CSV header repeats column(s) id"),
        ("source,callback\na.wav,https://h/cb\n", "m.csv: CSV header: param 'callback': callback"),
        ("source,Callback\na.wav,https://h/cb\n", "m.csv: CSV header: param 'Callback': callback"),
        ("source,lang uage\na.wav,en\n", "m.csv: CSV header: param 'lang uage': invalid key"),
        ("source,x&y=z\na.wav,1\n", "m.csv: CSV header: param 'x&y=z': invalid key"),
        ("source,params\na.wav,{}\n", "m.csv: CSV header: column 'params' would be sent"),
        # a header line that cannot be read is named as the header, not the next line
        (
            b"source,language\xa0\na.wav,fr\n",
            "m.csv: line 1, the CSV header: invalid UTF-8 at byte offset 15",
        ),
        ('\nsource,"lang\na.wav,fr\n', "m.csv: line 2, the CSV header: invalid CSV"),
    ],
)
def test_csv_unusable_header(audio: Path, content: str | bytes, message: str) -> None:
    """A CSV manifest whose header cannot be used is a SourceError naming it."""
    manifest = _write(audio / "m.csv", content)
    with pytest.raises(SourceError, match=re.escape(message)):
        list(iter_manifest(manifest))


def test_empty_manifests_yield_nothing(audio: Path) -> None:
    """An empty manifest of any format yields no items and no error."""
    for name in ("e.txt", "e.jsonl", "e.csv"):
        assert list(iter_manifest(_write(audio / name, b""))) == []


def test_unopenable_manifest_is_source_error(tmp_path: Path) -> None:
    """A manifest that cannot be opened raises SourceError naming it and the reason."""
    with pytest.raises(SourceError, match=r"missing\.txt: cannot open manifest: No such file"):
        list(iter_manifest(tmp_path / "missing.txt"))
    with pytest.raises(SourceError, match="cannot open manifest: Is a directory"):
        list(iter_manifest(tmp_path))


def test_utf16_manifest_is_source_error(tmp_path: Path) -> None:
    """A UTF-16 manifest is refused whole with advice instead of failing every line."""
    manifest = _write(tmp_path / "u.txt", "a.wav\nb.wav\n".encode("utf-16"))
    with pytest.raises(SourceError, match=r"u\.txt: manifest is UTF-16; save it as UTF-8"):
        list(iter_manifest(manifest))


_GOOD = '{"source": "a.wav"}'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            b'{"source": "' + b"x" * MAX_LINE_BYTES + b'"}',
            f"line longer than {MAX_LINE_BYTES} bytes",
        ),
        (b'{"source": "a\x00.wav"}', "NUL character in line"),
        (b'{"source": "a\\u0000.wav"}', "NUL character in 'source', 'id' or 'params'"),
        (b'{"source": "a.wav", "id": "x\\u0000"}', "NUL character in 'source', 'id' or 'params'"),
        (b'{"source": "a\\ud800.wav"}', "lone surrogate escape in 'source', 'id' or 'params'"),
        (b'{"source": "a.wav", "params": {"tag": "\\udfff"}}', "lone surrogate escape"),
        (b'{"source": "caf\xe9.wav"}', "invalid UTF-8 at byte offset 15"),
        (b'{"source": "a.wav", "id": "dup"}', "duplicate id 'dup' (first at line 1)"),
        (b'{"source": "a.wav", "id": ""}', "'id' is empty"),
        (b'{"source": "a.wav", "id": ["x"]}', "'id' must be a string, not list"),
        (b'{"source": "a.wav", "params": [1]}', "'params' must be an object, not list"),
        (
            b'{"source": "a.wav", "params": {"redact": {"a": 1}}}',
            "nested objects are not supported",
        ),
        (b'{"source": 42}', "'source' is not text (a JSON int)"),
        (b'{"source": "   "}', "empty 'source'"),
        (b'"a.wav"', "expected a JSON object, got str"),
        (b"[" * 100_000, f"line longer than {MAX_LINE_BYTES} bytes"),
        (b"[" * 60_000, "invalid JSON: nested too deeply"),
        (b'{"source": "a.wav", "params": {"n": 1e999}}', "not a finite number"),
        (b'{"source": "a.wav", "params": {"callback": "https://h/cb"}}', "callback mode sends"),
        (b'{"source": "a.wav", "params": {"CALLBACK": "https://h/cb"}}', "callback mode sends"),
        (b'{"source": "a.wav", "params": {"Callback_Method": "put"}}', "callback mode sends"),
        (b'{"source": "a.wav", "params": {"n": ' + b"9" * 5000 + b"}}", "invalid JSON"),
        (b'{"source": "ftp://h/a.wav"}', "ftp://h/a.wav: unsupported scheme 'ftp'"),
        (b'{"source": "file://remote/a.wav"}', "not a local file URL"),
        (b'{"source": "https://h/a b.mp3"}', "URL contains whitespace or control characters"),
        (b'{"source": "https://:8/a.mp3"}', "malformed URL or no host"),
        (b'{"source": "https://u:pw@/a.mp3"}', "https://REDACTED@/a.mp3: malformed URL or no host"),
        (b'{"source": "/no/such/file.wav"}', "/no/such/file.wav: no such file"),
        (b'{"source": "."}', "is a directory"),
        (b'{"source": "s3://b/k.wav"}', "S3 support is not configured"),
        (b'{"source": "a.wav"', "invalid JSON"),
        (b"{'source': 'a.wav'}", "invalid JSON"),
    ],
)
def test_nasty_lines_fail_alone(audio: Path, line: bytes, reason: str) -> None:
    """Each nasty line becomes one failed item with a clear reason; its neighbours are fine."""
    content = b'{"source": "a.wav", "id": "dup"}\n' + line + b'\n{"source": "b.mp3"}\n'
    manifest = _write(audio / "nasty.jsonl", content)
    items = list(iter_manifest(manifest))
    assert len(items) == 3
    assert items[0].error is None
    assert items[2].error is None and items[2].name == "b.mp3"
    bad = items[1]
    assert bad.error is not None
    assert bad.error.startswith("nasty.jsonl:2: ")
    assert reason in bad.error
    assert "pw" not in bad.error and "pw" not in bad.source and "pw" not in bad.id
    assert len(bad.source) <= 201
    assert "\x00" not in bad.source


@pytest.mark.parametrize(
    ("line", "check"),
    [
        (
            '{"source": "a.wav", "id": "../../etc/passwd"}',
            ("id:../../etc/passwd", "../../etc/passwd"),
        ),
        (
            '{"source": "a.wav", "id": "with \\"quotes\\" \'and\' ,commas"}',
            (None, "with \"quotes\" 'and' ,commas"),
        ),
        (
            '{"source": "https://user:pass@h.example/a.mp3"}',
            ("https://REDACTED@h.example/a.mp3", "a.mp3"),
        ),
    ],
)
def test_nasty_but_valid_lines(audio: Path, line: str, check: tuple[str | None, str]) -> None:
    """Odd ids and credentialed URLs are accepted; ids never show credentials."""
    manifest = _write(audio / "ok.jsonl", line + "\n")
    (item,) = list(iter_manifest(manifest))
    expected_id, expected_name = check
    assert item.error is None
    assert item.name == expected_name
    if expected_id is not None:
        assert item.id == expected_id


def test_escaped_astral_characters_are_fine(audio: Path) -> None:
    """A surrogate pair written as JSON escapes is a real character, not an error."""
    manifest = _write(audio / "m.jsonl", '{"source": "a.wav", "id": "\\ud83c\\udfb5"}\n')
    (item,) = list(iter_manifest(manifest))
    assert (item.error, item.id) == (None, "id:\U0001f3b5")


def test_credentials_url_keeps_real_source(audio: Path) -> None:
    """A URL with userinfo is sent as written, while its id hides the credentials."""
    manifest = _write(audio / "m.txt", "https://user:pass@h.example/a.mp3\n")
    (item,) = list(iter_manifest(manifest))
    assert item.source == "https://user:pass@h.example/a.mp3"
    assert "pass" not in item.id


def test_file_url_is_a_path(audio: Path) -> None:
    """A ``file://`` URL is read as a local path."""
    manifest = _write(
        audio / "m.txt", f"file://{audio / 'a.wav'}\nfile://localhost{audio / 'b.mp3'}\n"
    )
    items = list(iter_manifest(manifest))
    assert [item.source for item in items] == [str(audio / "a.wav"), str(audio / "b.mp3")]
    assert all(item.kind is ItemKind.FILE and item.error is None for item in items)


def test_broken_txt_lines(audio: Path) -> None:
    """In a txt manifest, invalid UTF-8 and NUL bytes fail their line only."""
    manifest = _write(audio / "m.txt", b"a.wav\n\xff\xfe.wav\nb\x00.wav\nb.mp3\n")
    items = list(iter_manifest(manifest))
    assert [item.error for item in items] == [
        None,
        "m.txt:2: invalid UTF-8 at byte offset 0",
        "m.txt:3: NUL character in line",
        None,
    ]
    assert items[1].source == "\\xff\\xfe.wav"


@pytest.mark.parametrize(
    ("length", "newline", "too_long"),
    [
        (MAX_LINE_BYTES, b"\n", False),
        (MAX_LINE_BYTES, b"\r\n", False),
        (MAX_LINE_BYTES, b"", False),
        (MAX_LINE_BYTES + 1, b"\n", True),
        (MAX_LINE_BYTES + 2, b"\r\n", True),
        (MAX_LINE_BYTES + 3, b"\n", True),
        (MAX_LINE_BYTES + 3, b"", True),
    ],
)
def test_line_length_boundary(tmp_path: Path, length: int, newline: bytes, too_long: bool) -> None:
    """Lines up to the cap are read; one byte more fails the line, and the next line survives."""
    tail = b"\nnext.wav\n" if newline else b""
    manifest = _write(tmp_path / "m.txt", b"x" * length + newline + tail)
    items = list(iter_manifest(manifest))
    assert ("line longer than" in (items[0].error or "")) is too_long
    assert len(items) == (2 if newline else 1)


def test_lines_manifest_preview_is_encodable(tmp_path: Path) -> None:
    """A broken line holding a surrogate escape is stored as printable, encodable text."""
    (item,) = list(iter_lines_manifest(["\udcff\x00\n"], tmp_path, "<stdin>"))
    assert item.source.encode("utf-8") == b"\\xed\\xb3\\xbf?"


def test_huge_line_is_skipped_in_bounded_memory(audio: Path) -> None:
    """A 20 MB line without a newline is failed without being held in memory whole."""
    manifest = _write(audio / "m.txt", b"a.wav\n" + b"x" * 20_000_000 + b"\nb.mp3")
    tracemalloc.start()
    try:
        items = list(iter_manifest(manifest))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [item.error is None for item in items] == [True, False, True]
    assert peak < 2_000_000


def test_error_ids_are_stable(audio: Path) -> None:
    """A broken line gets the same id on every run: manifest path plus line number."""
    manifest = _write(audio / "m.jsonl", "oops\n")
    first = list(iter_manifest(manifest))
    second = list(iter_manifest(manifest))
    assert first == second
    assert first[0].id == f"{audio / 'm.jsonl'}:1"


def test_unknown_suffix_reads_as_txt(audio: Path) -> None:
    """A manifest with an unknown suffix is read as one source per line."""
    stream = io.BytesIO(b"a.wav\n")
    (item,) = list(iter_manifest_stream(stream, base=audio, origin="x.sources", fmt="other"))
    assert item.name == "a.wav"


def test_lines_manifest_for_stdin(audio: Path) -> None:
    """Decoded lines (a text stdin) are read like a txt manifest relative to the given base."""
    items = list(
        iter_lines_manifest(
            ["\ufeffa.wav\n", "# c\n", "b\x00\n", "sub/c.flac\r\n"], audio, "<stdin>"
        )
    )
    assert [item.name for item in items if item.error is None] == ["a.wav", "sub/c.flac"]
    assert items[1].error == "<stdin>:3: NUL character in line"
    assert items[1].id == "<stdin>:3"


def _fake_s3(objects: dict[str, list[str]]) -> object:
    """Build an S3 hook that lists fixed keys per URL, failing for unknown buckets."""

    def expand(url: str, filters: Filters) -> Iterator[Item]:
        """List the fixed keys of ``url``."""
        if url not in objects:
            msg = f"{url}: no such bucket"
            raise SourceError(msg)
        for key in objects[url]:
            yield Item(id=f"s3://b/{key}", source=f"s3://b/{key}", kind=ItemKind.S3, name=key)

    return expand


def test_s3_lines_go_through_the_hook(audio: Path) -> None:
    """S3 lines expand through the hook, taking the line's id, params and origin."""
    hook = _fake_s3({"s3://b/one.wav": ["one.wav"], "s3://b/p/": ["p/x.wav", "p/y.wav"]})
    manifest = _write(
        audio / "m.jsonl",
        '{"source": "s3://b/one.wav", "id": "solo", "params": {"language": "fr"}}\n'
        '{"source": "s3://b/p/", "id": "batch"}\n'
        '{"source": "s3://b/p/"}\n'
        '{"source": "s3://nope/"}\n',
    )
    items = list(iter_manifest(manifest, s3=hook))  # type: ignore[arg-type]
    assert [(item.id, item.name) for item in items[:5]] == [
        ("id:solo", "solo"),
        ("id:batch/p/x.wav", "batch/p/x.wav"),
        ("id:batch/p/y.wav", "batch/p/y.wav"),
        ("s3://b/p/x.wav", "p/x.wav"),
        ("s3://b/p/y.wav", "p/y.wav"),
    ]
    assert items[0].params == (("language", "fr"),)
    assert items[1].origin == "m.jsonl:2"
    assert items[5].error == "m.jsonl:4: s3://nope/: no such bucket"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.binary(max_size=80), max_size=8),
    fmt=st.sampled_from(["txt", "jsonl", "csv"]),
)
def test_parsing_never_raises_on_random_bytes(tmp_path: Path, lines: list[bytes], fmt: str) -> None:
    """Random bytes on any line of any format yield items, never an exception."""
    header = b"source,id,language\n" if fmt == "csv" else b""
    manifest = _write(tmp_path / f"r.{fmt}", header + b"\n".join(lines))
    for item in iter_manifest(manifest):
        assert isinstance(item, Item)
        assert item.error is None or item.error.startswith(f"r.{fmt}:")


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=60), max_size=8))
def test_lines_manifest_never_raises(tmp_path: Path, lines: list[str]) -> None:
    """Random text lines from a text stdin yield items, never an exception."""
    for item in iter_lines_manifest(lines, tmp_path, "<stdin>"):
        assert isinstance(item, Item)


def test_streams_lazily_in_constant_memory(tmp_path: Path) -> None:
    """The first items of a 200,000-line manifest arrive without parsing or holding the rest."""
    manifest = tmp_path / "big.txt"
    with manifest.open("w") as out:
        out.writelines(f"https://cdn.example.com/show/ep-{n}.mp3\n" for n in range(200_000))
    items = iter_manifest(manifest)
    tracemalloc.start()
    try:
        first = list(itertools.islice(items, 10))
        peak_first = tracemalloc.get_traced_memory()[1]
        for _ in itertools.islice(items, 50_000):  # traced, so slow: a quarter is enough
            pass
        peak_more = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rest = sum(1 for _ in items)
    assert [item.name for item in first[:2]] == ["show/ep-0.mp3", "show/ep-1.mp3"]
    assert rest == 200_000 - 50_010
    assert peak_first < 1_000_000
    assert peak_more < 2_000_000


@pytest.mark.parametrize(
    "line",
    [
        '{"source": "a.wav"} x',
        '{"source": "a.wav"}{}',
        '\ufeff{"source": "a.wav"}',
        "nul",
        "{",
        '{"source": "a.wav",}',
        "[1] [2]",
        '"unterminated',
    ],
)
def test_invalid_json_names_json_loads_reason(tmp_path: Path, line: str) -> None:
    """A line JSON rejects carries json.loads's reason and column, in one clause after
    "invalid JSON": ``status`` groups failures by their last clause, which was
    ``line … column … …``."""
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(line)
    manifest = _write(tmp_path / "m.jsonl", '{"source": "https://h/a.wav"}\n' + line + "\n")
    items = list(iter_manifest(manifest))
    said = expected.value.msg.partition(" (")[0].lower()
    reason = f"{said} at column {expected.value.colno}"
    assert [item.error for item in items] == [None, f"m.jsonl:2: invalid JSON ({reason})"]
    assert error_kind(str(items[1].error)) == "invalid JSON …"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_json_lines_are_read_as_json_loads_reads_them(value: object) -> None:
    """The scanner called directly gives what json.loads gives, for any JSON value."""
    text = json.dumps(value)
    assert _json_value(text) == json.loads(text)
