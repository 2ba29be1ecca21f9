"""The command line: bad input gives named, clear errors and exit codes; status and report."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import (
    KEY,
    Cli,
    dgbatch_subprocess_cmd,
    make_wav,
    make_wavs,
    read_state_rows,
    subprocess_env,
)

import batch.planner
from batch.cli import cli
from batch.config import check_api_url, check_out, default_state_path
from batch.emulator import Emulator
from batch.errors import UsageError
from batch.report import REPORT_FIELDS
from batch.shard import Shard


def _failed(out: Path) -> dict[str, str]:
    """Failed items' ``source -> error``."""
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    return {str(r["source"]): str(r["error"]) for r in rows if r["status"] == "failed"}


# -- unusable command lines: exit 2, nothing sent -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing.wav"], "missing.wav: no such file or directory"),
        ([""], "'': an empty SOURCE argument"),
        (["{tmp}/a.wav", ""], "'': an empty SOURCE argument"),
        (["{tmp}/empty-dir"], "empty-dir: no audio files found"),
        (["{tmp}/in", "--include", "*.WAV"], "--include/--exclude left none: their globs match"),
        (["ftp://example.com/a.wav"], "unsupported scheme 'ftp'"),
        (["{tmp}/a.wav", "--concurrency", "0"], "--concurrency must be > 0"),
        (["{tmp}/a.wav", "-c", "100000000"], "--concurrency must be at most 1000 (got 100000000)"),
        (["{tmp}/a.wav", "--max-retries", "-1"], "--max-retries must be >= 0"),
        (["{tmp}/a.wav", "--param", "diarize"], "--param 'diarize': expected KEY=VALUE"),
        (["{tmp}/a.wav", "--formats", "json,doc"], "unknown format(s) doc"),
        (["{tmp}/a.wav", "--param", "callback=https://x.example/cb"], "--param callback: callback"),
        (["{tmp}/a.wav", "--param", "callback_method=put"], "none written"),
    ],
)
def test_unusable_input_exits_2_naming_the_problem(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, args: list[str], message: str
) -> None:
    """Missing paths, empty folders, unknown schemes and bad options are usage errors."""
    make_wav(tmp_path / "a.wav")
    make_wav(tmp_path / "in" / "b.wav")
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "empty-dir" / "readme.md").write_text("no audio here")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = dgbatch("run", *argv, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("Error:") == 1
    assert emulator.log == []


@pytest.mark.parametrize(
    ("last", "message"),
    [
        ("{tmp}/missing.wav", "missing.wav: no such file or directory"),
        ("{tmp}/nocol.csv", "CSV header has no 'source' column"),
        ("ftp://example.com/a.wav", "unsupported scheme 'ftp'"),
    ],
)
def test_an_unusable_last_source_exits_2_before_a_chunk_is_sent(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
    last: str, message: str,
) -> None:  # fmt: skip
    """Every SOURCE is opened before the first request: a typo after a folder bigger than
    a plan chunk is exit 2 with nothing sent (it used to send the folder's chunks first)."""
    monkeypatch.setattr(batch.planner, "CHUNK", 2)
    for i in range(7):
        make_wav(tmp_path / "calls" / f"c{i}.wav")
    (tmp_path / "nocol.csv").write_text("path,id\na.wav,x\n")
    result = dgbatch(
        "run", str(tmp_path / "calls"), last.replace("{tmp}", str(tmp_path)),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert emulator.log == []


def test_a_run_stopped_while_planning_is_recorded_with_its_exit_code(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """An unusable SOURCE found while planning ends the run it began: ``status`` shows its
    exit code and error, not "running or crashed"."""
    make_wav(tmp_path / "calls" / "a.wav")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "calls"), str(tmp_path / "empty"), "--out", str(out))
    assert result.exit_code == 2, result.output
    state = out / ".dgbatch" / "state.sqlite"
    assert "last run: #1 (exit 2)" in dgbatch("status", "--state", str(state)).output
    db = sqlite3.connect(state)
    ((summary,),) = db.execute("SELECT summary FROM runs").fetchall()
    db.close()
    assert "empty: no audio files found" in json.loads(summary)["error"]


@pytest.mark.parametrize(("option", "value"), [("--backoff-base", "-1"), ("--backoff-cap", "-0.5")])
def test_a_negative_backoff_exits_2(tmp_path: Path, option: str, value: str) -> None:
    """A negative backoff would send every retry at once: refused before anything is sent."""
    make_wav(tmp_path / "a.wav")
    result = Cli(None)("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), option, value)
    assert result.exit_code == 2, result.output
    assert f"Error: {option} must be >= 0 (got {float(value)})" in result.output


_MISTYPED = "--out '{}': looks like a mistyped URI; name a folder or s3://bucket/prefix"


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("outfile", "--out 'outfile': is a file, not a folder"),
        ("outfile/", "--out 'outfile/': is a file, not a folder"),
        ("outfile/sub/o", "--out 'outfile/sub/o': 'outfile' is a file, not a folder"),
        ("/dev/null", "--out '/dev/null': is not a folder"),
        ("", "--out '': is empty (name a folder or s3://bucket/prefix)"),
        ("  ", "--out '  ': is empty (name a folder or s3://bucket/prefix)"),
        ("folder", None),
        ("new/sub", None),
        ("folder/new", None),
        ("s3://bucket/outfile", None),
        ("S3://bucket", None),
        ("s3://", "--out 's3://': names no bucket (s3://bucket/prefix)"),
        ("s3:///prefix", "--out 's3:///prefix': names no bucket (s3://bucket/prefix)"),
        # a typo of a URI wrote into a local folder named "s3:" (exit 0)
        ("s3:/media/x", _MISTYPED.format("s3:/media/x")),
        ("s3:", _MISTYPED.format("s3:")),
        ("https://host/out", _MISTYPED.format("https://host/out")),
        ("s3:media/x", _MISTYPED.format("s3:media/x")),
        (" s3://b/x", "--out ' s3://b/x': begins or ends with a space"),
        ("a:b", None),  # a colon in a folder's name
    ],
)
def test_check_out_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, message: str | None
) -> None:
    """A local ``--out`` must be a folder, or not exist under a folder; S3 is not looked at."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outfile").write_text("x")
    (tmp_path / "folder").mkdir()
    if message is None:
        assert check_out(out) == out
    else:
        with pytest.raises(UsageError) as caught:
            check_out(out)
        assert str(caught.value) == message


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_an_out_that_is_a_file_exits_2_before_planning(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, dry_run: list[str]
) -> None:
    """A real run and a dry run both refuse a file as ``--out``, naming ``--out``."""
    make_wav(tmp_path / "calls" / "a.wav")
    (tmp_path / "outfile").write_text("x\n")
    result = dgbatch("run", str(tmp_path / "calls"), "--out", str(tmp_path / "outfile"), *dry_run)
    assert result.exit_code == 2, result.output
    assert f"Error: --out {str(tmp_path / 'outfile')!r}: is a file, not a folder" in result.output
    assert (tmp_path / "outfile").read_text() == "x\n"
    assert emulator.log == []


_CREDENTIALS_REFUSED = (
    "a user or password in the URL is not supported; "
    "the key comes from DEEPGRAM_API_KEY or --api-key-file"
)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://10.1.2.3:8080",
            "--api-url 'http://10.1.2.3:8080': plain http would send the API key unencrypted",
        ),
        (
            "http://api.example.com",
            "--api-url 'http://api.example.com': plain http would send the API key unencrypted",
        ),
        ("ftp://127.0.0.1", "--api-url 'ftp://127.0.0.1': expected https://HOST[:PORT]"),
        ("https://", "--api-url 'https://': expected https://HOST[:PORT]"),
        (
            "http://user:pw@127.0.0.1:1/",
            f"--api-url 'http://REDACTED@127.0.0.1:1/': {_CREDENTIALS_REFUSED}",
        ),
        (
            "https://user@api.example.com",
            f"--api-url 'https://REDACTED@api.example.com': {_CREDENTIALS_REFUSED}",
        ),
        ("ftp://user:pw@127.0.0.1", "--api-url 'ftp://REDACTED@127.0.0.1': expected https://"),
        ("http://[::1", "--api-url 'http://[::1': expected https://HOST[:PORT]"),
        ("http://127.0.0.1:99999", "--api-url 'http://127.0.0.1:99999': expected https://"),
        ("http://127.0.0.1:abc", "--api-url 'http://127.0.0.1:abc': expected https://"),
        ("https://api.example.com/v1", "--api-url 'https://api.example.com/v1': leave out the /v1"),
        ("http://127.0.0.1:1/p/v1/", "--api-url 'http://127.0.0.1:1/p/v1/': leave out the /v1"),
        (
            "https://api.deepgram.com/v1/listen",
            "--api-url 'https://api.deepgram.com/v1/listen': leave out the /v1",
        ),
        ("http://127.0.0.1:1/v1/listen/", "--api-url 'http://127.0.0.1:1/v1/listen/': leave out"),
        ("http://127.0.0.1:1?x=1", "--api-url 'http://127.0.0.1:1?x=1': a query string or frag"),
        ("http://127.0.0.1:1/?", "--api-url 'http://127.0.0.1:1/?': a query string or fragment"),
        ("http://127.0.0.1:1/#top", "--api-url 'http://127.0.0.1:1/#top': a query string or"),
        (
            "https://api.example.com/?api_key=pw",
            "--api-url 'https://api.example.com/?api_key=REDACTED': a query string or fragment",
        ),
    ],
)
def test_an_unsafe_api_url_exits_2(tmp_path: Path, url: str, message: str) -> None:
    """Plain http only to loopback hosts, no credentials in the URL, no ``/v1`` (each request
    path has it); its password never shown."""
    make_wav(tmp_path / "a.wav")
    result = Cli(None)(
        "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--api-url", url
    )
    assert result.exit_code == 2, result.output
    assert f"Error: {message}" in result.output
    assert "pw" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "https://api.deepgram.com",
        "https://api.deepgram.com/",
        "https://gateway.example.com/deepgram",
        "https://gateway.example.com/v1beta/listen",
        "http://127.0.0.1:8080",
    ],
)
def test_an_api_url_with_a_gateway_prefix_is_kept(url: str) -> None:
    """A path prefix (a gateway in front of Deepgram) is allowed; each request adds /v1/listen."""
    assert check_api_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    ("command", "url", "message"),
    [
        (["run"], "http://api.example.com", "DEEPGRAM_API_URL 'http://api.example.com'"),
        (["run"], "http://u:pw@127.0.0.1:1", _CREDENTIALS_REFUSED),
        (["check"], "http://u:pw@127.0.0.1:1", _CREDENTIALS_REFUSED),
    ],
)
def test_an_unsafe_api_url_is_refused_even_by_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], url: str, message: str
) -> None:
    """``DEEPGRAM_API_URL`` is checked as ``--api-url`` is: exit 2, the password never shown."""
    make_wav(tmp_path / "a.wav")
    monkeypatch.setenv("DEEPGRAM_API_URL", url)
    args = [str(tmp_path / "a.wav"), "--out", str(tmp_path / "out")] if command == ["run"] else []
    result = Cli(None)(*command, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "pw" not in result.output


def test_a_missing_key_exits_2(tmp_path: Path, dgbatch: Cli) -> None:
    """Without ``DEEPGRAM_API_KEY`` or ``--api-key-file`` nothing runs."""
    make_wav(tmp_path / "a.wav")
    result = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"), key=None)
    assert result.exit_code == 2
    assert "no API key: set DEEPGRAM_API_KEY or pass --api-key-file" in result.output


@pytest.mark.parametrize("bad", ["abc\ndef0123", "abc def0123", "abc\tdef0123", "abcé0123"])
def test_a_key_no_header_can_carry_exits_2_without_showing_it(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, bad: str
) -> None:
    """A key with a line break, a space or a character a key never has (pasted badly) is a
    usage error naming where it came from, never shown; it was an internal error, exit 1."""
    make_wav(tmp_path / "a.wav")
    key_file = tmp_path / "key"
    key_file.write_text(bad)
    key_file.chmod(0o600)
    run = ("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"))
    for result, where in [
        (dgbatch(*run, key=bad), "DEEPGRAM_API_KEY"),
        (dgbatch(*run, "--api-key-file", str(key_file), key=None), str(key_file)),
    ]:
        assert result.exit_code == 2, result.output
        assert f"{where}: the API key holds a space, a line break or another" in result.output
        assert "def0123" not in result.output
    assert emulator.log == []


def test_a_key_file_saved_with_a_bom_is_read(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """An editor's UTF-8 byte order mark is not part of the key (it was refused as a bad key)."""
    make_wav(tmp_path / "a.wav")
    key_file = tmp_path / "key"
    key_file.write_text("\ufeff" + KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    run = ("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"))
    result = dgbatch(*run, "--api-key-file", str(key_file), key=None)
    assert result.exit_code == 0, result.output
    assert emulator.log[0].authorization == f"Token {KEY}"


