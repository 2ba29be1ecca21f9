"""README.md is kept honest: commands, options, defaults, exit codes and retry rules; so is
docs/REFERENCE.md, the detailed reference README links to, where a rule's wording moved there."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from conftest import Cli, documentation, make_wav, read_state_rows

from batch import errors, retry
from batch.cli import cli
from batch.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "REFERENCE.md").read_text()
DOCS = documentation()
RUN = cli.commands["run"]


def _section(title: str, text: str = README) -> str:
    """The text (README's unless told) under ``## title`` up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def _table(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``text``, as stripped cells."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


@pytest.mark.parametrize("command", cli.commands.values(), ids=lambda c: c.name)
def test_every_command_has_help_and_is_documented(command: click.Command) -> None:
    """Each command has a help text and README shows ``dgbatch <command>``."""
    assert command.help, f"{command.name} is missing its help"
    assert f"dgbatch {command.name}" in README


@pytest.mark.parametrize(
    "option",
    [p for p in RUN.params if isinstance(p, click.Option)],
    ids=lambda p: p.name or "",
)
def test_every_run_option_is_documented(option: click.Option) -> None:
    """Each ``run`` option (long and short spellings) appears in README, with a help text."""
    assert option.help, f"{option.opts} has no help"
    for spelling in option.opts:
        assert re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", README), spelling


def _documented_defaults() -> dict[str, str]:
    """``--option`` → the default written in README's options table."""
    found: dict[str, str] = {}
    for cells in _table(_section("Options of `dgbatch run`")):
        names = re.findall(r"(--[a-z-]+)", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        if len(defaults) == len(names):
            found.update(zip(names, defaults, strict=True))
    return found


def test_documented_defaults_are_the_real_defaults() -> None:
    """Every default in README's options table is the click option's default."""
    documented = _documented_defaults()
    checked = 0
    for param in RUN.params:
        if not isinstance(param, click.Option) or param.opts[0] not in documented:
            continue
        text = documented[param.opts[0]].strip("`")
        if isinstance(param.default, int | float) and not isinstance(param.default, bool):
            assert float(text) == param.default, param.opts[0]
            checked += 1
        elif isinstance(param.default, str) and not param.default.startswith("http"):
            assert text == param.default, param.opts[0]
            checked += 1
    assert checked >= 8
    assert "https://api.deepgram.com" in documented["--api-url"]


def test_readme_exit_codes_match_the_error_classes() -> None:
    """The exit-code table lists exactly 0 and every ``BatchError`` subclass's code."""
    rows = {int(cells[0]): cells[1].lower() for cells in _table(_section("Exit codes"))}
    classes = [errors.BatchError, *_subclasses(errors.BatchError)]
    assert set(rows) == {0} | {errors.exit_code_of(cls("")) for cls in classes}
    expected_words = {
        errors.UsageError: "bad usage",
        errors.SourceError: "bad usage",
        errors.StateError: "state file",
        errors.FatalApiError: "(402: ",
        errors.StateLocked: "lock",
        errors.OutputError: "output",
        errors.Interrupted: "interrupted",
        errors.ItemError: "failed",
        errors.ForeignOutputs: "failed",
        errors.BudgetExceeded: "budget",
        errors.AccountError: "account",
        errors.ApiUnreachable: "could not be reached",
        errors.ScratchError: "temporary files",
        errors.StateWriteError: "the state file (its disk full",
        errors.StoreUnreachable: "nor s3 for an item's audio",
        errors.PlanCutShort: "a source failed once some of its items were planned",
    }
    expected_words |= {cls: "account" for cls in classes if issubclass(cls, errors.AccountError)}
    for cls in classes[1:]:
        assert cls in expected_words, f"{cls.__name__} is not checked against README"
        assert expected_words[cls] in rows[errors.exit_code_of(cls(""))], cls.__name__


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


@pytest.mark.parametrize("text", [README, REFERENCE], ids=["README", "REFERENCE"])
def test_readme_retry_table_matches_the_retry_rules(text: str) -> None:
    """Statuses README's short table and the reference's full one call retried/failed/fatal
    are the ones ``batch.retry`` treats so."""
    rows = _table(_section("Options of `dgbatch run`", text).split("### Retries", 1)[1])
    cells = (f"{re.sub(r'[(][^)]*[)]', '', row[0])} {row[1]}" for row in rows)
    statuses = ({int(s) for s in re.findall(r"\b(\d{3})\b", cell)} for cell in cells)
    retried, failed, fatal, redirected = statuses
    # "a 200 that is not a transcript", "a 400 REMOTE_CONTENT_ERROR for the media host's trouble"
    assert retried - {200, 400} == set(retry.RETRYABLE_STATUSES)
    host = b'{"err_code": "REMOTE_CONTENT_ERROR", "err_msg": "... failed to return valid data"}'
    assert retry.classify_response(400, host).action is retry.Action.RETRY
    assert fatal == set(retry.FATAL_STATUSES)
    assert failed == {400, 411, 413, 414, 415}
    for status in failed:
        assert retry.classify_response(status, b"").action is retry.Action.FAIL
    assert rows[3][0].startswith("3xx") and redirected == {301, 404}  # 301: the example
    for status in [*range(300, 400), 404]:
        assert retry.classify_response(status, b"").action is retry.Action.MISDIRECTED


def test_readme_audio_extensions_are_walked() -> None:
    """Every extension README lists for folder walks is one the walk takes."""
    from batch.naming import AUDIO_EXTENSIONS

    listed = re.search(r"audio extension \(([^)]*)\)", README)
    assert listed
    names = {f".{e.strip()}" for e in listed.group(1).replace("\n", " ").split(",")}
    names.discard(".…")
    assert names <= AUDIO_EXTENSIONS


# -- behaviour README spells out, checked against a real run --------------------------------


def test_readme_run_tag_is_the_one_sent(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """The Parameters section spells the run tag as the requests carry it."""
    documented = re.search(r"`tag=dgbatch&tag=(dgbatch-run-[^`]+)`", README)
    assert documented
    pattern = documented.group(1).replace("<N>", r"\d+").replace("<hex>", "[0-9a-f]{6}")
    make_wav(tmp_path / "a.wav")
    assert dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out")).exit_code == 0
    tags = [value for key, value in emulator.log[0].params if key == "tag"]
    assert tags[0] == "dgbatch"
    assert re.fullmatch(pattern, tags[1]), (pattern, tags[1])


def test_readme_single_file_names_hold(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``dgbatch run FILE --out DIR`` → ``OUTPUT`` example of README gives that output."""
    examples = re.findall(r"`dgbatch run ([^`\s]+) --out ([^`\s]+)` → `([^`]+)`", README)
    assert len(examples) >= 2
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for source, out, output in examples:
        make_wav(cwd / source)
        result = dgbatch("run", source, "--out", out)
        assert result.exit_code == 0, result.output
        assert (cwd / output).is_file(), (source, output)


def test_readme_folder_line_message_is_the_real_one(dgbatch: Cli, tmp_path: Path) -> None:
    """A folder in a manifest fails with the message the reference quotes; the files run."""
    quoted = re.search(r"a folder line fails with\s+`…: ([^`]+)`", DOCS)
    assert quoted
    make_wav(tmp_path / "calls" / "a.wav")
    (tmp_path / "list.txt").write_text("calls\ncalls/a.wav\n")
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "list.txt"), "--out", str(out))
    assert result.exit_code == 1, result.output
    rows = {row["source"]: row for row in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    assert rows[str(tmp_path / "calls")]["error"] == (
        f"list.txt:1: {tmp_path / 'calls'}: {quoted.group(1)}"
    )
    assert rows[str(tmp_path / "calls" / "a.wav")]["status"] == "done"


def test_readme_check_exit_codes_are_the_real_ones(emulator: Emulator) -> None:
    """``dgbatch check`` exits as the exit-code table says: key refused, query failed."""
    said = re.search(r"`dgbatch check` exits (\d+) when the key is refused and (\d+) when", README)
    assert said
    refused, failed = int(said.group(1)), int(said.group(2))
    assert Cli(None)("check", "--api-url", emulator.url, key="wrong").exit_code == refused
    assert Cli(None)("check", "--api-url", "http://127.0.0.1:9").exit_code == failed


def test_the_documented_chunk_is_the_planners() -> None:
    """README says how many stdin lines the first request waits for."""
    from batch.planner import CHUNK

    assert f"planned in chunks of {CHUNK:,}" in README
    assert f"once {CHUNK:,} lines" in README


def test_the_demo_and_the_tests_install_the_same_editable_venv() -> None:
    """``scripts/demo.sh`` installed the package plainly into the ``.venv`` that
    ``scripts/test.sh`` installs editable: a developer who ran the demo then tested and ran
    a stale copy of the code. Both install it editable."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    for name in ("demo.sh", "test.sh"):
        installs = [
            line
            for line in (scripts / name).read_text().splitlines()
            if "pip install" in line and "--upgrade pip" not in line
        ]
        assert installs and all(" -e " in line for line in installs), (name, installs)


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text: lowercase, punctuation
    dropped, spaces to ``-``, a repeated one numbered."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        number = 0
        while (slug if number == 0 else f"{slug}-{number}") in found:
            number += 1
        found.add(slug if number == 0 else f"{slug}-{number}")
    return found


@pytest.mark.parametrize("name", ["README.md", "docs/REFERENCE.md"])
def test_links_resolve(name: str) -> None:
    """Every relative link of README and the reference names a file that is there and, for
    ``#anchor``, one of its headings: README's "Details:" links land on their section."""
    page = ROOT / name
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not t.startswith("http")]
    assert len(targets) >= 5
    for target in targets:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), target
        if anchor:
            assert anchor in _anchors(linked.read_text()), target


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.BatchError, 1),
        (errors.UsageError, 2),
        (errors.SourceError, 2),  # its parent's
        (errors.StateError, 2),
        (errors.StateWriteError, 1),  # its own, over its parent's
        (errors.StateLocked, 4),
        (errors.FatalApiError, 3),
        (errors.Interrupted, 130),
        (errors.PlanCutShort, 1),
        (errors.BudgetExceeded, 1),
    ],
)
def test_each_error_takes_the_code_of_its_nearest_listed_class(
    error: type[errors.BatchError], code: int
) -> None:
    """One table of exit codes: a class not listed takes its nearest listed base's."""
    assert errors.exit_code_of(error("x")) == code
