"""--dedupe: one request for copies of one recording, in a run and across runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import (
    KEY,
    Cli,
    dgbatch_subprocess_cmd,
    emulator_with,
    make_wav,
    read_state_rows,
    stop_when,
    subprocess_env,
)
from reliability_helpers import full_project

from batch.config import RunConfig
from batch.dedupe import Dedupe, kept_answer, stored_key
from batch.emulator import EmulatorConfig, run_in_thread
from batch.emulator.responses import build_response
from batch.models import Params
from batch.params import DEFAULT_PARAMS, merge_params


def test_dedupe_sends_one_request_for_two_copies(dgbatch: Cli, tmp_path: Path) -> None:
    """Two identical files are sent once with --dedupe; both get outputs, the copy's
    report row names the item it came from, and its audio is not counted as transcribed."""
    first = make_wav(tmp_path / "in" / "a" / "call.wav", 0.5, tone=3)
    shutil.copy(first, tmp_path / "in" / "b-call.wav")
    make_wav(tmp_path / "in" / "other.wav", 0.5, tone=4)
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "-c", "4")
    assert result.exit_code == 0, result.output
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == 2
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    copies = [r for r in rows if r["copy_of"] is not None]
    assert len(copies) == 1 and copies[0]["attempts"] == 0
    leader = next(r for r in rows if r["id"] == copies[0]["copy_of"])
    assert copies[0]["request_id"] == leader["request_id"]
    assert (out / "a" / "call.json").read_bytes() == (out / "b-call.json").read_bytes()
    assert "1 item(s) were copies" in result.output
    # what was sent (and paid) is counted as transcribed; the copy's audio apart
    sent = sum(float(str(r["duration"])) for r in rows if r["copy_of"] is None)
    copied = float(str(copies[0]["duration"]))
    state = str(out / ".dgbatch" / "state.sqlite")
    status = json.loads(dgbatch("status", "--state", state, "--json").output)
    assert status["audio_hours"] == round(sent / 3600, 4) != round((sent + copied) / 3600, 4)
    assert status["copies_audio_hours"] == round(copied / 3600, 4)
    ((summary,),) = sqlite3.connect(state).execute("SELECT summary FROM runs").fetchall()
    assert json.loads(summary)["audio_hours"] == round(sent / 3600, 4)


def _assert_sent(dgbatch: Cli, requests: int, *, last_model: str) -> None:
    """The emulator had ``requests`` requests, the last asking for ``last_model``."""
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == requests
    assert dict(emulator.log[-1].params)["model"] == last_model


def test_dedupe_writes_a_copy_from_an_earlier_runs_answer(dgbatch: Cli, tmp_path: Path) -> None:
    """A copy of a file an earlier ``--dedupe`` run sent and finished is written from its
    json, unsent: a folder that gets a copy tomorrow, or a batch its budget stopped and a
    higher cap continued (a review paid twice so: the copy after the stop point was sent
    again). The dry run counts it as a copy."""
    call = make_wav(tmp_path / "in" / "call.wav", 0.5, tone=3)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe")
    assert dgbatch(*args).exit_code == 0
    shutil.copy(call, tmp_path / "in" / "again.wav")
    dry = dgbatch(*args, "--dry-run", "--json")
    assert (json.loads(dry.output)["to_send"], json.loads(dry.output)["dedupe_copies"]) == (0, 1)
    result = dgbatch(*args)
    assert result.exit_code == 0, result.output
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == 1
    assert (out / "again.json").read_bytes() == (out / "call.json").read_bytes()
    rows = {
        Path(str(r["source"])).name: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")
    }
    assert rows["again.wav"]["copy_of"] == rows["call.wav"]["id"]


def test_dedupe_across_runs_is_stopped_by_a_change_or_a_force(dgbatch: Cli, tmp_path: Path) -> None:
    """The earlier answer serves a copy only while the file it answered is unchanged (the
    key would name another recording's transcript), and never an item ``--force`` asks a
    new answer for."""
    call = make_wav(tmp_path / "in" / "call.wav", 0.5, tone=3)
    old = call.read_bytes()
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe")
    assert dgbatch(*args).exit_code == 0
    make_wav(call, 0.7, tone=9)  # another recording under the same name
    (tmp_path / "in" / "again.wav").write_bytes(old)
    assert dgbatch(*args).exit_code == 0
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == 3  # both sent: nothing answers them
    forced = dgbatch(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert len(emulator.log) == 5


def test_dedupe_across_runs_takes_no_answer_asked_with_other_params(
    dgbatch: Cli, tmp_path: Path
) -> None:
    """An item sent again with other params (``--force``) holds another answer: a copy
    asked with the first params got that one (nova-2 for a nova-3 copy, a review found)."""
    call = make_wav(tmp_path / "in" / "call.wav", 0.5, tone=3)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe")
    assert dgbatch(*args, "--param", "model=nova-3").exit_code == 0
    assert dgbatch(*args, "--param", "model=nova-2", "--force").exit_code == 0
    shutil.copy(call, tmp_path / "in" / "again.wav")
    dry = json.loads(dgbatch(*args, "--param", "model=nova-3", "--dry-run", "--json").output)
    assert (dry["to_send"], dry["dedupe_copies"]) == (1, 0)
    assert dgbatch(*args, "--param", "model=nova-3").exit_code == 0
    _assert_sent(dgbatch, 3, last_model="nova-3")


def test_a_copy_whose_earlier_answer_is_gone_is_weighed_by_the_budget(
    dgbatch: Cli, tmp_path: Path
) -> None:
    """Under a full cap, a copy whose original's json was deleted was let through as free
    and then left pending without a word (exit 1, every run); the dry run called it a
    copy. It is an item to pay for: the cap stops the run at it, saying so."""
    call = make_wav(tmp_path / "in" / "call.wav", 3.0, tone=3)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "--max-audio-hours")
    assert dgbatch(*args, str(4 / 3600)).exit_code == 0
    (out / "call.json").unlink()
    shutil.copy(call, tmp_path / "in" / "again.wav")
    dry = json.loads(dgbatch(*args, str(4 / 3600), "--dry-run", "--json").output)
    assert (dry["to_send"], dry["dedupe_copies"]) == (1, 0)
    stopped = dgbatch(*args, str(4 / 3600))
    assert stopped.exit_code == 1 and "audio budget reached" in stopped.output, stopped.output


def test_dedupe_across_runs_takes_no_answer_a_run_adopted(dgbatch: Cli, tmp_path: Path) -> None:
    """Outputs adopted after a lost state answer params nobody knows (nova-2 here): a copy
    in a nova-3 run was written from them (a review found it). Only an answer a
    ``--dedupe`` run got for its own request serves later copies."""
    call = make_wav(tmp_path / "in" / "call.wav", 0.5, tone=3)
    out = tmp_path / "out"
    assert (
        dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--param", "model=nova-2").exit_code
        == 0
    )
    shutil.rmtree(out / ".dgbatch")
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe")
    assert dgbatch(*args).exit_code == 0  # adopted
    shutil.copy(call, tmp_path / "in" / "again.wav")
    assert dgbatch(*args).exit_code == 0
    _assert_sent(dgbatch, 2, last_model="nova-3")


def test_dedupe_keys_of_a_state_made_before_they_held_a_request_id_are_dropped(
    dgbatch: Cli, tmp_path: Path
) -> None:
    """A state whose m014 made ``content_keys`` without ``request_id`` (mid-pass commits):
    every new item failed with "no such column", and a forced copy was paid every run."""
    call = make_wav(tmp_path / "in" / "call.wav", 0.5, tone=3)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe")
    assert dgbatch(*args).exit_code == 0
    db = sqlite3.connect(out / ".dgbatch" / "state.sqlite")
    db.executescript(
        "DROP TABLE content_keys; CREATE TABLE content_keys (key TEXT PRIMARY KEY, "
        "item_id TEXT NOT NULL, fingerprint TEXT NOT NULL); "
        "DELETE FROM _migrations WHERE name = 'm016_content_keys_request_id';"
    )
    db.close()
    shutil.copy(call, tmp_path / "in" / "again.wav")
    make_wav(tmp_path / "in" / "new.wav", 0.5, tone=4)
    result = dgbatch(*args)
    assert result.exit_code == 0, result.output
    again = dgbatch(*args, "--force")
    assert again.exit_code == 0, again.output
    third = dgbatch(*args)
    assert third.exit_code == 0 and "would" not in third.output


def test_dedupe_across_runs_needs_the_answer_to_be_of_the_same_audio(
    dgbatch: Cli, tmp_path: Path
) -> None:
    """A json whose ``metadata.sha256`` is not the copy's (written over since) serves
    no copy: the copy is sent."""
    call = make_wav(tmp_path / "in" / "call.wav", 0.5, tone=3)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe")
    assert dgbatch(*args).exit_code == 0
    answer = json.loads((out / "call.json").read_bytes())
    answer["metadata"]["sha256"] = "0" * 64
    (out / "call.json").write_text(json.dumps(answer))
    shutil.copy(call, tmp_path / "in" / "again.wav")
    assert dgbatch(*args).exit_code == 0
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == 2


@pytest.mark.parametrize(
    ("run", "first", "second", "same"),
    [
        ((), (), (), True),
        ((), (("model", "nova-3"),), (), True),  # the default, spelled out by a manifest
        ((), (("smart_format", "true"),), (), True),
        ((("model", "nova-2"),), (("model", "nova-2"),), (), True),  # --param, then the line
        ((), (("language", "fr"),), (), False),
        ((), (("model", "nova-2"),), (), False),
        ((), (("smart_format", ""),), (), False),  # removes a default
        ((), (("utterances", "false"),), (), False),  # the run adds utterances for captions
        ((), (("tag", "mine"),), (), False),  # a user's tag replaces the run tags: kept
    ],
)
def test_dedupe_keys_on_what_the_request_asks(
    tmp_path: Path, run: Params, first: Params, second: Params, same: bool
) -> None:
    """Two items are copies when their completed params (defaults, --param, the item's
    own layer, what the formats add) are equal, however each layer spelled them."""
    audio = make_wav(tmp_path / "a.wav")
    config = RunConfig(
        sources=(str(audio),),
        out=str(tmp_path / "out"),
        state_path=tmp_path / "state.sqlite",
        api_key=KEY,
        params=merge_params(DEFAULT_PARAMS, run),
        formats=("json", "srt"),
    )
    dedupe = Dedupe.for_run(config)
    assert (dedupe.key_now(str(audio), first) == dedupe.key_now(str(audio), second)) is same


def test_dedupe_folds_a_manifest_line_that_spells_out_a_default(
    dgbatch: Cli, tmp_path: Path
) -> None:
    """A manifest line asking ``model=nova-3`` (the default) is a copy of the same audio
    without params, so it is sent once; the same audio with ``language=fr`` is sent apart."""
    first = make_wav(tmp_path / "a.wav", 0.5, tone=3)
    for name in ("b.wav", "c.wav"):
        shutil.copy(first, tmp_path / name)
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        '{"source": "a.wav"}\n'
        '{"source": "b.wav", "params": {"model": "nova-3"}}\n'
        '{"source": "c.wav", "params": {"language": "fr"}}\n'
    )
    out = tmp_path / "out"
    result = dgbatch("run", str(manifest), "--out", str(out), "--dedupe", "-c", "1")
    assert result.exit_code == 0, result.output
    emulator = dgbatch.emulator
    assert emulator is not None and len(emulator.log) == 2
    assert sorted(dict(r.params).get("language", "-") for r in emulator.log) == ["-", "fr"]
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(out / ".dgbatch/state.sqlite")}
    (copy,) = [name for name, row in rows.items() if row["copy_of"] is not None]
    original = {"a.wav": "b.wav", "b.wav": "a.wav"}[copy]  # either may lead
    assert rows[copy]["copy_of"] == rows[original]["id"]


@pytest.mark.timeout(60)
def test_a_copy_waiting_for_its_leader_leaves_it_the_slot(tmp_path: Path) -> None:
    """With --dedupe, a copy waits for its leader without a request slot: after a 429
    cut the limit to one, the leader gets that slot, instead of both waiting forever."""
    first = make_wav(tmp_path / "in" / "a1.wav", 0.5, tone=3)
    shutil.copy(first, tmp_path / "in" / "a2.wav")
    out = tmp_path / "out"
    with full_project(first, KEY, hold=0.8) as emu:
        command = [
            *dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out", str(out),
            "--dedupe", "-c", "2", "--api-url", emu.url, "--backoff-base", "0.05",
            "--backoff-cap", "0.3", "--max-retries", "12", "--progress", "none",
        ]  # fmt: skip
        env = {**os.environ, "DEEPGRAM_API_KEY": KEY}
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    rows = read_state_rows(out / ".dgbatch/state.sqlite")
    (leader,) = [r for r in rows if r["copy_of"] is None]  # either may lead: both hash at once
    (copy,) = [r for r in rows if r["copy_of"] is not None]
    assert copy["copy_of"] == leader["id"] and leader["status"] == copy["status"] == "done"
    assert [r.status for r in emu.log].count(200) == 2  # the other client's and the leader's


def test_copies_waiting_for_their_leader_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies wait without a request slot, but not without bound: no more items are alive
    (claimed, ``running`` if the run is killed) than twice --concurrency."""
    import batch.runner

    first = make_wav(tmp_path / "in" / "0000.wav", 0.5, tone=3)
    for n in range(1, 40):
        shutil.copy(first, tmp_path / "in" / f"{n:04}.wav")
    peak = 0
    work = batch.runner.Runner._work

    async def counted(self: batch.runner.Runner, item: batch.runner.WorkItem) -> None:
        nonlocal peak
        peak = max(peak, len(self._tasks))
        await work(self, item)

    monkeypatch.setattr(batch.runner.Runner, "_work", counted)
    with run_in_thread(EmulatorConfig(key=KEY, latency=0.3)) as emu:
        result = Cli(emu)("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                          "--dedupe", "-c", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(emu.log) == 1 and "39 item(s) were copies" in result.output
    assert peak <= 4


def _big_transcript(words: int) -> bytes:
    """A 200 body of Deepgram's shape with ``words`` words (about 100 bytes each)."""
    entry = {"word": "hello", "start": 0.0, "end": 0.5, "confidence": 0.99}
    alternative = {"transcript": "hello " * words, "confidence": 0.99, "words": [entry] * words}
    results = {"channels": [{"alternatives": [alternative]}]}
    return json.dumps(
        {"metadata": {"request_id": "r", "duration": 1.0}, "results": results}
    ).encode()


@pytest.mark.timeout(60)
def test_dedupe_does_not_hold_every_leaders_answer_in_memory(tmp_path: Path) -> None:
    """A copy may come at any point of the run, so every leader's answer stays at hand; on
    disk, not in memory: 24 distinct files with 0.6 MB answers peak at ~13 MB of traced
    memory (over 100 MB when each leader's answer stayed in memory, parsed)."""
    import tracemalloc

    from aiohttp import web
    from conftest import serve_app

    body = _big_transcript(10_000)
    assert len(body) > 500_000

    async def listen(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/listen", listen)
    for n in range(24):
        make_wav(tmp_path / "in" / f"{n:02}.wav", 0.25, tone=n)
    make_wav(tmp_path / "in" / "zz-copy.wav", 0.25, tone=0)  # a copy of 00.wav, sent last
    args = ["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "1"]
    with serve_app(app) as url:
        tracemalloc.start()
        try:
            result = Cli(None)(*args, "--api-url", url, "--no-preflight", "--formats", "txt")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert "1 item(s) were copies" in result.output
    assert (tmp_path / "out" / "zz-copy.txt").read_bytes() == (
        tmp_path / "out" / "00.txt"
    ).read_bytes()
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB of traced memory"
    assert not list((tmp_path / "out" / ".dgbatch").glob(".dgbatch-answers-*"))


@pytest.mark.timeout(60)
def test_dedupe_copies_are_done_when_answers_cannot_be_spooled(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room for the leaders' answers (the spool cannot be created): nothing hangs and
    nothing is lost; copies get the answer or are sent on their own."""
    import errno

    import batch.dedupe

    def no_room(*_: object, **__: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch.dedupe.tempfile, "mkstemp", no_room)
    first = make_wav(tmp_path / "in" / "a.wav", 0.5, tone=3)
    for name in ("b", "c", "d"):
        shutil.copy(first, tmp_path / "in" / f"{name}.wav")
    out = tmp_path / "out"
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "-c", "1")
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in read_state_rows(out / ".dgbatch/state.sqlite")} == {"done"}


@pytest.mark.parametrize("spooled", [True, False])
async def test_a_leaders_answer_goes_to_its_waiting_copies_then_to_the_spool(
    tmp_path: Path, spooled: bool
) -> None:
    """Copies waiting when the leader ends get its answer as it is; later ones read it from
    the spool, or, when it could not be spooled, lead (and send) themselves."""
    from batch.dedupe import Handed, Spool, Spooled

    folder = tmp_path if spooled else tmp_path / "missing"
    dedupe = Dedupe(lambda own: own, Spool(folder))
    assert dedupe.follow("k") is None  # the leader
    waiting = dedupe.follow("k")
    assert waiting is not None and not waiting.done()
    dedupe.publish("k", ("leader", b"answer"))
    assert waiting.result() == Handed("leader", b"answer")
    later = dedupe.follow("k")
    if spooled:
        assert later is not None and isinstance(later.result(), Spooled)
        assert dedupe.spool.get(later.result()) == b"answer"
    else:
        assert later is None  # it leads: sent on its own
    dedupe.spool.close()


def test_the_spool_leaves_the_states_disk_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool shares its disk with the state, which must stay writable: with less than
    ``KEEP_FREE`` left after an answer, it does not take it (later copies send their own)."""
    import batch.dedupe
    from batch.dedupe import KEEP_FREE, Spool

    real = os.statvfs(tmp_path)

    class Disk:
        f_frsize = real.f_frsize
        f_bavail = (KEEP_FREE + 1000) // real.f_frsize

    spool = Spool(tmp_path)
    assert spool.put("small", b"x" * 10) is not None
    monkeypatch.setattr(batch.dedupe.os, "statvfs", lambda _: Disk)
    assert spool.put("big", b"x" * 8192) is None
    spool.close()


@pytest.mark.timeout(60)
def test_when_an_original_fails_one_copy_is_sent_and_the_others_wait_for_it(
    tmp_path: Path,
) -> None:
    """Three identical files with ``--dedupe``; the original's request fails for good: one of
    its copies is sent next and the last one is written from that answer (each copy sent
    on its own paid for the same audio twice)."""
    from conftest import api_failing_first, serve_app

    app, calls = api_failing_first()
    first = make_wav(tmp_path / "in" / "a.wav", 1.0, tone=3)
    for name in ("b", "c"):
        shutil.copy(first, tmp_path / "in" / f"{name}.wav")
    args = ["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "3"]
    with serve_app(app) as url:
        result = Cli(None)(*args, "--api-url", url, "--no-preflight", "--max-retries", "0")
    assert result.exit_code == 1, result.output  # the original failed
    assert len(calls) == 2 and "1 item(s) were copies" in result.output


def test_a_forced_copy_is_sent_not_served_an_earlier_answer(dgbatch: Cli, tmp_path: Path) -> None:
    """``--force`` asks a new answer: a copy of audio an earlier run transcribed was served
    that answer, the force silently ignored (a mutation test found nothing checked it)."""
    b = make_wav(tmp_path / "in" / "b.wav", 0.5, tone=4)
    a = tmp_path / "in2" / "a.wav"
    a.parent.mkdir()
    a.write_bytes(b.read_bytes())
    out = ("--out", str(tmp_path / "out"), "--dedupe")
    assert dgbatch("run", str(b), *out).exit_code == 0
    copied = dgbatch("run", str(a), *out)
    assert copied.exit_code == 0 and "copies of identical audio" in copied.output, copied.output
    assert dgbatch.emulator is not None and len(dgbatch.emulator.log) == 1
    forced = dgbatch("run", str(a), *out, "--force")
    assert forced.exit_code == 0 and "copies of identical audio" not in forced.output
    assert len(dgbatch.emulator.log) == 2


def test_a_kept_answer_serves_a_copy_only_for_the_request_its_key_remembers() -> None:
    """An original sent again with other params keeps that answer: it must not serve a
    copy whose key remembers the earlier request (a mutation test found nothing checked
    it); a key is stored hashed, as its params may hold a secret."""
    digest = "ab" * 32
    response = build_response(request_id="r-1", sha256=digest, size=10, duration=1.0, params=())
    body = json.dumps(response).encode()
    key = f"{digest}:language=fr&token=s3cret"
    assert kept_answer(("i", body, "r-1"), key) is not None
    assert kept_answer(("i", body, "r-2"), key) is None
    assert kept_answer(("i", body, "r-1"), "cd" * 32 + ":language=fr") is None  # other audio
    assert kept_answer(None, key) is None
    assert "s3cret" not in stored_key(key) and len(stored_key(key)) == 64


@pytest.mark.timeout(60)
def test_a_copy_sends_nothing_once_its_leader_was_stopped(tmp_path: Path) -> None:
    """Ctrl-C while the leader waits out a backoff: it ends pending without an answer,
    and its waiting copy must not lead and send after the stop (a mutation test found
    nothing checked it)."""
    wav = make_wav(tmp_path / "in" / "a.wav", 0.5, tone=5)
    (tmp_path / "in" / "b.wav").write_bytes(wav.read_bytes())
    with emulator_with(fault_rate=1.0, faults=("503",)) as emu:
        cmd = [*dgbatch_subprocess_cmd(), "run", str(tmp_path / "in"), "--out",
               str(tmp_path / "out"), "--dedupe", "--api-url", emu.url, "--backoff-base", "30",
               "--backoff-cap", "30", "--progress", "none"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stderr = stop_when(proc, lambda: len(emu.log) >= 1, lambda: proc.send_signal(2), pause=0.5)
        assert proc.returncode == 130, stderr.decode()
        assert len(emu.log) == 1, stderr.decode()
