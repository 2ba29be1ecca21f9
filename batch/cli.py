"""The ``dgbatch`` command: parse, wire, and map errors to exit codes. Nothing else.

Exit codes (each ``BatchError`` subclass carries its own, see ``batch.errors``):
0 all items done · 1 some failed · 2 bad usage or input · 3 Deepgram refused the key ·
4 another run holds the state lock · 130 interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from batch import __version__, eventloop
from batch.config import (
    URL_ENV,
    RunConfig,
    check_api_url,
    check_out,
    default_state_path,
    load_api_key,
)
from batch.errors import BatchError, UsageError
from batch.formats import parse_formats
from batch.job import RunOutcome, run_batch
from batch.models import Filters
from batch.naming import AUDIO_EXTENSIONS
from batch.params import DEFAULT_PARAMS, merge_params, parse_param
from batch.progress import make_progress
from batch.redact import RedactingFilter, redact_text
from batch.report import WRITERS, format_status, open_output, status_summary
from batch.s3 import URL_MODES
from batch.shard import SHARD_ENV, parse_shard
from batch.state import State

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("dgbatch")


def setup_logging(verbose: int, secrets: tuple[str, ...] = ()) -> None:
    """Log to stderr through a filter that scrubs the key and URL signatures."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def fail(exc: BatchError) -> NoReturn:
    """Print ``Error: message`` once and exit with the error's code."""
    click.echo(f"Error: {exc}", err=True)
    sys.exit(exc.exit_code)