@pytest.mark.parametrize(("mode", "code"), [(0o644, 2), (0o640, 2), (0o604, 2), (0o600, 0)])
def test_a_key_file_readable_by_others_is_refused(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, mode: int, code: int
) -> None:
    """``--api-key-file`` must be private (like an ssh key); a private one is used."""
    make_wav(tmp_path / "a.wav")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(mode)
    result = dgbatch(
        "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"),
        "--api-key-file", str(key_file), key=None,
    )  # fmt: skip
    assert result.exit_code == code, result.output
    if code:
        assert f"{key_file}: API key file is readable by other users" in result.output
        assert "chmod 600" in result.output
        assert emulator.log == []
    else:
        assert emulator.log[0].authorization == f"Token {KEY}"
    assert KEY not in result.output
    dry = dgbatch(
        "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "dry"), "--dry-run",
        "--api-key-file", str(key_file), key=None,
    )  # fmt: skip
    assert dry.exit_code == code, dry.output  # a script's dry run catches what the run refuses


def test_a_dry_run_needs_no_key_but_refuses_a_key_file_that_is_not_there(
    tmp_path: Path, dgbatch: Cli
) -> None:
    make_wav(tmp_path / "a.wav")
    run = ("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"), "--dry-run")
    assert dgbatch(*run, key=None).exit_code == 0
    missing = dgbatch(*run, "--api-key-file", str(tmp_path / "nokey"), key=None)
    assert missing.exit_code == 2 and "nokey" in missing.output, missing.output


