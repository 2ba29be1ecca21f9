"""``dgbatch usage``: reconcile what Deepgram recorded (and billed) for a run with the state.

Every request of a run carries ``tag=dgbatch-run-<id>-<hex>`` (see ``job.run_tags``),
so Deepgram's request log (``GET /v1/projects/{id}/requests``, paged, bounded by the
run's start and end) can be filtered to exactly that run. A successful request whose
``request_id`` no item in the state holds was paid for but its result was thrown away:
typically a retry after a read timeout on a request Deepgram had in fact finished.
``/v1/projects/{id}/usage`` gives Deepgram's own hour total for the same window and tag.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from batch.account import AccountClient
from batch.client import api_session
from batch.errors import StateError
from batch.isotime import utc_iso
from batch.state import State

PAGE_SIZE = 100
MAX_PAGES = 10_000
#: Seconds added on both sides of the run's window: clocks differ, requests straddle it.
WINDOW_SLACK = 120.0


@dataclass(frozen=True, slots=True)
class RunWindow:
    """One run as the state remembers it."""

    run_id: int
    tag: str | None
    started_at: float
    finished_at: float | None

    def bounds(self) -> tuple[str, str]:
        """``start`` and ``end`` query values (ISO 8601, UTC) with slack on both sides."""
        end = self.finished_at if self.finished_at is not None else time.time()
        return utc_iso(self.started_at - WINDOW_SLACK), utc_iso(end + WINDOW_SLACK)


@dataclass
class Reconciliation:
    """The comparison, ready to print or dump as JSON."""

    run_id: int
    tag: str | None
    window: tuple[str, str]
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    billed_seconds: float = 0.0
    items_done: int = 0
    items_matched: int = 0
    transcribed_seconds: float = 0.0
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    usage_hours: float | None = None
    usage_requests: int | None = None
    #: Deepgram's log held more than ``MAX_PAGES`` pages for the window: the rest unread
    log_cut: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, hours rounded for humans and scripts alike."""
        return {
            "run_id": self.run_id,
            "tag": self.tag,
            "start": self.window[0],
            "end": self.window[1],
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "billed_hours": round(self.billed_seconds / 3600, 6),
            "items_done": self.items_done,
            "items_matched": self.items_matched,
            "transcribed_hours": round(self.transcribed_seconds / 3600, 6),
            "unmatched_requests": self.unmatched,
            "items_without_request": self.missing,
            "usage_hours": self.usage_hours,
            "usage_requests": self.usage_requests,
            "log_cut": self.log_cut,
        }


def run_window(state: State, run_id: int | None) -> RunWindow:
    """The given run, or the last one, from the ``runs`` table."""
    where, args = ("WHERE id = ?", (run_id,)) if run_id is not None else ("", ())
    rows = state.query(
        f"SELECT id, tag, started_at, finished_at FROM runs {where} ORDER BY id DESC LIMIT 1",
        args,
    )
    if not rows:
        which = f"run {run_id}" if run_id is not None else "any run"
        raise StateError(f"{state.path}: no record of {which}")
    rid, tag, started, finished = rows[0]
    return RunWindow(int(rid), tag, float(started), finished)


def request_tags(request: dict[str, Any]) -> list[str]:
    """A logged request's tags: ``response.details.tags``, ``tags``, or the path's query."""
    details = (request.get("response") or {}).get("details") or {}
    tags = details.get("tags") or request.get("tags")
    if isinstance(tags, list):
        return [str(t) for t in tags]
    query = urlsplit(str(request.get("path") or "")).query
    return [value for key, value in parse_qsl(query) if key == "tag"]


def reconcile(
    window: RunWindow,
    requests: list[dict[str, Any]],
    state_ids: dict[str, str],
    done: list[tuple[str, str | None, float | None]],
) -> Reconciliation:
    """Compare Deepgram's log for the run with the state (pure).

    Args:
        requests: Deepgram's request log entries for the window (any run).
        state_ids: every ``request_id`` the state holds → the item id holding it.
        done: ``(item id, request_id, duration)`` of items this run finished.
    """
    result = Reconciliation(window.run_id, window.tag, window.bounds())
    mine = filter(run_requests(window, done), requests)
    seen = set()
    for request in mine:
        request_id = str(request.get("request_id"))
        seen.add(request_id)
        response = request.get("response") or {}
        result.requests += 1
        if response.get("code") != 200:
            result.failed += 1
            continue
        result.succeeded += 1
        duration = float((response.get("details") or {}).get("duration") or 0.0)
        result.billed_seconds += duration
        if request_id not in state_ids:
            created = request.get("created")
            result.unmatched.append(
                {"request_id": request_id, "created": created, "duration": duration}
            )
    for item_id, item_request, item_seconds in done:
        result.items_done += 1
        result.transcribed_seconds += item_seconds or 0.0
        if item_request in seen:
            result.items_matched += 1
        else:
            result.missing.append(item_id)
    return result


def run_requests(
    window: RunWindow, done: list[tuple[str, str | None, float | None]]
) -> Callable[[dict[str, Any]], bool]:
    """Whether a logged request is the run's: it has the run's tag (any request of the
    window without one), or answered one of its items (a tag the user set)."""
    answered = {request_id for _, request_id, _ in done if request_id}

    def mine(request: dict[str, Any]) -> bool:
        return (
            window.tag is None
            or window.tag in request_tags(request)
            or str(request.get("request_id")) in answered
        )

    return mine


