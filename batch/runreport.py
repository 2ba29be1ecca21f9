"""The ``--run-report`` JSON summary: one small document per run, for monitoring.

A nightly job is watched by something that cannot read SQLite in a container that
is gone: it reads this file instead (a local path or ``s3://``). It is written at
the end of every run, including refused and failed ones, and says when the run
started and finished, what it did, the first failures and the exit code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import __version__
from batch.config import invoked_command, run_report_problem
from batch.errors import BatchError, OutputError, exit_code_of
from batch.isotime import utc_iso
from batch.naming import is_s3_uri
from batch.outputs import write_atomic
from batch.redact import redact_source, redact_text
from batch.state import State

if TYPE_CHECKING:
    from batch.s3 import S3

log = logging.getLogger("dgbatch")

#: at most this many failures are listed (``failures_total`` has the count)
MAX_FAILURES = 100


@dataclass
class RunReport:
    """What the report says; filled in as the run goes."""

    started: float
    command: str
    out: str
    shard: str | None = None
    finished: float | None = None
    exit_code: int | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_total: int = 0

    def document(self) -> dict[str, Any]:
        """The JSON document (times as ISO 8601 UTC and as epoch seconds)."""
        return {
            "version": __version__,
            "host": socket.gethostname(),
            "command": self.command,
            "out": self.out,
            "shard": self.shard,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "started_epoch": self.started,
            "finished_epoch": self.finished,
            "exit_code": self.exit_code,
            "error": self.error,
            "counts": self.counts,
            "audio_hours": self.summary.get("audio_hours", 0.0),
            "summary": self.summary,
            "failures_total": self.failures_total,
            "failures": self.failures,
        }

    def read_failures(self, state: State) -> None:
        """Copy the first failed items (secrets redacted) and their total from the state."""
        ((total,),) = state.query("SELECT COUNT(*) FROM items WHERE status = 'failed'")
        rows = state.query(
            "SELECT id, source, http_status, err_code, error FROM items "
            "WHERE status = 'failed' ORDER BY rowid LIMIT ?",
            (MAX_FAILURES,),
        )
        self.failures_total = int(total)
        self.failures = [
            {
                "id": redact_source(str(item_id)),
                "source": redact_source(str(source)),
                "http_status": status,
                "err_code": code,
                "error": redact_text(str(error)) if error else None,
            }
            for item_id, source, status, code, error in rows
        ]


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else utc_iso(stamp)


async def write_run_report(dest: str, report: RunReport, s3: S3) -> None:
    """Write the report to a local path (atomically) or an S3 key."""
    data = (json.dumps(report.document(), indent=2) + "\n").encode()
    if is_s3_uri(dest):
        await _put(dest, data, s3)
        return
    try:  # through a link, the file it leads to (a monitor reads that one)
        await s3.call(write_atomic, Path(os.path.realpath(dest)), data)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write the run report: {exc.strerror}") from exc


async def _put(dest: str, data: bytes, s3: S3) -> None:
    from batch.s3 import describe_error, parse_s3_uri

    bucket, key = parse_s3_uri(dest)
    try:
        await s3.call(
            s3.client.put_object,
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType="application/json",
        )
    except Exception as exc:
        msg = f"{dest}: cannot write the run report: {describe_error(exc)[1]}"
        raise OutputError(msg) from exc


def report_refusal(
    dest: str | None,
    out: str,
    endpoint_url: str | None,
    error: BatchError,
    state: Path | None = None,
) -> None:
    """Write the run report of a run refused before it began (a key missing, an option
    wrong: exit 2), so that a monitor reading it learns of tonight's failure instead of
    last night's success. Never over what the refusal is about (the ``--run-report``
    itself), and never raises: the refusal is what the user must see. ``state``: the
    ``--state`` given, if any."""
    if dest is None or not refusal_may_write(dest, out, state):
        return
    now = time.time()
    report = RunReport(
        started=now,
        command=redact_text(invoked_command()),
        out=redact_source(out),
        finished=now,
        exit_code=exit_code_of(error),
        error=redact_text(str(error)),
    )
    from batch.s3 import S3, S3Options  # here: a refusal is rare, boto3 is slow to load

    s3 = S3(S3Options(endpoint_url=endpoint_url))
    try:
        asyncio.run(save_run_report(dest, report, s3))
    except OutputError as exc:  # it names the place
        log.warning("%s", exc)
    except Exception as exc:
        log.warning("%s: cannot write the run report: %s", redact_source(dest), exc)
    finally:
        s3.close()


async def save_run_report(dest: str, report: RunReport, s3: S3) -> None:
    """Write the report, unless something else than an earlier run report is there now.

    Raises:
        OutputError: it is not written (the reason named).
    """
    reason = await report_place_taken(dest, s3)
    if reason is not None:
        raise OutputError(f"{redact_source(dest)}: run report not written: {reason}")
    await write_run_report(dest, report, s3)


def refusal_may_write(dest: str, out: str, state: Path | None = None) -> bool:
    """Whether a refused run may write its report at ``dest``: the options that would have
    checked the place (``--out``, ``--state``) may be the wrong ones, so only over an
    earlier run report, or as a new ``.json`` file outside any ``.dgbatch`` folder, or at
    an S3 key outside ``--out``'s outputs; never over the state, a transcript or a file
    of the user's (``save_run_report`` looks at what is there)."""
    if not dest.strip() or ("://" in dest and not is_s3_uri(dest)):  # an http(s) URL
        return False
    real = dest if is_s3_uri(dest) else os.path.realpath(dest)  # where it would be written
    if run_report_problem(dest, out, state) or run_report_problem(real, out, state):  # what the
        return False  # refusal may be about
    if is_s3_uri(dest):
        return ".dgbatch" not in dest.split("/")
    path = Path(real)
    return path.exists() or (path.suffix == ".json" and ".dgbatch" not in path.parts)