def test_an_empty_or_missing_key_file_is_refused(tmp_path: Path, dgbatch: Cli) -> None:
    """An empty key file and a missing one are usage errors naming the file."""
    make_wav(tmp_path / "a.wav")
    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    empty.chmod(0o600)
    for path, message in [(empty, "API key file is empty"), (tmp_path / "nope", "cannot read")]:
        result = dgbatch(
            "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"),
            "--api-key-file", str(path), key=None,
        )  # fmt: skip
        assert result.exit_code == 2
        assert f"{path}: {message}" in result.output


# -- bad items: the item fails with a named reason, the rest is done ------------------------


def test_an_empty_file_fails_without_being_sent(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """A zero-byte file is a failed item ("file is empty") with no attempt (nothing was
    sent); the others are done; exit 1."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 2)
    (src / "empty.wav").touch()
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 1
    assert _failed(out) == {str(src / "empty.wav"): f"{src / 'empty.wav'}: file is empty"}
    assert len(emulator.log) == 2
    attempts = {r["source"]: r["attempts"] for r in read_state_rows(out / ".dgbatch/state.sqlite")}
    assert attempts[str(src / "empty.wav")] == 0
    assert "done 2, failed 1, retried 0" in result.output


def test_entries_that_are_not_readable_files_fail_with_their_reason(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """A folder named like audio, a broken symlink and a missing file each fail by name.

    Tests run as root here, where ``chmod 000`` does not stop reads, so unreadable
    entries are made of things no one can read as a file instead (see the next test).
    """
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "good.wav")
    (src / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (tmp_path / "folder.wav").mkdir()
    manifest = tmp_path / "list.txt"
    manifest.write_text("folder.wav\nmissing.wav\n")
    result = dgbatch("run", str(src), str(manifest), "--out", str(out))
    assert result.exit_code == 1
    folder, missing = tmp_path / "folder.wav", tmp_path / "missing.wav"
    assert _failed(out) == {
        str(src / "dangling.wav"): f"{src}: {src / 'dangling.wav'}: broken symlink",
        str(
            folder
        ): f"list.txt:1: {folder}: is a directory (list files, not folders, in a manifest)",
        str(missing): f"list.txt:2: {missing}: no such file",
    }
    assert (out / "good.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_fails_naming_the_reason(tmp_path: Path, dgbatch: Cli) -> None:
    """A file without read permission is a failed item naming the file, the rest is done."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wav(src / "good.wav")
    locked = make_wav(src / "locked.wav", tone=1)
    locked.chmod(0)
    result = dgbatch("run", str(src), "--out", str(out))
    assert result.exit_code == 1
    assert "Permission denied" in _failed(out)[str(locked)]


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("m.jsonl", '{"source": "a.wav"}\n{"source": \n{"source": "b.wav"}\n', 2, "invalid JSON"),
        (
            "m.jsonl",
            '{"source": "a.wav"}\n{"id": "x"}\n{"source": "b.wav"}\n',
            2,
            "missing 'source'",
        ),
        ("m.jsonl", '{"source": "a.wav"}\n[1]\n{"source": "b.wav"}\n', 2, "expected a JSON object"),
        ("m.csv", 'source,id\na.wav,\n"b.wav,broken\nb.wav,\n', 3, "invalid CSV"),
        ("m.csv", "source,id\na.wav,\n,empty\nb.wav,\n", 3, "empty 'source'"),
        ("m.txt", "a.wav\ngopher://old/x.wav\nb.wav\n", 2, "unsupported scheme 'gopher'"),
    ],
)
def test_a_malformed_manifest_line_fails_naming_file_and_line(
    tmp_path: Path, dgbatch: Cli, name: str, content: str, line: int, reason: str
) -> None:
    """One bad line becomes a failed item ``file:line: reason``; the other lines are done."""
    make_wav(tmp_path / "a.wav")
    make_wav(tmp_path / "b.wav", tone=1)
    manifest = tmp_path / name
    manifest.write_text(content)
    result = dgbatch("run", str(manifest), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    (error,) = _failed(tmp_path / "out").values()
    assert error.startswith(f"{name}:{line}: ")
    assert reason in error
    assert (tmp_path / "out" / "a.json").exists() and (tmp_path / "out" / "b.json").exists()


def test_a_csv_without_a_source_column_is_a_usage_error(tmp_path: Path, dgbatch: Cli) -> None:
    """A manifest that is unusable as a whole exits 2 naming it."""
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,id\na.wav,x\n")
    result = dgbatch("run", str(manifest), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "list.csv: CSV header has no 'source' column" in result.output


# -- status and report ---------------------------------------------------------------------


@pytest.fixture
def finished(tmp_path: Path, dgbatch: Cli) -> Path:
    """A state file after a run with three done items and one failed (400) item."""
    src, out = tmp_path / "calls", tmp_path / "out"
    make_wavs(src, 3, seconds=0.5)
    (src / "zz-bad.wav").write_bytes(b"plain text, not audio" * 4)
    assert dgbatch("run", str(src), "--out", str(out), "--no-sniff").exit_code == 1
    return out / ".dgbatch" / "state.sqlite"


def test_status_json_counts_items_attempts_audio_and_errors(finished: Path, dgbatch: Cli) -> None:
    """``status --json`` gives counts by status, attempts, audio hours and the commonest errors."""
    result = dgbatch("status", "--state", str(finished), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 3, "failed": 1}
    assert summary["total"] == 4
    assert summary["attempts"] == 4
    assert summary["timeout_retries"] == 0
    assert summary["audio_hours"] == round(1.5 / 3600, 4)
    (error,) = summary["errors"]
    assert (error["error"], error["count"]) == ("Bad Request", 1)
    assert error["example"].startswith("HTTP 400 Bad Request: Bad Request: failed to process")
    assert summary["last_run"]["exit_code"] == 1


def test_status_prints_a_readable_table(finished: Path, dgbatch: Cli) -> None:
    """Plain ``status`` shows the same facts for humans."""
    result = dgbatch("status", "--state", str(finished))
    assert result.exit_code == 0
    for text in ("items: 4", "done     3", "failed   1", "attempts: 4", "audio transcribed",
                 "errors:", "1  Bad Request (e.g. HTTP 400 Bad Request: Bad Request: failed",
                 "last run: #1 (exit 1)"):  # fmt: skip
        assert text in result.output


def test_report_csv_failed_lists_only_failed_items(finished: Path, dgbatch: Cli) -> None:
    """``report --format csv --failed`` writes the header and one row per failed item."""
    result = dgbatch("report", "--state", str(finished), "--format", "csv", "--failed")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert tuple(rows[0]) == REPORT_FIELDS
    (row,) = rows
    assert row["source"].endswith("zz-bad.wav")
    assert (row["status"], row["http_status"], row["err_code"]) == ("failed", "400", "Bad Request")
    assert row["request_id"] and "corrupt or unsupported data" in row["error"]


def test_report_rows_carry_every_documented_field(
    finished: Path, dgbatch: Cli, tmp_path: Path
) -> None:
    """Each JSONL row has README's fields; ``-o`` writes a file; the run left report.jsonl."""
    target = tmp_path / "report.jsonl"
    result = dgbatch("report", "--state", str(finished), "-o", str(target))
    assert result.exit_code == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    readme = {"id", "source", "kind", "status", "attempts", "http_status", "error",
              "err_code", "request_id", "duration", "outputs", "timeout_retries",
              "warning", "copy_of"}  # fmt: skip
    assert all(set(row) == readme for row in rows)
    done = [row for row in rows if row["status"] == "done"]
    assert len(done) == 3
    assert all(row["duration"] == 0.5 and len(row["outputs"]) == 2 for row in done)
    assert (finished.parent / "report.jsonl").read_text() == target.read_text()


@pytest.mark.parametrize(
    ("target", "reason"),
    [("missing/x.csv", "No such file or directory"), (".", "Is a directory")],
)
def test_report_to_an_unwritable_file_exits_2(
    finished: Path, tmp_path: Path, target: str, reason: str
) -> None:
    """``report -o`` into a missing folder or onto a folder is bad input: exit 2, naming both."""
    path = str(tmp_path / target)
    result = Cli(None)("report", "--state", str(finished), "-o", path)
    assert result.exit_code == 2, result.output
    assert f"Error: -o {path!r}: cannot write the report: {reason}" in result.output


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_a_missing_state_exit_2(tmp_path: Path, command: str) -> None:
    """A state path that does not exist is named, and not created."""
    path = tmp_path / "nope.sqlite"
    result = Cli(None)(command, "--state", str(path))
    assert result.exit_code == 2
    assert f"{path}: no such state file" in result.output
    assert not path.exists()


def test_quiet_prints_nothing_on_success(tmp_path: Path, dgbatch: Cli) -> None:
    """``--quiet`` drops the summary; a normal run prints it with the report path."""
    make_wav(tmp_path / "a.wav")
    quiet = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "q"), "-q")
    assert (quiet.exit_code, quiet.output) == (0, "")
    loud = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "l"))
    assert "report: " in loud.output and "done 1, failed 0" in loud.output


