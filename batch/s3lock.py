"""The run lock of an S3 ``--out``: an object that says "a run is writing here".

The state file is local to one machine, so two machines (two cron hosts, a retried
Kubernetes pod) could otherwise write the same outputs at once. The lock lives next
to the outputs, ``<prefix>/.dgbatch/lock[-shard-K-of-N].json``, and names its holder
(owner, host, pid, started, expires) so a refused run can say who to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.errors import BatchError, StateLocked, UsageError
from batch.isotime import utc_iso
from batch.naming import is_s3_uri
from batch.s3 import S3, describe_error, is_not_found, parse_s3_uri
from batch.shard import lock_tag, overlap, overlap_message
from batch.statefile import take_output_lock, unwritable_reason

__all__ = ["LOCK_TTL", "LockWatch", "S3Lock", "output_lock"]

log = logging.getLogger("dgbatch")

#: A lock not refreshed for this long is abandoned (its run died) and may be taken over.
LOCK_TTL = 900.0
#: roughly when this process started (a lock with our pid from before is a previous life's)
_PROCESS_STARTED = time.time()


@dataclass(frozen=True, slots=True)
class _Holder:
    """What a lock object says about the run that holds it."""

    doc: dict[str, Any]
    etag: str

    def stale(self, now: float) -> bool:
        """Expired, or held by a process of this very host that is gone (``kill -9``).

        A holder claiming our own pid from before this process started is gone too: a
        restarted container often reuses both its hostname and its pid.
        """
        if float(self.doc.get("expires", 0)) < now:
            return True
        if self.doc.get("host") != socket.gethostname():
            return False
        if self.doc.get("pids", PIDS) != PIDS:  # a container of the same name: its pids are
            return False  # not ours to look up (its pid 1 is not our pid 1)
        pid = self.doc.get("pid")
        if pid == os.getpid():
            return float(self.doc.get("started", 0)) < _PROCESS_STARTED
        return not _alive(pid)

    def describe(self) -> str:
        doc = self.doc
        started = _iso(doc.get("started"))
        expires = _iso(doc.get("expires"))
        return (
            f"{doc.get('owner', '?')} on {doc.get('host', '?')}, pid {doc.get('pid', '?')}, "
            f"started {started}, expires {expires} unless refreshed"
        )


def _cause(exc: BaseException) -> str:
    """What S3 said, under the "cannot take the run lock" that reading or writing the lock
    wraps it in (it read "cannot release the run lock: UsageError: … cannot take …")."""
    return describe_error(exc.__cause__ or exc)[1]


def _pid_space() -> str:
    """Where this process's pid means something: the boot and the PID namespace. Two
    containers may share a hostname (``--network host``, a fixed ``--hostname``) and both
    run dgbatch as pid 1; only a holder of the same space can be looked up by its pid."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: the hostname is all there is
        return ""


#: this process's pid space (``_pid_space``), recorded in the lock it holds
PIDS = _pid_space()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iso(stamp: object) -> str:
    return utc_iso(stamp) if isinstance(stamp, int | float) else "?"


