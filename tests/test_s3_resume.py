"""The S3 run lock under races and without conditional puts, and kill -9 then resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from conftest import KEY, SRC_ROOT, MotoS3, dgbatch_subprocess_cmd, make_wav

from batch.errors import StateLocked
from batch.s3 import S3, S3Options
from batch.s3lock import PIDS, S3Lock, _Holder

HOST = socket.gethostname()
LIVE = time.time() + 600


@pytest.mark.parametrize(
    ("doc", "stale"),
    [
        ({"host": "elsewhere", "pid": 1, "expires": LIVE}, False),
        ({"host": "elsewhere", "pid": 1, "expires": 10.0}, True),
        ({"host": HOST, "pid": os.getppid(), "expires": LIVE}, False),
        ({"host": HOST, "pid": os.getpid(), "started": 1.0, "expires": LIVE}, True),
        ({"host": HOST, "pid": os.getpid(), "started": time.time(), "expires": LIVE}, False),
        ({"host": HOST, "pid": 2**22 + 7, "expires": LIVE}, True),
        ({"host": HOST, "pids": PIDS, "pid": 2**22 + 7, "expires": LIVE}, True),
        # a container of the same hostname (another pid namespace): its pids are not ours
        ({"host": HOST, "pids": "b:4026531836", "pid": 2**22 + 7, "expires": LIVE}, False),
        ({"host": HOST, "pids": "b:1", "pid": os.getpid(), "started": 1.0, "expires": LIVE}, False),
        ({"host": HOST, "pids": "b:1", "pid": 1, "expires": 10.0}, True),
        ({}, True),
    ],
)
def test_lock_staleness(doc: dict[str, Any], stale: bool) -> None:
    """A lock is abandoned when expired, or when its process on this host is gone; a
    holder of another pid space (a container that shares the hostname, both pid 1) only
    when expired: it took over a live run's lock, and the items were paid twice."""
    assert _Holder(doc, '"etag"').stale(time.time()) is stale


async def test_only_one_of_two_racing_runs_gets_the_lock(moto: MotoS3) -> None:
    """Two runs taking the same lock at once: the conditional put lets exactly one win."""
    moto.bucket("race")
    s3 = S3(S3Options(endpoint_url=moto.url))
    locks = [S3Lock.for_output(s3, "s3://race/tx/", "shard-0-of-2") for _ in range(2)]
    results = await asyncio.gather(*(lock.acquire() for lock in locks), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "StateLocked"]
    winner = locks[0] if results[0] is None else locks[1]
    await winner.refresh()
    await winner.release()
    assert moto.client.list_objects_v2(Bucket="race")["KeyCount"] == 0
    s3.close()


async def test_s3_runs_with_other_shard_settings_exclude_each_other(moto: MotoS3) -> None:
    """On an S3 ``--out`` too, a run without ``--shard`` or with another N is refused
    while a shard holds its lock (each has its own state: both would pay); another
    shard of the same N, or a stale lock, is no reason."""
    from batch.s3lock import output_lock

    moto.bucket("mix")
    s3 = S3(S3Options(endpoint_url=moto.url))
    stale = json.dumps({"host": "elsewhere", "pid": 1, "expires": 10.0}).encode()
    moto.client.put_object(Bucket="mix", Key="tx/.dgbatch/lock-shard-0-of-5.json", Body=stale)
    async with output_lock(s3, "s3://mix/tx", "shard-0-of-2"):
        for tag, said in (("", "without --shard"), ("shard-1-of-3", "as shard 1 of 3")):
            with pytest.raises(StateLocked, match=f"shard 0 of 2, and this run would {said}"):
                async with output_lock(s3, "s3://mix/tx", tag):
                    pass
        async with output_lock(s3, "s3://mix/tx", "shard-1-of-2"):
            pass
    async with output_lock(s3, "s3://mix/tx", ""):  # the shard is done: the whole may run
        pass
    keys = [o["Key"] for o in moto.client.list_objects_v2(Bucket="mix")["Contents"]]
    assert keys == ["tx/.dgbatch/lock-shard-0-of-5.json"]  # the refused left no lock behind
    s3.close()