def test_a_state_option_ending_in_a_slash_is_a_folder(tmp_path: Path, dgbatch: Cli) -> None:
    """``--state st/`` for a folder that does not exist yet puts ``state.sqlite`` (and its
    report) in it, instead of a file named ``st``; status and report read it the same way."""
    make_wav(tmp_path / "a.wav")
    folder = tmp_path / "st"
    result = dgbatch(
        "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"), "--state", f"{folder}/"
    )
    assert result.exit_code == 0, result.output
    assert folder.is_dir() and (folder / "state.sqlite").is_file()
    assert f"report: {folder / 'report.jsonl'}" in result.output
    status = dgbatch("status", "--state", f"{folder}/", "--json")
    assert status.exit_code == 0 and json.loads(status.output)["counts"]["done"] == 1
    assert dgbatch("report", "--state", f"{folder}/").output.count('"status":"done"') == 1
    named = dgbatch("status", "--state", str(folder), "--json")  # read: no doubt what it names
    assert named.exit_code == 0 and json.loads(named.output)["counts"]["done"] == 1
    again = dgbatch(  # the same command resumes, now that the folder exists
        "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"), "--state", f"{folder}/"
    )
    assert again.exit_code == 0, again.output
    assert "state: 1 done, 0 failed, 0 pending" in again.output
    run_named = dgbatch(
        "run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"), "--state", str(folder)
    )
    assert run_named.exit_code == 2 and "is a folder: name its state file" in run_named.output