class S3Lock:
    """An object that says "a run is writing here", so two runs never share an output.

    Taken with a conditional put (``If-None-Match: *``; an expired lock is replaced
    with ``If-Match`` on its ETag), so two runs racing for it cannot both win. A
    store that rejects conditional puts gets check-then-put instead (GET, then a
    plain PUT): two runs starting within the same few milliseconds could then both
    proceed. The holder
    refreshes it every ``ttl / 3``; a lock left by a crash expires after ``ttl``,
    or at once when its process is gone from this host.
    """

    def __init__(self, s3: S3, uri: str, *, ttl: float | None = None) -> None:
        self.s3 = s3
        self.bucket, self.key = parse_s3_uri(uri)
        self.uri = uri
        self.ttl = LOCK_TTL if ttl is None else ttl
        self._token = uuid.uuid4().hex
        self._etag: str | None = None
        self._started = time.time()
        self._refreshed = self._started

    @classmethod
    def for_output(cls, s3: S3, out_uri: str, suffix: str = "") -> S3Lock:
        """The lock of an output prefix: ``<prefix>/.dgbatch/lock[-<suffix>].json``."""
        base = out_uri if out_uri.endswith("/") else out_uri + "/"
        name = f"lock-{suffix}.json" if suffix else "lock.json"
        return cls(s3, f"{base}.dgbatch/{name}")

    async def acquire(self) -> None:
        """Take the lock, or raise ``StateLocked`` naming the run that holds it."""
        await self.s3.call(self._acquire)

    async def refresh(self) -> None:
        """Push the expiry forward. A failed refresh is logged and tried again at the
        next one, unless the lock would expire before the one after: then, as when
        another run has taken it over, ``StateLocked`` says the run no longer holds it.

        Raises:
            StateLocked: the lock is another run's now, or soon may be.
        """
        try:
            await self.s3.call(self._put, if_match=self._etag)
        except _TakenOver as exc:
            msg = f"{self.uri}: another run took this run's output lock over ({exc.who}); "
            raise StateLocked(msg + _STOPPED) from None
        except BatchError as exc:
            elapsed = time.time() - self._refreshed
            reason = _cause(exc)
            if elapsed + self.ttl / 3 < self.ttl:
                log.warning("%s: cannot refresh the run lock (%s); trying again", self.uri, reason)
                return
            msg = f"{self.uri}: the run lock could not be refreshed for {elapsed:.1f} s ({reason})"
            raise StateLocked(f"{msg}, and expires before the next try; {_STOPPED}") from exc
        self._refreshed = time.time()

    def safe_until(self) -> float:
        """When the lock may be another run's, unless refreshed before: its expiry as last
        written, less a tenth of its life for the clocks of other hosts."""
        return self._refreshed + self.ttl * 0.9

    def expired(self) -> StateLocked:
        """The error of a run whose lock outlived its last refresh (``LockWatch.check``)."""
        since = time.time() - self._refreshed
        msg = (
            f"{self.uri}: this run's output lock was last refreshed {since:.0f} s ago and may "
            "be another run's now (the host was suspended, or the run stalled)"
        )
        return StateLocked(f"{msg}; {_STOPPED}")

    async def release(self) -> None:
        """Delete the lock if it is still ours; never raises (it runs on error paths)."""
        try:
            await self.s3.call(self._release)
        except Exception as exc:
            log.warning("%s: cannot release the run lock: %s", self.uri, _cause(exc))

    def _acquire(self) -> None:
        holder = self._read()
        if holder is not None and not holder.stale(time.time()):
            raise self._refused(holder)
        if holder is not None:
            log.warning("%s: taking over an abandoned lock (%s)", self.uri, holder.describe())
        try:
            self._put(if_match=holder.etag if holder else None, create=holder is None)
        except _TakenOver as exc:  # another run took it between our read and our put
            raise self._refused(exc.holder) from None

    async def refuse_overlapping_shards(self, suffix: str) -> None:
        """Refuse the run, once it holds its own lock, while another run with other
        ``--shard`` settings (none and a shard, or shards of two N) holds one on this
        prefix: each has its own state, so both would send the items they share.

        Raises:
            StateLocked: naming that run and its shard.
        """
        await self.s3.call(self._refuse_overlapping, suffix)

    def _refuse_overlapping(self, suffix: str) -> None:
        folder = self.key.rpartition("/")[0] + "/"
        pages = self.s3.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder + "lock"
        )
        try:
            keys = [obj["Key"] for page in pages for obj in page.get("Contents", ())]
        except Exception as exc:
            raise self._error(exc) from exc
        for key in keys:
            tag = lock_tag(key[len(folder) :], "lock", "json")  # for_output's
            if tag is None or key == self.key or not overlap(suffix, tag):
                continue
            holder = self._read(key)
            if holder is not None and not holder.stale(time.time()):
                place = self.uri.rpartition("/.dgbatch/")[0]
                raise StateLocked(overlap_message(place, _who(holder), tag, suffix))

    def _document(self) -> bytes:
        now = time.time()
        doc = {
            "owner": f"{os.environ.get('USER') or 'dgbatch'}:{self._token[:8]}",
            "token": self._token,
            "host": socket.gethostname(),
            "pids": PIDS,
            "pid": os.getpid(),
            "started": self._started,
            "expires": now + self.ttl,
        }
        return json.dumps(doc).encode()

    def _put(self, *, if_match: str | None = None, create: bool = False) -> None:
        condition = {"IfNoneMatch": "*"} if create else {"IfMatch": if_match} if if_match else {}
        try:
            resp = self._put_raw(condition)
        except Exception as exc:
            if not condition or describe_error(exc)[0] != "changed":
                raise self._error(exc) from exc
            raise _TakenOver(self._read()) from None
        self._etag = resp["ETag"]

    def _put_raw(self, condition: dict[str, str]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        put: Callable[..., Any] = functools.partial(
            self.s3.client.put_object,
            Bucket=self.bucket,
            Key=self.key,
            Body=self._document(),
            ContentType="application/json",
        )
        try:
            return dict(put(**condition))
        except ClientError as exc:
            if not condition or not _conditions_unsupported(exc):
                raise
        log.warning("%s: the store ignores conditional puts; lock is best-effort", self.uri)
        return dict(put())

    def _read(self, key: str | None = None) -> _Holder | None:
        try:
            obj = self.s3.client.get_object(Bucket=self.bucket, Key=key or self.key)
            raw = obj["Body"].read()
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise self._error(exc) from exc
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        return _Holder(doc if isinstance(doc, dict) else {}, obj["ETag"])

    def _release(self) -> None:
        holder = self._read()
        if holder is not None and holder.doc.get("token") == self._token:
            self.s3.client.delete_object(Bucket=self.bucket, Key=self.key)

    def _refused(self, holder: _Holder | None) -> StateLocked:
        who = _who(holder)
        return StateLocked(
            f"{self.uri}: another dgbatch run holds the output lock ({who}); wait for it "
            "to finish, or delete the lock object if that run is gone"
        )

    def _error(self, exc: BaseException) -> UsageError:
        return UsageError(f"{self.uri}: cannot take the run lock: {describe_error(exc)[1]}")


_STOPPED = "this run stopped sending: its in-flight requests finish, the rest stays pending"


class _TakenOver(Exception):
    """A conditional put of the lock failed: another run wrote it since we read it."""

    def __init__(self, holder: _Holder | None) -> None:
        super().__init__("taken over")
        self.holder = holder
        self.who = _who(holder)


def _who(holder: _Holder | None) -> str:
    return holder.describe() if holder is not None else "another run"


def _conditions_unsupported(exc: Any) -> bool:
    """Stores without conditional writes answer 501 NotImplemented (or 400 naming the header)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    text = str(error.get("Message", "")).lower()
    return code in ("NotImplemented", "501") or (code == "InvalidArgument" and "match" in text)


class LockWatch:
    """Stops the run when its output lock is lost (another run took it over, or it could
    not be refreshed in time): two runs on one prefix would pay for the same items."""

    def __init__(self) -> None:
        self.lost: BatchError | None = None
        self._stop: Callable[[BatchError], None] | None = None
        #: why nothing can be written into a local ``--out`` whose lock could not be made
        #: (``unwritable_reason``); None where it can
        self.unwritable: str | None = None
        #: the S3 lock, while this run holds it (a local lock cannot expire)
        self.lock: S3Lock | None = None

    def check(self) -> None:
        """Refuse to send once the S3 lock may have expired unrefreshed: a host suspended
        (or a run stopped) past its life wakes with its refresh still asleep, and sent new
        requests until that refresh found the lock another run's (a review paid twice so).

        Raises:
            StateLocked: the lock's time is up (less a margin for clocks between hosts).
        """
        lock = self.lock
        if self.lost is None and lock is not None and time.time() > lock.safe_until():
            self.lose(lock.expired())
        if self.lost is not None:
            raise self.lost

    def lose(self, reason: BatchError) -> None:
        self.lost = reason
        if self._stop is not None:
            self._stop(reason)

    def stop_with(self, stop: Callable[[BatchError], None]) -> None:
        """Route a loss to ``stop`` (the runner's), at once if it happened already."""
        self._stop = stop
        if self.lost is not None:
            stop(self.lost)


@contextlib.asynccontextmanager
async def output_lock(
    s3: S3, out: str, shard: str, state: Path | None = None
) -> AsyncIterator[LockWatch]:
    """An S3 ``--out`` is locked in S3 too (the state file is local to one machine);
    the lock is refreshed while the run lasts and released at the end. A local ``--out``
    is locked beside its outputs (``take_output_lock``), a lock that cannot be lost: its
    watch never fires."""
    watch = LockWatch()
    if not is_s3_uri(out):
        handle = take_output_lock(Path(out), shard, state=state)
        if handle is None:
            watch.unwritable = await asyncio.to_thread(unwritable_reason, Path(out))
        try:
            yield watch
        finally:
            if handle is not None:
                handle.close()
        return
    lock = S3Lock.for_output(s3, out, shard)
    await lock.acquire()
    try:
        await lock.refuse_overlapping_shards(shard)
    except BaseException:
        await lock.release()
        raise
    refresher = asyncio.create_task(_refresh_periodically(lock, watch))
    watch.lock = lock
    try:
        yield watch
    finally:
        watch.lock = None
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await lock.release()


async def _refresh_periodically(lock: S3Lock, watch: LockWatch) -> None:
    while True:
        await asyncio.sleep(lock.ttl / 3)
        try:
            await lock.refresh()
        except StateLocked as exc:
            watch.lose(exc)
            return
