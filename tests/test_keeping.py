"""Paid answers whose outputs could not be written are kept in the state, and the next run
writes them without sending anything (``batch.keeping``): an output failure never makes a
recording be paid for twice."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    KEY,
    Cli,
    MotoS3,
    make_wav,
    make_wavs,
    read_state_rows,
    sent_sha256s,
    serve_app,
    static_server,
)
from reliability_helpers import assert_outputs_match, digest, disk_full_after

import batch.billing
import batch.job
import batch.keeping
import batch.outputs
import batch.planner
import batch.sending
from batch.checks import UNUSUAL_SHAPE
from batch.client import Answer, DeepgramClient
from batch.emulator import Emulator, EmulatorConfig, run_in_thread
from batch.errors import StateError
from batch.keeping import Keeping
from batch.media import SENDERS, send_file
from batch.models import Item, ItemKind
from batch.state import State, WorkItem


def state_of(out: Path) -> Path:
    return out / ".dgbatch" / "state.sqlite"


def statuses(out: Path) -> dict[str, object]:
    return {Path(str(r["source"])).name: r["status"] for r in read_state_rows(state_of(out))}


def kept_ids(out: Path) -> list[str]:
    db = sqlite3.connect(state_of(out))
    try:
        return [row[0] for row in db.execute("SELECT id FROM kept_answers ORDER BY id")]
    finally:
        db.close()


def answered_ids(emulator: Emulator) -> list[str]:
    return [r.request_id for r in emulator.log if r.status == 200]


def assert_each_sent_once(emulator: Emulator, wavs: list[Path]) -> None:
    assert sent_sha256s(emulator) == {digest(wav): 1 for wav in wavs}


def test_outputs_that_stop_the_run_keep_the_answer_for_the_next_run(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A folder that cannot be created (a file where it must go) stops the run; the answers
    Deepgram already gave for its items are kept, and once the folder is fixed the next run
    writes them from the state: every recording is paid for once."""
    top = [make_wav(tmp_path / "in" / f"t{i}.wav", tone=10 + i) for i in range(2)]
    wavs = make_wavs(tmp_path / "in" / "sub", 3) + top
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where a folder must go")
    first = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "-c", "1")
    assert first.exit_code == 1, first.output
    assert "paid answer(s) whose outputs could not be written are kept" in first.output
    kept = kept_ids(out)
    assert kept and all("/sub/" in item for item in kept)
    status = dgbatch("status", "--state", str(state_of(out)))
    assert f"paid answers kept, outputs not yet written: {len(kept)}" in status.output

    (out / "sub").unlink()
    second = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert second.exit_code == 0, second.output
    assert f"wrote {len(kept)} item(s) from the answers an earlier run kept" in second.output
    assert set(statuses(out).values()) == {"done"}
    assert_each_sent_once(emulator, wavs)
    for wav in wavs:
        assert_outputs_match(wav, out / wav.relative_to(tmp_path / "in").with_suffix(""))
    assert kept_ids(out) == []  # dropped as their items are recorded done
    assert "paid answers kept" not in dgbatch("status", "--state", str(state_of(out))).output
    # each item written from a kept answer is the first run's: its request was that run's
    first_run = {str(r["id"]): r["run_id"] for r in read_state_rows(state_of(out))}
    assert {first_run[item] for item in kept} == {1}


