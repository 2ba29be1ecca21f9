"""The run's settings in one frozen object, validated once, and the API key's loading.

Every knob says what it bounds: ``concurrency`` is the number of requests (and
therefore open files, upload buffers of ``CHUNK_SIZE`` and sockets) in flight, and of
answers waiting in memory for their outputs to be written.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from batch.client import DEFAULT_TIMEOUT
from batch.errors import UsageError
from batch.formats import RENDERERS
from batch.localfiles import open_regular
from batch.models import Filters, Params
from batch.naming import folder_prefix, is_s3_uri, split_s3_uri
from batch.params import request_params
from batch.proxies import proxy_for
from batch.redact import redact_source, redact_text, redact_url
from batch.shard import Shard
from batch.statefile import SQLITE_TAILS
from batch.urls import is_loopback

DEFAULT_API_URL = "https://api.deepgram.com"
KEY_ENV = "DEEPGRAM_API_KEY"
URL_ENV = "DEEPGRAM_API_URL"


@dataclass(frozen=True)
class RunConfig:
    """Everything ``dgbatch run`` needs, after parsing and validation."""

    sources: tuple[str, ...]
    out: str
    state_path: Path
    api_key: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    formats: tuple[str, ...] = ("json", "txt")
    params: Params = ()
    filters: Filters = field(default_factory=Filters)
    #: requests in flight at most (and open files, sockets, one upload chunk each), and
    #: as many answers waiting for their outputs
    concurrency: int = 10
    #: retries per item and run after the first attempt
    max_retries: int = 5
    #: seconds one request may take before the upload-size allowance (see client)
    timeout: float = DEFAULT_TIMEOUT
    retry_failed: bool = False
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    #: seconds in-flight requests get to finish after SIGINT/SIGTERM
    grace: float = 30.0
    progress: str = "auto"
    command: str = "dgbatch run"
    #: words per SRT/WebVTT cue (None: the deepgram-captions default, 8)
    caption_line_length: int | None = None
    #: plan and estimate only: no request, no key, the real state untouched
    dry_run: bool = False
    #: with ``dry_run``: time S3 objects and URLs from their first (and, for Ogg, last) 64 KiB
    probe: bool = False
    #: stop dispatching before audio transcribed (whole state) + in flight passes this
    max_audio_hours: float | None = None
    #: the same cap in USD, converted with ``price_per_hour`` or ``batch.pricing``
    max_cost: float | None = None
    #: USD per audio hour, overriding ``batch.pricing`` for estimates and ``max_cost``
    price_per_hour: float | None = None
    #: GET /v1/auth/token before planning, so a refused key touches no item
    preflight: bool = True
    #: refuse local files whose first bytes are no known audio container
    sniff: bool = True
    #: send identical audio with identical params once per state (across runs)
    dedupe: bool = False
    #: how many ``source → output`` lines a dry run prints
    dry_run_examples: int = 5
    #: S3-compatible endpoint (moto, MinIO); None lets boto3 find AWS itself
    s3_endpoint_url: str | None = None
    #: how S3 items reach Deepgram: ``presign`` (a URL) or ``upload`` (streamed by us)
    url_mode: str = "presign"
    #: this worker's share of the items; None takes them all
    shard: Shard | None = None
    #: re-send items that are done or whose outputs already exist
    force: bool = False
    #: where the JSON run summary goes (a path or ``s3://``), None for nowhere
    run_report: str | None = None

    def __post_init__(self) -> None:
        _check_positive("--concurrency", self.concurrency)
        if self.concurrency > MAX_CONCURRENCY:
            msg = (
                f"--concurrency must be at most {MAX_CONCURRENCY} (got {self.concurrency}): "
                "Deepgram takes 100 requests of a project at once"
            )
            raise UsageError(msg)
        _check_non_negative("--max-retries", self.max_retries)
        _check_positive("--timeout", self.timeout)
        _check_non_negative("--grace", self.grace)
        _check_non_negative("--backoff-base", self.backoff_base)
        _check_non_negative("--backoff-cap", self.backoff_cap)
        for name, value in (
            ("--caption-line-length", self.caption_line_length),
            ("--max-audio-hours", self.max_audio_hours),
            ("--max-cost", self.max_cost),
            ("--price-per-hour", self.price_per_hour),
        ):
            if value is not None:
                _check_positive(name, value)

    def sent_params(self, own: Params) -> Params:
        """The params a request of this run sends for an item whose own ones are ``own``,
        without the run tags (they differ per run and say nothing of the answer): what
        ``--dedupe`` keys copies on and what a kept answer must have been asked with."""
        return request_params(self.params, own, formats=self.formats)

    def answering_params(self, own: Params) -> tuple[Params, ...]:
        """The params of the requests whose answer serves an item of this run: as this run
        sends it first, then as a run with other formats did (``utterances=true`` added for
        captions, or not): captions are made from an answer's words without utterances, as
        for a done item, so a kept answer is not paid for again when a format is added."""
        layers = (self.formats, (), ("srt",))
        return tuple(dict.fromkeys(request_params(self.params, own, formats=f) for f in layers))


def default_state_path(
    out: str, shard: Shard | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """Where the state lives when ``--state`` is not given.

    A local ``--out`` keeps it beside the outputs (``OUT/.dgbatch/state.sqlite``). An
    S3 ``--out`` has no local folder, so it goes to the user's cache,
    ``$XDG_CACHE_HOME/dgbatch/<hash of the out URI>/state.sqlite`` (``~/.cache`` when
    unset): the same command on the same machine finds it again, and a fresh container
    does not need it (existing outputs are recognised in S3). Shards get their own
    folder (``...-shard-3-of-16``), so N workers never share a state or a report.
    """
    env = os.environ if environ is None else environ
    tag = f"-{shard.suffix()}" if shard is not None else ""
    if not is_s3_uri(out):
        local = Path(out) / ".dgbatch"
        return (local / shard.suffix() if shard else local) / "state.sqlite"
    cache = _cache_folder(env)
    rest = out[len("s3://") :].rstrip("/")
    state = _cached(cache, "s3://" + rest, tag)  # S3://b/x is s3://b/x: one state
    if state.exists():
        return state
    for scheme in (out[: len("s3://")], "S3://"):  # an earlier release hashed it as typed:
        old = _cached(cache, scheme + rest, tag)  # its state is found again, however typed
        if old.exists():
            return old
    return state


def _cache_folder(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``.

    Raises:
        UsageError: neither is an absolute path (no ``HOME`` and a user without a passwd
            entry: ``~`` stays ``~``), which would put the state under the working folder,
            where a run from another folder would not find it and start a new one.
    """
    given = env.get("XDG_CACHE_HOME")
    if given:  # relative too: where earlier runs put their states
        return Path(given)
    home = env.get("HOME") or os.path.expanduser("~")
    if not os.path.isabs(home):
        msg = (
            "no folder for the state of an S3 --out: set XDG_CACHE_HOME or HOME to an "
            "absolute path, or give --state"
        )
        raise UsageError(msg)
    return Path(home) / ".cache"