def state_option(fn: F) -> F:
    """``--state PATH``, shared by status and report."""
    return click.option(
        "--state",
        "state_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=Path(".dgbatch/state.sqlite"),
        show_default=True,
        help="State file of a run (default for --out DIR is DIR/.dgbatch/state.sqlite).",
    )(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dgbatch")
def cli() -> None:
    """Transcribe batches of audio with Deepgram: every item exactly once, resumably."""


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder or s3://bucket/prefix/ for transcripts.")
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="State file [default: OUT/.dgbatch/state.sqlite; for s3:// OUT, "
    "$XDG_CACHE_HOME/dgbatch/<hash of OUT>/state.sqlite].",
)
@click.option(
    "--formats",
    default="json,txt",
    show_default=True,
    help="Comma-separated: json,txt,srt,vtt,md (srt/vtt add utterances=true).",
)
@click.option(
    "--caption-line-length",
    type=int,
    metavar="N",
    help="Words per SRT/WebVTT cue [default: 8].",
)
@click.option(
    "--concurrency",
    "-c",
    default=10,
    show_default=True,
    type=int,
    help="Requests in flight at most (Deepgram allows 100 per project for Nova).",
)
@click.option(
    "--max-retries",
    default=5,
    show_default=True,
    type=int,
    help="Retries per item after the first attempt.",
)
@click.option(
    "--timeout",
    default=1200.0,
    show_default=True,
    type=float,
    help="Seconds per request, plus an allowance that grows with the upload size.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Deepgram query parameter (repeatable); defaults model=nova-3 smart_format=true.",
)
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Only files matching (folders, S3 prefixes)."
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Skip files matching (folders, S3 prefixes)."
)
@click.option(
    "--url-mode",
    type=click.Choice(URL_MODES),
    default="presign",
    show_default=True,
    help="S3 objects: a presigned URL Deepgram fetches, or streamed through dgbatch.",
)
@click.option(
    "--s3-endpoint-url",
    envvar=["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
    help="S3-compatible endpoint, path-style (env AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL).",
)
@click.option(
    "--shard",
    envvar=SHARD_ENV,
    metavar="K/N",
    help=f"Take only shard K (0-based) of N; own state and lock (env {SHARD_ENV}).",
)
@click.option(
    "--force", is_flag=True, help="Re-send items that are done or whose outputs already exist."
)
@click.option(
    "--run-report",
    metavar="PATH|s3://...",
    help="Write a JSON summary of the run there (for monitoring).",
)
@click.option(
    "--api-url",
    envvar=URL_ENV,
    default="https://api.deepgram.com",
    show_default=True,
    help=f"Deepgram API base URL (env {URL_ENV}).",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the key from this file (mode 600) instead of DEEPGRAM_API_KEY.",
)
@click.option("--allow-insecure-http", is_flag=True, help="Allow http:// to a non-loopback host.")
@click.option("--retry-failed", is_flag=True, help="Re-queue items that failed in earlier runs.")
@click.option(
    "--backoff-base",
    default=1.0,
    show_default=True,
    type=float,
    help="First retry waits up to this many seconds (doubling, full jitter).",
)
@click.option(
    "--backoff-cap",
    default=60.0,
    show_default=True,
    type=float,
    help="Longest wait between retries, in seconds.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds in-flight requests get to finish after Ctrl-C/SIGTERM.",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "bar", "log", "none"]),
    default="auto",
    show_default=True,
    help="Progress display (auto: bar on a terminal, log lines else).",
)
@click.option(
    "--dry-run", is_flag=True, help="Plan and estimate; send nothing (no API key needed)."
)
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the estimate as JSON.")
@click.option(
    "--probe",
    is_flag=True,
    help="With --dry-run: time S3 objects and URLs from their first (Ogg: also last) 64 KiB.",
)
@click.option(
    "--max-audio-hours",
    type=float,
    metavar="H",
    help="Stop dispatching before audio transcribed (whole state) + in flight passes H.",
)
@click.option("--max-cost", type=float, metavar="USD", help="The same cap in US dollars.")
@click.option(
    "--price-per-hour",
    type=float,
    metavar="USD",
    help="Price of an audio hour for estimates and --max-cost (default: batch/pricing.py).",
)
@click.option("--no-preflight", is_flag=True, help="Skip the key check (GET /v1/auth/token).")
@click.option("--no-sniff", is_flag=True, help="Send local files whatever their first bytes.")
@click.option("--dedupe", is_flag=True, help="Send identical audio (sha256 + params) once.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary.")
@click.option("--verbose", "-v", count=True, help="More logging (-vv for debug).")
def run(**opts: Any) -> None:
    """Transcribe SOURCES: files, folders, URLs, s3://, manifests (.txt .jsonl .csv) or -.

    \b
    Example:
        export DEEPGRAM_API_KEY=...
        dgbatch run ./calls --out ./transcripts
        dgbatch run urls.txt recordings.jsonl --out out --param diarize=true
        find . -name '*.mp3' | dgbatch run - --out out
        dgbatch run ./calls --out out --dry-run
        dgbatch run s3://media/incoming/ --out s3://media/transcripts/ --shard 3/16
    """
    setup_logging(opts["verbose"])
    if opts["dry_run"]:
        run_dry(opts)
    try:
        config = build_config(opts)
        setup_logging(opts["verbose"], (config.api_key,))
        progress = make_progress("none" if opts["quiet"] else opts["progress"])
        outcome = eventloop.run(run_batch(config, progress, stdin=sys.stdin))
    except BatchError as exc:
        fail(exc)
    if not opts["quiet"]:
        click.echo(format_summary(outcome), err=True)
    if outcome.error is not None:
        click.echo(f"Error: {outcome.error}", err=True)
    sys.exit(outcome.exit_code)


def run_dry(opts: dict[str, Any]) -> None:
    """``run --dry-run``: print the plan and the estimate, exit 0 (2 on bad input)."""
    from batch.dryrun import dry_run, format_estimate

    try:
        config = build_config(opts)
        estimate = asyncio.run(dry_run(config, stdin=sys.stdin))
    except BatchError as exc:
        fail(exc)
    if opts["as_json"]:
        click.echo(json.dumps(estimate.as_dict(), indent=2))
    else:
        click.echo(format_estimate(estimate))
    sys.exit(0)