def test_a_full_disk_keeps_the_answer_it_could_not_write(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on an item's second file stops the run; that item's answer is kept (the state
    is elsewhere here), as is the answer of the request in flight meanwhile, and the next
    run writes them instead of sending their items again."""
    wavs = make_wavs(tmp_path / "in", 4)
    # the second item's txt and everything after
    monkeypatch.setattr(batch.outputs, "_write_new_file", disk_full_after(3))
    out = tmp_path / "out"
    first = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "-c", "1")
    assert first.exit_code == 1, first.output
    assert statuses(out) == {"f000.wav": "done", "f001.wav": "pending"} | {
        wav.name: "pending" for wav in wavs[2:]
    }
    assert str(wavs[1]) in kept_ids(out)
    monkeypatch.undo()
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    assert_each_sent_once(emulator, wavs)
    for wav in wavs:
        assert_outputs_match(wav, out / wav.stem)


def test_a_path_in_the_way_fails_the_item_and_retry_failed_writes_its_kept_answer(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """An output folder that leads out of --out (a symlink) fails only that item, once
    its answer is paid for (a folder right where ``a.json`` goes is found before sending);
    its answer is kept. A plain run leaves it failed (and sends nothing); ``--retry-failed``
    after the path is cleared writes the kept answer, with the request id Deepgram gave
    it, and still sends nothing."""
    wavs = [make_wav(tmp_path / "in" / "f000.wav"), make_wav(tmp_path / "in/x/f001.wav", tone=1)]
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "x").symlink_to(tmp_path / "elsewhere")
    first = dgbatch("run", str(tmp_path / "in"), "--out", str(out))
    assert first.exit_code == 1, first.output
    assert statuses(out) == {"f000.wav": "done", "f001.wav": "failed"}
    assert "(failed ones with --retry-failed)" in first.output
    paid = answered_ids(emulator)
    failed = next(r for r in read_state_rows(state_of(out)) if r["status"] == "failed")
    assert failed["http_status"] == 200 and failed["request_id"] in paid  # traceable
    dry = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--retry-failed", "--dry-run")
    assert "would send 0 item(s)" in dry.output, dry.output
    assert "1 more item(s) have a paid answer an earlier run kept" in dry.output

    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 1
    assert answered_ids(emulator) == paid
    (out / "x").unlink()
    again = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--retry-failed")
    assert again.exit_code == 0, again.output
    assert answered_ids(emulator) == paid
    assert_outputs_match(wavs[1], out / "x" / "f001")
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(state_of(out))}
    assert rows["f001.wav"]["request_id"] in paid


def test_a_kept_answer_is_written_for_its_url_signed_again(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A presigned URL whose answer was kept (a path in the way) is signed again for the
    next night: the same recording, so its kept answer is written, not paid again (it was
    dropped as for a changed source)."""
    make_wav(tmp_path / "media" / "r.wav")
    out = tmp_path / "out"
    (out / "r.txt").mkdir(parents=True)  # where the txt goes: the answer is kept
    lists = []
    with static_server(tmp_path / "media") as base:
        for day, sig in (("20260101", "AAA"), ("20260102", "BBB")):
            url = (f"{base}/r.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={day}T000000Z"
                   f"&X-Amz-Expires=3600&X-Amz-Signature={sig}")  # fmt: skip
            lists.append(tmp_path / f"{day}.txt")
            lists[-1].write_text(url + "\n")
        assert dgbatch("run", str(lists[0]), "--out", str(out)).exit_code == 1
        (out / "r.txt").rmdir()
        again = dgbatch("run", str(lists[1]), "--out", str(out), "--retry-failed")
    assert again.exit_code == 0, again.output
    assert len(emulator.log) == 1 and (out / "r.txt").is_file()


def test_a_kept_answer_is_dropped_when_its_source_changed(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A kept answer answers the bytes it was sent: once the file changes, the next run
    sends the new bytes, and the old answer is neither written nor kept."""
    (wav,) = make_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out / "f000.json").mkdir(parents=True)
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 1
    assert len(kept_ids(out)) == 1
    (out / "f000.json").rmdir()
    make_wavs(tmp_path / "other", 2)[1].replace(wav)  # other bytes, another mtime
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    assert len(answered_ids(emulator)) == 2
    assert_outputs_match(wav, out / "f000")
    assert kept_ids(out) == []


def test_a_slow_disk_slows_the_requests_down(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer waits for room among the answers being written while it still holds its
    request slot: a disk slower than Deepgram then holds the requests back, instead of
    piling up paid answers that a ``kill -9`` would pay for again (REFERENCE: at most
    ``-c`` in flight and ``-c`` waiting for outputs). A mutation test found nothing
    checked it."""
    make_wavs(tmp_path / "in", 12)
    real_write = batch.outputs._write_new_file
    seen: list[int] = []

    def slow_disk(path: str, data: bytes, created: list[str]) -> None:
        if not seen:  # the first write: let the requests go on meanwhile, and count them
            time.sleep(1.0)
            seen.append(len(emulator.log))
        real_write(path, data, created)

    monkeypatch.setattr(batch.outputs, "_write_new_file", slow_disk)
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "2")
    assert result.exit_code == 0, result.output
    assert seen[0] <= 2 * 2, seen  # in flight, and waiting to be written: each at most -c


def test_an_answer_abandoned_before_its_outputs_land_is_kept(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C lets an answer being written land for the output grace; one whose
    disk is slower than that is abandoned, and its answer is kept, so the next run writes
    it instead of paying for it again."""
    wav = make_wav(tmp_path / "in" / "f000.wav", 1.0)
    real_write = batch.outputs._write_new_file

    def stuck_disk(path: str, data: bytes, created: list[str]) -> None:
        if not created:  # the first file of the write: Ctrl-C twice, then a stuck disk
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
            time.sleep(0.6)  # longer than the output grace below
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        real_write(path, data, created)

    monkeypatch.setattr(batch.outputs, "_write_new_file", stuck_disk)
    monkeypatch.setattr(batch.outputs, "OUTPUT_GRACE", 0.2)
    out, report = tmp_path / "out", tmp_path / "run.json"
    first = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--run-report", str(report))
    assert first.exit_code == 130, first.output
    assert statuses(out) == {"f000.wav": "pending"}
    assert len(kept_ids(out)) == 1
    assert json.loads(report.read_text())["audio_hours"] == round(1 / 3600, 4)  # paid for
    monkeypatch.undo()
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    assert_each_sent_once(emulator, [wav])
    assert_outputs_match(wav, out / "f000")


def test_an_s3_output_bucket_gone_mid_run_keeps_the_answers(
    dgbatch: Cli,
    emulator: Emulator,
    moto: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 refusing the puts (here the output bucket is deleted after the first answers)
    stops the run; the answers it could not put are kept, and once the bucket is back the
    next run puts them without sending their items again."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    wavs = make_wavs(tmp_path / "in", 6)
    moto.bucket("txout")

    async def bucket_gone_after_two(client: DeepgramClient, item: WorkItem, source: str) -> Answer:
        if len(emulator.log) == 2:
            s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets.pop("txout", None)
            s3_backends.bucket_accounts.pop("txout", None)
        return await send_file(client, item, source)

    monkeypatch.setattr(batch.sending, "SENDERS", {**SENDERS, ItemKind.FILE: bucket_gone_after_two})
    state = tmp_path / "st" / "state.sqlite"
    out = ("--out", "s3://txout/out/", "--state", str(state), "-c", "1", "--no-sniff")
    cmd = ("run", str(tmp_path / "in"), *out)
    first = dgbatch(*cmd)
    assert first.exit_code == 1, first.output
    assert "paid answer(s) whose outputs could not be written are kept" in first.output
    monkeypatch.setattr(batch.sending, "SENDERS", SENDERS)
    moto.bucket("txout")
    second = dgbatch(*cmd)
    assert second.exit_code == 0, second.output
    assert_each_sent_once(emulator, wavs)
    keys = moto.client.list_objects_v2(Bucket="txout", Prefix="out/")["Contents"]
    assert (
        sorted(obj["Key"] for obj in keys)
        == sorted(  # the first two went with the bucket
            f"out/{wav.stem}.{fmt}" for wav in wavs[2:] for fmt in ("json", "txt")
        )
    )


@pytest.mark.parametrize(
    ("first", "then"), [("json,txt", "json,txt,srt"), ("json,vtt", "json,txt")]
)
def test_a_kept_answer_is_written_whatever_formats_are_added_or_dropped(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, first: str, then: str
) -> None:
    """Captions ask Deepgram for ``utterances=true``: a kept answer asked without them was
    dropped, and paid for again, by the run that added ``srt`` (a review found it); the
    captions are made from its words, as for a done item."""
    wav = make_wav(tmp_path / "in" / "x" / "a.wav")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "x").symlink_to(tmp_path / "elsewhere")  # its outputs cannot go: kept
    args = ("run", str(tmp_path / "in"), "--out", str(out))
    assert dgbatch(*args, "--formats", first).exit_code == 1
    paid = answered_ids(emulator)
    (out / "x").unlink()
    again = dgbatch(*args, "--formats", then, "--retry-failed")
    assert again.exit_code == 0, again.output
    assert answered_ids(emulator) == paid
    for suffix in then.split(","):
        assert (out / "x" / f"a.{suffix}").stat().st_size > 0
    assert_outputs_match(wav, out / "x" / "a")


def test_force_sends_again_instead_of_writing_a_kept_answer(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``--force`` asks for new answers (another model, say): an item with a kept answer
    is sent again, and once an item is written from its kept answer, a later ``--force``
    does not find that answer again."""
    (wav,) = make_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    run = ("run", str(tmp_path / "in"), "--out", str(out))
    (out / "f000.json").mkdir(parents=True)
    assert dgbatch(*run).exit_code == 1
    (out / "f000.json").rmdir()
    assert dgbatch(*run, "--force").exit_code == 0
    assert len(answered_ids(emulator)) == 2

    (out / "f000.json").unlink()
    (out / "f000.json").mkdir()
    assert dgbatch(*run, "--force").exit_code == 1  # kept again
    (out / "f000.json").rmdir()
    assert dgbatch(*run, "--retry-failed").exit_code == 0  # written from it
    assert len(answered_ids(emulator)) == 3
    assert dgbatch(*run, "--force").exit_code == 0
    assert len(answered_ids(emulator)) == 4
    assert_outputs_match(wav, out / "f000")


def test_a_kept_answer_is_not_written_for_another_source_under_its_id(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A manifest id moved to another file of the same size and mtime (a fixed-length
    recording, copied with its time) is another recording: the kept answer of the first
    is not written for it."""
    x = make_wav(tmp_path / "in" / "x.wav", tone=1)
    y = make_wav(tmp_path / "in" / "y.wav", tone=2)
    os.utime(y, ns=(x.stat().st_atime_ns, x.stat().st_mtime_ns))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "call1", "source": str(x)}) + "\n")
    out = tmp_path / "out"
    (out / "call1.json").mkdir(parents=True)
    assert dgbatch("run", str(manifest), "--out", str(out)).exit_code == 1
    (out / "call1.json").rmdir()
    manifest.write_text(json.dumps({"id": "call1", "source": str(y)}) + "\n")
    again = dgbatch("run", str(manifest), "--out", str(out), "--retry-failed")
    assert again.exit_code == 0, again.output
    assert_each_sent_once(emulator, [x, y])
    assert_outputs_match(y, out / "call1")


def test_dedupe_copies_keep_their_leaders_answer(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """With ``--dedupe`` a recording is paid for once even when outputs fail: a leader whose
    own path is in the way still gives its answer to its copy in the same run, a copy whose
    path is in the way keeps that answer, and the dry run and the next run send nothing."""
    a = make_wav(tmp_path / "in" / "s1" / "a.wav", tone=3)
    b = make_wav(tmp_path / "in" / "s2" / "b.wav", tone=3)
    c = make_wav(tmp_path / "in" / "s2" / "c.wav", tone=3)
    out = tmp_path / "out"
    (out / "s1" / "a.json").mkdir(parents=True)
    (out / "s2" / "c.json").mkdir(parents=True)
    run = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "-c", "1")
    first = dgbatch(*run)
    assert first.exit_code == 1, first.output
    assert len(answered_ids(emulator)) == 1
    assert statuses(out) == {"a.wav": "failed", "b.wav": "done", "c.wav": "failed"}
    assert len(kept_ids(out)) == 2
    (out / "s1" / "a.json").rmdir()
    (out / "s2" / "c.json").rmdir()
    dry = dgbatch(*run, "--retry-failed", "--dry-run")
    assert "would send 0 item(s)" in dry.output, dry.output
    assert dgbatch(*run, "--retry-failed").exit_code == 0
    assert len(answered_ids(emulator)) == 1
    for wav in (a, b, c):
        assert_outputs_match(wav, out / wav.relative_to(tmp_path / "in").with_suffix(""))


def test_an_answer_of_an_odd_shape_fails_its_item_and_is_kept(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A 200 whose transcript has an unusual shape (a proxy's, a field of another type) fails
    its item naming the format it cannot be rendered as, not as an internal error; its
    answer is kept, and ``--retry-failed --formats json`` writes it as returned, unsent."""
    odd = {"metadata": {"request_id": "odd-1", "duration": 1.5}, "results": {"channels": "abc"}}
    sent: list[int] = []

    async def listen(request: web.Request) -> web.Response:
        sent.append(len(await request.read()))
        return web.json_response(odd)

    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    (wav,) = make_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    run = ("run", str(tmp_path / "in"), "--out", str(out), "--no-preflight")
    with serve_app(app) as proxy:
        first = Cli(None)(*run, "--api-url", proxy, "--progress", "none")
    assert first.exit_code == 1, first.output
    (row,) = read_state_rows(state_of(out))
    assert row["err_code"] == "unrenderable" and "internal error" not in str(row["error"])
    assert (row["http_status"], row["request_id"]) == (200, "odd-1")  # paid: traceable
    assert str(row["error"]).startswith(f"{wav}: cannot render txt from Deepgram's answer")
    assert len(sent) == 1 and len(kept_ids(out)) == 1
    again = dgbatch(*run, "--retry-failed", "--formats", "json")
    assert again.exit_code == 0, again.output
    assert emulator.log == []
    assert json.loads((out / "f000.json").read_bytes()) == odd
    (row,) = read_state_rows(state_of(out))
    assert row["warning"] == UNUSUAL_SHAPE and row["request_id"] == "odd-1"


def test_a_force_does_not_write_answers_kept_before_it_even_ahead_of_its_plan(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``--force`` whose plan is still growing claims pending items it has not re-queued
    yet: their answers, kept before the force began, are what it redoes, so they are sent
    again, not written (an item written from one was then never forced at all)."""
    wavs = make_wavs(tmp_path / "in" / "z", 3) + [
        make_wav(tmp_path / "in" / f"a{i}.wav", tone=50 + i) for i in range(2)
    ]
    out = tmp_path / "out"
    out.mkdir()
    (out / "z").write_text("a file where a folder must go")
    run = ("run", str(tmp_path / "in"), "--out", str(out), "-c", "1")
    assert dgbatch(*run).exit_code == 1
    assert kept_ids(out)
    (out / "z").unlink()
    paid = len(answered_ids(emulator))
    real_counted = batch.job._counted

    def slow_listing(*args: Any) -> Iterator[Item]:  # one item per chunk, slowly
        for n, item in enumerate(real_counted(*args)):
            if n:
                time.sleep(0.2)
            yield item

    monkeypatch.setattr(batch.planner, "CHUNK", 1)
    monkeypatch.setattr(batch.job, "_counted", slow_listing)
    forced = dgbatch(*run, "--force")
    assert forced.exit_code == 0, forced.output
    assert len(answered_ids(emulator)) == paid + len(wavs)
    assert "from the answers an earlier run kept" not in forced.output


def test_a_kept_answer_is_not_written_for_other_params(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """An answer kept for ``--param language=en`` does not answer a run asking
    ``language=fr``: that run (and its dry run) sends it."""
    make_wavs(tmp_path / "in", 1)
    out = tmp_path / "out"
    run = ("run", str(tmp_path / "in"), "--out", str(out), "--retry-failed")
    (out / "f000.json").mkdir(parents=True)
    assert dgbatch(*run, "--param", "language=en").exit_code == 1
    (out / "f000.json").rmdir()
    dry = dgbatch(*run, "--param", "language=fr", "--dry-run")
    assert "would send 1 item(s)" in dry.output, dry.output
    assert dgbatch(*run, "--param", "language=fr").exit_code == 0
    assert len(answered_ids(emulator)) == 2
    assert ("language", "fr") in emulator.log[-1].params


def test_a_budget_counts_the_answers_it_paid_for_and_could_not_write(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """1 s files, a 2.5 s cap, and a folder where every item's ``.json`` goes: each answer
    is paid for, then kept. The run still stops after two (a third would pass the cap) and
    reports the audio it paid for; the next run counts the two kept answers, so it sends
    nothing more."""
    for n in range(4):
        make_wav(tmp_path / "in" / f"{n}.wav", 1.0, tone=n)
        (tmp_path / "out" / f"{n}.json").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "1")
    cap = ("--max-audio-hours", str(2.5 / 3600))
    report = tmp_path / "run.json"
    first = dgbatch(*args, *cap, "--run-report", str(report))
    assert first.exit_code == 1, first.output
    assert "audio budget reached" in first.output
    assert len(emulator.log) == 2 and len(kept_ids(tmp_path / "out")) == 2
    assert json.loads(report.read_text())["audio_hours"] == round(2 / 3600, 4)  # paid for

    again = dgbatch(*args, *cap)
    assert again.exit_code == 1, again.output
    assert "audio budget reached: 2.0 s transcribed" in again.output, again.output
    assert len(emulator.log) == 2


@pytest.mark.parametrize("requeue", ["changed", "force"])
def test_a_kept_answer_still_counts_once_its_item_is_queued_again(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, requeue: str
) -> None:
    """A paid answer kept unwritten stopped counting when its file changed or ``--force``
    queued it again (the answer is dropped then): the file was sent again past a 5 s cap,
    exit 0 (a review found it). It counts as billed before the re-queue."""
    wav = make_wav(tmp_path / "in" / "a.wav", 3.0)
    (tmp_path / "out" / "a.txt").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    cap = ("--max-audio-hours", str(5 / 3600))
    assert dgbatch(*args, *cap).exit_code == 1
    (tmp_path / "out" / "a.txt").rmdir()
    if requeue == "changed":
        os.utime(wav, (time.time() + 5, time.time() + 5))
    again = dgbatch(*args, *cap, *(["--force"] if requeue == "force" else []))
    assert again.exit_code == 1 and "audio budget reached: 3.0 s transcribed" in again.output
    assert len(emulator.log) == 1


def test_a_copys_kept_answer_is_its_leaders_request_counted_once(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A ``--dedupe`` copy that kept its leader's answer, the leader then forced: the
    budget counted the leader's first request twice (9 s for 6 s billed)."""
    wav = make_wav(tmp_path / "in" / "a.wav", 3.0)
    shutil.copy(wav, tmp_path / "in" / "b.wav")
    (tmp_path / "out" / "b.txt").mkdir(parents=True)
    args = ("run", "--out", str(tmp_path / "out"), "--dedupe", "-c", "1")
    dgbatch(*args, str(tmp_path / "in"))
    assert dgbatch(*args, str(wav), "--force").exit_code == 0
    dry = dgbatch(*args, str(tmp_path / "in"), "--dry-run", "--max-audio-hours", "1")
    assert "6.0 s already transcribed" in dry.output, dry.output
    assert len(emulator.log) == 2


def test_kept_answers_of_dedupe_pairs_are_written_as_they_were_kept(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Pairs of identical files, neither writable: the original keeps its answer, the copy
    its original's. Written by the next run, a copy's kept answer could lead the pair and
    make its original a copy of it: each named the other in ``copy_of`` and the request
    that was paid counted nowhere (a review found such pairs, one run in three)."""
    for n in range(4):
        wav = make_wav(tmp_path / "in" / f"p{n}a.wav", 1.0, tone=n)
        shutil.copy(wav, tmp_path / "in" / f"p{n}b.wav")
        for side in "ab":
            (tmp_path / "out" / f"p{n}{side}.json").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "8")
    assert dgbatch(*args).exit_code == 1
    for folder in (tmp_path / "out").glob("*.json"):
        folder.rmdir()
    assert dgbatch(*args, "--retry-failed").exit_code == 0
    assert len(emulator.log) == 4
    rows = read_state_rows(state_of(tmp_path / "out"))
    by_id = {r["id"]: r for r in rows}
    originals = [r for r in rows if r["copy_of"] is None]
    assert len(originals) == 4
    assert all(by_id[str(r["copy_of"])]["copy_of"] is None for r in rows if r["copy_of"])


def test_an_originals_kept_answer_serves_a_copy_found_by_the_next_run(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """An answer kept for its original (its outputs failed) and a copy of the file added
    before the next run: the kept answer was written apart from the --dedupe pairing, and
    the copy led its key and was paid for again (a review found it)."""
    wav = make_wav(tmp_path / "in" / "a.wav", 1.0)
    (tmp_path / "out" / "a.json").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "8")
    assert dgbatch(*args).exit_code == 1
    (tmp_path / "out" / "a.json").rmdir()
    for n in range(3):  # copies read before the original or after it: none is sent
        shutil.copy(wav, tmp_path / "in" / f"b{n}.wav")
    assert dgbatch(*args, "--retry-failed").exit_code == 0
    assert len(emulator.log) == 1
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(state_of(tmp_path / "out"))}
    assert rows["a.wav"]["copy_of"] is None
    assert {rows[f"b{n}.wav"]["copy_of"] for n in range(3)} == {rows["a.wav"]["id"]}


@pytest.mark.parametrize("kept", [True, False])
def test_an_earlier_answer_serves_a_copy_whatever_formats_were_added(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, kept: bool
) -> None:
    """Captions add ``utterances=true`` to what a request asks: a copy in a run that added
    ``srt`` had another key than its original (done, or its answer kept), and was sent
    again; its captions are made from the earlier answer's words."""
    wav = make_wav(tmp_path / "in" / "a.wav", 1.0)
    if kept:
        (tmp_path / "out" / "a.json").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "16")
    dgbatch(*args)
    if kept:
        (tmp_path / "out" / "a.json").rmdir()
    shutil.copy(wav, tmp_path / "in" / "b.wav")
    again = (*args, "--retry-failed", "--formats", "json,srt")
    dry = json.loads(dgbatch(*again, "--dry-run", "--json").output)
    assert (dry["to_send"], dry["dedupe_copies"]) == (0, 1)  # as the run then does
    assert dgbatch(*again).exit_code == 0
    assert len(emulator.log) == 1
    assert (tmp_path / "out" / "b.srt").stat().st_size > 0


def test_a_dedupe_copy_that_cannot_write_its_leaders_answer_adds_no_audio(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Two identical 1 s files with ``--dedupe``, neither writable: both keep the one answer,
    and the run paid for 1 s of audio, not 2."""
    for name in ("a", "c"):
        make_wav(tmp_path / "in" / f"{name}.wav", 1.0, tone=3)
        (tmp_path / "out" / f"{name}.json").mkdir(parents=True)
    report = tmp_path / "run.json"
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "1")
    assert dgbatch(*args, "--run-report", str(report)).exit_code == 1
    assert len(answered_ids(emulator)) == 1 and len(kept_ids(tmp_path / "out")) == 2
    assert json.loads(report.read_text())["audio_hours"] == round(1 / 3600, 4)


def test_a_kept_answer_is_written_under_a_budget_it_was_already_counted_in(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """1 s paid for and kept (a folder where its json goes), then a 1.5 s cap: writing the
    kept answer costs nothing, so the budget does not stand in its way (it counted that
    second once already, and reserving it again passed the cap)."""
    make_wav(tmp_path / "in" / "a.wav", 1.0)
    (tmp_path / "out" / "a.json").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    cap = ("--max-audio-hours", str(1.5 / 3600))
    assert dgbatch(*args, *cap).exit_code == 1
    (tmp_path / "out" / "a.json").rmdir()
    again = dgbatch(*args, *cap, "--retry-failed")
    assert again.exit_code == 0, again.output
    assert len(emulator.log) == 1 and statuses(tmp_path / "out") == {"a.wav": "done"}


@pytest.mark.parametrize(
    ("blocked", "kept"), [(("c",), {"a.wav": "done", "c.wav": "failed"}), (("a", "c"), None)]
)
def test_a_dedupe_copys_kept_answer_is_not_counted_again(
    dgbatch: Cli,
    emulator: Emulator,
    tmp_path: Path,
    blocked: tuple[str, ...],
    kept: dict[str, str] | None,
) -> None:
    """With ``--dedupe``, a copy that could not write keeps its leader's answer: the audio
    of that one request counts once, whether its leader is done or kept its answer too."""
    _copies_kept(dgbatch, tmp_path, blocked)
    assert statuses(tmp_path / "out") == (kept or {"a.wav": "failed", "c.wav": "failed"})
    assert len(emulator.log) == 1 and len(kept_ids(tmp_path / "out")) == len(blocked)
    assert_used_audio(tmp_path / "out", (1.0, 1.0))


def test_a_dedupe_copy_written_from_its_kept_answer_is_still_a_copy(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A copy that could not write keeps its original's answer; written by the next run, its
    row names that original in ``copy_of`` (it sent nothing), so the audio of the one
    request still counts once."""
    args = _copies_kept(dgbatch, tmp_path, ("c",))
    (tmp_path / "out" / "c.json").rmdir()
    assert dgbatch(*args, "--retry-failed").exit_code == 0
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(state_of(tmp_path / "out"))}
    assert rows["c.wav"]["status"] == "done" and rows["c.wav"]["copy_of"] == rows["a.wav"]["id"]
    assert len(emulator.log) == 1
    assert_used_audio(tmp_path / "out", (1.0, 1.0))


@pytest.mark.parametrize(
    ("body", "seconds"),
    [
        (b'{"metadata":{"request_id":"r","duration":2.5},"results":{}}', 2.5),
        (b'\xef\xbb\xbf{"metadata":{"request_id":"r","duration":8},"results":{}}', 8.0),
        (b'{"metadata":{"request_id":"r","duration":true},"results":{}}', 0.0),
        (b'{"metadata":{"request_id":"r","duration":"7"},"results":{}}', 0.0),
        (b'{"metadata":{"request_id":"r","duration":-3},"results":{}}', 0.0),
        (b'{"metadata":{"request_id":"r","duration":1e999},"results":{}}', 0.0),
        (b'{"metadata":{"request_id":"r","duration":9}', None),  # cut short: not an answer
    ],
)
def test_kept_audio_reads_durations_as_the_runner_does(
    tmp_path: Path, body: bytes, seconds: float | None
) -> None:
    """The budget reads kept answers' durations in SQL; it takes the same ones as
    ``checks.reported_duration``: finite, non-negative numbers (a BOM allowed)."""
    state = State.open(tmp_path / "state.sqlite")
    try:
        state.plan([Item("a", "/in/a.wav", ItemKind.FILE, "a.wav", fingerprint="f")], run_id=1)
        (work,) = state.claim(1, 0, 1)
        state.keep_answer(work, "[]", 1, body, None)
        assert batch.keeping.kept_audio(state) == ([] if seconds is None else [seconds])
    finally:
        state.close()


def test_a_kept_answer_unreadable_is_a_state_error(tmp_path: Path) -> None:
    """Reading a kept answer fails as the state's error (the run stops and says which
    file), not as a raw SQLite exception that the runner would take for a bug."""
    state = State.open(tmp_path / "state.sqlite")
    try:
        with state._db:
            state._db.execute("DROP TABLE kept_answers")
        with pytest.raises(StateError, match=r"state\.sqlite: cannot"):
            state.kept_answer("a", ("[]",), 0.0)
    finally:
        state.close()


@pytest.mark.timeout(60)
def test_a_state_error_while_dispatching_still_lands_the_answers_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``a`` is in flight when ``b``'s kept answer cannot be read (under a budget, the
    dispatch loop reads it): the run stops, and ``a``'s paid answer is still written."""
    make_wav(tmp_path / "in" / "a.wav", 0.5, tone=1)
    make_wav(tmp_path / "in" / "b.wav", 0.5, tone=2)
    monkeypatch.setattr(Keeping, "may_have", lambda self, item: item.source.endswith("b.wav"))

    def unreadable(self: State, *_: object) -> None:
        time.sleep(0.5)  # a slow failing read: a is sent meanwhile
        raise StateError(f"{self.path}: cannot read the state file (disk I/O error)")

    monkeypatch.setattr(State, "kept_answer", unreadable)
    with run_in_thread(EmulatorConfig(key=KEY, latency=1.0)) as emu:
        args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "2")
        result = Cli(emu)(*args, "--max-audio-hours", "1")
    assert result.exit_code == 2, result.output
    assert "cannot read the state file" in result.output
    assert statuses(tmp_path / "out")["a.wav"] == "done"
    assert (tmp_path / "out" / "a.json").exists() and len(emu.log) == 1


@pytest.mark.parametrize("blocked", [("c",), ("a", "c")])
def test_answers_kept_for_copies_before_m006_are_told_apart_by_request_id(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, blocked: tuple[str, ...]
) -> None:
    """A state of the release before ``copy_of`` was kept: its copies' answers gain it from
    their request ids on upgrade (the original done, or kept too and planned first), so once
    written, even by a run without ``--dedupe``, they are copies again and the one request
    counts once."""
    args = _copies_kept(dgbatch, tmp_path, blocked)
    db = sqlite3.connect(state_of(tmp_path / "out"))
    with db:  # back to the shape the previous release wrote
        db.execute("ALTER TABLE kept_answers DROP COLUMN copy_of")
        db.execute("DELETE FROM _migrations WHERE name = 'm006_kept_copy_of'")
    db.close()
    for name in blocked:
        (tmp_path / "out" / f"{name}.json").rmdir()
    assert dgbatch(*args[:-3], "-c", "1", "--retry-failed").exit_code == 0
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(state_of(tmp_path / "out"))}
    assert rows["a.wav"]["copy_of"] is None and rows["c.wav"]["copy_of"] == rows["a.wav"]["id"]
    assert len(emulator.log) == 1
    assert_used_audio(tmp_path / "out", (1.0, 1.0))


def _copies_kept(dgbatch: Cli, tmp_path: Path, blocked: tuple[str, ...]) -> tuple[str, ...]:
    """Two identical 1 s files, ``a`` and ``c``, sent once with ``--dedupe`` and ``-c 1``,
    with a folder where each ``blocked`` one's json goes (so its answer is kept); returns the
    command."""
    for name in ("a", "c"):
        make_wav(tmp_path / "in" / f"{name}.wav", 1.0, tone=3)
    for name in blocked:
        (tmp_path / "out" / f"{name}.json").mkdir(parents=True)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "1")
    assert dgbatch(*args).exit_code == 1
    return args


