"""Read the state for humans and scripts: ``status`` counts and one ``report`` row per item.

Both read a state file that a run may be writing (WAL readers never block the writer).
Sources and errors pass through ``redact_text`` again on the way out: belt and braces.
JSONL lines are built by SQLite (``json_object``), which is several times faster than
building and dumping a dict per row in Python: the run rewrites the whole report at its
end, so this is per item of the state, every run. A line in which redaction could find
anything at all is rebuilt in Python through ``redact_text``.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from batch.redact import may_hold_secret, redact_source, redact_text
from batch.reportfile import atomic_text
from batch.state import State
from batch.terminal import plain

_T = TypeVar("_T")

REPORT_FIELDS = (
    "id",
    "source",
    "kind",
    "status",
    "attempts",
    "http_status",
    "error",
    "err_code",
    "request_id",
    "duration",
    "outputs",
    "timeout_retries",
    "warning",
    "copy_of",
)


def report_row(row: sqlite3.Row, columns: frozenset[str] | None = None) -> dict[str, Any]:
    """One item as a report row, secrets redacted (``columns``: the row's, if known)."""
    columns = frozenset(row.keys()) if columns is None else columns
    return {
        "id": redact_source(row["id"]),
        "source": redact_source(row["source"]),
        "kind": row["kind"],
        "status": row["status"],
        "attempts": row["attempts"],
        "http_status": row["http_status"],
        "error": redact_text(row["error"]) if row["error"] else None,
        "err_code": row["err_code"],
        "request_id": row["request_id"],
        "duration": row["duration"],
        "outputs": json.loads(row["outputs"]) if row["outputs"] else [],
        "timeout_retries": row["timeout_retries"],
        "warning": _optional(row, "warning", columns),
        "copy_of": _optional(row, "copy_of", columns),
    }


def _optional(row: sqlite3.Row, column: str, columns: frozenset[str]) -> Any:
    """A column added by a later migration: None in a state file opened read-only before it."""
    return row[column] if column in columns else None


#: one report line per item, as SQLite's JSON text; the keys in ``REPORT_FIELDS`` order
_JSON_LINE = "json_object({})".format(
    ", ".join(
        f"'{name}', json(COALESCE(outputs, '[]'))" if name == "outputs" else f"'{name}', {name}"
        for name in REPORT_FIELDS
    )
)


def _where(failed_only: bool, warnings_only: bool) -> str:
    """Both filters together list the items that need a look: failed ones and kept ones
    with a warning (no failed item has a warning, so "both at once" would be none)."""
    conditions = ["status = 'failed'"] if failed_only else []
    conditions += ["warning IS NOT NULL"] if warnings_only else []
    return f"WHERE {' OR '.join(conditions)}" if conditions else ""


def iter_report(
    state: State, *, failed_only: bool = False, warnings_only: bool = False
) -> Iterator[dict[str, Any]]:
    """Report rows in plan order, streamed."""
    columns = None
    for row in state.iter_rows(_where(failed_only, warnings_only)):
        columns = frozenset(row.keys()) if columns is None else columns
        yield report_row(row, columns)


def dump_row(row: dict[str, Any]) -> str:
    """A report row as one compact JSON line (as SQLite writes them)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def iter_jsonl(
    state: State, *, failed_only: bool = False, warnings_only: bool = False
) -> Iterator[str]:
    """Report lines in plan order, streamed (see the module's docstring)."""
    where = _where(failed_only, warnings_only)
    try:
        lines = state.iter_tuples(f"SELECT rowid, {_JSON_LINE} FROM items {where}")
    except sqlite3.OperationalError:  # columns of a later migration missing (read-only)
        rows = iter_report(state, failed_only=failed_only, warnings_only=warnings_only)
        yield from map(dump_row, rows)
        return
    for rowid, line in lines:
        yield _redacted_line(state, rowid) if may_hold_secret(line) else line


def _redacted_line(state: State, rowid: int) -> str:
    (row,) = state.iter_rows("WHERE rowid = ?", (rowid,))
    return dump_row(report_row(row))


def write_jsonl(state: State, stream: TextIO, **where: bool) -> int:
    """One JSON object per line; returns the number of rows."""
    count = 0
    for line in iter_jsonl(state, **where):
        stream.write(line + "\n")
        count += 1
    return count


def write_csv(state: State, stream: TextIO, **where: bool) -> int:
    """CSV with a header; ``outputs`` joined with ``;``."""
    writer = csv.DictWriter(stream, fieldnames=REPORT_FIELDS, lineterminator="\n")
    # csv quotes a cell holding a line end of its own lineterminator, so not a lone "\r"
    # (a source or an error may hold one), which readers take for a line end: such a row
    # is quoted whole
    quoted = csv.DictWriter(
        stream, fieldnames=REPORT_FIELDS, lineterminator="\n", quoting=csv.QUOTE_ALL
    )
    writer.writeheader()
    count = 0
    for row in iter_report(state, **where):
        cells = {**row, "outputs": ";".join(row["outputs"])}
        has_cr = any(isinstance(cell, str) and "\r" in cell for cell in cells.values())
        (quoted if has_cr else writer).writerow(cells)
        count += 1
    return count


WRITERS = {"jsonl": write_jsonl, "csv": write_csv}


def save_report(state: State, path: Path) -> Path:
    """Write the full JSONL report next to the state, atomically, streamed row by row."""
    with atomic_text(path) as stream:
        write_jsonl(state, stream)
    return path


def status_summary(state: State) -> dict[str, Any]:
    """Counts by status, attempts, audio hours, the commonest errors and the last run."""
    ((attempts, timeouts),) = state.query(
        "SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(timeout_retries), 0) FROM items"
    )
    audio, copied = _audio_seconds(state)
    errors = _commonest_errors(state)
    counts = state.counts()
    warnings = _count_warnings(state)
    return {
        "state": str(state.path),
        "total": sum(counts.values()),
        "counts": counts,
        "attempts": int(attempts),
        "timeout_retries": int(timeouts),
        "audio_hours": round(audio / 3600, 4),
        "copies_audio_hours": round(copied / 3600, 4),
        "errors": [_error_row(group, count, example) for group, count, example in errors],
        "warnings": warnings,
        "kept_answers": state.kept_count(),
        "last_run": _last_run(state),
    }


def _commonest_errors(state: State, most: int = 10) -> list[tuple[str, int, str]]:
    """Failures grouped by code, with one message as an example (a code alone, "Bad
    Request", does not say what went wrong). Failures found while planning have no code:
    they group by what their message says is wrong, without the line, path or name
    (``m.txt:3: /a/b.wav: no such file`` is "no such file")."""
    groups: dict[str, list[Any]] = {}
    for code, error in state.iter_tuples(
        "SELECT err_code, error FROM items WHERE status = 'failed'"
    ):
        group = code or error_kind(error or "")
        entry = groups.setdefault(group, [0, error or ""])
        entry[0] += 1
        entry[1] = min(entry[1], error or "")
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))[:most]
    return [(group, count, example) for group, (count, example) in ranked]