def build_config(opts: dict[str, Any]) -> RunConfig:
    """Validate the options into a ``RunConfig``; every problem is a ``UsageError``."""
    if opts["as_json"] and not opts["dry_run"]:
        raise UsageError("--json goes with --dry-run (for runs, see dgbatch status --json)")
    if opts["probe"] and not opts["dry_run"]:
        raise UsageError("--probe goes with --dry-run (it measures durations for the estimate)")
    out = check_out(str(opts["out"]))
    try:
        formats = parse_formats(opts["formats"])
    except ValueError as exc:
        raise UsageError(f"--formats: {exc}") from exc
    params = merge_params(DEFAULT_PARAMS, tuple(parse_param(p) for p in opts["params"]))
    api_url = check_api_url(opts["api_url"], allow_insecure=opts["allow_insecure_http"])
    shard = parse_shard(opts["shard"]) if opts["shard"] else None
    return RunConfig(
        sources=tuple(opts["sources"]),
        out=out,
        state_path=opts["state_path"] or default_state_path(out, shard),
        api_key="" if opts["dry_run"] else load_api_key(opts["api_key_file"]),
        api_url=api_url,
        formats=formats,
        params=params,
        filters=Filters(tuple(opts["include"]), tuple(opts["exclude"]), AUDIO_EXTENSIONS),
        concurrency=opts["concurrency"],
        max_retries=opts["max_retries"],
        timeout=opts["timeout"],
        retry_failed=opts["retry_failed"],
        backoff_base=opts["backoff_base"],
        backoff_cap=opts["backoff_cap"],
        grace=opts["grace"],
        progress=opts["progress"],
        command=shlex.join(["dgbatch", *sys.argv[1:]]),
        caption_line_length=opts["caption_line_length"],
        dry_run=opts["dry_run"],
        probe=opts["probe"],
        max_audio_hours=opts["max_audio_hours"],
        max_cost=opts["max_cost"],
        price_per_hour=opts["price_per_hour"],
        preflight=not opts["no_preflight"],
        sniff=not opts["no_sniff"],
        dedupe=opts["dedupe"],
        s3_endpoint_url=opts["s3_endpoint_url"] or None,
        url_mode=opts["url_mode"],
        shard=shard,
        force=opts["force"],
        run_report=opts["run_report"],
    )


def format_summary(outcome: RunOutcome) -> str:
    """One paragraph: what happened, how long it took, where the report is."""
    s, c = outcome.stats, outcome.counts
    lines = [
        f"done {s.done}, failed {s.failed}, retried {s.retries} "
        f"({s.timeout_retries} after a timeout), audio {s.audio_seconds / 3600:.2f} h, "
        f"wall {outcome.wall_seconds:.1f} s",
        f"state: {c['done']} done, {c['failed']} failed, {c['pending'] + c['running']} pending",
    ]
    if s.warnings:
        lines.append(f"{s.warnings} item(s) with a warning (dgbatch report --warnings)")
    if s.copies:
        lines.append(f"{s.copies} item(s) were copies of identical audio (--dedupe): not sent")
    if s.recovered:
        lines.append(f"recovered {s.recovered} item(s) whose outputs a crashed run had written")
    if s.skipped:
        lines.append(f"skipped {s.skipped} item(s) whose outputs already existed (--force redoes)")
    if s.rendered:
        lines.append(
            f"rendered the formats {s.rendered} done item(s) lacked from their json (not sent)"
        )
    for fmt, count in outcome.missing.items():
        lines.append(
            f"{count} done item(s) have no {fmt} output: formats are written when an item is "
            "done, and done items are not sent again (--force re-sends them, paid)"
        )
    if outcome.report_path is not None:
        lines.append(f"report: {outcome.report_path}")
    return "\n".join(lines)


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state_path: Path, as_json: bool) -> None:
    """Counts by status, attempts, audio hours and the commonest errors of a state file.

    \b
    Example:
        dgbatch status --state out/.dgbatch/state.sqlite --json
    """
    try:
        state = State.open(state_path, readonly=True)
        try:
            summary = status_summary(state)
        finally:
            state.close()
    except BatchError as exc:
        fail(exc)
    click.echo(json.dumps(summary, indent=2) if as_json else format_status(summary))


@cli.command()
@state_option
@click.option(
    "--format", "fmt", type=click.Choice(sorted(WRITERS)), default="jsonl", show_default=True
)
@click.option("--failed", is_flag=True, help="Only failed items.")
@click.option("--warnings", is_flag=True, help="Only items with a warning (empty, truncated).")
@click.option(
    "-o", "--output", type=click.Path(allow_dash=True), default="-", help="File (default stdout)."
)
def report(state_path: Path, fmt: str, failed: bool, warnings: bool, output: str) -> None:
    """One row per item: id, source, status, attempts, http_status, error, request_id, …

    \b
    Example:
        dgbatch report --state out/.dgbatch/state.sqlite --format csv --failed -o failed.csv
    """
    try:
        state = State.open(state_path, readonly=True)
        try:
            with open_output(output) as stream:
                WRITERS[fmt](state, stream, failed_only=failed, warnings_only=warnings)
        finally:
            state.close()
    except BatchError as exc:
        fail(exc)