def test_state_option_puts_the_state_where_asked(tmp_path: Path, dgbatch: Cli) -> None:
    """``--state PATH`` overrides ``OUT/.dgbatch/state.sqlite``; two states in one folder
    each leave their own report beside them."""
    make_wav(tmp_path / "a.wav")
    make_wav(tmp_path / "b.wav", tone=1)
    for name in ("a", "b"):
        state = tmp_path / "elsewhere" / f"{name}.sqlite"
        result = dgbatch(
            "run", str(tmp_path / f"{name}.wav"), "--out", str(tmp_path / "out"),
            "--state", str(state),
        )  # fmt: skip
        assert result.exit_code == 0
        assert f"report: {tmp_path / 'elsewhere' / name}.report.jsonl" in result.output
    assert not (tmp_path / "out" / ".dgbatch" / "state.sqlite").exists()
    for name in ("a", "b"):
        (row,) = (tmp_path / "elsewhere" / f"{name}.report.jsonl").read_text().splitlines()
        assert json.loads(row)["source"] == str(tmp_path / f"{name}.wav")


def test_version_and_help() -> None:
    """``--version`` names the program; ``-h`` works like ``--help``."""
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.startswith("dgbatch, version ")
    assert "Usage:" in runner.invoke(cli, ["run", "-h"]).output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-report", "{out}/.dgbatch/state.sqlite"], "--run-report '{out}/.dgbatch/state"),
        (["--run-report", "{out}/.dgbatch/state.sqlite-wal"], "is the state file"),
        (["--run-report", "{out}/a.json"], "a transcript could be written there in --out"),
        (["--run-report", "{out}/sub/x.TXT"], "a transcript could be written there"),
        (["--state", "{out}/a.json"], "--state '{out}/a.json': a transcript could be"),
        (["--state", "{tmp}/s.sqlite", "--run-report", "{tmp}/s.sqlite"], "is the state file"),
        (["--run-report", "{out}/.dgbatch/report.jsonl"], "is the run's own report"),
    ],
)
def test_own_files_are_never_written_over(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, args: list[str], message: str
) -> None:
    """A run report over the state, or a state or run report where a transcript goes, is
    refused before anything is sent: one would have replaced the other."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)).replace("{tmp}", str(tmp_path)) for a in args]
    result = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(out), *argv)
    assert result.exit_code == 2, result.output
    assert message.replace("{out}", str(out)) in result.output
    assert emulator.log == []


def test_a_run_report_and_a_state_beside_the_outputs_are_fine(tmp_path: Path, dgbatch: Cli) -> None:
    """Under ``--out/.dgbatch`` or with other names, both are where the user wants them."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    result = dgbatch(
        "run", str(tmp_path / "a.wav"), "--out", str(out),
        "--run-report", str(out / ".dgbatch" / "run.json"), "--state", str(out / "state.db"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / ".dgbatch" / "run.json").read_text())["exit_code"] == 0
    assert json.loads((out / "a.json").read_text())["metadata"]


def test_report_output_onto_the_state_is_refused(tmp_path: Path, dgbatch: Cli) -> None:
    """``report -o`` naming the state file exits 2 and leaves the state as it was."""
    make_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "a.wav"), "--out", str(out)).exit_code == 0
    state = out / ".dgbatch" / "state.sqlite"
    before = state.read_bytes()
    result = dgbatch("report", "--state", str(state), "--format", "csv", "-o", str(state))
    assert result.exit_code == 2, result.output
    assert "is the state file" in result.output
    assert state.read_bytes() == before


def test_run_off_the_main_thread_still_maps_errors(tmp_path: Path) -> None:
    """An app embedding the CLI in a worker thread: a usage error is exit 2, not
    "ValueError: signal only works in main thread" from restoring the handlers."""
    import threading

    results: list[int] = []

    def invoke() -> None:
        result = CliRunner().invoke(cli, ["run", str(tmp_path / "missing.wav"), "--out", "o"])
        results.append(result.exit_code)

    worker = threading.Thread(target=invoke)
    worker.start()
    worker.join(timeout=60)
    assert results == [2]