#: what names one failure rather than its kind: quoted names, parentheses, numbers
_SPECIFIC = re.compile(r"'[^']*'|\"[^\"]*\"|\([^)]*\)|\d+")


def error_kind(error: str) -> str:
    """The kind of failure a message without a code tells: its last clause, with names,
    numbers and parentheses shown as ``…`` (first: a ``": "`` inside them, as in a JSON
    example, is no clause)."""
    reason = _SPECIFIC.sub("…", error).rsplit(": ", 1)[-1]
    return " ".join(reason.split())[:80]


def _error_row(group: str, count: int, example: str | None) -> dict[str, Any]:
    """One line of the commonest errors; ``example`` only when it says more than ``group``
    (``timeout`` is said more of by ``timeout: upload stalled (no progress for 60 s)``)."""
    row: dict[str, Any] = {"error": redact_text(group), "count": count}
    if example and example != group:
        row["example"] = redact_text(example)
    return row


def _audio_seconds(state: State) -> tuple[float, float]:
    """Audio Deepgram transcribed, and audio of ``--dedupe`` copies (not sent, not paid;
    none before migration m002)."""
    try:
        ((sent, copied),) = state.query(
            "SELECT COALESCE(SUM(CASE WHEN copy_of IS NULL THEN duration END), 0), "
            "COALESCE(SUM(CASE WHEN copy_of IS NOT NULL THEN duration END), 0) FROM items"
        )
    except sqlite3.OperationalError:
        ((sent,),) = state.query("SELECT COALESCE(SUM(duration), 0) FROM items")
        copied = 0.0
    return float(sent), float(copied)


def _count_warnings(state: State) -> int:
    """Items kept but flagged (empty or truncated transcript); 0 before migration m002."""
    try:
        ((count,),) = state.query("SELECT COUNT(*) FROM items WHERE warning IS NOT NULL")
    except sqlite3.OperationalError:
        return 0
    return int(count)


def _last_run(state: State) -> dict[str, Any] | None:
    rows = state.query(
        "SELECT id, started_at, finished_at, exit_code, host, pid FROM runs "
        "ORDER BY id DESC LIMIT 1"
    )
    if not rows:
        return None
    run_id, started, finished, exit_code, host, pid = rows[0]
    return {
        "id": run_id,
        "started_at": started,
        "finished_at": finished,
        "exit_code": exit_code,
        "host": host,
        "pid": pid,
    }


def format_status(summary: dict[str, Any]) -> str:
    """The human-readable status table."""
    counts = summary["counts"]
    lines = [f"state: {plain(summary['state'])}", f"items: {summary['total']}"]
    lines += [f"  {name:<8} {counts[name]}" for name in counts]
    lines.append(f"attempts: {summary['attempts']}")
    if summary["timeout_retries"]:
        lines.append(f"retries of a request Deepgram may have billed: {summary['timeout_retries']}")
    copies = summary.get("copies_audio_hours")
    also = f" (and {copies:.2f} h of --dedupe copies, not sent)" if copies else ""
    lines.append(f"audio transcribed: {summary['audio_hours']:.2f} h{also}")
    if summary.get("warnings"):
        lines.append(
            f"warnings: {summary['warnings']} item(s) (dgbatch report --warnings to list them)"
        )
    if summary.get("kept_answers"):
        lines.append(
            f"paid answers kept, outputs not yet written: {summary['kept_answers']} (the next "
            "run writes them without sending; failed ones with --retry-failed)"
        )
    if summary["errors"]:
        lines.append("errors:")
        for error in summary["errors"]:
            example = f" (e.g. {plain(error['example'])})" if "example" in error else ""
            lines.append(f"  {error['count']:>6}  {plain(error['error'])}{example}")
    run = summary["last_run"]
    if run:
        state = "running or crashed" if run["finished_at"] is None else f"exit {run['exit_code']}"
        lines.append(f"last run: #{run['id']} ({state})")
    return "\n".join(lines)