def assert_used_audio(out: Path, expected: tuple[float, float]) -> None:
    """The audio a budget finds used in ``out``'s state, and the longest item of it."""
    state = State.open(state_of(out))
    try:
        assert batch.billing.used_audio(state) == expected
    finally:
        state.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata":{"request_id":"r1","duration":1.0},"results":{}}',
        b'\xef\xbb\xbf{"metadata":{"request_id":"r1","duration":1.0},"results":{}}',
    ],
)
def test_m006_finds_the_original_of_a_copys_kept_answer_by_its_request_id(
    tmp_path: Path, body: bytes
) -> None:
    """An answer kept for ``c`` whose request ``a`` holds (done with it) was a copy of ``a``;
    its body is read as the runner reads it (a BOM allowed). An answer whose request no
    other item holds is an original."""
    path = tmp_path / "state.sqlite"
    State.open(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("ALTER TABLE kept_answers DROP COLUMN copy_of")
        db.execute("DELETE FROM _migrations WHERE name = 'm006_kept_copy_of'")
        for item_id, status, request_id in (
            ("a", "done", "r1"),
            ("c", "failed", None),
            ("d", "failed", None),
        ):
            db.execute(
                "INSERT INTO items (id, source, kind, name, out_stem, out_full, params, status, "
                "request_id, fingerprint, created_at, updated_at) "
                "VALUES (?, ?, 'file', ?, ?, ?, '[]', ?, ?, 'f', 0, 0)",
                (item_id, item_id, item_id, item_id, item_id, status, request_id),
            )
        alone = b'{"metadata":{"request_id":"r2","duration":1.0},"results":{}}'
        for item_id, kept in (("c", body), ("d", alone)):
            db.execute(
                "INSERT INTO kept_answers VALUES (?, ?, '[]', 'f', 1, ?, 0)",
                (item_id, item_id, kept),
            )
    db.close()
    State.open(path).close()  # migrates
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT id, copy_of FROM kept_answers")) == {"c": "a", "d": None}
    db.close()


@pytest.mark.parametrize(
    "name",
    ["m002_warnings_copies_run_tags", "m003_forced", "m004_seen_run", "m006_kept_copy_of"],
)
def test_a_migration_cut_short_after_adding_its_columns_runs_again(
    tmp_path: Path, name: str
) -> None:
    """A column is added at once (SQLite commits an ALTER TABLE outside the migration's
    transaction): if the rest failed (a full disk, before the migration was recorded),
    opening the state again finishes it instead of calling the file damaged."""
    path = tmp_path / "state.sqlite"
    State.open(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("DELETE FROM _migrations WHERE name = ?", (name,))
    db.close()
    State.open(path).close()
    db = sqlite3.connect(path)
    assert (name,) in db.execute("SELECT name FROM _migrations").fetchall()
    db.close()