def _cached(cache: Path, uri: str, tag: str) -> Path:
    """The state of ``uri`` in the cache (``default_state_path``)."""
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache / "dgbatch" / f"{digest}{tag}" / "state.sqlite"


def shard_states(out: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The shards (``K/N``) whose states for ``out`` are on this machine
    (``default_state_path``), for a reader that named none."""
    probe = default_state_path(out, Shard(0, 1), environ).parent
    pattern = probe.name.replace("shard-0-of-1", "shard-*-of-*") + "/state.sqlite"
    found = (_SHARD_DIR_RE.search(path.parent.name) for path in probe.parent.glob(pattern))
    return sorted(f"{m[1]}/{m[2]}" for m in found if m)


_SHARD_DIR_RE = re.compile(r"shard-(\d+)-of-(\d+)$")


def invoked_command() -> str:
    """The command line as typed, for the state's runs and reports: each word redacted
    before it is quoted (quoting split a URL's password with a ``'`` in it, which was then
    stored in clear); the API key is redacted from the whole later."""
    words = (redact_text(redact_source(w) if "://" in w else w) for w in sys.argv[1:])
    return shlex.join(["dgbatch", *words])


#: a scheme and a colon where a local ``--out`` begins: ``s3:/media``, ``https://``, ``file:``
_URI_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(/|$)")


def check_out(out: str) -> str:
    """Refuse a local ``--out`` that cannot be a folder, before anything is planned.

    Otherwise a file there is found only when the state folder is made under it
    (a message naming the state, not ``--out``), and a dry run would not see it
    at all. ``--out`` may not exist yet; its nearest existing parent must then be
    a folder. What cannot be looked at (no permission) is left to the writes,
    which name the path and the reason.
    """
    if not out.strip():  # ``--out "$OUT"`` with OUT unset: not the current folder
        raise UsageError(f"--out {out!r}: is empty (name a folder or s3://bucket/prefix)")
    if out != out.strip():  # `` s3://b/x`` was a local folder named " s3:"
        raise UsageError(f"--out {out!r}: begins or ends with a space")
    if is_s3_uri(out):
        if not split_s3_uri(out)[0]:
            raise UsageError(f"--out {out!r}: names no bucket (s3://bucket/prefix)")
        return out
    scheme = _URI_LIKE.match(out) or out[:3].lower() == "s3:"
    if scheme:  # ``s3:/media/x``, ``s3:media/x``: a typo, not a folder named "s3:"
        msg = f"--out {out!r}: looks like a mistyped URI; name a folder or s3://bucket/prefix"
        raise UsageError(msg)
    path = Path(out)
    for candidate in (path, *path.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return out
        if stat.S_ISDIR(mode):
            return out
        reason = "is a file, not a folder" if stat.S_ISREG(mode) else "is not a folder"
        if candidate != path:
            reason = f"{str(candidate)!r} {reason}"
        raise UsageError(f"--out {out!r}: {reason}")
    return out


#: what an output's name can end in (``naming.output_relpath``: ``<name>.<format>``)
_OUTPUT_SUFFIXES = frozenset(f".{fmt}" for fmt in RENDERERS)


def state_files(state: Path) -> tuple[Path, ...]:
    """The state file and the files SQLite and the run lock keep beside it."""
    return tuple(state.with_name(state.name + tail) for tail in (*SQLITE_TAILS, ".lock"))


def report_path(state_path: Path) -> Path:
    """The run's report beside its state: ``report.jsonl`` for the default
    ``state.sqlite``, ``<name>.report.jsonl`` for any other, so that two states kept in
    one folder (``--state`` per shard or per batch) never write the same report."""
    if state_path.name == "state.sqlite":
        return state_path.with_name("report.jsonl")
    return state_path.with_name(f"{state_path.stem}.report.jsonl")


def check_own_paths(out: str, state: Path, run_report: str | None) -> None:
    """Refuse a ``--state`` or ``--run-report`` where dgbatch would overwrite its own
    files: a run report over the state (the batch's only record) or the run's JSONL
    report, or either one where a transcript goes in a local ``--out`` (``a.json``),
    where one would replace the other; a ``--run-report`` that names no file."""
    if _is_output_place(state, out):
        raise UsageError(f"--state {str(state)!r}: {_OUTPUT_PLACE}")
    if run_report is None:
        return
    if "://" in run_report and not is_s3_uri(run_report):
        msg = f"--run-report {redact_source(run_report)!r}: give a local path or s3://bucket/key"
        raise UsageError(msg)
    problem = run_report_problem(run_report, out, state)
    if problem is not None:
        raise UsageError(f"--run-report {run_report!r}: {problem}")


def run_report_problem(report: str, out: str, state: Path | None = None) -> str | None:
    """Why ``--run-report`` must not go at ``report`` (checked for a run, and for the report
    a refused run writes), or None. ``state`` defaults to the one ``out`` keeps."""
    try:
        state = state or default_state_path(out)
        check = _s3_report_problem if is_s3_uri(report) else _local_report_problem
        return check(report, out, state)
    except (OSError, ValueError, RuntimeError, UsageError) as exc:  # a link loop, a path
        return f"cannot be looked at ({exc})"  # not usable, no folder for an S3 --out's state


def _s3_report_problem(report: str, out: str, state: Path) -> str | None:
    if report.endswith("/") or not split_s3_uri(report)[1]:
        return "give an object key, s3://bucket/r.json"
    if is_s3_output_place(report, out):
        return _OUTPUT_PLACE
    return _LOCK if _is_s3_lock(report) else None


def _local_report_problem(report: str, out: str, state: Path) -> str | None:
    if not report.strip():
        return "is empty"
    if report.endswith(("/", os.sep)):
        return "names a folder: give a file name"
    path = Path(report).resolve()
    if path.parent.exists() and not path.parent.is_dir():
        return f"{path.parent} is a file, not a folder"
    if _is_lock(path):
        return _LOCK
    if path == report_path(state).resolve():
        return "is the run's own report (report.jsonl)"
    if _is_state_file(path, state):
        return "is the state file (or one of its own files)"
    return _OUTPUT_PLACE if _is_output_place(path, out) else None


def check_report_target(output: str, state: Path) -> None:
    """``report -o`` onto the state file would replace the batch's record with its report,
    onto a lock (``OUT/.dgbatch/out.lock``) would let a second run in, and onto a
    transcript's place in the state's ``OUT`` would replace a paid transcript for good
    (the state says it is done)."""
    if output == "-":
        return
    try:
        if _is_state_file(Path(output), state):
            raise UsageError(f"-o {output!r}: is the state file (or one of its own files)")
        if _is_lock(Path(output).resolve()):
            raise UsageError(f"-o {output!r}: is a lock of a dgbatch run")
        folder = state.resolve().parent  # OUT/.dgbatch of OUT/.dgbatch/state.sqlite
        if folder.name == ".dgbatch" and _is_output_place(Path(output), str(folder.parent)):
            raise UsageError(f"-o {output!r}: {_OUTPUT_PLACE}")
        if _is_recording(Path(output)):
            raise UsageError(f"-o {output!r}: is a recording (audio), not a report; not replaced")
    except RuntimeError as exc:  # Path.resolve of a link loop
        raise UsageError(f"-o {output!r}: a symbolic link loop") from exc


def _is_recording(path: Path) -> bool:
    """Whether a regular file at ``path`` begins as audio does (``-o calls/a.wav``, a
    slip of the shell, replaced a recording with a report; ``--run-report`` refused it)."""
    from batch.sniff import sniff_container

    try:
        with open_regular(str(path)) as handle:
            head = handle.read(4096)
    except OSError:  # NotRegular too: a pipe is no recording to keep
        return False
    return bool(head) and sniff_container(head) is not None


def _is_state_file(path: Path, state: Path) -> bool:
    """Whether ``path`` is one of the state's files: SQLite keeps its ``-wal`` beside the
    file a ``--state`` link leads to, so both names count."""
    try:
        own = {*state_files(state), *state_files(state.resolve())}
        return path.resolve() in {file.resolve() for file in own}
    except RuntimeError:  # a link loop is none of them (and opening it fails, named)
        return False


_LOCK = "is a run's lock: replaced, it would let a second run take the batch over"


def _is_s3_lock(uri: str) -> bool:
    """An S3 output prefix's lock, ``<prefix>/.dgbatch/lock[-shard-K-of-N].json``."""
    parts = uri.split("/")
    return len(parts) > 1 and parts[-2] == ".dgbatch" and parts[-1].startswith("lock")


def _is_lock(path: Path) -> bool:
    return path.suffix == ".lock" and (
        path.parent.name == ".dgbatch" or path.parent.name.startswith("dgbatch-locks-")
    )


_OUTPUT_PLACE = "a transcript could be written there in --out; choose another path"


def _is_output_place(path: Path, out: str) -> bool:
    """``path`` is in a local ``out``, outside its ``.dgbatch`` folder, named as outputs are."""
    if is_s3_uri(out) or path.suffix.lower() not in _OUTPUT_SUFFIXES:
        return False
    try:
        inside = path.resolve().relative_to(Path(out).resolve())
    except ValueError:
        return False
    return ".dgbatch" not in inside.parts


def is_s3_output_place(report: str, out: str) -> bool:
    """``report`` is under an S3 ``out``'s prefix, outside its ``.dgbatch/``, named as
    outputs are: the transcript of a source named so (``_reports/latest.wav``) would be
    put there, and the report would replace it at the end of the run."""
    if not is_s3_uri(out) or Path(report).suffix.lower() not in _OUTPUT_SUFFIXES:
        return False
    bucket, key = split_s3_uri(report)
    out_bucket, prefix = split_s3_uri(out)
    folder = folder_prefix(prefix.rstrip("/"))
    if bucket != out_bucket or not key.startswith(folder):
        return False
    return ".dgbatch" not in key[len(folder) :].split("/")


#: ``--concurrency`` above this is refused: ten times Deepgram's project limit, and the
#: run sizes its workers and threads by it (``-c 100000000`` ran the machine out of memory)
MAX_CONCURRENCY = 1000


def _check_positive(name: str, value: float) -> None:
    _check_finite(name, value)
    if value <= 0:
        raise UsageError(f"{name} must be > 0 (got {value})")


def _check_non_negative(name: str, value: float) -> None:
    _check_finite(name, value)
    if value < 0:
        raise UsageError(f"{name} must be >= 0 (got {value})")


def _check_finite(name: str, value: float) -> None:
    """``nan`` (a budget a script computed wrongly) passes every comparison: ``--max-cost
    nan`` turned the cap off, ``--timeout nan`` the timeout."""
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number (got {value})")


def load_api_key(key_file: Path | None, environ: dict[str, str] | None = None) -> str:
    """The key from ``--api-key-file`` or ``DEEPGRAM_API_KEY``; a file readable by others
    is refused, like ssh refuses an unprotected private key."""
    env = os.environ if environ is None else environ
    if key_file is not None:
        return _checked_key(_read_key_file(key_file), str(key_file))
    key = env.get(KEY_ENV, "").strip()
    if not key:
        raise UsageError(f"no API key: set {KEY_ENV} or pass --api-key-file PATH")
    return _checked_key(key, KEY_ENV)


def _checked_key(key: str, where: str) -> str:
    """A key that can go in an ``Authorization`` header: printable ASCII without spaces. A
    key pasted with a line break inside, or with a space, is named (never shown) here,
    not failed in every request."""
    if not all("!" <= char <= "~" for char in key):
        msg = (
            f"{where}: the API key holds a space, a line break or another character a key "
            "never has; copy it again"
        )
        raise UsageError(msg)
    return key


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            msg = (
                f"{path}: API key file is readable by other users "
                f"(mode {stat.filemode(mode)}); run 'chmod 600 {path}'"
            )
            raise UsageError(msg)
        key = path.read_text(encoding="utf-8-sig").strip()  # an editor's BOM is not the key
    except OSError as exc:
        raise UsageError(f"{path}: cannot read API key file: {exc.strerror}") from exc
    if not key:
        raise UsageError(f"{path}: API key file is empty")
    return key


def _names_v1(path: str) -> bool:
    """Whether an ``--api-url`` path ends in what each request adds: ``/v1``, or
    ``/v1/listen`` (the URL Deepgram's docs show). A gateway's own prefix is kept."""
    return path.rstrip("/").endswith(("/v1", "/v1/listen"))


def check_api_url(url: str, *, allow_insecure: bool = False, named: str = "--api-url") -> str:
    """Only https, or http to a loopback host (the emulator) unless explicitly allowed.

    The URL is shown redacted: a password in it must not reach the terminal or a
    log. Credentials in it are refused: the key is sent as a ``Token`` header,
    which cannot go with a user and password (aiohttp refuses the request). ``named``:
    where it came from (``DEEPGRAM_API_URL``), for the message.
    """
    shown = f"{named} {redact_url(url)!r}"
    expected = f"{shown}: expected https://HOST[:PORT]"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:  # a bad IPv6 literal or port
        raise UsageError(expected) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(expected)
    if _names_v1(parts.path):
        # every request path starts with /v1 already: .../v1/v1/listen is a 404 per item
        raise UsageError(f"{shown}: leave out the /v1 (dgbatch adds /v1/listen itself)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # a path prefix (a gateway) is kept; a query or fragment would be cut off or
        # end up inside every request's path: a 404 per item
        raise UsageError(f"{shown}: a query string or fragment is not supported")
    if "@" in parts.netloc:
        msg = (
            f"{shown}: a user or password in the URL is not supported; "
            f"the key comes from {KEY_ENV} or --api-key-file"
        )
        raise UsageError(msg)
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        msg = (
            f"{shown}: plain http would send the API key unencrypted; "
            "use https, a loopback host, or --allow-insecure-http"
        )
        raise UsageError(msg)
    proxy_for(url)  # a proxy variable that cannot be used is said now, not per request
    return url.rstrip("/")
