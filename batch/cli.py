"""The ``dgbatch`` command: parse, wire, and map errors to exit codes. Nothing else.

Exit codes (each ``BatchError`` subclass carries its own, see ``batch.errors``):
0 all items done · 1 some failed · 2 bad usage or input · 3 Deepgram refused the key ·
4 another run holds the state lock · 130 interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from batch import __version__, eventloop
from batch.config import check_report_target, load_api_key
from batch.errors import BatchError, OutputError, UsageError, exit_code_of
from batch.job import run_batch
from batch.options import (
    api_options,
    build_config,
    emulator_options,
    given_api_url,
    given_as,
    given_state_path,
    run_options,
    state_option,
)
from batch.progress import make_progress
from batch.redact import RedactingFilter, redact_message, redact_text
from batch.report import WRITERS, format_status, status_summary
from batch.reportfile import open_output
from batch.runreport import report_refusal
from batch.signals import defaults_restored, until_exit
from batch.state import State
from batch.streams import Answer, outlive_readers, reader_gone, reopen_closed
from batch.summary import format_summary
from batch.terminal import shown

log = logging.getLogger("dgbatch")


def setup_logging(verbose: int, secrets: tuple[str, ...] = ()) -> None:
    """Log to stderr through a filter that scrubs the key and URL signatures."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ShownFormatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


class _ShownFormatter(logging.Formatter):
    """A message quotes names others chose: its control characters are shown, inert."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)


def say_error(message: str) -> None:
    """Print ``Error: message`` on stderr, its control characters inert."""
    click.echo(f"Error: {shown(message)}", err=True)


def fail(exc: BatchError, secrets: tuple[str, ...] = ()) -> NoReturn:
    """Print ``Error: message`` once, without secrets (a library's message may quote an
    endpoint's token), and exit with the error's code."""
    say_error(redact_message(str(exc), secrets))
    sys.exit(exit_code_of(exc))


def show(text: str, key: str) -> None:
    """Print what an API answered, without the key: a proxy may echo it anywhere; nor
    its control characters (a project's name is the account owner's)."""
    click.echo("\n".join(shown(line) for line in redact_text(text, (key,)).split("\n")))


class _Commands(click.Group):
    """Quiet when the reader of stdout goes away (``dgbatch report | head``): it read
    what it wanted, so that is no failure (click would exit 1 without a word). Any other
    broken pipe is an error like any other."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # inside: an answer cut short shows here, not at exit
        except BrokenPipeError as exc:
            if not reader_gone(sys.stdout):
                fail(OutputError(f"cannot write the answer: {exc.strerror or exc}"))
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing at exit
            ctx.exit(0)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dgbatch")
def cli() -> None:
    """Transcribe batches of audio with Deepgram: every item exactly once, resumably."""


@cli.command()
@run_options
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
    with defaults_restored():
        if opts["dry_run"]:
            run_dry(opts)
        try:
            config = build_config(opts)
        except BatchError as exc:  # refused before it began: the monitor learns it too
            state = given_state_path(opts["state_path"])
            report_refusal(
                opts["run_report"], str(opts["out"]), opts["s3_endpoint_url"], exc, state
            )
            fail(exc)
        try:
            outlive_readers()
            setup_logging(opts["verbose"], (config.api_key,))
            progress = make_progress("none" if opts["quiet"] else opts["progress"])
            outcome = eventloop.run(run_batch(config, progress, stdin=sys.stdin))
        except BatchError as exc:
            fail(exc, (config.api_key,))
        if not opts["quiet"]:
            click.echo(format_summary(outcome), err=True)
        if outcome.error is not None:
            say_error(redact_message(str(outcome.error), (config.api_key,)))
    sys.exit(outcome.exit_code)


def run_dry(opts: dict[str, Any]) -> None:
    """``run --dry-run``: print the plan and the estimate, exit 0 (2 on bad input)."""
    from batch.dryrun import dry_run, format_estimate

    try:
        config = build_config(opts)
        quiet = opts["quiet"] or opts["progress"] == "none"  # its progress: none then

        def say(text: str) -> None:
            if not quiet:
                click.echo(text, err=True)

        estimate = asyncio.run(dry_run(config, sys.stdin, say))
    except BatchError as exc:
        fail(exc)
    if opts["as_json"]:
        click.echo(json.dumps(estimate.as_dict(), indent=2))
    else:
        click.echo(format_estimate(estimate))
    sys.exit(0)


@cli.command()
@state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state_path: Path, as_json: bool) -> None:
    """Counts by status, attempts, audio hours and the commonest errors of a state file.

    \b
    Example:
        dgbatch status --out out --json
        dgbatch status --out s3://bucket/transcripts/
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
    "--format",
    "fmt",
    type=click.Choice(sorted(WRITERS)),
    help="[default: csv for an -o FILE ending in .csv, else jsonl]",
)
@click.option("--failed", is_flag=True, help="Only failed items.")
@click.option("--warnings", is_flag=True, help="Only items with a warning (empty, truncated).")
@click.option(
    "-o", "--output", type=click.Path(allow_dash=True), default="-", help="File (default stdout)."
)
def report(state_path: Path, fmt: str | None, failed: bool, warnings: bool, output: str) -> None:
    """One row per item: id, source, status, attempts, http_status, error, request_id, …

    \b
    Example:
        dgbatch report --out out --format csv --failed -o failed.csv
    """
    fmt = fmt or ("csv" if output.lower().endswith(".csv") else "jsonl")  # -o x.csv got JSONL
    try:
        check_report_target(output, state_path)
        State.open(state_path, readonly=True).close()  # refused before a FIFO -o waits
        # the output before the state is open: /dev/fd/N is then never the state's own
        with open_output(output) as stream:
            state = State.open(state_path, readonly=True)
            try:
                WRITERS[fmt](state, stream, failed_only=failed, warnings_only=warnings)
            finally:
                state.close()
    except BatchError as exc:
        fail(exc)


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

    key = ""
    try:
        url = given_api_url(api_url, allow_insecure=allow_insecure_http)
        key = load_api_key(api_key_file)
        details = asyncio.run(fetch_key_details(url, key))
    except BatchError as exc:
        fail(exc, (key,))
    show(json.dumps(dataclasses.asdict(details), indent=2) if as_json else details.describe(), key)


def _project_id(value: str) -> str:
    """A project id as Deepgram gives them (a UUID: letters, digits, ``-``, ``_``): an
    empty one asked for ``/v1/projects//requests`` (a 404, exit 1), and one with a ``/``
    or ``?`` went into the URL as it was."""
    if not _PROJECT_ID.fullmatch(value.strip()):
        given = given_as("project", "--project", "DEEPGRAM_PROJECT_ID")
        msg = f"{given} {value!r}: not a Deepgram project id (letters, digits, '-', '_')"
        raise click.UsageError(msg)
    return value.strip()


_PROJECT_ID = re.compile(r"[A-Za-z0-9_-]+")


@cli.command()
@state_option
@api_options
@click.option(
    "--project",
    required=True,
    envvar="DEEPGRAM_PROJECT_ID",
    callback=lambda ctx, param, value: _project_id(value),
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
        dgbatch usage --project 3f1c... --out out
    """
    from batch.usage import format_reconciliation, reconcile_run

    key = ""
    try:
        url = given_api_url(api["api_url"], allow_insecure=api["allow_insecure_http"])
        key = load_api_key(api["api_key_file"])
        result = asyncio.run(reconcile_run(state_path, url, key, project, run_id))
    except BatchError as exc:
        fail(exc, (key,))
    show(json.dumps(result.as_dict(), indent=2) if as_json else format_reconciliation(result), key)
    sys.exit(1 if result.unmatched or result.log_cut else 0)


