"""S3 sources, both send modes, S3 outputs, skip-if-done, locks and bad input (moto + emulator)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
import yarl
from aiohttp import web
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from conftest import (
    KEY,
    Cli,
    MotoS3,
    emulator_with,
    make_wav,
    read_state_rows,
    serve_app,
    start_run,
    stop_when,
)

from batch import dryrun
from batch.client import DeepgramClient, TransportError, make_session
from batch.emulator import Emulator
from batch.errors import ItemError, StoreUnreachable
from batch.media import MAX_UPLOAD_BYTES, size_problem
from batch.models import Filters, ItemKind, ItemStatus
from batch.s3 import S3, S3Options, describe_error, parse_s3_uri, read_error
from batch.s3sources import expand as expand_s3
from batch.state import WorkItem

FAST = ("--concurrency", "4")


def wav(tmp_path: Path, tone: int) -> bytes:
    """The bytes of a small distinct WAV."""
    return make_wav(tmp_path / "wav" / f"{tone}.wav", tone=tone).read_bytes()


def audio_objects(tmp_path: Path, keys: list[str]) -> dict[str, bytes]:
    """One distinct WAV per key."""
    return {key: wav(tmp_path, n) for n, key in enumerate(keys)}


def sha(data: bytes) -> str:
    """Hex sha256."""
    return hashlib.sha256(data).hexdigest()


def listen_log(emulator: Emulator) -> list[Any]:
    """The emulator's /v1/listen requests so far."""
    return list(emulator.log)


def run_prefix(
    dgbatch: Cli, moto: MotoS3, tmp_path: Path, bucket: str, keys: list[str], *args: str
) -> tuple[dict[str, bytes], Path]:
    """Put one WAV per key in ``bucket``, run on ``s3://bucket/in/`` into a local folder."""
    objects = audio_objects(tmp_path, keys)
    moto.bucket(bucket, objects)
    out = tmp_path / "out"
    result = dgbatch("run", f"s3://{bucket}/in/", "--out", str(out), *args, *FAST)
    assert result.exit_code == 0, result.output
    return objects, out


# -- pure pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bkt/a/b.wav", ("bkt", "a/b.wav")),
        ("s3://bkt/pre/", ("bkt", "pre/")),
        ("s3://bkt", ("bkt", "")),
        ("S3://bkt/odd key+&#?.wav", ("bkt", "odd key+&#?.wav")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    """An s3:// URI splits into bucket and a literal key."""
    assert parse_s3_uri(uri) == expected


def _client_error(code: str, status: int = 400) -> ClientError:
    """A botocore ClientError as S3 would raise it."""
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_client_error("NoSuchBucket", 404), "no_bucket"),
        (_client_error("NoSuchKey", 404), "missing"),
        (_client_error("404", 404), "missing"),
        (_client_error("AccessDenied", 403), "access_denied"),
        (_client_error("403", 403), "access_denied"),
        (_client_error("InvalidAccessKeyId", 403), "credentials"),
        (_client_error("PreconditionFailed", 412), "changed"),
        (_client_error("SlowDown", 503), "throttled"),
        (_client_error("Weird", 400), "s3_error"),
        (NoCredentialsError(), "credentials"),
        (EndpointConnectionError(endpoint_url="http://x"), "unreachable"),
    ],
)
def test_describe_error_table(exc: Exception, code: str) -> None:
    """Each botocore error maps to the most specific reason."""
    assert describe_error(exc)[0] == code


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error("SlowDown", 503), TransportError),
        (_client_error("InternalError", 500), TransportError),
        (ConnectionClosedError(endpoint_url="http://x"), TransportError),
        (ReadTimeoutError(endpoint_url="http://x"), TransportError),
        (EndpointConnectionError(endpoint_url="http://x"), StoreUnreachable),
        (_client_error("NoSuchKey", 404), ItemError),
        (_client_error("PreconditionFailed", 412), ItemError),
        (_client_error("AccessDenied", 403), ItemError),
    ],
)
def test_reading_an_objects_audio_fails_by_cause(exc: Exception, kind: type) -> None:
    """Upload mode, once botocore's own retries are spent: throttling, a 5xx or a dropped
    connection is retried with the item's backoff and is no attempt (it failed the item
    for good); S3 unreachable stops the run (every item failed one by one); what is the
    object's own (gone, changed, denied) fails the item."""
    error = read_error("s3://b/k.wav", exc)
    assert type(error) is kind and "s3://b/k.wav" in str(error)
    assert not isinstance(error, TransportError) or not error.reached


# -- listing -------------------------------------------------------------------------------


def test_prefix_listing_streams_page_by_page(moto: MotoS3, tmp_path: Path) -> None:
    """A prefix is listed lazily, page by page, filtered, named relative to the prefix."""
    keys = [f"in/day{n % 3}/c{n:02}.wav" for n in range(30)]
    objects = audio_objects(tmp_path, keys[:2]) | dict.fromkeys(keys[2:], b"RIFFxxxx")
    objects |= {"in/notes.txt": b"x", "in/.git/x.wav": b"x", "other/z.wav": b"x"}
    moto.bucket("listing", objects)
    s3 = S3(S3Options(endpoint_url=moto.url, page_size=7))
    calls: list[str] = []
    s3.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: calls.append("p"))
    items = expand_s3(s3, "s3://listing/in/", Filters(exclude=(".git",)))
    first = next(items)
    time.sleep(0.3)
    assert len(calls) <= 3  # one page planned, one queued, one being fetched: not all 5
    rest = list(items)
    assert len(calls) == 5  # 32 objects under in/ in pages of 7
    found = [first, *rest]
    assert sorted(i.name for i in found) == sorted(k.removeprefix("in/") for k in keys)
    assert first.id == f"s3://listing/in/{first.name}"
    assert first.kind is ItemKind.S3 and first.size == len(objects["in/" + first.name])
    assert first.fingerprint == hashlib.md5(objects["in/" + first.name]).hexdigest()
    s3.close()


