"""The command line's options, declared once, and the ``RunConfig`` that ``run``'s become.

``cli`` wires commands to these; the options shared by several commands (``--state``, the
API's) are one decorator each, so their help and defaults cannot drift apart.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from click.core import ParameterSource

from batch.client import DEFAULT_TIMEOUT
from batch.config import (
    URL_ENV,
    RunConfig,
    check_api_url,
    check_out,
    check_own_paths,
    default_state_path,
    invoked_command,
    load_api_key,
    shard_states,
)
from batch.errors import UsageError
from batch.formats import parse_formats
from batch.models import Filters
from batch.naming import AUDIO_EXTENSIONS
from batch.params import DEFAULT_PARAMS, merge_params, parse_param
from batch.s3 import URL_MODES
from batch.shard import SHARD_ENV, Shard, parse_shard

F = TypeVar("F", bound=Callable[..., Any])


def stacked(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` as if written above a function, top first."""

    def apply(fn: F) -> F:
        for decorate in reversed(decorators):
            fn = decorate(fn)
        return fn

    return apply


def parameter_source(name: str) -> ParameterSource | None:
    """Where the current command's parameter ``name`` came from (None outside click)."""
    ctx = click.get_current_context(silent=True)
    return ctx.get_parameter_source(name) if ctx is not None else None


def given_as(name: str, option: str, envvar: str) -> str:
    """How the user gave parameter ``name``, for an error about its value: its
    environment variable when the value came from there (an error naming the option sent
    the user looking for one the command did not have), else its option."""
    return envvar if parameter_source(name) is ParameterSource.ENVIRONMENT else option


def given_api_url(url: str, *, allow_insecure: bool) -> str:
    """``check_api_url``, naming where the URL came from: a bad ``DEEPGRAM_API_URL`` was
    blamed on ``--api-url``, which the user never gave. An empty one is refused: click
    takes it for unset, and a script meaning the emulator (``$EMU_URL`` unset) sent the
    real key to the real API, and paid."""
    source = parameter_source("api_url")
    if source is ParameterSource.DEFAULT and os.environ.get(URL_ENV) == "":
        msg = f"{URL_ENV} is set but empty: unset it for https://api.deepgram.com, or give a URL"
        raise UsageError(msg)
    named = URL_ENV if source is ParameterSource.ENVIRONMENT else "--api-url"
    return check_api_url(url, allow_insecure=allow_insecure, named=named)


def given_state_path(given: str | None) -> Path | None:
    """``--state``: a folder that does not exist yet when it ends in ``/`` (the state is
    ``state.sqlite`` in it), else the file itself."""
    if not given:
        return None
    return Path(given, "state.sqlite") if given.endswith(("/", os.sep)) else Path(given)


def _state_to_read(given: str, out: str | None, shard: str | None) -> Path:
    """The state that status, report and usage read: ``--out OUT`` (with ``--shard``)
    names the state a run on OUT keeps, wherever that is (an S3 OUT's is in the cache);
    ``--state`` names a file, or a folder holding ``state.sqlite`` (``run --state DIR/``)
    or ``.dgbatch/state.sqlite`` (a run's ``--out``); ``DIR/`` is ``DIR/state.sqlite``."""
    if out is not None:
        kept = default_state_path(out, _shard(shard))
        if not kept.exists():
            shards = shard_states(out) if shard is None else []
            hint = f"; shards here: pass --shard {' or '.join(shards)}" if shards else ""
            msg = (
                f"no state for {out} on this machine: {kept} does not exist "
                f"(a run given --state keeps it where that named){hint}"
            )
            raise click.BadParameter(msg, param_hint="--out")
        return kept
    if shard:
        raise click.BadParameter(
            "needs --out (a --state names one shard's file)", param_hint="--shard"
        )
    folder = Path(given)
    if not folder.is_dir():
        return given_state_path(given) or folder
    for inside in (folder / "state.sqlite", folder / ".dgbatch" / "state.sqlite"):
        if inside.is_file():
            return inside
    msg = f"{given!r} is a folder without a state (no state.sqlite or .dgbatch/state.sqlite)"
    raise click.BadParameter(msg, param_hint="'--state'")


def _shard(text: str | None) -> Shard | None:
    try:
        return given_shard(text)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc


def _api_key(opts: dict[str, Any]) -> str:
    """The run's key. A dry run sends nothing and needs none, but an ``--api-key-file``
    it is given is checked as the run checks it: a script's dry run before the real one
    passed with a key file the run then refused (missing, readable by others)."""
    if not opts["dry_run"]:
        return load_api_key(opts["api_key_file"])
    if opts["api_key_file"] is not None:
        load_api_key(opts["api_key_file"])
    return ""


def given_shard(text: str | None) -> Shard | None:
    """``--shard``'s value, read; an error names ``DGBATCH_SHARD`` when the value came
    from there (the user looked for a ``--shard`` in a command that had none)."""
    if not text:
        return None
    return parse_shard(text, given_as("shard", "--shard", SHARD_ENV))