async def fetch_requests(
    client: AccountClient,
    project: str,
    start: str,
    end: str,
    keep: Callable[[dict[str, Any]], bool] = lambda request: True,
) -> tuple[list[dict[str, Any]], bool]:
    """The requests of the project's log between ``start`` and ``end`` that ``keep``
    takes, each cut to what ``reconcile`` reads (a 283,615-request run's whole entries
    took 800 MB), and whether the log went on past ``MAX_PAGES`` pages (unread)."""
    found: list[dict[str, Any]] = []
    for page in range(MAX_PAGES):
        query = [("start", start), ("end", end), ("limit", str(PAGE_SIZE)), ("page", str(page))]
        doc = await client.get_json(f"/v1/projects/{project}/requests", query)
        batch = doc.get("requests") if isinstance(doc, dict) else None
        if not isinstance(batch, list):
            return found, False
        found.extend(_slim(r) for r in batch if isinstance(r, dict) and keep(r))
        if len(batch) < PAGE_SIZE:
            return found, False
    return found, True


def _slim(request: dict[str, Any]) -> dict[str, Any]:
    """A logged request as ``reconcile`` reads it, nothing more."""
    response = request.get("response") or {}
    details = response.get("details") or {} if isinstance(response, dict) else {}
    return {
        "request_id": request.get("request_id"),
        "created": request.get("created"),
        "tags": request_tags(request),
        "response": {
            "code": response.get("code") if isinstance(response, dict) else None,
            "details": {"duration": details.get("duration") if isinstance(details, dict) else None},
        },
    }


async def fetch_usage(
    client: AccountClient, project: str, start: str, end: str, tag: str | None
) -> tuple[float, int]:
    """Deepgram's own total (hours, requests) for the window and tag."""
    query = [("start", start), ("end", end)] + ([("tag", tag)] if tag else [])
    doc = await client.get_json(f"/v1/projects/{project}/usage", query)
    results = doc.get("results") if isinstance(doc, dict) else None
    hours = requests = 0.0
    for bucket in results if isinstance(results, list) else []:
        hours += float(bucket.get("hours") or 0.0)
        requests += float(bucket.get("requests") or 0)
    return hours, int(requests)


def state_request_ids(state: State) -> dict[str, str]:
    """Every request id the state holds, for matching Deepgram's log."""
    rows = state.query("SELECT request_id, id FROM items WHERE request_id IS NOT NULL")
    return {str(request_id): str(item_id) for request_id, item_id in rows}


def done_in_run(state: State, run_id: int) -> list[tuple[str, str | None, float | None]]:
    """Items the run finished with a request of their own (dedupe copies excluded)."""
    rows = state.query(
        "SELECT id, request_id, duration FROM items "
        "WHERE status = 'done' AND run_id = ? AND copy_of IS NULL ORDER BY rowid",
        (run_id,),
    )
    return [(str(row[0]), row[1], row[2]) for row in rows]


def format_reconciliation(result: Reconciliation) -> str:
    """The human-readable reconciliation."""
    r = result
    lines = [
        f"run #{r.run_id} (tag {r.tag or 'none: whole window'}), Deepgram's log searched "
        f"{r.window[0]} → {r.window[1]} (the run ± {WINDOW_SLACK / 60:g} min)",
        f"Deepgram recorded {r.requests} request(s) for it: {r.succeeded} succeeded, "
        f"{r.failed} failed; billed audio {r.billed_seconds / 3600:.4f} h",
        f"state: {r.items_done} item(s) done by this run, {r.items_matched} matched to a "
        f"request; transcribed audio {r.transcribed_seconds / 3600:.4f} h",
    ]
    if r.usage_hours is not None:
        lines.append(f"usage summary: {r.usage_hours:.4f} h in {r.usage_requests} request(s)")
    if r.unmatched:
        lines.append(
            f"paid but unused: {len(r.unmatched)} successful request(s) with no result in the "
            "state (retried after a timeout, or sent twice):"
        )
        lines += [
            f"  {u['request_id']}  {u['created']}  {u['duration']:.1f} s" for u in r.unmatched
        ]
    if r.missing:
        lines.append(
            f"{len(r.missing)} done item(s) have no request in Deepgram's log yet "
            "(log lag, or outside the window)"
        )
    if r.log_cut:
        lines.append(
            f"Deepgram's log holds more than {MAX_PAGES * PAGE_SIZE:,} requests in this "
            "window: the rest was not read, so the counts above are partial"
        )
    return "\n".join(lines)


async def reconcile_run(
    state_path: Path, api_url: str, api_key: str, project: str, run_id: int | None
) -> Reconciliation:
    """Read the run from the state, fetch Deepgram's log and usage, compare."""
    state = State.open(state_path, readonly=True)
    try:
        window = run_window(state, run_id)
        ids = state_request_ids(state)
        done = done_in_run(state, window.run_id)
    except sqlite3.OperationalError as exc:
        msg = f"{state_path}: written before run tags existed ({exc}); no run to reconcile"
        raise StateError(msg) from exc
    finally:
        state.close()
    start, end = window.bounds()
    async with api_session(api_url) as session:
        client = AccountClient(session, api_url, api_key)
        keep = run_requests(window, done)
        requests, cut = await fetch_requests(client, project, start, end, keep)
        hours, count = await fetch_usage(client, project, start, end, window.tag)
    result = reconcile(window, requests, ids, done)
    result.usage_hours, result.usage_requests, result.log_cut = hours, count, cut
    return result