def test_prefetch_keeps_order_errors_and_stops() -> None:
    """Prefetched pages keep their order, re-raise a listing error, and stop with the reader."""
    import threading

    from batch.s3sources import _prefetched

    def pages() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("page 3 broke")

    got: list[int] = []
    with pytest.raises(ValueError, match="page 3 broke"):
        got.extend(_prefetched(pages()))
    assert got == [1, 2]
    endless = _prefetched(iter(range(10**9)))
    assert next(endless) == 0
    endless.close()
    deadline = time.monotonic() + 2
    while any(t.name == "dgbatch-s3-list" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_listing_over_a_thousand_keys(moto: MotoS3) -> None:
    """A prefix of more than 1,000 keys is listed completely (two real S3 pages)."""
    moto.bucket("big", {f"k/{n:05}.mp3": b"ID3" for n in range(1234)})
    s3 = S3(S3Options(endpoint_url=moto.url))
    assert sum(1 for _ in expand_s3(s3, "s3://big/k/", Filters())) == 1234
    s3.close()


def test_single_object_and_prefix_without_slash(moto: MotoS3, tmp_path: Path) -> None:
    """A key is one item named by its basename; a key-less name falls back to its prefix."""
    moto.bucket("single", audio_objects(tmp_path, ["calls/a.mp3", "calls/sub/b.wav"]))
    s3 = S3(S3Options(endpoint_url=moto.url))
    (item,) = list(expand_s3(s3, "s3://single/calls/a.mp3", Filters()))
    assert (item.id, item.name) == ("s3://single/calls/a.mp3", "a.mp3")
    names = sorted(i.name for i in expand_s3(s3, "s3://single/calls", Filters()))
    assert names == ["a.mp3", "sub/b.wav"]
    s3.close()


# -- sending -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["presign", "upload"])
async def test_an_object_over_2_gb_fails_unsent(
    moto: MotoS3, emulator: Emulator, tmp_path: Path, mode: str
) -> None:
    """An object over Deepgram's 2 GB was sent (uploaded to a 413, or fetched by Deepgram),
    and counted by the dry run and the budget; a local file so big fails unsent. So does
    the object now (its listed size), and it costs nothing."""
    moto.bucket("huge", audio_objects(tmp_path, ["a.wav"]))
    size = MAX_UPLOAD_BYTES + 1
    item = WorkItem(
        1, "s3://huge/a.wav", "s3://huge/a.wav", ItemKind.S3, "a", (), 0, size, "", None,
        ItemStatus.PENDING,
    )  # fmt: skip
    s3 = S3(S3Options(endpoint_url=moto.url))
    async with make_session(4, emulator.url) as session:
        client = DeepgramClient(session, emulator.url, KEY)
        with pytest.raises(ItemError, match="over Deepgram's 2 GB limit") as refused:
            await s3.sender(mode)(client, item, item.source)
    s3.close()
    assert refused.value.code == "too_large" and emulator.log == []
    assert size_problem(size) == "too_large" and size_problem(0) == "empty"
    assert size_problem(MAX_UPLOAD_BYTES) is None and size_problem(None) is None
    listed = {"kind": "s3", "size": size, "out_name": "big"}  # the dry run's row: it counts
    config = SimpleNamespace(out="s3://b/out/", formats=("json", "txt"))  # the item as failing
    assert dryrun._local_problem(config, config.out, listed, ()) == "too_large"  # type: ignore[arg-type]


def test_presign_mode_submits_a_signed_url(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """The default mode sends a fresh SigV4 presigned URL that the emulator fetches."""
    objects, out = run_prefix(dgbatch, moto, tmp_path, "media", ["in/a.wav", "in/sub/b.wav"])
    log = listen_log(emulator)
    assert sorted(r.sha256 for r in log) == sorted(sha(d) for d in objects.values())
    for record in log:
        assert record.mode == "url" and record.status == 200
        assert "X-Amz-Signature=" in record.url and "X-Amz-Expires=3600" in record.url
    assert (out / "a.json").exists() and (out / "sub" / "b.txt").exists()


def test_upload_mode_streams_the_object(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """--url-mode upload streams the object's bytes with its Content-Length."""
    keys = ["in/a.wav", "in/b.wav"]
    objects, _ = run_prefix(dgbatch, moto, tmp_path, "private", keys, "--url-mode", "upload")
    log = listen_log(emulator)
    assert {r.mode for r in log} == {"upload"}
    assert sorted(r.sha256 for r in log) == sorted(sha(d) for d in objects.values())
    assert sorted(r.content_length for r in log) == sorted(len(d) for d in objects.values())
    assert {r.content_type for r in log} == {"audio/wav"}


@pytest.mark.parametrize("mode", ["presign", "upload"])
def test_odd_characters_in_keys(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path, mode: str
) -> None:
    """Keys with spaces, unicode, +, &, # and ? are fetched intact in both modes."""
    keys = ["in/a b.wav", "in/ünï cödé.wav", "in/x+y&z.wav", "in/h#sh?q=1.wav"]
    objects, out = run_prefix(dgbatch, moto, tmp_path, "odd", keys, "--url-mode", mode)
    assert sorted(r.sha256 for r in listen_log(emulator)) == sorted(
        sha(d) for d in objects.values()
    )
    assert len(list(out.glob("*.json"))) == 4


# -- S3 outputs and idempotency --------------------------------------------------------------


def run_s3(dgbatch: Cli, tmp_path: Path, *args: str, state: str = "s1") -> Any:
    """Run with an S3 --out and a state of its own (a fresh container per ``state``)."""
    return dgbatch(*args, "--state", str(tmp_path / state / "state.sqlite"), *FAST)


def test_s3_outputs_carry_type_and_metadata(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """Outputs are put with their Content-Type and the source's ETag; the lock is released."""
    objects = audio_objects(tmp_path, ["in/a.wav"])
    moto.bucket("media", objects)
    result = run_s3(dgbatch, tmp_path, "run", "s3://media/in/", "--out", "s3://media/tx/")
    assert result.exit_code == 0, result.output
    etag = hashlib.md5(objects["in/a.wav"]).hexdigest()
    head = moto.client.head_object(Bucket="media", Key="tx/a.json")
    assert head["ContentType"] == "application/json"
    source = "s3://media/in/a.wav"
    assert head["Metadata"] == {"dgbatch-source": source, "dgbatch-fingerprint": etag}
    txt = moto.client.head_object(Bucket="media", Key="tx/a.txt")
    assert txt["ContentType"] == "text/plain; charset=utf-8"
    body = moto.client.get_object(Bucket="media", Key="tx/a.json")["Body"].read()
    assert json.loads(body)["metadata"]["sha256"] == sha(objects["in/a.wav"])
    listed = moto.client.list_objects_v2(Bucket="media", Prefix="tx/.dgbatch/")
    assert listed["KeyCount"] == 0


def test_second_run_on_a_fresh_state_sends_nothing_but_changes(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """Existing outputs with the same ETag are skipped (done, with their outputs named and
    no warning: their transcripts are not read back); a changed object is sent again."""
    moto.bucket("nightly", audio_objects(tmp_path, ["in/a.wav", "in/b.wav", "in/c.wav"]))
    cmd = ("run", "s3://nightly/in/", "--out", "s3://nightly/tx/")
    assert run_s3(dgbatch, tmp_path, *cmd, state="night1").exit_code == 0
    assert len(listen_log(emulator)) == 3
    second = run_s3(dgbatch, tmp_path, *cmd, state="night2")
    assert second.exit_code == 0, second.output
    assert len(listen_log(emulator)) == 3
    assert "skipped 3 item(s)" in second.output and "warning" not in second.output
    rows = read_state_rows(tmp_path / "night2" / "state.sqlite")
    assert [(r["status"], r["warning"], r["attempts"]) for r in rows] == [("done", None, 0)] * 3
    assert json.loads(str(rows[0]["outputs"])) == [
        "s3://nightly/tx/a.json",
        "s3://nightly/tx/a.txt",
    ]
    moto.bucket("nightly", {"in/b.wav": wav(tmp_path, 9)})
    third = run_s3(dgbatch, tmp_path, *cmd, state="night3")
    assert third.exit_code == 0, third.output
    assert len(listen_log(emulator)) == 4
    assert listen_log(emulator)[-1].sha256 == sha(wav(tmp_path, 9))
    forced = run_s3(dgbatch, tmp_path, *cmd, "--force", state="night3")
    assert forced.exit_code == 0 and len(listen_log(emulator)) == 7


def test_a_fresh_state_with_more_formats_adopts_the_json_and_renders_the_rest(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A fresh container asking for one format more finds the json of the same source and
    ETag: it renders srt from it instead of sending everything again (it did, paid,
    because not every format asked for was in S3)."""
    objects = audio_objects(tmp_path, ["in/a.wav", "in/b.wav"])
    moto.bucket("more", objects)
    cmd = ("run", "s3://more/in/", "--out", "s3://more/tx/")
    assert run_s3(dgbatch, tmp_path, *cmd, state="night1").exit_code == 0
    moto.client.delete_object(Bucket="more", Key="tx/b.json")  # b: only its txt is left
    second = run_s3(dgbatch, tmp_path, *cmd, "--formats", "json,txt,srt", state="night2")
    assert second.exit_code == 0, second.output
    assert [r.sha256 for r in listen_log(emulator)][2:] == [sha(objects["in/b.wav"])]
    assert "skipped 1 item(s)" in second.output and "rendered the formats 1 done" in second.output
    srt = moto.client.get_object(Bucket="more", Key="tx/a.srt")["Body"].read()
    assert srt.startswith(b"1\n")
    rows = {r["id"]: r for r in read_state_rows(tmp_path / "night2" / "state.sqlite")}
    assert json.loads(str(rows["s3://more/in/a.wav"]["outputs"])) == [
        f"s3://more/tx/a.{fmt}" for fmt in ("json", "txt", "srt")
    ]


def test_a_lost_state_finds_outputs_named_before_a_namesake_arrived(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """``in/a.wav`` was transcribed to ``tx/a.json``; then ``in/a.mp3`` arrives and the
    state is lost. Planned beside its namesake, a.wav would be named ``a.wav.json``: its
    outputs are found under its other name, which it keeps, and only a.mp3 is sent."""
    moto.bucket("names", audio_objects(tmp_path, ["in/a.wav", "in/b.wav"]))
    cmd = ("run", "s3://names/in/", "--out", "s3://names/tx/")
    assert run_s3(dgbatch, tmp_path, *cmd, state="night1").exit_code == 0
    moto.bucket("names", {"in/a.mp3": wav(tmp_path, 7)})
    second = run_s3(dgbatch, tmp_path, *cmd, state="night2")
    assert second.exit_code == 0, second.output
    assert [r.sha256 for r in listen_log(emulator)][2:] == [sha(wav(tmp_path, 7))]
    listed = moto.client.list_objects_v2(Bucket="names", Prefix="tx/")["Contents"]
    keys = sorted(o["Key"] for o in listed if "/.dgbatch/" not in o["Key"])
    assert keys == [
        "tx/a.json",
        "tx/a.mp3.json",
        "tx/a.mp3.txt",
        "tx/a.txt",
        "tx/b.json",
        "tx/b.txt",
    ]
    names = {r["id"]: r["out_name"] for r in read_state_rows(tmp_path / "night2" / "state.sqlite")}
    assert names == {
        "s3://names/in/a.mp3": "a.mp3",
        "s3://names/in/a.wav": "a",
        "s3://names/in/b.wav": "b",
    }
    assert run_s3(dgbatch, tmp_path, *cmd, state="night2").exit_code == 0
    assert len(listen_log(emulator)) == 3


def test_a_format_added_later_is_rendered_from_the_json_in_s3(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """On an S3 --out too, a format asked for after the items were done is rendered from
    their json object and put beside it, with the same metadata; nothing is sent."""
    moto.bucket("late", audio_objects(tmp_path, ["in/a.wav"]))
    cmd = ("run", "s3://late/in/", "--out", "s3://late/tx/")
    assert run_s3(dgbatch, tmp_path, *cmd).exit_code == 0
    more = run_s3(dgbatch, tmp_path, *cmd, "--formats", "json,txt,vtt")
    assert more.exit_code == 0, more.output
    assert "rendered the formats 1 done item(s)" in more.output and len(listen_log(emulator)) == 1
    vtt = moto.client.get_object(Bucket="late", Key="tx/a.vtt")
    assert vtt["Body"].read().startswith(b"WEBVTT")
    assert vtt["Metadata"]["dgbatch-source"] == "s3://late/in/a.wav"


def test_a_stopped_force_never_adopts_the_outputs_it_was_redoing(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A ``--force`` run stopped before it redid anything (here by a refused key) leaves
    its items pending; the next run sends them instead of taking the old outputs, which
    carry the same source and ETag, as already done."""
    moto.bucket("redo", audio_objects(tmp_path, ["in/a.wav", "in/b.wav", "in/c.wav"]))
    cmd = ("run", "s3://redo/in/", "--out", "s3://redo/tx/", "--no-preflight")
    assert run_s3(dgbatch, tmp_path, *cmd).exit_code == 0
    emulator.auth_mode = "401"
    try:
        assert run_s3(dgbatch, tmp_path, *cmd, "--force", "--param", "model=nova-2").exit_code == 3
    finally:
        emulator.auth_mode = "ok"
    resumed = run_s3(dgbatch, tmp_path, *cmd, "--param", "model=nova-2")
    assert resumed.exit_code == 0, resumed.output
    assert "skipped" not in resumed.output
    answered = [dict(r.params).get("model") for r in listen_log(emulator) if r.status == 200]
    assert answered == ["nova-3"] * 3 + ["nova-2"] * 3


def test_forced_items_never_adopt_their_old_outputs_later(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """Items a ``--force`` re-queued are sent, never matched to the outputs they were to
    redo (same source and ETag): not when the force ends with them failed and
    ``--retry-failed`` picks them up, nor when a kill left them ``running``. Once done
    again, the flag is gone."""
    moto.bucket("again", audio_objects(tmp_path, ["in/a.wav", "in/b.wav"]))
    cmd = ("run", "s3://again/in/", "--out", "s3://again/tx/")
    assert run_s3(dgbatch, tmp_path, *cmd).exit_code == 0
    emulator.config.fault_rate, emulator.config.faults = 1.0, ("500",)
    try:
        failing = run_s3(dgbatch, tmp_path, *cmd, "--force", "--max-retries", "0")
    finally:
        emulator.config.fault_rate = 0.0
    assert failing.exit_code == 1 and "state: 0 done, 2 failed" in failing.output
    retried = run_s3(dgbatch, tmp_path, *cmd, "--retry-failed")
    assert retried.exit_code == 0 and "skipped" not in retried.output
    assert [r.status for r in listen_log(emulator)] == [200, 200, 500, 500, 200, 200]

    state = tmp_path / "s1" / "state.sqlite"
    db = sqlite3.connect(state)
    with db:  # where a kill -9 in a forced run leaves its items: claimed, outputs in place
        db.execute("UPDATE items SET status = 'running', claimed_at = 1.0, forced = 1")
    db.close()
    resumed = run_s3(dgbatch, tmp_path, *cmd)
    assert resumed.exit_code == 0 and "recovered" not in resumed.output
    assert len(listen_log(emulator)) == 8
    db = sqlite3.connect(state)
    with db:  # once redone they are items like any other: a kill's leftovers are adopted
        db.execute("UPDATE items SET status = 'running', claimed_at = 1.0")
    db.close()
    adopted = run_s3(dgbatch, tmp_path, *cmd)
    assert "recovered 2 item(s)" in adopted.output and len(listen_log(emulator)) == 8


def test_lock_refused_while_held_and_taken_over_when_expired(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A live lock on the output prefix refuses the run (exit 4); an expired one is taken."""
    moto.bucket("locked", audio_objects(tmp_path, ["in/a.wav"]))
    lock = {"owner": "ops:1", "host": "worker-7", "pid": 4242, "started": 1.0, "expires": 4e9}
    put = moto.client.put_object
    put(Bucket="locked", Key="tx/.dgbatch/lock.json", Body=json.dumps(lock).encode())
    cmd = ("run", "s3://locked/in/", "--out", "s3://locked/tx")
    refused = run_s3(dgbatch, tmp_path, *cmd)
    assert refused.exit_code == 4
    assert "worker-7" in refused.output and "pid 4242" in refused.output
    assert listen_log(emulator) == []
    put(Bucket="locked", Key="tx/.dgbatch/lock.json", Body=json.dumps(lock | {"expires": 2.0}))
    taken = run_s3(dgbatch, tmp_path, *cmd)
    assert taken.exit_code == 0, taken.output
    assert len(listen_log(emulator)) == 1


def test_a_budget_waits_for_items_that_turn_out_free_before_it_stops(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A fresh state (a new container) over an S3 prefix already transcribed: each item
    reserves its estimate until its outputs are found there, and the cap stopped the run
    at the next one for good, though nothing was sent; the new object was never reached (a
    review found it). The stop now waits for the items in flight to give back what they
    did not use."""
    keys = [f"in/{n}.wav" for n in range(4)]
    objects = audio_objects(tmp_path, keys)
    moto.bucket("again", {key: objects[key] for key in keys[:3]})
    assert (
        run_s3(dgbatch, tmp_path, "run", "s3://again/in/", "--out", "s3://again/tx/").exit_code == 0
    )
    moto.client.put_object(Bucket="again", Key=keys[3], Body=objects[keys[3]])
    cap = ("--max-audio-hours", str(0.4 / 3600))  # one 0.25 s object fits, two do not
    fresh = run_s3(dgbatch, tmp_path, "run", "s3://again/in/", "--out", "s3://again/tx/",
                   *cap, state="s2")  # fmt: skip
    assert fresh.exit_code == 0, fresh.output
    assert "skipped 3 item(s)" in fresh.output and len(listen_log(emulator)) == 4


#: objects of a run that ``run_s3_stopped`` stops
STOPPED_ITEMS = 16


def run_s3_stopped(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    bucket: str,
    act: Callable[[], object],
) -> Any:
    """A run over ``STOPPED_ITEMS`` objects of ``s3://BUCKET/in/`` into
    ``s3://BUCKET/tx/``, answered in 0.3 s, that ``act`` (done once the first request is
    in) stops: exit 4, the rest pending."""
    names = [f"in/{n:02}.wav" for n in range(STOPPED_ITEMS)]
    moto.bucket(bucket, audio_objects(tmp_path, names))
    emulator.config.latency = 0.3

    def after_first() -> None:
        deadline = time.monotonic() + 10
        while not emulator.log and time.monotonic() < deadline:
            time.sleep(0.01)
        act()

    thread = threading.Thread(target=after_first)
    thread.start()
    try:
        result = run_s3(
            dgbatch, tmp_path, "run", f"s3://{bucket}/in/", "--out", f"s3://{bucket}/tx/"
        )
    finally:
        thread.join()
    assert result.exit_code == 4, result.output
    assert "pending" in {r["status"] for r in read_state_rows(tmp_path / "s1" / "state.sqlite")}
    return result


def test_a_run_that_wakes_past_its_locks_life_sends_nothing_more(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host suspended past the lock's life wakes with its refresh still asleep (the
    event loop's clock stood still): it sent new requests until that refresh found the
    lock another run's, paying twice for what that run sent (a review saw it). The wall
    clock jumps here as it does on waking: no request goes out after it."""
    offset = [0.0]
    monkeypatch.setattr("batch.s3lock.time", SimpleNamespace(time=lambda: time.time() + offset[0]))

    def wake() -> None:
        offset[0] = 1000.0  # the lock's 900 s are past

    result = run_s3_stopped(dgbatch, moto, emulator, tmp_path, "slept", wake)
    assert "may be another run's now (the host was suspended" in result.output
    assert len(listen_log(emulator)) <= 4  # those in flight when it woke (-c 4 of FAST)


def test_a_run_whose_lock_is_taken_over_stops(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another run takes the output lock over mid-run (this host was suspended past the
    lock's life, say): at its next refresh this run stops sending (exit 4, naming the
    other run), so the two do not pay for the same items; the rest stays pending."""
    monkeypatch.setattr("batch.s3lock.LOCK_TTL", 0.6)  # refreshed every 0.2 s
    other = {"owner": "ops:2", "host": "worker-9", "pid": 99, "started": 1.0, "expires": 4e9}
    body = json.dumps(other).encode()

    def take_over() -> None:
        moto.client.put_object(Bucket="taken", Key="tx/.dgbatch/lock.json", Body=body)

    result = run_s3_stopped(dgbatch, moto, emulator, tmp_path, "taken", take_over)
    assert "another run took this run's output lock over" in result.output
    assert "worker-9" in result.output and "this run stopped sending" in result.output
    assert len(listen_log(emulator)) < STOPPED_ITEMS


def test_s3_run_report(dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path) -> None:
    """--run-report s3://... gets a JSON summary with counts, failures and the exit code."""
    objects = audio_objects(tmp_path, ["in/a.wav"]) | {"in/empty.wav": b""}
    moto.bucket("rep", objects)
    result = run_s3(
        dgbatch,
        tmp_path,
        "run",
        "s3://rep/in/",
        "--out",
        "s3://rep/tx/",
        "--run-report",
        "s3://rep/reports/last.json",
    )
    assert result.exit_code == 1
    raw = moto.client.get_object(Bucket="rep", Key="reports/last.json")["Body"].read()
    report = json.loads(raw)
    assert report["exit_code"] == 1 and report["counts"]["done"] == 1
    assert report["failures_total"] == 1
    assert "object is empty" in report["failures"][0]["error"]
    assert report["started"] <= report["finished"]


def test_an_s3_run_report_replaces_only_an_earlier_one(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """``--run-report`` onto a recording of the input prefix replaced it (the next night
    paid for its JSON as audio), and onto a shard's lock let a third run take the batch
    over: both are refused, unsent, as is a bucket that is not there (it was found once
    every item was paid for) and a key that names no object."""
    objects = audio_objects(tmp_path, ["in/a.wav"])
    moto.bucket("rrep", objects)
    args = ("run", "s3://rrep/in/", "--out", "s3://rrep/tx/", "--run-report")
    for place in ("s3://rrep/in/a.wav", "s3://rrep/tx/.dgbatch/lock-shard-1-of-2.json"):
        refused = run_s3(dgbatch, tmp_path, *args, place)
        assert refused.exit_code == 2, refused.output
        assert listen_log(emulator) == []
    assert (
        moto.client.get_object(Bucket="rrep", Key="in/a.wav")["Body"].read() == objects["in/a.wav"]
    )
    for place, said in (
        ("s3://no-such-bucket-zz/r.json", "no such bucket"),  # found before sending
        ("s3://rrep", "give an object key"),
        ("s3://rrep/reports/", "give an object key"),
    ):
        refused = run_s3(dgbatch, tmp_path, *args, place)
        assert refused.exit_code == 2 and said in refused.output, refused.output
        assert listen_log(emulator) == []
    assert run_s3(dgbatch, tmp_path, *args, "s3://rrep/reports/r.json").exit_code == 0
    assert run_s3(dgbatch, tmp_path, *args, "s3://rrep/reports/r.json").exit_code == 0  # over it


def test_a_night_without_its_state_never_writes_over_another_recordings_transcript(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """Each night's prefix into one --out, each night in a fresh container (no state):
    the 28th's ``call.wav`` replaced the 27th's transcript of its own ``call.wav``. It
    takes its full name instead (``call.wav.json``, as a state that knew the other would
    have named it), as it does beside a file that is not dgbatch's; with that name taken
    too, it fails unsent (``output_exists``). Nothing is replaced."""
    keys = ["inc/27/call.wav", "inc/28/call.wav", "inc/29/call.wav", "inc/30/x.wav"]
    objects = audio_objects(tmp_path, keys)
    moto.bucket("nights", objects | {"tr/x.txt": b"a file of the user's"})

    def night(day: str) -> Any:
        out = ("run", f"s3://nights/inc/{day}/", "--out", "s3://nights/tr/")
        return run_s3(dgbatch, tmp_path, *out, state=f"night{day}")

    def body(key: str) -> bytes:
        return bytes(moto.client.get_object(Bucket="nights", Key=key)["Body"].read())

    assert night("27").exit_code == 0
    first = body("tr/call.json")
    assert night("28").exit_code == 0, "the 28th's takes its full name"
    assert body("tr/call.json") == first
    assert sha(objects["inc/28/call.wav"]) in body("tr/call.wav.json").decode()
    sent = len(listen_log(emulator))
    third = night("29")  # both names are other recordings'
    assert third.exit_code == 1 and len(listen_log(emulator)) == sent
    assert "tr/call.json: already there for another source (s3://nights/inc/27/call.wav)" in (
        third.output + str(read_state_rows(tmp_path / "night29" / "state.sqlite")[0]["error"])
    )
    assert body("tr/call.json") == first
    assert night("30").exit_code == 0  # a file not dgbatch's holds x.txt: x.wav.* then
    assert body("tr/x.txt") == b"a file of the user's" and body("tr/x.wav.json")


def test_a_format_rendered_later_never_writes_over_an_object_of_another(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """Asking for srt after json and txt were done rendered it from the json and put it
    over the user's own ``a.srt`` (no dgbatch metadata): only a send was checked. It is
    skipped with a warning naming the object; the other formats are rendered."""
    moto.bucket("later", audio_objects(tmp_path, ["in/a.wav"]))
    args = ("run", "s3://later/in/", "--out", "s3://later/out/")
    assert run_s3(dgbatch, tmp_path, *args).exit_code == 0
    moto.client.put_object(Bucket="later", Key="out/a.srt", Body=b"HAND MADE")
    again = run_s3(dgbatch, tmp_path, *args, "--formats", "json,txt,srt,vtt")
    assert "s3://later/out/a.srt: already there and not dgbatch's, not replaced; move it" in (
        again.output
    )
    body = moto.client.get_object(Bucket="later", Key="out/a.srt")["Body"].read()
    assert body == b"HAND MADE" and len(listen_log(emulator)) == 1


@pytest.mark.parametrize("broken", [False, True], ids=["clean", "an-item-failed"])
def test_a_run_report_that_cannot_be_put_at_the_end_makes_the_run_exit_1(
    moto: MotoS3, tmp_path: Path, broken: bool
) -> None:
    """The reports' bucket went away while the run was sending: the run exited 0 while a
    monitor kept reading last night's report. It exits 1, naming the place, once (it was
    logged, then printed as the run's error); a run that fails anyway says it too."""
    make_wav(tmp_path / "in" / "a.wav")
    if broken:
        (tmp_path / "in" / "b.wav").write_bytes(b"not audio at all")
    moto.bucket("gone-soon")
    with emulator_with(latency=2.0) as emu:
        proc = start_run(
            emu, str(tmp_path / "in"), "--out", str(tmp_path / "out"),
            "--run-report", "s3://gone-soon/r.json",
        )  # fmt: skip
        gone = lambda: moto.client.delete_bucket(Bucket="gone-soon")  # noqa: E731
        stderr = stop_when(proc, lambda: emu.in_flight() >= 1, gone)
    assert proc.returncode == 1, stderr.decode()
    said = b"s3://gone-soon/r.json: run report not written: no such bucket"
    assert (b"Error: " + said in stderr) is not broken, stderr.decode()
    assert stderr.count(said) == 1, stderr.decode()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("s3://nosuchbucket/in/", "no such bucket"),
        ("s3://nosuchbucket/k.wav", "no such bucket"),
        ("s3://nosuchbucket", "no such bucket"),
        ("s3://badin/missing.wav", "no such key"),
        ("s3://badin/empty/", "no objects under this prefix"),
        ("s3://badin/docs/", "no audio objects"),
    ],
)
def test_unusable_cli_sources_exit_2(
    dgbatch: Cli, moto: MotoS3, tmp_path: Path, source: str, message: str
) -> None:
    """A missing bucket, key or empty prefix on the command line is exit 2 naming it."""
    moto.bucket("badin", {"docs/readme.txt": b"hello"})
    result = dgbatch("run", source, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert f"Error: {source}: {message}" in result.output
    assert "Traceback" not in result.output


def test_missing_output_bucket_exits_2(dgbatch: Cli, moto: MotoS3, tmp_path: Path) -> None:
    """An --out in a bucket that does not exist is refused before anything is sent."""
    moto.bucket("srcok", audio_objects(tmp_path, ["in/a.wav"]))
    result = dgbatch("run", "s3://srcok/in/", "--out", "s3://no-such-out/tx/")
    assert result.exit_code == 2
    assert "s3://no-such-out/tx/.dgbatch/lock.json" in result.output
    assert "no such bucket" in result.output


def test_named_non_audio_object_fails_that_item(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A non-audio object named explicitly is sent, and Deepgram's 400 fails only it."""
    moto.bucket("mixed", audio_objects(tmp_path, ["a.wav"]) | {"notes.txt": b"just text"})
    out = tmp_path / "out"
    result = dgbatch("run", "s3://mixed/a.wav", "s3://mixed/notes.txt", "--out", str(out))
    assert result.exit_code == 1
    rows = {r["id"]: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    assert rows["s3://mixed/a.wav"]["status"] == "done"
    bad = rows["s3://mixed/notes.txt"]
    assert bad["status"] == "failed" and bad["http_status"] == 400
    assert "unsupported data" in str(bad["error"])


def test_manifest_s3_lines_fail_alone(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """In a manifest, a missing key or bucket is a failed item; the other lines still run."""
    moto.bucket("man", audio_objects(tmp_path, ["a.wav", "p/b.wav"]))
    manifest = tmp_path / "list.jsonl"
    lines = [
        {"source": "s3://man/a.wav", "id": "first"},
        {"source": "s3://man/p/"},
        {"source": "s3://man/gone.wav"},
        {"source": "s3://nobucket-here/x.wav"},
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    result = dgbatch("run", str(manifest), "--out", str(out), *FAST)
    assert result.exit_code == 1, result.output
    rows = {r["id"]: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    assert rows["id:first"]["status"] == "done" and rows["s3://man/p/b.wav"]["status"] == "done"
    errors = sorted(str(r["error"]) for r in rows.values() if r["status"] == "failed")
    assert "list.jsonl:3" in errors[0] and "no such key" in errors[0]
    assert errors[1] == "list.jsonl:4: s3://nobucket-here/x.wav: no such bucket"
    assert (out / "first.json").exists() and (out / "b.json").exists()


def test_object_deleted_after_listing_fails_with_deepgram_400(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A presigned URL Deepgram cannot fetch (gone, expired) fails that item with the reason."""
    moto.bucket("gone", audio_objects(tmp_path, ["in/a.wav", "in/b.wav"]))
    delete = moto.client.delete_object
    emulator_fetch = emulator._fetch

    async def fetch_after_delete(target: Any, url: str) -> Any:
        if "b.wav" in url:
            delete(Bucket="gone", Key="in/b.wav")
        return await emulator_fetch(target, url)

    emulator._fetch = fetch_after_delete
    out = tmp_path / "out"
    result = dgbatch("run", "s3://gone/in/", "--out", str(out), *FAST)
    assert result.exit_code == 1
    rows = {r["id"]: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    failed = rows["s3://gone/in/b.wav"]
    assert failed["status"] == "failed" and failed["http_status"] == 400
    assert "404" in str(failed["error"]) and "X-Amz" not in str(failed["error"])
    assert rows["s3://gone/in/a.wav"]["status"] == "done"


def test_upload_mode_missing_key_fails_the_item(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """In upload mode an object deleted after listing is a failed item naming it."""
    moto.bucket("gone2", audio_objects(tmp_path, ["in/a.wav"]))
    from batch import s3 as s3_module

    original = s3_module.S3.send_upload

    async def delete_first(self: S3, client: Any, item: Any, source: str) -> Any:
        self.client.delete_object(Bucket="gone2", Key="in/a.wav")
        return await original(self, client, item, source)

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3_module.S3, "send_upload", delete_first)
        result = dgbatch("run", "s3://gone2/in/", "--out", str(out), "--url-mode", "upload")
    assert result.exit_code == 1
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert row["status"] == "failed" and row["err_code"] == "missing"
    assert "s3://gone2/in/a.wav: no such key" in str(row["error"])
    assert listen_log(emulator) == []


def test_upload_read_failure_mid_stream_is_retried(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """An S3 body that breaks mid-read is retried, then done; the broken try is no attempt
    (Deepgram never had the whole request), and it was reported as a broken connection to
    Deepgram ("Can not write request body") rather than S3's."""
    from botocore.exceptions import ReadTimeoutError

    from batch import s3 as s3_module

    moto.bucket("flaky", {"in/a.wav": wav(tmp_path, 1) + bytes(3 << 20)})
    original = s3_module.S3._chunks
    broken: list[str] = []

    class BreaksAfterOneChunk:
        """A body whose second read times out, once per run."""

        def __init__(self, body: Any) -> None:
            self.body, self.reads = body, 0

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads == 2 and not broken:
                broken.append("once")
                raise ReadTimeoutError(endpoint_url="http://moto")
            return bytes(self.body.read(size))

    def break_once(self: S3, body: Any, source: str) -> Any:
        return original(self, BreaksAfterOneChunk(body), source)

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3_module.S3, "_chunks", break_once)
        result = dgbatch("run", "s3://flaky/in/", "--out", str(out), "--url-mode", "upload")
    assert result.exit_code == 0, result.output
    (row,) = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert row["status"] == "done" and row["attempts"] == 1
    assert listen_log(emulator)[-1].status == 200
    assert "retried 0" in result.output


# -- secrets -------------------------------------------------------------------------------


def test_signatures_and_secret_key_never_leave(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No presigned signature or AWS secret reaches state, reports, logs or outputs."""
    secret = "sEcReT-aws-key-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    moto.bucket("leak", audio_objects(tmp_path, ["in/a.wav", "in/b.wav"]))
    out = tmp_path / "out"
    report = tmp_path / "run-report.json"
    refused = dgbatch(
        "run",
        "s3://leak/in/",
        "s3://leak/in/missing.wav",
        "--out",
        str(out),
        "-vv",
        "--run-report",
        str(report),
    )
    assert refused.exit_code == 2  # the missing key is reported, with no secrets either
    assert secret not in refused.output
    result = dgbatch("run", "s3://leak/in/", "--out", str(out), "-vv", "--run-report", str(report))
    assert result.exit_code == 0, result.output
    signatures = {
        m.group(1)
        for r in listen_log(emulator)
        for m in re.finditer(r"X-Amz-Signature=([0-9a-f]+)", r.url)
    }
    assert len(signatures) == 2
    blobs = [result.output.encode(), report.read_bytes()]
    blobs += [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    for blob in blobs:
        assert secret.encode() not in blob
        for signature in signatures:
            assert signature.encode() not in blob
        assert not re.search(rb"X-Amz-Signature=(?!REDACTED)", blob)


def aws_limits(
    upstream: str, throttled_gets: int = 0, *, deny_heads: bool = False
) -> web.Application:
    """moto behind two limits it does not enforce but AWS does: keys of at most 1,024
    bytes (400 KeyTooLongError) and 2 KB of user metadata (400 MetadataTooLarge); the
    first ``throttled_gets`` GETs of each object under ``in/`` answered 503 SlowDown; and
    with ``deny_heads``, HEADs of them answered 403 (a policy that lets only presigned
    URLs read)."""
    gets: Counter[str] = Counter()

    def refused(code: str, status: int = 400) -> web.Response:
        body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>"
        return web.Response(status=status, text=body, content_type="application/xml")

    async def forward(request: web.Request) -> web.Response:
        path = urlsplit(request.raw_path).path
        if deny_heads and request.method == "HEAD" and "/in/" in path:
            return web.Response(status=403)
        if request.method == "GET" and "/in/" in path and "list-type" not in request.query:
            gets[path] += 1
            if gets[path] <= throttled_gets:
                return refused("SlowDown", 503)
        if request.method == "PUT":
            key = unquote(urlsplit(request.raw_path).path.split("/", 2)[-1])
            meta = sum(
                len(name) - len("x-amz-meta-") + len(value.encode())
                for name, value in request.headers.items()
                if name.lower().startswith("x-amz-meta-")
            )
            if len(key.encode()) > 1024:
                return refused("KeyTooLongError")
            if meta > 2048:
                return refused("MetadataTooLarge")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        url = yarl.URL(upstream + request.raw_path, encoded=True)
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, url, headers=headers, data=await request.read()
            ) as answer,
        ):
            body = await answer.read()
            skip = {"transfer-encoding", "content-encoding", "connection", "content-length"}
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in skip}
            if request.method == "HEAD":
                kept["Content-Length"] = answer.headers.get("Content-Length", "0")
                return web.Response(status=answer.status, headers=kept)
            return web.Response(status=answer.status, body=body, headers=kept)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def test_outputs_s3_refuses_fail_their_item_not_every_night(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A legal 1,007-byte key of accented letters made the source metadata 3 KB, which S3
    refuses: the run stopped at it, and every later night again at its kept answer. The
    metadata now holds a long source's digest (found again by a fresh state), and an
    output S3 would refuse for itself (its key too long) fails that item unsent, the night
    goes on."""
    accented = "in/" + "é" * 500 + ".wav"
    deep = "in/" + "/".join(["d" * 190] * 5) + "/a.wav"
    moto.bucket("limits", audio_objects(tmp_path, [accented, deep, "in/b.wav"]))
    with serve_app(aws_limits(moto.url)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy)
        cmd = ("run", "s3://limits/in/", "--out", "s3://limits/" + "o" * 100 + "/")
        first = run_s3(dgbatch, tmp_path, *cmd, state="night1")
        assert first.exit_code == 1, first.output
        rows = {r["id"]: r for r in read_state_rows(tmp_path / "night1" / "state.sqlite")}
        assert {r["status"] for r in rows.values()} == {"done", "failed"}
        failed = rows[f"s3://limits/{deep}"]
        assert (failed["err_code"], failed["attempts"]) == ("output_path", 0)
        assert "output S3 key too long (1062 bytes, at most 1024)" in str(failed["error"])
        assert rows[f"s3://limits/{accented}"]["status"] == "done"
        sent = len(listen_log(emulator))
        assert sent == 2  # not the one whose outputs S3 would refuse
        fresh = run_s3(dgbatch, tmp_path, *cmd, state="night2")
        assert fresh.exit_code == 1 and "skipped 2 item(s)" in fresh.output, fresh.output
    assert len(listen_log(emulator)) == sent


def test_upload_mode_retries_an_object_s3_throttles(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """503 SlowDown on reading an object's audio, past botocore's own three tries: the
    item is retried with its backoff and done (it failed for good, until --retry-failed),
    and those tries, which never reached Deepgram, are not attempts."""
    objects = audio_objects(tmp_path, ["in/a.wav", "in/b.wav"])
    moto.bucket("slow", objects)
    with serve_app(aws_limits(moto.url, throttled_gets=4)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy)
        cmd = ("run", "s3://slow/in/", "--out", str(tmp_path / "out"), "--url-mode", "upload")
        result = run_s3(dgbatch, tmp_path, *cmd)
    assert result.exit_code == 0, result.output
    rows = read_state_rows(tmp_path / "s1" / "state.sqlite")
    assert [(r["status"], r["attempts"]) for r in rows] == [("done", 1), ("done", 1)]
    assert sorted(r.sha256 for r in listen_log(emulator)) == sorted(map(sha, objects.values()))


@pytest.mark.parametrize("mode", ["presign", "upload"])
def test_an_object_overwritten_after_listing_fails_as_changed_not_sent(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path, mode: str
) -> None:
    """``b.wav`` is overwritten while ``a.wav`` is being transcribed: in presign mode it was
    sent anyway, transcribed from its new bytes and recorded under its old ETag (so sent
    again the next night). In both modes it now fails as ``changed``, unsent, and the next
    run plans it again and does it once, under its new ETag."""
    moto.bucket("race", audio_objects(tmp_path, ["in/a.wav", "in/b.wav"]))
    new_b = wav(tmp_path, 7)
    real_authorize = emulator._authorize

    def overwrite_b_then_authorize(header: str) -> None:  # a.wav's request is in
        if not emulator.log:
            moto.client.put_object(Bucket="race", Key="in/b.wav", Body=new_b)
        real_authorize(header)

    emulator._authorize = overwrite_b_then_authorize  # type: ignore[method-assign]
    out = tmp_path / "out"
    cmd = ("run", "s3://race/in/", "--out", str(out), "--url-mode", mode, "-c", "1")
    first = dgbatch(*cmd)
    assert first.exit_code == 1, first.output
    rows = {r["id"]: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")}
    changed = rows["s3://race/in/b.wav"]
    assert (changed["status"], changed["err_code"], changed["attempts"]) == ("failed", "changed", 0)
    assert len(listen_log(emulator)) == 1
    again = dgbatch(*cmd)
    assert again.exit_code == 0, again.output
    assert [r.sha256 for r in listen_log(emulator)][1:] == [sha(new_b)]
    again = dgbatch(*cmd)
    assert again.exit_code == 0 and len(listen_log(emulator)) == 2


def test_outputs_an_earlier_release_recorded_with_a_long_source_in_full_are_adopted(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A long source is now recorded by its digest; outputs an earlier release wrote with
    it in full are still this source's, found by a fresh state without a request."""
    from urllib.parse import quote

    key = "in/" + "x y" * 700 + ".wav"
    moto.bucket("old", audio_objects(tmp_path, [key]))
    cmd = ("run", "s3://old/in/", "--out", "s3://old/tx/")
    assert run_s3(dgbatch, tmp_path, *cmd, state="night1").exit_code == 0
    full = quote(f"s3://old/{key}", safe=":/")
    assert len(full) > 1800
    for obj in moto.client.list_objects_v2(Bucket="old", Prefix="tx/")["Contents"]:
        head = moto.client.head_object(Bucket="old", Key=obj["Key"])
        assert head["Metadata"]["dgbatch-source"].startswith("sha256:")
        moto.client.copy_object(  # as the earlier release wrote it
            Bucket="old", Key=obj["Key"], CopySource={"Bucket": "old", "Key": obj["Key"]},
            Metadata={**head["Metadata"], "dgbatch-source": full}, MetadataDirective="REPLACE",
        )  # fmt: skip
    again = run_s3(dgbatch, tmp_path, *cmd, state="night2")
    assert again.exit_code == 0, again.output
    assert "skipped 1 item(s)" in again.output and len(listen_log(emulator)) == 1


def test_presign_mode_sends_when_s3_refuses_dgbatchs_own_head(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bucket whose policy lets only presigned URLs (or only Deepgram's addresses) read:
    the HEAD that checks an object's ETag is refused, and every item failed. The check is
    left to Deepgram's fetch then, as before it existed."""
    objects = audio_objects(tmp_path, ["in/a.wav", "in/b.wav"])
    moto.bucket("policy", objects)
    with serve_app(aws_limits(moto.url, deny_heads=True)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy)
        result = run_s3(dgbatch, tmp_path, "run", "s3://policy/in/", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert sorted(r.sha256 for r in listen_log(emulator)) == sorted(map(sha, objects.values()))