def test_a_run_refused_before_it_begins_still_writes_its_run_report(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """A key not mounted, a bad option: exit 2 before the run begins, and the run report
    says so (a monitor read last night's exit 0 from it). Only over an earlier run report
    or as a new ``.json``: the checks of where it may go come after the options that
    failed, and it replaced a state file or a transcript."""
    make_wav(tmp_path / "a.wav")
    report = tmp_path / "reports" / "latest.json"
    report.parent.mkdir()
    args = ("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"))
    assert dgbatch(*args, "--run-report", str(report)).exit_code == 0
    assert json.loads(report.read_text())["exit_code"] == 0
    result = Cli(None)(*args, "--run-report", str(report), key=None)
    assert result.exit_code == 2, result.output
    written = json.loads(report.read_text())
    assert written["exit_code"] == 2 and "DEEPGRAM_API_KEY" in written["error"]
    fresh = tmp_path / "reports" / "new.json"
    assert Cli(None)(*args, "--run-report", str(fresh), "--formats", "bogus").exit_code == 2
    assert json.loads(fresh.read_text())["exit_code"] == 2
    state = tmp_path / "out" / ".dgbatch" / "state.sqlite"
    (tmp_path / "notes.json").write_text('{"mine": true}')
    (tmp_path / "notes.txt").write_text("important notes")
    missing = ("run", str(tmp_path / "typo"), "--out", str(tmp_path / "out"))
    for target in (state, tmp_path / "out" / "a.json", tmp_path / "notes.json"):
        before = target.read_bytes()
        refused = Cli(None)(*args, "--run-report", str(target), "--formats", "bogus")
        assert refused.exit_code == 2 and target.read_bytes() == before, target
    for target in (tmp_path / "notes.txt", tmp_path / "notes.json"):  # a SOURCE not there
        before = target.read_bytes()
        refused = dgbatch(*missing, "--run-report", str(target))
        assert refused.exit_code == 2 and target.read_bytes() == before, target
    assert dgbatch(*missing, "--run-report", str(report)).exit_code == 2
    assert "typo" in json.loads(report.read_text())["error"]  # over the last report: written


def test_status_and_report_find_a_runs_state_by_its_out(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out OUT`` (and ``--shard``) names the state a run on OUT keeps, wherever it is
    (an S3 OUT's is in the cache under a hash); ``--state OUT`` reads ``OUT/.dgbatch``.
    Before, ``status --out`` was no such option and ``--state OUT`` was refused."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "a.wav")
    assert dgbatch("run", "a.wav", "--out", "out").exit_code == 0
    assert dgbatch("run", "a.wav", "--out", "out", "--shard", "0/2").exit_code == 0
    s3_state = default_state_path("s3://bucket/night/")
    s3_state.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "out/.dgbatch/state.sqlite", s3_state)
    for where in (["--out", "out"], ["--state", "out"], ["--out", "s3://bucket/night"]):
        status = dgbatch("status", *where, "--json")
        assert status.exit_code == 0, status.output
        assert json.loads(status.output)["counts"]["done"] == 1
        assert '"status":"done"' in dgbatch("report", *where).output
    shard = dgbatch("status", "--out", "out", "--shard", "0/2", "--json")
    assert json.loads(shard.output)["state"] == str(Path("out/.dgbatch/shard-0-of-2/state.sqlite"))


@pytest.mark.parametrize("out", ["out", "s3://bucket/night/"])
def test_reading_a_sharded_out_without_shard_names_its_shards(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    """``status --out OUT`` on an OUT run only as shards said no state was there; it
    names the shards it has (the S3 states in the cache too)."""
    monkeypatch.chdir(tmp_path)
    for shard in (Shard(1, 2), Shard(0, 2)):
        default_state_path(out, shard).parent.mkdir(parents=True)
        default_state_path(out, shard).write_bytes(b"")
    result = dgbatch("status", "--out", out)
    assert result.exit_code == 2
    assert "shards here: pass --shard 0/2 or 1/2" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "out", "--out", "out"], "give --state or --out, not both"),
        (["--shard", "0/2"], "--shard: needs --out"),
        (["--out", "out", "--shard", "2/2"], "K must be between 0 and N-1"),
        (["--state", "empty"], "'empty' is a folder without a state"),
        (["--out", "s3://bucket/none/"], "no state for s3://bucket/none/ on this machine: "),
    ],
)
def test_a_state_that_cannot_be_named_is_refused_by_name(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for command in ("status", "report", "usage"):
        result = (
            dgbatch(command, *args, "--project", "p")
            if command == "usage"
            else dgbatch(command, *args)
        )
        assert result.exit_code == 2 and message in result.output, (command, result.output)


@pytest.mark.parametrize(
    "option",
    ["--max-cost", "--max-audio-hours", "--price-per-hour", "--timeout", "--grace",
     "--backoff-base", "--backoff-cap"],
)  # fmt: skip
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_option_must_be_a_finite_number(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator, option: str, value: str
) -> None:
    """``--max-cost nan`` (a ``$BUDGET`` a script left empty) was taken, and every item was
    sent past the cap: no comparison with nan stops anything. It is exit 2 now, unsent."""
    make_wav(tmp_path / "a.wav")
    args = ("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--api-url", emulator.url)
    report = tmp_path / "night.json"
    result = Cli(None)(*args, option, value, "--run-report", str(report))  # not ``dgbatch``,
    assert result.exit_code == 2, result.output  # which gives --backoff-base
    assert f"{option} must be a finite number (got {float(value)})" in result.output
    assert json.loads(report.read_text())["exit_code"] == 2  # a monitor sees it
    assert emulator.log == []


def test_an_emulator_number_option_must_be_a_finite_number() -> None:
    result = CliRunner().invoke(cli, ["emulator", "--latency", "nan"])
    assert result.exit_code == 2 and "'nan' is not a finite number" in result.output


def test_a_run_report_replaces_only_an_earlier_one(
    tmp_path: Path, dgbatch: Cli, emulator: Emulator
) -> None:
    """``--run-report`` onto one of the run's recordings, a file of the user's or the run's
    lock replaced it at the end of the run (the lock then let a second run in); each is
    refused before anything is sent, as is a place that names no file or cannot be."""
    make_wavs(tmp_path / "in", 2)
    (tmp_path / "notes.txt").write_text("important notes")
    wav = sorted((tmp_path / "in").iterdir())[0]
    before = wav.read_bytes()
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--run-report")
    for place, said in (
        (wav, "something else than a run report is there"),
        (tmp_path / "notes.txt", "something else than a run report is there"),
        (tmp_path / "out" / ".dgbatch" / "out.lock", "is a run's lock"),
    ):
        refused = dgbatch(*args, str(place))
        assert refused.exit_code == 2 and said in refused.output, refused.output
    assert emulator.log == [] and wav.read_bytes() == before
    assert (tmp_path / "notes.txt").read_text() == "important notes"
    under_a_file = dgbatch(*args, str(tmp_path / "notes.txt" / "r.json"))
    assert under_a_file.exit_code == 2 and "is a file, not a folder" in under_a_file.output
    for named in ("", f"{tmp_path}/reports/"):  # no file named
        assert dgbatch(*args, named).exit_code == 2
    deeper = dgbatch(*args, str(tmp_path / "notes.txt" / "deeper" / "r.json"))
    assert deeper.exit_code == 2 and "cannot be looked at (Not a directory)" in deeper.output


@pytest.mark.parametrize(
    ("args", "warned"),
    [
        (["-c", "150"], "--concurrency 150 is above the 100 requests Deepgram takes at once"),
        (["-c", "10", "--param", "model=whisper"], "--concurrency 10 is above the 5 requests"),
        (["-c", "100"], None),
    ],
)
def test_a_concurrency_over_deepgrams_limit_is_warned_of(
    tmp_path: Path, dgbatch: Cli, args: list[str], warned: str | None
) -> None:
    """``-c 2000`` ran slower than ``-c 100``: 1,401 of 2,901 requests were 429s."""
    make_wav(tmp_path / "a.wav")
    result = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 0, result.output
    assert (warned in result.output) if warned else ("is above the" not in result.output)


@pytest.mark.parametrize("command", [["run", "a.wav", "--out", "o"], ["check"]])
def test_the_api_url_from_the_environment_is_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """A bad ``DEEPGRAM_API_URL`` was reported as ``--api-url``, which the user never
    gave; an empty one silently meant the real API (a script whose emulator URL was
    unset sent the real key there, and paid)."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "a.wav")
    env = {"DEEPGRAM_API_KEY": KEY}
    bad = CliRunner().invoke(cli, command, env={**env, "DEEPGRAM_API_URL": "http://127.0.0.1:9/v1"})
    assert (
        bad.exit_code == 2 and "DEEPGRAM_API_URL 'http://127.0.0.1:9/v1': leave out" in bad.output
    )
    empty = CliRunner().invoke(cli, command, env={**env, "DEEPGRAM_API_URL": ""})
    assert empty.exit_code == 2 and "DEEPGRAM_API_URL is set but empty" in empty.output


def test_a_run_report_is_told_by_its_contents_and_written_through_a_link(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """The third review: a run report over 1 MiB (thousands of SOURCEs on its command line)
    was taken for something else the next night, exit 2; a FIFO at --run-report blocked
    the run for ever, deaf to signals; a link to the monitor's file was replaced by a
    file, and the monitor kept reading last night's."""
    make_wav(tmp_path / "in" / "a.wav")
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--run-report")
    big = tmp_path / "big.json"
    document = {"version": "0", "host": "h", "command": "x" * 2_000_000, "out": "o"}
    big.write_text(json.dumps({**document, "started": 1, "exit_code": 0}, indent=2))
    assert dgbatch(*args, str(big)).exit_code == 0
    assert json.loads(big.read_text())["exit_code"] == 0 and big.stat().st_size < 100_000
    os.mkfifo(tmp_path / "fifo")
    fifo = dgbatch(*args, str(tmp_path / "fifo"))
    assert fifo.exit_code == 2 and "is not a regular file" in fifo.output
    (tmp_path / "mon").mkdir()
    assert dgbatch(*args, str(tmp_path / "mon" / "latest.json")).exit_code == 0
    (tmp_path / "link.json").symlink_to(tmp_path / "mon" / "latest.json")
    before = (tmp_path / "mon" / "latest.json").read_text()
    assert dgbatch(*args, str(tmp_path / "link.json")).exit_code == 0
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "mon" / "latest.json").read_text() != before


