"""Read the state for humans and scripts: ``status`` counts and one ``report`` row per item.

Both read a state file that a run may be writing (WAL readers never block the writer).
Sources and errors pass through ``redact_text`` again on the way out: belt and braces.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from batch.outputs import atomic_file
from batch.redact import redact_text
from batch.state import State

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
        "id": redact_text(row["id"]),
        "source": redact_text(row["source"]),
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


def iter_report(
    state: State, *, failed_only: bool = False, warnings_only: bool = False
) -> Iterator[dict[str, Any]]:
    """Report rows in plan order, streamed."""
    conditions = ["status = 'failed'"] if failed_only else []
    conditions += ["warning IS NOT NULL"] if warnings_only else []
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    columns = None
    for row in state.iter_rows(where):
        columns = frozenset(row.keys()) if columns is None else columns
        yield report_row(row, columns)


def write_jsonl(rows: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """One JSON object per line; returns the number of rows."""
    count = 0
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(rows: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """CSV with a header; ``outputs`` joined with ``;``."""
    writer = csv.DictWriter(stream, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({**row, "outputs": ";".join(row["outputs"])})
        count += 1
    return count


WRITERS = {"jsonl": write_jsonl, "csv": write_csv}


def save_report(state: State, path: Path) -> Path:
    """Write the full JSONL report next to the state, atomically, streamed row by row."""
    import io

    with atomic_file(path) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8")
        write_jsonl(iter_report(state), stream)
        stream.flush()
        stream.detach()  # atomic_file closes the file itself
    return path


def status_summary(state: State) -> dict[str, Any]:
    """Counts by status, attempts, audio hours, the commonest errors and the last run."""
    ((attempts, audio, timeouts),) = state.query(
        "SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(duration), 0), "
        "COALESCE(SUM(timeout_retries), 0) FROM items"
    )
    errors = state.query(
        "SELECT COALESCE(err_code, substr(error, 1, 80)), COUNT(*) FROM items "
        "WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC LIMIT 10"
    )
    counts = state.counts()
    warnings = _count_warnings(state)
    return {
        "state": str(state.path),
        "total": sum(counts.values()),
        "counts": counts,
        "attempts": int(attempts),
        "timeout_retries": int(timeouts),
        "audio_hours": round(float(audio) / 3600, 4),
        "errors": [{"error": redact_text(str(e)), "count": n} for e, n in errors],
        "warnings": warnings,
        "last_run": _last_run(state),
    }


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
    lines = [f"state: {summary['state']}", f"items: {summary['total']}"]
    lines += [f"  {name:<8} {counts[name]}" for name in counts]
    lines.append(f"attempts: {summary['attempts']}")
    if summary["timeout_retries"]:
        lines.append(
            f"retries after a timeout (possibly billed twice): {summary['timeout_retries']}"
        )
    lines.append(f"audio transcribed: {summary['audio_hours']:.2f} h")
    if summary.get("warnings"):
        lines.append(
            f"warnings: {summary['warnings']} item(s) (dgbatch report --warnings to list them)"
        )
    if summary["errors"]:
        lines.append("errors:")
        lines += [f"  {e['count']:>6}  {e['error']}" for e in summary["errors"]]
    run = summary["last_run"]
    if run:
        state = "running or crashed" if run["finished_at"] is None else f"exit {run['exit_code']}"
        lines.append(f"last run: #{run['id']} ({state})")
    return "\n".join(lines)