@cli.command()
@emulator_options
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
    except ValueError as exc:  # named by its field ('fault_rate'): the user gave --fault-rate
        said = re.sub(r"^'([a-z_]+)'", lambda m: "--" + m[1].replace("_", "-"), str(exc))
        fail(UsageError(f"emulator: {said}"))
    try:
        serve(config)
    except (OverflowError, OSError) as exc:
        if not _cannot_listen(exc):
            raise  # a broken stdout, say: not the address
        reason = getattr(exc, "strerror", None) or str(exc)
        fail(UsageError(f"emulator: cannot listen on {config.host}:{config.port}: {reason}"))


#: the port in use, a host that is not this machine's, a port below 1024
_CANNOT_LISTEN = frozenset(
    {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EAFNOSUPPORT}
)


def _cannot_listen(exc: Exception) -> bool:
    """Whether ``exc`` is about the address: a --port out of 0-65535 (OverflowError), a
    host no resolver knows, or one of ``_CANNOT_LISTEN``."""
    if isinstance(exc, OverflowError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and exc.errno in _CANNOT_LISTEN


def main() -> None:
    """Console-script entry point; secrets never reach a traceback's message."""
    until_exit()
    reopen_closed()
    sys.stdout = Answer(sys.stdout)  # before click: ``--help > /dev/full`` too
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except BatchError as exc:  # raised where click runs our code (an option's callback)
        fail(exc)
    except Exception as exc:  # last line of defence: no raw traceback for users
        say_error(f"internal error: {redact_text(str(exc))}")
        sys.exit(1)
