"""``dgbatch run --dry-run``: plan everything, send nothing, say what it would cost.

The plan runs against a throwaway copy of the state (an SQLite backup into a temporary
folder, or an empty state when there is none yet), so the estimate counts exactly what
a real run would send (done items are skipped, changed files re-queued) while the real
state file is never written, not even locked. No API key is needed. Local files are
timed with mutagen; URLs and S3 objects are counted by size only (their duration, and
their cost, is a guess at 128 kbit/s, shown apart from the measured part), unless
``--probe`` fetches their first (Ogg: also last) 64 KiB to time them with mutagen too
(and, for a URL, to learn its size from the answer). An item of unknown length (a URL
not probed) adds nothing to the cost, which is then shown as a lower bound.
With ``--dedupe``, local files are keyed as the run keys them (``Dedupe.for_run``: one
function, so the two cannot drift) and each key is counted and priced once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from batch.billing import make_budget
from batch.budget import audio_span, dollars
from batch.client import USER_AGENT
from batch.config import RunConfig
from batch.dedupe import Dedupe, answers, kept_answer, stored_key
from batch.errors import Interrupted, ItemError, StateError
from batch.job import (
    asked_anew_text,
    refuse_report_place,
    start_plan,
    warn_over_deepgrams_limit,
)
from batch.keeping import Keeping
from batch.localfiles import file_sha256, open_regular
from batch.media import local_problem, size_problem
from batch.models import ItemKind, Params
from batch.naming import (
    is_s3_uri,
    output_location,
    output_place_problem,
    output_relpath,
    output_root,
)
from batch.outputguard import check_spares_source
from batch.params import merge_params
from batch.pricing import PRICES_AS_OF, estimate_cost, price_per_hour, priced_model
from batch.probe import (
    guess_seconds,
    local_duration,
    probe_s3,
    probe_url,
)
from batch.realsources import RealSources
from batch.records import Some
from batch.redact import redact_source
from batch.s3 import S3, S3Options
from batch.signals import SignalLatch, latched_signals
from batch.state import State, stored_params
from batch.statefile import connect, holder_of
from batch.terminal import shown
from batch.transcripts import audio_digest, parse_transcript

#: One probe's limit: a stalled server must not hold up the estimate.
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
#: A remote item to probe: id, kind, source, size.
Remote = tuple[str, str, str, int | None]

#: How ``by_kind`` names item kinds for people.
KIND_LABELS = {ItemKind.FILE.value: "upload", ItemKind.URL.value: "url", ItemKind.S3.value: "s3"}


@dataclass(frozen=True, slots=True)
class Probed:
    """What ``--probe`` learned of one remote item; None where it learned nothing."""

    seconds: float | None
    size: int | None


#: An item ``--probe`` learned nothing of (or that was not probed).
NOT_PROBED = Probed(None, None)


@dataclass
class Estimate:
    """What a dry run found; ``as_dict`` is the ``--json`` output."""

    state: str
    to_send: int = 0
    already_done: int = 0
    failed: int = 0
    #: --dedupe copies of an item counted before: not sent, not priced
    copies: int = 0
    #: items with a paid answer an earlier run kept (``batch.keeping``): written, not sent
    kept: int = 0
    #: outputs already in a local ``--out`` for the item's very audio (a state lost):
    #: adopted by the run, not sent
    adopted: int = 0
    #: why nothing can be written into a local ``--out`` (read-only), or None
    out_unwritable: str | None = None
    #: the run holding the real state while the dry run copied it (``pid N on HOST``)
    held_by: str | None = None
    #: an S3 ``--out`` with a new (or lost) state: its outputs were not looked for, so
    #: items whose transcripts are there already (the run skips them) count as to send
    s3_outputs_unchecked: bool = False
    #: local files the run would fail before sending them, by ``err_code`` (empty, missing,
    #: not_audio, ...): not sent, not priced
    fail_locally: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    unsized: int = 0
    measured_seconds: float = 0.0
    measured: int = 0
    guessed_seconds: float = 0.0
    unknown: int = 0
    cost_by_model: dict[str, float | None] = field(default_factory=dict)
    price_source: str = PRICES_AS_OF
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: done items listed with other params than they were sent with: not sent again
    asked_anew: Some = field(default_factory=lambda: Some(0, []))
    #: ``--max-audio-hours`` in seconds and ``--max-cost`` in USD, and what the state used
    cap_seconds: float | None = None
    used_seconds: float = 0.0
    cap_usd: float | None = None
    used_usd: float = 0.0

    @property
    def cost(self) -> float | None:
        """Total USD, None if any model's price is unknown."""
        costs = list(self.cost_by_model.values())
        return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)

    @property
    def cost_is_lower_bound(self) -> bool:
        """Items of unknown length (no duration, no size) add nothing to ``cost``: the real
        cost is higher by an unknown amount, and must not read as an exact $0."""
        return self.unknown > 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (durations in seconds and hours)."""
        total = self.measured_seconds + self.guessed_seconds
        return {
            "state": self.state,
            "state_modified": False,
            "to_send": self.to_send,
            "by_kind": dict(self.by_kind),
            "already_done": self.already_done,
            "done_with_other_params": self.asked_anew.total,
            "done_with_other_params_first": self.asked_anew.first,
            "failed": self.failed,
            "dedupe_copies": self.copies,
            "kept_answers": self.kept,
            "adopted": self.adopted,
            "out_unwritable": self.out_unwritable,
            "s3_outputs_unchecked": self.s3_outputs_unchecked,
            "state_held_by": self.held_by,
            "fail_locally": dict(self.fail_locally),
            "bytes": self.bytes,
            "items_without_size": self.unsized,
            "duration_seconds": round(self.measured_seconds, 3),
            "items_with_duration": self.measured,
            "guessed_seconds": round(self.guessed_seconds, 3),
            "items_without_estimate": self.unknown,
            "estimated_hours": round(total / 3600, 6),
            "estimated_cost_usd": None if self.cost is None else round(self.cost, 4),
            "cost_is_lower_bound": self.cost_is_lower_bound,
            "cost_by_model": {
                m: None if c is None else round(c, 4) for m, c in self.cost_by_model.items()
            },
            "prices": self.price_source,
            "budget_seconds": self.cap_seconds,
            "budget_used_seconds": round(self.used_seconds, 3),
            "budget_usd": self.cap_usd,
            "budget_used_usd": round(self.used_usd, 6),
            "over_budget": self.over_budget,
            "examples": self.examples,
        }

    @property
    def over_budget(self) -> bool:
        """The audio to send (or its cost), with what the state used, passes a budget cap:
        the run would stop there (exit 1), the rest pending."""
        total = self.used_seconds + self.measured_seconds + self.guessed_seconds
        audio = self.cap_seconds is not None and total > self.cap_seconds
        cost = self.cap_usd is not None and self.used_usd + (self.cost or 0.0) > self.cap_usd
        return audio or cost


async def dry_run(
    config: RunConfig,
    stdin: TextIO | None = None,
    say: Callable[[str], object] = lambda text: None,
) -> Estimate:
    """Plan into a copy of the state and estimate what would be sent; ``say`` how far the
    estimate got, every ``ESTIMATE_NEWS`` seconds (100,000 files: half a minute)."""
    with tempfile.TemporaryDirectory(prefix="dgbatch-dry-run-") as tmp:
        copy = Path(tmp) / "state.sqlite"
        _copy_state(config.state_path, copy)
        state = _open_copy(copy, config.state_path)
        s3 = S3(S3Options(endpoint_url=config.s3_endpoint_url, threads=config.concurrency + 8))
        secrets = RealSources()  # to tell URLs differing in a secret apart, and to probe
        try:
            await refuse_report_place(config, s3)  # what the run would refuse, or warn of
            warn_over_deepgrams_limit(config)
            run_id = state.start_run("dry-run")
            with latched_signals() as signals:
                force_since, _ = state.begin_force(config.force)
                try:
                    plan = await start_plan(
                        config, state, run_id, stdin, s3, signals, secrets, force_since
                    )
                    with signals.routed_to(lambda sig: plan.cancel.set()):  # the planner stops
                        await plan.finish(stopped=False)  # and raises Interrupted (exit 130)
                except Interrupted:  # said as a run says it ("the same command resumes")
                    raise Interrupted("interrupted while planning; nothing was sent") from None
                probed = await _probed(config, state, s3, signals, secrets) if config.probe else {}
                if signals.received is not None:  # came as the plan ended: still a stop
                    raise Interrupted(f"interrupted by {signals.received.name}; nothing was sent")
                keeping = Keeping.for_run(config, state, run_id, force_since)
                stop = threading.Event()
                with signals.routed_to(lambda sig: stop.set()):  # Ctrl-C: 130, not "Aborted!"
                    tick = _ticker(stop, say)
                    estimate = await asyncio.to_thread(
                        _estimate, config, state, probed, keeping, tick
                    )
            estimate.asked_anew = state.done_asked_anew(run_id)
            if estimate.to_send or estimate.copies or estimate.kept or estimate.adopted:
                estimate.out_unwritable = _out_unwritable(config.out)  # with nothing to write,
                # the run goes on without its lock and ends well
            estimate.held_by = holder_of(config.state_path)
            fresh = estimate.already_done == 0  # a fresh container, or a state lost
            # under a --force (this one, or one underway) the run sends them all
            unchecked = is_s3_uri(config.out) and fresh and force_since is None
            estimate.s3_outputs_unchecked = unchecked and estimate.to_send > 0
            return estimate
        finally:
            secrets.close()
            state.close()
            s3.close()


async def _probed(
    config: RunConfig, state: State, s3: S3, signals: SignalLatch, secrets: RealSources
) -> dict[str, Probed]:
    """``probe_remote``, stopped by a signal (exit 130): a probe of many URLs takes long."""
    task = asyncio.current_task()
    assert task is not None  # a coroutine of the dry run's task

    def cancel(sig: signal.Signals) -> None:
        task.cancel()

    with signals.routed_to(cancel):
        try:
            return await probe_remote(config, state, s3, secrets)
        except asyncio.CancelledError:
            raise Interrupted("interrupted while probing; nothing was sent") from None


def _out_unwritable(out: str) -> str | None:
    """Why nothing can be written into a local ``--out`` (its nearest existing folder on a
    read-only mount, or not writable by this user), without making anything there."""
    if is_s3_uri(out):
        return None
    folder = Path(out).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if os.access(folder, os.W_OK):
        return None
    return "Read-only file system" if _read_only_mount(folder) else "Permission denied"


def _read_only_mount(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def _open_copy(copy: Path, real: Path) -> State:
    """The dry run's copy of the state, opened; an error about it names the real file
    (the copy's folder is gone by the time the user reads it)."""
    try:
        return State.open(copy, private=True)
    except StateError as exc:
        raise type(exc)(str(exc).replace(str(copy), str(real))) from exc


def _copy_state(source: Path, target: Path) -> None:
    """An online backup (safe while another run writes it); nothing when there is none."""
    if not source.exists():
        return
    src = connect(source, readonly=True)  # its path quoted ('#'), and read in a read-only folder
    try:
        try:
            dst = sqlite3.connect(target)
            with dst:
                src.backup(dst)
            dst.close()
        finally:
            src.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{source}: cannot read the state file ({exc})") from exc


async def probe_remote(
    config: RunConfig, state: State, s3: S3, secrets: RealSources
) -> dict[str, Probed]:
    """What could be learned of each S3/URL item to send, by item id.

    ``config.concurrency`` workers share one lazy iterator over the state, so at most
    that many probes (128 KiB each at most) are in flight whatever the batch size.
    Items missing from the result fall back to the size guess.
    """
    remotes = _remote_items(state, secrets)
    found: dict[str, Probed] = {}
    async with aiohttp.ClientSession(
        timeout=PROBE_TIMEOUT, headers={"User-Agent": USER_AGENT}
    ) as session:

        async def worker() -> None:
            for item_id, kind, source, size in remotes:
                probed = await _probe_one(session, s3, kind, source, size)
                if probed.seconds is not None or probed.size is not None:
                    found[item_id] = probed

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    return found


def _remote_items(state: State, secrets: RealSources) -> Iterator[Remote]:
    """S3 and URL items still to send, read lazily (a prefix may hold millions), each with
    its real source: the state's is redacted (``?sig=REDACTED``), and its host refused it."""
    kinds = (ItemKind.S3.value, ItemKind.URL.value)
    for row in state.iter_rows("WHERE status IN ('pending', 'running')"):
        if row["kind"] in kinds:
            yield row["id"], row["kind"], secrets.get(row["id"], row["source"]), row["size"]


async def _probe_one(
    session: aiohttp.ClientSession, s3: S3, kind: str, source: str, size: int | None
) -> Probed:
    """One item's measured seconds (None: guessed from its size) and, for a URL, the size
    its server stated (an S3 listing already gave every object's)."""
    if kind == ItemKind.S3.value:
        return Probed(await probe_s3(s3, source, size), None)
    return Probed(*await probe_url(session, source, size))


#: seconds between two lines saying how far a long estimate got
ESTIMATE_NEWS = 5.0


def _ticker(stop: threading.Event, say: Callable[[str], object]) -> Callable[[int, int], None]:
    """Called with each item estimated (the how-manieth, of how many): raises
    ``Interrupted`` once ``stop`` is set, and says how far it got every ``ESTIMATE_NEWS``
    s (reading each local file's duration makes a 100,000-file folder's estimate take
    half a minute)."""
    last = time.monotonic()

    def tick(seen: int, total: int) -> None:
        nonlocal last
        if stop.is_set():
            raise Interrupted("interrupted while estimating; nothing was sent")
        if time.monotonic() - last >= ESTIMATE_NEWS:
            last = time.monotonic()
            say(f"dry run: {seen:,} of {total:,} item(s) estimated …")

    return tick


def _estimate(
    config: RunConfig,
    state: State,
    probed: dict[str, Probed],
    keeping: Keeping,
    tick: Callable[[int, int], None] = lambda seen, total: None,
) -> Estimate:
    result = Estimate(state=str(config.state_path))
    counts = state.counts()
    total = counts["pending"] + counts["running"]
    result.already_done, result.failed = counts["done"], counts["failed"]
    seconds_by_model: dict[str, float] = {}
    is_copy = _copy_finder(config, state)
    kept = state.kept_ids()
    root = output_root(config.out)  # resolved once: its links do not change per item
    for seen, row in enumerate(state.iter_rows("WHERE status IN ('pending', 'running')"), 1):
        tick(seen, total)
        own = stored_params(row["params"])
        sent = merge_params(config.params, own)
        has_kept = row["id"] in kept and keeping.answer_now(row["id"], own) is not None
        problem = (
            None if has_kept else _local_problem(config, root, row, sent) or _in_out(config, row)
        )
        if problem == "adopted":
            result.adopted += 1
            continue
        if problem is not None:  # a kept answer is written whatever became of its file
            result.fail_locally[problem] += 1
            continue
        if len(result.examples) < config.dry_run_examples:
            result.examples.append(_example(config, row))  # a copy gets outputs too
        if is_copy(row, own):  # first: a kept leader's copies are copies all the same
            result.copies += 1
            continue
        if has_kept:
            result.kept += 1
            continue
        seconds = _add_item(result, row, probed.get(row["id"], NOT_PROBED))
        model = priced_model(sent) or "(default)"
        seconds_by_model[model] = seconds_by_model.get(model, 0.0) + (seconds or 0.0)
    for model, seconds in seconds_by_model.items():
        per_hour = price_per_hour(None if model == "(default)" else model, config.price_per_hour)
        result.cost_by_model[model] = estimate_cost(seconds, per_hour)
    if config.price_per_hour is not None:
        result.price_source = f"--price-per-hour {config.price_per_hour:g}"
    budget = make_budget(config, state)
    if budget is not None and budget.audio is not None:
        result.cap_seconds, result.used_seconds = budget.audio.cap, budget.audio.used
    if budget is not None and budget.cost is not None:
        result.cap_usd, result.used_usd = budget.cost.cap, budget.cost.used
    return result


def _local_problem(config: RunConfig, root: str, row: sqlite3.Row, sent: Params) -> str | None:
    """The ``err_code`` a local file fails with before it is sent (the run's own checks,
    in its order: its output would replace it, gone, changed, empty, not audio), or None:
    such an item costs nothing. An S3 object fails so when it was listed empty or over
    2 GB. Any item whose outputs could never be written (a path or key too long) fails
    first (``sending``); ``root`` is ``output_root`` of ``--out``."""
    if output_place_problem(root, row["out_name"], config.formats) is not None:
        return "output_path"
    if row["kind"] == ItemKind.S3.value:
        return size_problem(None if row["size"] < 0 else row["size"])
    if row["kind"] != ItemKind.FILE.value:
        return None
    try:
        if not is_s3_uri(config.out):
            check_spares_source(Path(config.out), row["out_name"], config.formats, row["source"])
    except ItemError as exc:
        return exc.code
    return local_problem(row["source"], row["fingerprint"], sent, sniff=config.sniff)


def _in_out(config: RunConfig, row: sqlite3.Row) -> str | None:
    """What the run does with an item whose json is already where its own goes in a local
    ``--out``, written by no run this state knows (a state lost): adopts it when it is of
    the file's very audio (``Adoption.same_audio``: "adopted"), fails it unsent otherwise
    (``output_exists``); None when there is none, or ``--force`` redoes it."""
    if is_s3_uri(config.out) or row["forced"] or row["outputs"] is not None:
        return None
    if "json" not in config.formats:  # adopted with every format asked for, json first
        return None
    body = _json_in_out(config, row["out_name"])
    if body is None:
        return None
    said = audio_digest(parse_transcript(body))
    if row["kind"] == ItemKind.FILE.value and said is not None:
        with contextlib.suppress(OSError):
            if file_sha256(row["source"]) == said:
                return "adopted"
    return "output_exists"


def _json_in_out(config: RunConfig, out_name: str) -> bytes | None:
    """The json at ``out_name`` in a local ``--out`` (None: no such file)."""
    try:
        with open_regular(str(Path(config.out) / output_relpath(out_name, "json"))) as handle:
            return handle.read()
    except OSError:
        return None


def _answers_there(config: RunConfig, out_name: str, key: str) -> bool:
    """Whether the json at ``out_name`` in a local ``--out`` is the answer for ``key``, as
    the run checks it (``Copies._earlier``); an S3 ``--out`` is taken at the state's word."""
    if is_s3_uri(config.out):
        return True
    body = _json_in_out(config, out_name)
    response = None if body is None else parse_transcript(body)
    return response is not None and answers(response, key)


def _copy_finder(config: RunConfig, state: State) -> Callable[[sqlite3.Row, Params], bool]:
    """Whether an item is a ``--dedupe`` copy of one counted before, or of one an earlier
    run sent and finished or whose answer is kept (``State.done_content``,
    ``State.kept_content``, under any of its ``Dedupe.answering_keys``, as the run looks;
    not for an item ``--force`` re-queued), never without ``--dedupe``.

    Keys are the run's (``Dedupe.key_now``); a file that cannot be read has no key and is
    counted, as the run sends it (and fails it) on its own.
    """
    if not config.dedupe:
        return lambda row, own: False
    dedupe = Dedupe.for_run(config)
    seen: set[str] = set()

    def is_copy(row: sqlite3.Row, own: Params) -> bool:
        if row["kind"] != ItemKind.FILE.value:
            return False
        try:
            key = dedupe.key_now(row["source"], own)
        except OSError:
            return False
        if key in seen:
            return True
        seen.add(key)
        if row["forced"]:
            return False
        return any(_earlier(row["id"], k) for k in dedupe.answering_keys(key, own))

    def _earlier(item_id: str, key: str) -> bool:
        found = state.done_content(stored_key(key), item_id)
        if found is not None:
            return _answers_there(config, found[1], key)
        return kept_answer(state.kept_content(stored_key(key), item_id), key) is not None

    return is_copy


def _add_item(result: Estimate, row: sqlite3.Row, probed: Probed) -> float | None:
    """Count one item to send; its seconds (measured or guessed) or None if unknown.

    ``probed`` is what ``--probe`` learned of the item (remote items only): its duration,
    and the size a URL's server stated, which the state does not know.
    """
    result.to_send += 1
    result.by_kind[KIND_LABELS.get(row["kind"], row["kind"])] += 1
    size = row["size"] if row["size"] is not None else probed.size
    if size is None:
        result.unsized += 1
    else:
        result.bytes += int(size)
    is_file = row["kind"] == ItemKind.FILE.value
    measured = local_duration(row["source"]) if is_file else probed.seconds
    if measured is not None:
        result.measured += 1
        result.measured_seconds += measured
        return measured
    guessed = guess_seconds(size)
    if guessed is None:
        result.unknown += 1
        return None
    result.guessed_seconds += guessed
    return guessed


def _example(config: RunConfig, row: sqlite3.Row) -> dict[str, Any]:
    name = row["out_name"] or row["id"]
    outputs = [output_location(config.out, output_relpath(name, fmt)) for fmt in config.formats]
    return {"source": redact_source(row["source"]), "outputs": outputs}


def _usd(amount: float) -> str:
    """Dollars with cents, or with 4 decimals below a dollar (small test batches)."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def format_estimate(estimate: Estimate) -> str:
    """The human-readable dry-run summary."""
    e = estimate.as_dict()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(e["by_kind"].items())) or "nothing"
    lines = [
        f"dry run: nothing sent, {e['state']} not modified",
        f"would send {e['to_send']} item(s): {kinds}"
        f" ({e['already_done']} already done, {e['failed']} failed, not sent: inputs found"
        " broken while planning, or earlier runs' failures)",
        *_said(
            asked_anew_text(Some(e["done_with_other_params"], e["done_with_other_params_first"]))
        ),
        *_not_sent(e["dedupe_copies"], _COPIES),
        *_not_sent(e["kept_answers"], _KEPT),
        *_not_sent(e["adopted"], _ADOPTED),
        *_said(_unwritable(e["out_unwritable"])),
        *_said(_unchecked(e["s3_outputs_unchecked"])),
        *_said(_held(e["state_held_by"])),
        *_failing(e["fail_locally"]),
        f"bytes: {e['bytes']:,}"
        + (
            f" (+{e['items_without_size']} item(s) of unknown size)"
            if e["items_without_size"]
            else ""
        ),
        f"audio: {e['duration_seconds'] / 3600:.3f} h measured in {e['items_with_duration']} "
        f"item(s), {e['guessed_seconds'] / 3600:.3f} h guessed from sizes, "
        f"{e['items_without_estimate']} item(s) unknown",
        f"estimated cost: {_cost_text(e)}",
        *_budget(e),
    ]
    lines += [f"  {x['source']} → {', '.join(x['outputs'])}" for x in e["examples"]]
    written = e["to_send"] + e["dedupe_copies"] + e["kept_answers"]
    if written > len(e["examples"]):
        lines.append(f"  … and {written - len(e['examples'])} more")
    return "\n".join(shown(line) for line in lines)  # names others chose: inert


def _budget(e: dict[str, Any]) -> list[str]:
    """A line per cap of ``--max-audio-hours`` / ``--max-cost`` (none without a cap)."""
    lines = []
    if e["budget_seconds"] is not None:
        cap, used = e["budget_seconds"], e["budget_used_seconds"]
        over = used + e["duration_seconds"] + e["guessed_seconds"] > cap
        lines.append(
            f"budget: {audio_span(cap)} of audio, {audio_span(used)} already transcribed in "
            f"this state: {_verdict(e, over)}"
        )
    if e["budget_usd"] is not None:
        cap, used, cost = e["budget_usd"], e["budget_used_usd"], e["estimated_cost_usd"]
        unpriced = sorted(m for m, c in e["cost_by_model"].items() if c is None)
        verdict = (
            f"no price is known for {', '.join(unpriced)}: the run stops at its first item "
            "(exit 1; --price-per-hour prices it)"
            if unpriced
            else _verdict(e, used + cost > cap)
        )
        lines.append(
            f"budget: {dollars(cap)}, {dollars(used)} already transcribed in this state, "
            f"each item at its model's price: {verdict}"
        )
    return lines


def _verdict(e: dict[str, Any], over: bool) -> str:
    """Whether the estimate fits one cap, as the run would then behave."""
    unknown = e["items_without_estimate"]
    if over:
        return "the estimate passes it, so the run would stop there (exit 1, the rest pending)"
    if unknown:
        return (
            f"the rest of the estimate fits, but {unknown} item(s) of unknown length may pass "
            "it (the run stops there, exit 1)"
        )
    return "the estimate fits"


def _failing(by_code: dict[str, int]) -> list[str]:
    """The line for the local files the run would fail without sending (none: no line)."""
    if not by_code:
        return []
    codes = ", ".join(f"{code} {n}" for code, n in sorted(by_code.items()))
    return [f"{sum(by_code.values())} file(s) would fail before being sent, unpaid ({codes})"]


def _cost_text(e: dict[str, Any]) -> str:
    """The cost, marked as a lower bound (``≥``) when items of unknown length add to it."""
    cost = e["estimated_cost_usd"]
    prices = e["prices"]
    at = f"at {prices}" if prices.startswith("--") else f"at list prices {prices}"
    if cost is None:
        return f"unknown (pass --price-per-hour) {at}"
    if not e["cost_is_lower_bound"]:
        return f"{_usd(cost)} {at}"
    return f"≥ {_usd(cost)} {at}, plus {e['items_without_estimate']} item(s) of unknown length"


#: items written without being sent: what --dedupe folded, and those an earlier run paid
#: for and could not write
_COPIES = (
    "are copies of identical audio (--dedupe): folded, not sent nor priced (their outputs "
    "come from the original's answer)"
)
_KEPT = "have a paid answer an earlier run kept: written from it, not sent nor priced"
_ADOPTED = (
    "have their transcript in --out already, of their very audio (a state lost): adopted, "
    "not sent nor priced"
)


def _said(text: str | None) -> list[str]:
    """A line of the summary, or none."""
    return [] if text is None else [text]


def _held(holder: str | None) -> str | None:
    """The line for a state a run was writing while the dry run copied it."""
    if holder is None:
        return None
    return (
        f"a run holds the state ({holder}): these counts are a snapshot; items it is "
        "sending count as to send, and outputs it wrote since as adopted"
    )


def _unchecked(unchecked: bool) -> str | None:
    """The line for an S3 ``--out`` whose outputs the dry run did not look for."""
    if not unchecked:
        return None
    return (
        "the state knows no done item: outputs already in the S3 --out were not looked for, "
        "so items whose transcripts are there count as to send (the run skips them)"
    )


def _unwritable(reason: str | None) -> str | None:
    """The line for a local ``--out`` nothing can be written into."""
    if reason is None:
        return None
    return (
        f"--out: cannot write outputs there ({reason}): the run would stop before its first "
        "request (exit 1)"
    )


def _not_sent(count: int, why: str) -> list[str]:
    """A line for ``count`` items written without a request, when there are any."""
    return [f"{count} more item(s) {why}"] if count else []