def _state_to_write(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--state`` of run, checked as for reading (``DIR/`` names ``DIR/state.sqlite``,
    also once the first run has made the folder), kept a str for ``build_config``."""
    if value and (given_state_path(value) or Path(value)).is_dir():
        raise click.BadParameter(f"{value!r} is a folder: name its state file, or end it in /")
    return value


def state_option(fn: F) -> F:
    """``--state PATH`` or ``--out OUT [--shard K/N]`` of status, report and usage; the
    command gets the state's path as ``state_path``."""

    @functools.wraps(fn)
    def resolved(state_path: str | None, out: str | None, shard: str | None, **kw: Any) -> Any:
        if state_path is not None and out is not None:
            raise click.UsageError("give --state or --out, not both")
        source = click.get_current_context().get_parameter_source("shard")
        if source is ParameterSource.ENVIRONMENT and out is None:
            shard = None  # a sharded worker's environment: a --state names its own file
        return fn(state_path=_state_to_read(state_path or _READ_DEFAULT, out, shard), **kw)

    return stacked(
        click.option(
            "--state",
            "state_path",
            type=click.Path(),
            help="State file of a run, or a folder holding one (DIR/state.sqlite or a run's "
            f"--out, DIR/.dgbatch/state.sqlite) [default: {_READ_DEFAULT}].",
        ),
        click.option(
            "--out",
            help="The --out of a run (a folder or s3://…): read the state it keeps there, "
            "or in the cache for s3://.",
        ),
        click.option(
            "--shard",
            envvar=SHARD_ENV,
            metavar="K/N",
            help=f"With --out: the state of that run's shard K of N (env {SHARD_ENV}).",
        ),
    )(cast(F, resolved))


_READ_DEFAULT = ".dgbatch/state.sqlite"

api_options = stacked(
    click.option(
        "--api-url",
        envvar=URL_ENV,
        default="https://api.deepgram.com",
        show_default=True,
        help=f"Deepgram API base URL (env {URL_ENV}).",
    ),
    click.option(
        "--api-key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Read the key from this file (mode 600) instead of DEEPGRAM_API_KEY.",
    ),
    click.option(
        "--allow-insecure-http", is_flag=True, help="Allow http:// to a non-loopback host."
    ),
)
"""Where the API is and how to authenticate, for run, check and usage."""

run_options = stacked(
    click.argument("sources", nargs=-1, required=True),
    click.option(
        "--out", required=True, help="Output folder or s3://bucket/prefix/ for transcripts."
    ),
    click.option(
        "--state",
        "state_path",
        type=click.Path(),  # a str: a trailing "/" names a folder
        callback=_state_to_write,
        help="State file, or a folder for one when it ends in / [default: "
        "OUT/.dgbatch/state.sqlite; for s3:// OUT, $XDG_CACHE_HOME/dgbatch/<hash of "
        "OUT>/state.sqlite].",
    ),
    click.option(
        "--formats",
        default="json,txt",
        show_default=True,
        help="Comma-separated: json,txt,srt,vtt,md (srt/vtt add utterances=true).",
    ),
    click.option(
        "--caption-line-length",
        type=int,
        metavar="N",
        help="Words per SRT/WebVTT cue [default: 8].",
    ),
    click.option(
        "--concurrency",
        "-c",
        default=10,
        show_default=True,
        type=int,
        help="Requests in flight at most (Deepgram allows 100 per project for Nova).",
    ),
    click.option(
        "--max-retries",
        default=5,
        show_default=True,
        type=int,
        help="Retries per item after the first attempt.",
    ),
    click.option(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        show_default=True,
        type=float,
        help="Seconds per request, plus an allowance that grows with the upload size.",
    ),
    click.option(
        "--param",
        "params",
        multiple=True,
        metavar="KEY=VALUE",
        help="Deepgram query parameter (repeatable); defaults model=nova-3 smart_format=true.",
    ),
    click.option(
        "--include",
        multiple=True,
        metavar="GLOB",
        help="Only files matching (folders, S3 prefixes).",
    ),
    click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Skip files matching (folders, S3 prefixes).",
    ),
    click.option(
        "--url-mode",
        type=click.Choice(URL_MODES),
        default="presign",
        show_default=True,
        help="S3 objects: a presigned URL Deepgram fetches, or streamed through dgbatch.",
    ),
    click.option(
        "--s3-endpoint-url",
        envvar=["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        help="S3-compatible endpoint, path-style (env AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL).",
    ),
    click.option(
        "--shard",
        envvar=SHARD_ENV,
        metavar="K/N",
        help=f"Take only shard K (0-based) of N; own state and lock (env {SHARD_ENV}).",
    ),
    click.option(
        "--force", is_flag=True, help="Re-send items that are done or whose outputs already exist."
    ),
    click.option(
        "--run-report",
        metavar="PATH|s3://...",
        help="Write a JSON summary of the run there (for monitoring); it replaces only an "
        "earlier one.",
    ),
    api_options,
    click.option(
        "--retry-failed", is_flag=True, help="Re-queue items that failed in earlier runs."
    ),
    click.option(
        "--backoff-base",
        default=1.0,
        show_default=True,
        type=float,
        help="First retry waits up to this many seconds (doubling, full jitter).",
    ),
    click.option(
        "--backoff-cap",
        default=60.0,
        show_default=True,
        type=float,
        help="Longest wait between retries, in seconds.",
    ),
    click.option(
        "--grace",
        default=30.0,
        show_default=True,
        type=float,
        help="Seconds in-flight requests get to finish after Ctrl-C/SIGTERM.",
    ),
    click.option(
        "--progress",
        type=click.Choice(["auto", "bar", "log", "none"]),
        default="auto",
        show_default=True,
        help="Progress display (auto: bar on a terminal, log lines else).",
    ),
    click.option(
        "--dry-run", is_flag=True, help="Plan and estimate; send nothing (no API key needed)."
    ),
    click.option("--json", "as_json", is_flag=True, help="With --dry-run: the estimate as JSON."),
    click.option(
        "--probe",
        is_flag=True,
        help="With --dry-run: time S3 objects and URLs from their first (Ogg: also last) 64 KiB.",
    ),
    click.option(
        "--max-audio-hours",
        type=float,
        metavar="H",
        help="Stop dispatching before audio transcribed (whole state) + in flight passes H.",
    ),
    click.option(
        "--max-cost",
        type=float,
        metavar="USD",
        help="A cap in US dollars, each item at its own model's price.",
    ),
    click.option(
        "--price-per-hour",
        type=float,
        metavar="USD",
        help="Price of an audio hour for estimates and --max-cost (default: batch/pricing.py).",
    ),
    click.option("--no-preflight", is_flag=True, help="Skip the key check (GET /v1/auth/token)."),
    click.option("--no-sniff", is_flag=True, help="Send local files whatever their first bytes."),
    click.option("--dedupe", is_flag=True, help="Send identical audio (sha256 + params) once."),
    click.option("--quiet", "-q", is_flag=True, help="No progress and no summary."),
    click.option("--verbose", "-v", count=True, help="More logging (-vv for debug)."),
)

emulator_options = stacked(
    click.option("--host", default="127.0.0.1", show_default=True),
    click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port."),
    click.option(
        "--latency",
        default=0.0,
        show_default=True,
        type=float,
        help="Seconds per request from its arrival, the emulator's own work included.",
    ),
    click.option(
        "--fault-rate",
        default=0.0,
        show_default=True,
        type=float,
        help="Share of requests answered with 429/5xx/reset/truncated/garbage.",
    ),
    click.option("--max-concurrency", type=int, help="Answer 429 above this many in flight."),
    click.option(
        "--max-processing",
        default=600.0,
        show_default=True,
        type=float,
        help="Seconds a request may take (twice for Whisper) before it is answered 504, as "
        "Deepgram cancels it.",
    ),
    click.option("--key", envvar="DGBATCH_EMULATOR_KEY", help="Accepted API key (default: any)."),
    click.option("--seed", type=int, help="Seed the fault RNG for reproducible runs."),
    click.option(
        "--faults",
        help="Comma-separated faults to draw from: 429, 500, 502, 503, reset, truncated, "
        "garbage (the default: all these), 408, 504.",
    ),
    click.option(
        "--retry-after",
        type=click.Choice(["random", "always", "never"]),
        default="random",
        show_default=True,
        help="Send Retry-After on injected 429s.",
    ),
    click.option(
        "--duration-ratio",
        default=1.0,
        show_default=True,
        type=float,
        help="Scale every metadata.duration (0.5: transcripts that cover half their audio).",
    ),
    click.option(
        "--forbid-model",
        "forbidden_models",
        multiple=True,
        metavar="MODEL",
        help="Answer 403 (no access to the requested model) to requests for MODEL; repeatable.",
    ),
)


#: ``run``'s options that ``RunConfig`` takes as click parsed them (it checks their ranges)
_AS_GIVEN = (
    "concurrency",
    "max_retries",
    "timeout",
    "retry_failed",
    "backoff_base",
    "backoff_cap",
    "grace",
    "progress",
    "caption_line_length",
    "dry_run",
    "probe",
    "max_audio_hours",
    "max_cost",
    "price_per_hour",
    "dedupe",
    "url_mode",
    "force",
    "run_report",
)


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
    api_url = given_api_url(opts["api_url"], allow_insecure=opts["allow_insecure_http"])
    shard = given_shard(opts["shard"])
    state_path = given_state_path(opts["state_path"]) or default_state_path(out, shard)
    check_own_paths(out, state_path, opts["run_report"])
    return RunConfig(
        sources=tuple(opts["sources"]),
        out=out,
        state_path=state_path,
        api_key=_api_key(opts),
        api_url=api_url,
        formats=formats,
        params=params,
        filters=Filters(tuple(opts["include"]), tuple(opts["exclude"]), AUDIO_EXTENSIONS),
        command=invoked_command(),
        preflight=not opts["no_preflight"],
        sniff=not opts["no_sniff"],
        s3_endpoint_url=opts["s3_endpoint_url"] or None,
        shard=shard,
        **{name: opts[name] for name in _AS_GIVEN},
    )