async def test_a_lock_taken_over_or_not_refreshed_in_time_is_lost(moto: MotoS3) -> None:
    """A refresh that finds another run's lock, or that failed so long that the lock
    would expire before the next try, raises StateLocked; a failed refresh with time to
    spare is only logged."""
    moto.bucket("held")
    s3 = S3(S3Options(endpoint_url=moto.url))
    lock = S3Lock(s3, "s3://held/tx/.dgbatch/lock.json", ttl=0.3)
    await lock.acquire()
    await lock.refresh()
    real_put = s3.client.put_object

    def failing_put(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "PutObject")  # type: ignore[arg-type]

    s3.client.put_object = failing_put  # type: ignore[method-assign]
    await lock.refresh()  # within 0.3 s of the last refresh: logged, still ours
    await asyncio.sleep(0.35)
    with pytest.raises(StateLocked, match=r"could not be refreshed for .* expires before"):
        await lock.refresh()
    s3.client.put_object = real_put  # type: ignore[method-assign]
    await lock.refresh()
    other = {"owner": "ops:2", "host": "worker-9", "pid": 99, "started": 1.0, "expires": 4e9}
    real_put(Bucket="held", Key="tx/.dgbatch/lock.json", Body=json.dumps(other).encode())
    with pytest.raises(StateLocked, match="another run took this run's output lock over"):
        await lock.refresh()
    s3.close()


async def test_lock_warnings_say_what_failed_and_what_s3_said(
    moto: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh or a release that fails is a warning saying which, and S3's reason (they
    read "cannot release the run lock: UsageError: … cannot take the run lock: …")."""
    moto.bucket("warn")
    s3 = S3(S3Options(endpoint_url=moto.url))
    lock = S3Lock(s3, "s3://warn/tx/.dgbatch/lock.json")
    await lock.acquire()

    def unreachable(**kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url=moto.url)

    s3.client.put_object = unreachable  # type: ignore[method-assign]
    s3.client.get_object = unreachable  # type: ignore[method-assign]
    await lock.refresh()
    await lock.release()
    s3.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    uri = "s3://warn/tx/.dgbatch/lock.json"
    assert warnings == [
        f"{uri}: cannot refresh the run lock (cannot reach S3 (EndpointConnectionError)); "
        "trying again",
        f"{uri}: cannot release the run lock: cannot reach S3 (EndpointConnectionError)",
    ]


async def test_lock_without_conditional_puts(moto: MotoS3) -> None:
    """A store that rejects conditional puts still gets a (best-effort) lock."""
    moto.bucket("plain")
    s3 = S3(S3Options(endpoint_url=moto.url))
    real_put = s3.client.put_object

    def put(**kwargs: Any) -> Any:
        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            error = {"Error": {"Code": "NotImplemented", "Message": "no conditional writes"}}
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        return real_put(**kwargs)

    s3.client.put_object = put  # type: ignore[method-assign]
    first, second = (S3Lock.for_output(s3, "s3://plain/tx") for _ in range(2))
    await first.acquire()
    with pytest.raises(StateLocked, match="another dgbatch run holds the output lock"):
        await second.acquire()
    await first.release()
    await second.acquire()
    await second.release()
    s3.close()


@pytest.fixture
def emulator_process() -> Iterator[str]:
    """``dgbatch emulator --latency 0.2`` in its own process; yields its URL."""
    proc = subprocess.Popen(
        [*dgbatch_subprocess_cmd(), "emulator", "--port", "0", "--latency", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=SRC_ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def requests_seen(url: str) -> int:
    """How many /v1/listen requests the emulator has received."""
    with urllib.request.urlopen(f"{url}/_emulator/stats") as resp:
        return int(json.load(resp)["requests"])


def test_kill_9_mid_run_then_resume_with_s3_outputs(
    moto: MotoS3, emulator_process: str, tmp_path: Path
) -> None:
    """After SIGKILL, the same command finishes the batch: each output once, little re-sent."""
    count, concurrency = 30, 4
    objects = {
        f"in/c{n:02}.wav": make_wav(tmp_path / "w" / f"{n}.wav", tone=n).read_bytes()
        for n in range(count)
    }
    moto.bucket("kill", objects)
    env = {**os.environ, "DEEPGRAM_API_KEY": KEY, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [
        *dgbatch_subprocess_cmd(),
        "run",
        "s3://kill/in/",
        "--out",
        "s3://kill/tx/",
        "--concurrency",
        str(concurrency),
        "--api-url",
        emulator_process,
        "--progress",
        "none",
    ]
    first = subprocess.Popen(cmd, env=env, cwd=SRC_ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while requests_seen(emulator_process) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    sent_before = requests_seen(emulator_process)
    assert sent_before < count
    resumed = subprocess.run(cmd, env=env, cwd=SRC_ROOT, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    keys = [o["Key"] for o in moto.client.list_objects_v2(Bucket="kill", Prefix="tx/")["Contents"]]
    expected = {f"tx/c{n:02}.{fmt}" for n in range(count) for fmt in ("json", "txt")}
    assert sorted(keys) == sorted(expected)  # every output exactly once, no lock left behind
    assert requests_seen(emulator_process) <= count + concurrency