def test_status_and_report_with_stdout_closed_and_the_shard_from_the_environment(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dgbatch report >&-`` was an internal error; ``--out`` ignored DGBATCH_SHARD, which
    ``run`` takes."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "a.wav")
    assert dgbatch("run", "a.wav", "--out", "out", "--shard", "0/1").exit_code == 0
    sharded = CliRunner().invoke(
        cli, ["status", "--out", "out", "--json"], env={"DGBATCH_SHARD": "0/1"}
    )
    assert sharded.exit_code == 0 and json.loads(sharded.output)["counts"]["done"] == 1
    closed = subprocess.run(
        [*dgbatch_subprocess_cmd(), "report", "--out", "out", "--shard", "0/1"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
    )
    assert (closed.returncode, closed.stderr) == (0, b"")


def test_the_dry_run_says_what_the_run_would_refuse_or_warn_of(
    tmp_path: Path, dgbatch: Cli
) -> None:
    """The dry run passed a --run-report the run then refused (exit 2), and said nothing
    of a --concurrency above what Deepgram takes at once."""
    make_wav(tmp_path / "a.wav")
    (tmp_path / "notes.txt").write_text("mine\n")
    args = ("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--dry-run")
    refused = dgbatch(*args, "--run-report", str(tmp_path / "notes.txt"))
    assert refused.exit_code == 2 and "something else than a run report" in refused.output
    warned = dgbatch(*args, "-c", "11", "--param", "topics=true")
    assert warned.exit_code == 0 and "--concurrency 11 is above the 10 requests" in warned.output


def test_what_the_third_review_of_run_reports_found(
    tmp_path: Path, dgbatch: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive of run reports over 1 MiB was taken for one by how it began, and
    replaced; a refused run wrote its report at the very place refused (a transcript's
    place in --out; through a dangling link, the state's -journal, which SQLite then took
    for a hot journal); ``report -o OUT/a.json`` replaced a paid transcript for good; a
    closed stderr crashed the run; DGBATCH_SHARD broke ``status --state``."""
    monkeypatch.chdir(tmp_path)
    make_wav(tmp_path / "in" / "a.wav")
    assert dgbatch("run", "in", "--out", "o", "--run-report", "one.json").exit_code == 0
    (tmp_path / "archive.json").write_text((tmp_path / "one.json").read_text() * 2000)
    archive = (tmp_path / "archive.json").read_bytes()
    assert len(archive) > 1 << 20
    assert dgbatch("run", "in", "--out", "o", "--run-report", "archive.json").exit_code == 2
    assert (tmp_path / "archive.json").read_bytes() == archive
    refused = Cli(None)("run", "in", "--out", "o", "--run-report", "o/b.json")  # no key
    assert refused.exit_code == 2 and not (tmp_path / "o" / "b.json").exists()
    (tmp_path / "rr.json").symlink_to("o/.dgbatch/state.sqlite-journal")
    assert Cli(None)("run", "in", "--out", "o", "--run-report", "rr.json").exit_code == 2
    assert not (tmp_path / "o" / ".dgbatch" / "state.sqlite-journal").exists()
    paid = (tmp_path / "o" / "a.json").read_bytes()
    onto = dgbatch("report", "--out", "o", "-o", "o/a.json")
    assert onto.exit_code == 2 and (tmp_path / "o" / "a.json").read_bytes() == paid
    recording = (tmp_path / "in" / "a.wav").read_bytes()  # -o onto a source, a slip
    onto = dgbatch("report", "--out", "o", "-o", "in/a.wav")
    assert onto.exit_code == 2 and "is a recording (audio), not a report" in onto.output
    assert (tmp_path / "in" / "a.wav").read_bytes() == recording
    closed = subprocess.run(
        [*dgbatch_subprocess_cmd(), "run", "in", "--out", "o", "--run-report", "one.json"],
        env={**subprocess_env(), "DEEPGRAM_API_URL": dgbatch.emulator.url},  # type: ignore[union-attr]
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(2),
    )
    assert (
        closed.returncode == 0 and json.loads((tmp_path / "one.json").read_text())["exit_code"] == 0
    )
    env = {"DGBATCH_SHARD": "1/2"}
    state = CliRunner().invoke(cli, ["status", "--state", "o/.dgbatch/state.sqlite"], env=env)
    assert state.exit_code == 0, state.output


@pytest.mark.parametrize("dry", [False, True])
def test_a_run_of_stdin_started_with_stdin_closed_finds_no_sources(
    tmp_path: Path, emulator: Emulator, dry: bool
) -> None:
    """A daemon or scheduler may start a job with descriptor 0 closed (``<&-``): Python's
    ``sys.stdin`` is then None, and ``dgbatch run -`` was an internal error ("'NoneType'
    object is not iterable", exit 1, recorded in the state). It reads as /dev/null does."""
    command = [*dgbatch_subprocess_cmd(), "run", "-", "--out", str(tmp_path / "out")]
    command += ["--api-url", emulator.url, *(["--dry-run"] if dry else [])]
    done = subprocess.run(
        command,
        env={**subprocess_env(), "DEEPGRAM_API_KEY": KEY},
        capture_output=True,
        preexec_fn=lambda: os.close(0),  # the closed descriptor is the case
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith(b"Error: no audio sources found in: -\n"), done.stderr


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XDG_CACHE_HOME": "/c", "HOME": "/h"}, "/c/dgbatch/"),
        ({"HOME": "/h"}, "/h/.cache/dgbatch/"),
        ({"XDG_CACHE_HOME": "", "HOME": "/h"}, "/h/.cache/dgbatch/"),
        ({"XDG_CACHE_HOME": "rel"}, "rel/dgbatch/"),  # where earlier runs put theirs
        ({}, None),
        ({"HOME": "relative"}, None),
    ],
)
def test_the_state_of_an_s3_out_needs_a_cache_folder(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: str | None
) -> None:
    """No ``HOME`` and a user without a passwd entry (a container's uid): ``~`` stayed
    ``~``, and the state went under ``./~/.cache`` of the working folder, so a run from
    another folder started a new one (a review found it). It is refused, saying what to set."""
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no passwd entry
    if expected is not None:
        assert str(default_state_path("s3://b/x/", None, environ)).startswith(expected)
        return
    with pytest.raises(UsageError, match="set XDG_CACHE_HOME or HOME to an absolute path"):
        default_state_path("s3://b/x/", None, environ)


def test_without_a_home_folder_every_command_says_so_or_goes_on_with_state(
    tmp_path: Path,
) -> None:
    """No usable HOME: a run refused for another reason, given --state, hid that reason
    behind "internal error" (exit 1) and wrote no run report; ``status --out s3://…``
    was an internal error too (a review found both)."""
    env = {**subprocess_env(), "HOME": "relative", "DEEPGRAM_API_KEY": KEY}
    env.pop("XDG_CACHE_HOME", None)
    report = tmp_path / "r.json"
    refused = subprocess.run(
        [*dgbatch_subprocess_cmd(), "run", "s3://b/in/", "--out", "s3://b/out/",
         "--state", f"{tmp_path}/st/", "--run-report", str(report), "--param", "callback=x"],
        env=env, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert b"Error: --param callback: callback mode" in refused.stderr
    assert json.loads(report.read_text())["exit_code"] == 2
    status = subprocess.run(
        [*dgbatch_subprocess_cmd(), "status", "--out", "s3://b/out/"],
        env=env, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    assert status.returncode == 2
    assert status.stderr.endswith(
        b"set XDG_CACHE_HOME or HOME to an absolute path, or give --state\n"
    )


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_the_groups_own_options_into_a_full_stdout_say_so(option: str) -> None:
    """``dgbatch --help > /dev/full`` was an internal error: the group's eager options
    write before a command runs (a review found it)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*dgbatch_subprocess_cmd(), option], env=subprocess_env(), stdout=full,
            stderr=subprocess.PIPE,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == b"Error: cannot write to standard output: No space left on device\n"