#: why a run report is not written over what is there
TAKEN = "something else than a run report is there (a run report replaces only an earlier one)"


async def report_place_taken(dest: str, s3: S3) -> str | None:
    """Why the run report must not be written at ``dest``, or None: a run report replaces
    only an earlier one, never a recording, a lock (another run would take its batch
    over), a transcript or a file of the user's that a mistyped option names."""
    if is_s3_uri(dest):
        head = await s3.call(_s3_head_bytes, dest, s3)
        if head is _NO_BUCKET:
            return "no such bucket"
        return None if head is None or is_run_report(head) else TAKEN
    return await asyncio.to_thread(_local_place_taken, Path(dest))


def _local_place_taken(path: Path) -> str | None:
    """``report_place_taken`` for a local path (a link: the file it leads to). Only a
    regular file is read: a FIFO there would block the run for ever."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror})"
    if stat.S_ISDIR(found.st_mode):
        return "is a folder"
    if not stat.S_ISREG(found.st_mode):
        return "is not a regular file (a pipe, a device)"
    try:
        with path.open("rb") as handle:
            head = handle.read(_READ)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None if is_run_report(head) else TAKEN


def is_run_report(data: bytes) -> bool:
    """Whether ``data`` (a file's first ``_READ`` bytes) is a run report dgbatch wrote:
    JSON, whole, with its fields."""
    try:
        earlier = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(earlier, dict) and {"exit_code", "started", "command"} <= set(earlier)


#: how much of a place is read to tell a run report: one is a few KB, and at most a few MB
#: when thousands of SOURCEs are on its command line (which the system caps at 2 MB)
_READ = 32 << 20


def _s3_head_bytes(dest: str, s3: S3) -> bytes | None:
    """The first ``_READ`` bytes of the object at ``dest``, or None when there is none (or
    it cannot be read: the put will then say why it fails)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from batch.s3 import error_code, parse_s3_uri

    bucket, key = parse_s3_uri(dest)
    try:
        return s3.read_range(bucket, key, f"bytes=0-{_READ - 1}", _READ)[0]
    except ClientError as exc:
        return _NO_BUCKET if error_code(exc) == "NoSuchBucket" else None
    except BotoCoreError:
        return None


#: what ``_s3_head_bytes`` gives for a bucket that is not there (known before any put)
_NO_BUCKET = b"\0no such bucket"