def api_options(fn: F) -> F:
    """``--api-url``, ``--api-key-file``, ``--allow-insecure-http``, shared by check/usage."""
    fn = click.option(
        "--allow-insecure-http", is_flag=True, help="Allow http:// to a non-loopback host."
    )(fn)
    fn = click.option(
        "--api-key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Read the key from this file (mode 600) instead of DEEPGRAM_API_KEY.",
    )(fn)
    return click.option(
        "--api-url",
        envvar=URL_ENV,
        default="https://api.deepgram.com",
        show_default=True,
        help=f"Deepgram API base URL (env {URL_ENV}).",
    )(fn)


@cli.command()
@api_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(
    api_url: str, api_key_file: Path | None, allow_insecure_http: bool, as_json: bool
) -> None:
    """Check the API key: what it may do (scopes) and when it expires; never prints it.

    \b
    Example:
        dgbatch check
        dgbatch check --api-key-file ~/.deepgram-key --json
    """
    from batch.account import fetch_key_details

    try:
        url = check_api_url(api_url, allow_insecure=allow_insecure_http)
        details = asyncio.run(fetch_key_details(url, load_api_key(api_key_file)))
    except BatchError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(details), indent=2))
    else:
        click.echo(details.describe())


@cli.command()
@state_option
@api_options
@click.option(
    "--project",
    required=True,
    envvar="DEEPGRAM_PROJECT_ID",
    help="Deepgram project id the key belongs to (env DEEPGRAM_PROJECT_ID).",
)
@click.option("--run", "run_id", type=int, help="Run number in the state [default: the last].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def usage(state_path: Path, project: str, run_id: int | None, as_json: bool, **api: Any) -> None:
    """Reconcile Deepgram's request log and usage for a run with the state.

    Lists requests Deepgram recorded (and billed) for the run that left no result in the
    state, e.g. retries after a timeout on requests Deepgram had finished.

    \b
    Example:
        dgbatch usage --project 3f1c... --state out/.dgbatch/state.sqlite
    """
    from batch.usage import format_reconciliation, reconcile_run

    try:
        url = check_api_url(api["api_url"], allow_insecure=api["allow_insecure_http"])
        key = load_api_key(api["api_key_file"])
        result = asyncio.run(reconcile_run(state_path, url, key, project, run_id))
    except BatchError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(format_reconciliation(result))
    sys.exit(1 if result.unmatched else 0)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port.")
@click.option(
    "--latency",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds per request from its arrival, the emulator's own work included.",
)
@click.option(
    "--fault-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Share of requests answered with 429/5xx/reset/truncated/garbage.",
)
@click.option("--max-concurrency", type=int, help="Answer 429 above this many in flight.")
@click.option("--key", envvar="DGBATCH_EMULATOR_KEY", help="Accepted API key (default: any).")
@click.option("--seed", type=int, help="Seed the fault RNG for reproducible runs.")
@click.option("--faults", help="Comma-separated faults to draw from (default: all).")
@click.option(
    "--retry-after",
    type=click.Choice(["random", "always", "never"]),
    default="random",
    show_default=True,
    help="Send Retry-After on injected 429s.",
)
@click.option(
    "--duration-ratio",
    default=1.0,
    show_default=True,
    type=float,
    help="Scale every metadata.duration (0.5: transcripts that cover half their audio).",
)
def emulator(**opts: Any) -> None:
    """Serve a Deepgram-compatible /v1/listen on loopback for demos and tests.

    \b
    Example:
        dgbatch emulator --port 8080 --latency 0.2 --fault-rate 0.1 --max-concurrency 8
    """
    from batch.emulator import DEFAULT_FAULTS, EmulatorConfig, serve

    faults = opts.pop("faults")
    opts["faults"] = tuple(f.strip() for f in faults.split(",")) if faults else DEFAULT_FAULTS
    opts["retry_after"] = {"random": None, "always": True, "never": False}[opts["retry_after"]]
    try:
        config = EmulatorConfig(**opts)
    except ValueError as exc:
        fail(UsageError(f"emulator: {exc}"))
    serve(config)


def main() -> None:
    """Console-script entry point; secrets never reach a traceback's message."""
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # last line of defence: no raw traceback for users
        click.echo(f"Error: internal error: {redact_text(str(exc))}", err=True)
        sys.exit(1)
