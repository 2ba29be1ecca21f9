"""Cost control: the price table, dry-run estimates and the audio budget."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import mutagen
import pytest
from conftest import (
    Cli,
    api_failing_first,
    emulator_with,
    make_wav,
    make_wavs,
    read_state_rows,
    serve_app,
    static_server,
)

from batch import migrations, params
from batch.budget import Budget, Ledger, Reservation, audio_span, dollars
from batch.emulator import Emulator
from batch.models import Params
from batch.pricing import estimate_cost, price_per_hour, priced_model
from batch.state import State


@pytest.mark.parametrize(
    ("model", "override", "expected"),
    [
        ("nova-3", None, 0.0043 * 60),
        ("nova-3-medical", None, 0.0043 * 60),
        ("nova-3-multilingual", None, 0.0052 * 60),
        ("whisper-large", None, 0.0048 * 60),
        ("enhanced-phonecall", None, 0.0145 * 60),
        (None, None, 0.0125 * 60),
        ("my-custom-model", None, None),
        ("my-custom-model", 1.5, 1.5),
    ],
)
def test_price_per_hour(model: str | None, override: float | None, expected: float | None) -> None:
    """Models are priced by their longest known prefix; an override always wins."""
    price = price_per_hour(model, override)
    assert price == (pytest.approx(expected) if expected is not None else None)


def test_cost_scales_with_hours() -> None:
    """Cost scales with hours; no price, no cost."""
    assert estimate_cost(1800, 0.5) == pytest.approx(0.25)
    assert estimate_cost(1800, None) is None


@pytest.mark.parametrize(
    ("params", "billed_as"),
    [
        ((("model", "nova-3"), ("language", "multi")), "nova-3-multilingual"),
        ((("model", "Nova-3"), ("language", "MULTI")), "nova-3-multilingual"),
        ((("model", "nova-3"), ("language", "multi"), ("language", "en")), "nova-3"),
        ((("model", "nova-3-general"), ("language", "multi")), "nova-3-multilingual"),
        ((("model", "nova-2"), ("language", "multi")), "nova-2"),
        ((("model", "nova-3"),), "nova-3"),
        ((("language", "multi"),), None),
    ],
)
def test_nova_3_asked_for_every_language_is_priced_as_multilingual(
    params: Params, billed_as: str | None
) -> None:
    """Deepgram's Nova-3 Multilingual is ``model=nova-3&language=multi``: the table's
    ``nova-3-multilingual`` price was never used, and such audio was priced 17 % low."""
    assert priced_model(params) == billed_as


def test_budget_reserves_and_settles() -> None:
    """In-flight estimates count against the cap until replaced by the real duration."""
    budget = Budget(Ledger(10.0, used=2.0), longest=2.0)
    five = budget.admit(5.0)
    assert five == Reservation(5.0)
    assert budget.admit(4.0) is None  # 2 + 5 + 4 > 10
    three = budget.admit(3.0)  # exactly 10
    assert three is not None
    assert budget.admit(None) is None  # the cap is reached: unknown lengths wait too
    budget.settle(five, 4.0)
    assert budget.audio == Ledger(10.0, used=6.0, reserved=3.0)
    budget.settle(three, 0.0)  # failed: nothing used
    assert budget.admit(None) == Reservation(4.0)  # unknown: the longest measured, 4 s
    assert str(budget.exceeded("a.wav", 60.0)) == (
        "audio budget reached: 6.0 s transcribed and 4.0 s in flight of a 10.0 s cap; next "
        "item a.wav (~1.0 min) would pass it. Remaining items stay pending: run again with a "
        "higher --max-audio-hours/--max-cost to continue"
    )


#: USD per second: the run's nova-3 at $0.0043 a minute, a line's enhanced at $0.0145
NOVA, ENHANCED = 0.0043 / 60, 0.0145 / 60


@pytest.mark.parametrize(
    ("hours", "usd", "items", "admitted", "passed"),
    [
        # a dollar cap weighs each item at its own model: 60 s of enhanced is $0.0145
        (None, 0.02, [(60.0, ENHANCED), (60.0, ENHANCED)], 1, "cost"),
        (None, 0.02, [(60.0, NOVA)] * 4, 4, None),
        (None, 0.02, [(60.0, NOVA), (60.0, ENHANCED), (60.0, NOVA)], 2, "cost"),
        # with both caps, the one the item at hand would pass stops it
        (2 / 60, 1.0, [(60.0, ENHANCED), (60.0, ENHANCED), (60.0, NOVA)], 2, "audio"),
        (1.0, 0.015, [(60.0, NOVA), (60.0, ENHANCED)], 1, "cost"),
    ],
)
def test_each_cap_counts_each_item_at_its_own_price(
    hours: float | None,
    usd: float | None,
    items: list[tuple[float, float]],
    admitted: int,
    passed: str | None,
) -> None:
    """A manifest line asking for a dearer model than the run's is priced as it is sent:
    the cap was converted to hours once, at the run's model, and let such lines pass it."""
    audio = None if hours is None else Ledger(hours * 3600)
    cost = None if usd is None else Ledger(usd, dollars=True)
    budget = Budget(audio, cost)
    taken = 0
    for seconds, rate in items:
        if budget.admit(seconds, rate) is None:
            assert passed is not None
            assert str(budget.exceeded("x.wav", seconds, rate)).startswith(f"{passed} budget")
            break
        taken += 1
    assert taken == admitted


def test_a_settled_item_counts_its_price_once() -> None:
    """The reservation carries the item's rate: what it really used is priced at it."""
    budget = Budget(cost=Ledger(1.0, dollars=True))
    dear = budget.admit(60.0, ENHANCED)
    assert dear == Reservation(60.0, rate=ENHANCED)
    budget.settle(dear, 30.0)
    assert budget.cost is not None
    assert budget.cost.reserved == pytest.approx(0.0)
    assert budget.cost.used == pytest.approx(0.0145 / 2)
    blind = Budget(cost=Ledger(1.0, dollars=True)).admit(None, NOVA)
    assert blind == Reservation(0.0, blind=True, rate=NOVA)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(0.0, "$0.0000"), (0.00431, "$0.0043"), (5.0, "$5.00"), (1234.5, "$1,234.50")],
)
def test_dollars_show_cents_or_below_a_dollar_hundredths_of_one(amount: float, shown: str) -> None:
    assert dollars(amount) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0.0 s"),
        (3.64, "3.6 s"),
        (59.9, "59.9 s"),
        (60.0, "1.0 min"),
        (754.0, "12.6 min"),
        (3600.0, "1.00 h"),
        (3.6e6, "1000.00 h"),
    ],
)
def test_audio_spans_read_in_their_unit(seconds: float, shown: str) -> None:
    """A budget of seconds is not shown as 0.001 h, nor one of days in seconds."""
    assert audio_span(seconds) == shown


def test_dry_run_sends_nothing_and_measures_durations(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``--dry-run`` needs no key, sends zero requests, creates no state, and its total
    duration equals mutagen's for the generated files."""
    files = [make_wav(tmp_path / "in" / f"{n}.wav", 0.5 + n, tone=n) for n in range(3)]
    out = tmp_path / "out"
    result = dgbatch(
        "run", str(tmp_path / "in"), "--out", str(out), "--dry-run", "--json", key=None
    )
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output)
    expected = sum(mutagen.File(str(f)).info.length for f in files)
    assert estimate["duration_seconds"] == pytest.approx(expected, abs=1e-3)
    assert estimate["to_send"] == 3 and estimate["by_kind"] == {"upload": 3}
    assert estimate["bytes"] == sum(f.stat().st_size for f in files)
    hours = expected / 3600
    assert estimate["estimated_cost_usd"] == pytest.approx(hours * 0.0043 * 60, abs=1e-4)
    assert estimate["examples"][0]["outputs"] == [str(out / "0.json"), str(out / "0.txt")]
    assert emulator.log == []
    assert not out.exists()


@pytest.mark.parametrize("out", ["s3://media/dry/", "s3://media/dry"])
def test_dry_run_shows_s3_outputs_as_s3_uris(dgbatch: Cli, tmp_path: Path, out: str) -> None:
    """An S3 ``--out`` is shown as ``s3://bucket/prefix/name``, in text and in JSON. With
    a new (or lost) state the dry run does not look in S3, as the run does, for outputs
    already there: it says so (a fresh container counted every done item as to send)."""
    make_wav(tmp_path / "in" / "day1" / "f01.wav")
    expected = ["s3://media/dry/day1/f01.json", "s3://media/dry/day1/f01.txt"]
    args = ("run", str(tmp_path / "in"), "--out", out, "--dry-run")
    text = dgbatch(*args, key=None)
    assert text.exit_code == 0, text.output
    assert f"f01.wav → {', '.join(expected)}\n" in text.output
    assert "outputs already in the S3 --out were not looked for" in text.output
    as_json = dgbatch(*args, "--json", key=None)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["examples"][0]["outputs"] == expected
    assert json.loads(as_json.output)["s3_outputs_unchecked"] is True
    local = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--dry-run")
    assert "were not looked for" not in local.output
    forced = dgbatch(*args, "--force", key=None)  # the run sends them all: nothing to say
    assert forced.exit_code == 0 and "were not looked for" not in forced.output
    state = tmp_path / "s1.sqlite"  # a force underway, carried on without --force
    State.open(state).close()
    db = sqlite3.connect(state)
    with db:
        db.execute("INSERT INTO meta (key, value) VALUES ('force_since', ?)", (repr(time.time()),))
    db.close()
    underway = dgbatch(*args, "--state", str(state), key=None)
    assert underway.exit_code == 0 and "were not looked for" not in underway.output


def test_dry_run_prices_each_item_by_the_model_of_its_own_params(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A manifest line's own ``model`` (stored with the item) decides its price, over the
    run's default."""
    make_wav(tmp_path / "a.wav", 1.0, tone=1)
    make_wav(tmp_path / "b.wav", 2.0, tone=2)
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        '{"source": "a.wav", "params": {"model": "whisper-large"}}\n{"source": "b.wav"}\n'
    )
    result = dgbatch(
        "run", str(manifest), "--out", str(tmp_path / "out"), "--dry-run", "--json", key=None
    )
    assert result.exit_code == 0, result.output
    costs = json.loads(result.output)["cost_by_model"]
    assert set(costs) == {"whisper-large", "nova-3"}
    assert costs["whisper-large"] == pytest.approx(estimate_cost(1.0, 0.0048 * 60), abs=1e-4)
    assert costs["nova-3"] == pytest.approx(estimate_cost(2.0, 0.0043 * 60), abs=1e-4)
    assert emulator.log == []


def test_dry_run_plans_against_a_copy_of_the_state(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Items already done are not counted again and the real state file is not modified."""
    make_wav(tmp_path / "in" / "a.wav", 1.0, tone=1)
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    make_wav(tmp_path / "in" / "b.wav", 2.0, tone=2)
    state = out / ".dgbatch" / "state.sqlite"
    before = state.read_bytes()
    result = dgbatch(
        "run", str(tmp_path / "in"), "--out", str(out), "--dry-run", "--price-per-hour", "36"
    )
    assert result.exit_code == 0, result.output
    assert "would send 1 item(s): 1 upload (1 already done" in result.output
    assert "estimated cost: $0.0200" in result.output  # 2 s at $36/h
    assert f"{tmp_path / 'in' / 'b.wav'} → {out / 'b.json'}" in result.output
    assert state.read_bytes() == before
    assert len(emulator.log) == 1


def test_dry_run_with_dedupe_counts_what_the_run_sends(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """With ``--dedupe`` the dry run counts, sizes and prices one item per identical
    content (keyed as the run keys it, params included) and says how many it folded; the
    real run then sends exactly that many."""
    original = make_wav(tmp_path / "in" / "a.wav", 2.0, tone=1)
    for name in ("b.wav", "c.wav"):
        shutil.copy(original, tmp_path / "in" / name)
    other = make_wav(tmp_path / "in" / "d.wav", 1.0, tone=2)
    shutil.copy(original, tmp_path / "fr.wav")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"source": "fr.wav", "params": {"language": "fr"}}\n')
    args = ("run", str(tmp_path / "in"), str(manifest), "--out", str(tmp_path / "out"), "--dedupe")
    estimate = json.loads(dgbatch(*args, "--dry-run", "--json", key=None).output)
    assert estimate["to_send"] == 3 and estimate["dedupe_copies"] == 2
    assert estimate["bytes"] == 2 * original.stat().st_size + other.stat().st_size
    assert estimate["duration_seconds"] == pytest.approx(5.0, abs=1e-3)
    assert estimate["estimated_cost_usd"] == pytest.approx(5.0 / 3600 * 0.0043 * 60, abs=1e-4)
    text = dgbatch(*args, "--dry-run", key=None).output
    assert "would send 3 item(s): 3 upload" in text
    assert "2 more item(s) are copies of identical audio (--dedupe)" in text
    plain = json.loads(dgbatch(*args[:-1], "--dry-run", "--json", key=None).output)
    assert plain["to_send"] == 5 and plain["dedupe_copies"] == 0
    assert emulator.log == []
    assert dgbatch(*args).exit_code == 0
    assert len(emulator.log) == estimate["to_send"]


def test_dry_run_does_not_count_files_the_run_fails_before_sending(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """An empty file and one that is not audio fail in the run before a request (empty,
    not_audio): the dry run counts them apart, not as uploads, bytes or cost; with
    ``--no-sniff`` the one that is not audio is sent, and counted."""
    good = make_wav(tmp_path / "in" / "a.wav", 1.0)
    (tmp_path / "in" / "empty.wav").write_bytes(b"")
    (tmp_path / "in" / "notes.wav").write_bytes(b"%PDF-1.7 not audio at all" * 10)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    estimate = json.loads(dgbatch(*args, "--dry-run", "--json", key=None).output)
    assert estimate["to_send"] == 1 and estimate["by_kind"] == {"upload": 1}
    assert estimate["bytes"] == good.stat().st_size
    assert estimate["fail_locally"] == {"empty": 1, "not_audio": 1}
    assert [x["source"] for x in estimate["examples"]] == [str(good)]
    text = dgbatch(*args, "--dry-run", key=None).output
    assert "2 file(s) would fail before being sent, unpaid (empty 1, not_audio 1)" in text
    unsniffed = json.loads(dgbatch(*args, "--no-sniff", "--dry-run", "--json", key=None).output)
    assert unsniffed["to_send"] == 2 and unsniffed["fail_locally"] == {"empty": 1}
    assert dgbatch(*args).exit_code == 1
    assert len(emulator.log) == estimate["to_send"]


def test_budget_cap_stops_at_the_right_item_and_resumes(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """With 1 s files and a 2.5 s cap, two items are sent, the rest stay pending (exit 1);
    the same command with a higher cap finishes them."""
    for n in range(4):
        make_wav(tmp_path / "in" / f"{n}.wav", 1.0, tone=n)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "-c", "1")
    result = dgbatch(*args, "--max-audio-hours", str(2.5 / 3600))
    assert result.exit_code == 1
    assert "audio budget reached" in result.output and "2.wav" in result.output
    rows = read_state_rows(out / ".dgbatch" / "state.sqlite")
    assert [r["status"] for r in rows] == ["done", "done", "pending", "pending"]
    assert len(emulator.log) == 2
    again = dgbatch(*args, "--max-audio-hours", str(2.5 / 3600))
    assert again.exit_code == 1 and len(emulator.log) == 2  # the cap counts the whole state
    # 2 s done + 1 s next fits 3.5 s: the longest done item was counted "in flight" too
    one_more = dgbatch(*args, "--max-audio-hours", str(3.5 / 3600))
    assert one_more.exit_code == 1 and len(emulator.log) == 3, one_more.output
    # the stop waits for the item in flight to end (it might cost less than reserved)
    assert "3.0 s transcribed and 0.0 s in flight of a 3.5 s cap" in one_more.output
    result = dgbatch(*args, "--max-audio-hours", str(10 / 3600))
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 4


def test_a_file_that_is_not_audio_takes_nothing_from_the_budget(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A 2 MB file that is not audio was counted at a guess from its size (minutes) and
    stopped the run for good, though it fails unsent; the audio after it was never sent."""
    make_wav(tmp_path / "in" / "a.wav", 1.0)
    (tmp_path / "in" / "b.wav").write_bytes(b"x" * 2_000_000)
    make_wav(tmp_path / "in" / "c.wav", 1.0, tone=1)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "1")
    result = dgbatch(*args, "--max-audio-hours", str(2.5 / 3600))
    assert result.exit_code == 1 and "budget reached" not in result.output, result.output
    assert len(emulator.log) == 2
    statuses = {Path(str(r["source"])).name: r["status"] for r in read_state_rows(
        tmp_path / "out" / ".dgbatch" / "state.sqlite")}  # fmt: skip
    assert statuses == {"a.wav": "done", "b.wav": "failed", "c.wav": "done"}


def test_outputs_already_in_out_are_neither_sent_nor_priced_nor_capped(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A state lost beside outputs of the very audio: the dry run said it would send and
    price them all, and a budget stopped the run at them, though the run adopts them for
    free. A json of other audio at an item's place fails it unsent: counted so."""
    for n in range(3):
        make_wav(tmp_path / "in" / f"{n}.wav", 2.0, tone=n)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out))
    assert dgbatch(*args).exit_code == 0
    shutil.rmtree(out / ".dgbatch")
    (out / "2.json").write_bytes((out / "1.json").read_bytes())  # another recording's
    dry = json.loads(dgbatch(*args, "--dry-run", "--json").output)
    assert (dry["to_send"], dry["adopted"], dry["fail_locally"]) == (0, 2, {"output_exists": 1})
    text = dgbatch(*args, "--dry-run").output
    assert "2 more item(s) have their transcript in --out already" in text, text
    txt_only = json.loads(dgbatch(*args, "--dry-run", "--json", "--formats", "txt").output)
    assert txt_only["adopted"] == 0  # adopted only with every format asked for: sent again
    capped = dgbatch(*args, "--max-audio-hours", str(1 / 3600))  # less than any one file
    assert "budget reached" not in capped.output, capped.output
    assert len(emulator.log) == 3
    rows = {
        Path(str(r["source"])).name: r for r in read_state_rows(out / ".dgbatch" / "state.sqlite")
    }
    assert rows["2.wav"]["err_code"] == "output_exists" and rows["0.wav"]["status"] == "done"


def test_headerless_audio_sent_with_its_encoding_counts_against_the_budget(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Raw PCM with ``--param encoding=linear16`` has no header to sniff: the budget took
    it for a file that fails unsent and counted nothing, though the run sends it (and
    Deepgram bills it). It counts at a guess from its size (2 s here), which a 1 s cap
    does not hold."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.pcm").write_bytes(b"\x01\x02" * 16_000)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    raw = ("--param", "encoding=linear16", "--param", "sample_rate=8000")
    result = dgbatch(*args, *raw, "--max-audio-hours", str(1 / 3600))
    assert result.exit_code == 1 and "audio budget reached" in result.output, result.output
    assert emulator.log == []


def test_a_full_budget_fails_an_empty_file_instead_of_stopping_at_it(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A cap used up to the second stopped the run at an empty file ("~0.0 s would pass
    it"), which stayed pending for ever; it fails unsent, as it would without a cap."""
    make_wav(tmp_path / "in" / "a.wav", 3.0)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert dgbatch(*args).exit_code == 0
    (tmp_path / "in" / "z.wav").write_bytes(b"")
    result = dgbatch(*args, "--max-audio-hours", str(3 / 3600))
    assert result.exit_code == 1 and "budget reached" not in result.output, result.output
    rows = {
        Path(str(r["source"])).name: r
        for r in read_state_rows(tmp_path / "out" / ".dgbatch" / "state.sqlite")
    }
    assert rows["z.wav"]["err_code"] == "empty"


def test_a_file_over_2_gb_and_outputs_adopted_take_nothing_from_the_budget(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A WAV over Deepgram's 2 GB fails unsent, yet its header's 40 hours stopped the run
    for good; outputs adopted after a lost state were counted as paid, and the run stopped
    after two of them (review findings). Both are free: the new file is sent."""
    for n in range(3):
        make_wav(tmp_path / "in" / f"{n}.wav", 2.0, tone=n)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert dgbatch(*args).exit_code == 0
    shutil.rmtree(tmp_path / "out" / ".dgbatch")
    make_wav(tmp_path / "in" / "new.wav", 2.0, tone=9)
    big = tmp_path / "in" / "big.wav"
    big.write_bytes(make_wav(tmp_path / "h.wav", 0.1).read_bytes()[:44])
    os.truncate(big, 2_300_000_000)  # sparse
    result = dgbatch(*args, "--max-audio-hours", str(3 / 3600))
    assert result.exit_code == 1, result.output  # big.wav failed, unsent
    assert "budget" not in result.output, result.output
    assert len(emulator.log) == 4  # the three first runs', then new.wav alone
    rows = {
        Path(str(r["source"])).name: r
        for r in read_state_rows(tmp_path / "out" / ".dgbatch" / "state.sqlite")
    }
    assert rows["big.wav"]["err_code"] == "too_large" and rows["new.wav"]["status"] == "done"


def test_items_of_unknown_length_go_alone_until_one_is_measured() -> None:
    """A URL has no length before Deepgram answers: the first goes alone (the others wait,
    they do not stop the run); then the longest measured length stands in for theirs."""
    budget = Budget(Ledger(100.0))
    first = budget.admit(None)
    assert first == Reservation(0.0, blind=True)
    assert budget.must_wait(None) and not budget.must_wait(5.0)  # a known length may go
    budget.settle(first, 30.0)
    assert not budget.must_wait(None)
    second = budget.admit(None)
    assert second == Reservation(30.0)
    budget.settle(second, 10.0)  # shorter: the longest stays the estimate
    assert budget.admit(None) == budget.admit(None) == Reservation(30.0)  # 40 + 60 in flight
    assert budget.admit(None) is None  # 40 + 60 + 30 > 100: the run stops here


def test_a_budget_holds_for_urls_of_unknown_length(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """URLs of unknown length under a cap of 1.5 s: the first 1 s URL goes alone, then its
    length stands in for the next, which would pass the cap: two requests would have been
    too many, and five went before (each URL counted as 0 s)."""
    media = tmp_path / "media"
    make_wav(media / "a.wav", 1.0)
    with static_server(media) as base:
        manifest = tmp_path / "urls.txt"
        manifest.write_text("".join(f"{base}/a.wav?n={n}\n" for n in range(5)))
        args = ("run", str(manifest), "--out", str(tmp_path / "out"), "-c", "5")
        result = dgbatch(*args, "--max-audio-hours", str(1.5 / 3600))
    assert result.exit_code == 1, result.output
    assert "audio budget reached" in result.output
    assert len(emulator.log) == 1


def test_a_cap_passed_by_urls_longer_than_estimated_is_said_with_exit_1(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A URL counts as the longest length measured before it: a 3 s URL after a 1 s one
    passes a 2.5 s cap, which the run cannot stop before. It ended with exit 0 and no word
    (a review billed 107 s against a 36 s cap so); now it says so, with exit 1. A later
    run that sends nothing more has passed nothing."""
    make_wav(tmp_path / "media" / "a.wav", 1.0)
    make_wav(tmp_path / "media" / "b.wav", 3.0, tone=1)
    with static_server(tmp_path / "media") as base:
        manifest = tmp_path / "urls.txt"
        manifest.write_text(f"{base}/a.wav\n{base}/b.wav\n")
        args = ("run", str(manifest), "--out", str(tmp_path / "out"), "-c", "1")
        passed = dgbatch(*args, "--max-audio-hours", str(2.5 / 3600))
        assert passed.exit_code == 1, passed.output
        assert "audio budget passed: 4.0 s transcribed of a 2.5 s cap" in passed.output
        assert len(emulator.log) == 2
        again = dgbatch(*args, "--max-audio-hours", str(2.5 / 3600))
        assert again.exit_code == 0 and "budget passed" not in again.output, again.output


def test_max_cost_caps_the_price_of_the_audio(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``--max-cost`` caps the audio's price; an unpriced model needs --price-per-hour."""
    for n in range(3):
        make_wav(tmp_path / "in" / f"{n}.wav", 1.0, tone=n)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "1")
    refused = dgbatch(*args, "--param", "model=custom-x", "--max-cost", "1")
    assert refused.exit_code == 2 and "--price-per-hour" in refused.output
    result = dgbatch(*args, "--max-cost", "0.01", "--price-per-hour", "24")  # 1.5 s of audio
    assert result.exit_code == 1 and "cost budget reached" in result.output
    assert "of a $0.0100 cap; next item" in result.output and "~$0.0067)" in result.output
    assert len(emulator.log) == 1


def test_max_cost_prices_each_line_at_the_model_it_is_sent_with(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Lines asking for ``enhanced`` ($0.0145 a minute) under a run of nova-3 ($0.0043):
    the cap was converted to audio at nova-3's price, so all four 10 s lines ($0.0097)
    passed a $0.005 cap; the dry run said they fit. A line whose model has no price stops
    the run before it is sent (its cost could not be told), until --price-per-hour."""
    lines = []
    for n in range(4):
        wav = make_wav(tmp_path / "in" / f"{n}.wav", 10.0, tone=n)
        lines.append({"source": str(wav), "params": {"model": "enhanced"}})
    manifest = tmp_path / "dear.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ("run", str(manifest), "--out", str(tmp_path / "out"), "-c", "1", "--max-cost")
    dry = dgbatch(*args, "0.005", "--dry-run")
    assert "the estimate passes it, so the run would stop there" in dry.output, dry.output
    result = dgbatch(*args, "0.005")
    assert result.exit_code == 1 and "cost budget reached" in result.output, result.output
    assert [dict(req.params)["model"] for req in emulator.log] == ["enhanced", "enhanced"]
    again = dgbatch(*args, "0.007")  # what is done counts at its price too: $0.0048 + $0.0024
    assert again.exit_code == 1 and "$0.0048 transcribed" in again.output, again.output
    assert len(emulator.log) == 2
    custom = tmp_path / "custom.jsonl"
    custom.write_text(json.dumps({"source": lines[3]["source"], "params": {"model": "x-1"}}))
    args = ("run", str(custom), "--out", str(tmp_path / "custom"), "--max-cost")
    dry = dgbatch(*args, "1", "--dry-run")
    assert "no price is known for x-1: the run stops at its first item" in dry.output
    stopped = dgbatch(*args, "1")
    assert stopped.exit_code == 1, stopped.output
    assert (
        "--max-cost: no list price known for model 'x-1', which item "
        f"{lines[3]['source']} is sent with; pass --price-per-hour" in stopped.output
    )
    assert len(emulator.log) == 2  # nothing was sent
    priced = dgbatch(*args, "1", "--price-per-hour", "0.5")
    assert priced.exit_code == 0 and len(emulator.log) == 3, priced.output


def test_an_earlier_runs_audio_is_priced_at_the_model_that_run_sent(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A batch begun with ``--param model=enhanced`` and continued with the default nova-3
    under the same ``--max-cost``: the audio already billed was priced at nova-3, and the
    cap passed by 25 % (a review found it)."""
    for name in ("a", "b"):
        make_wav(tmp_path / "s1" / f"{name}.wav", 20.0, tone=ord(name))
    for name in ("c", "d"):
        make_wav(tmp_path / "s2" / f"{name}.wav", 20.0, tone=ord(name))
    out = ("--out", str(tmp_path / "out"), "--max-cost", "0.01", "-c", "1")
    first = dgbatch("run", str(tmp_path / "s1"), *out, "--param", "model=enhanced")
    assert first.exit_code == 0, first.output  # $0.0097
    db = sqlite3.connect(tmp_path / "out" / ".dgbatch" / "state.sqlite")  # as if recorded
    db.execute(  # by a release before runs.priced: read from the command it recorded
        "UPDATE runs SET priced = NULL, command = 'dgbatch run s1 --param model=enhanced'"
    )
    db.execute("DELETE FROM _migrations WHERE name = 'm017_run_priced_params'")
    db.commit()
    db.close()
    dry = dgbatch("run", str(tmp_path / "s2"), *out, "--dry-run")
    assert "$0.0097 already transcribed" in dry.output, dry.output
    second = dgbatch("run", str(tmp_path / "s2"), *out)
    assert second.exit_code == 1 and "cost budget reached" in second.output, second.output
    assert len(emulator.log) == 2


@pytest.mark.parametrize(
    ("command", "priced"),
    [
        ("dgbatch run in", [("model", "nova-3")]),
        ("dgbatch run in --param model=enhanced", [("model", "enhanced")]),
        ("dgbatch run in --param=model=base --param language=fr", [("language", "fr"), ("model", "base")]),  # noqa: E501
        ("dgbatch run in --param 'MODEL= nova-2'", [("model", "nova-2")]),
        ("dgbatch run 'unclosed --param model=enhanced", [("model", "nova-3")]),
        ("dgbatch run in --out model=enhanced", [("model", "nova-3")]),
    ],
)  # fmt: skip
def test_runs_recorded_before_priced_params_are_priced_from_their_command(
    command: str, priced: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """m017 reads what an old run's command asked for, over the defaults of the release
    that ran it: a later change of today's defaults does not re-price them."""
    monkeypatch.setattr(params, "DEFAULT_PARAMS", (("model", "nova-4"),))
    assert sorted(migrations._priced_of_command(command)) == priced


def test_what_was_billed_before_a_requeue_is_priced_at_the_run_that_sent_it(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A minute sent at enhanced, its file touched (re-queued), a run under ``--max-cost``
    stopped before sending it: that run had claimed the item, and the next run priced the
    enhanced minute at its own nova-3 and sent it past the cap (a review found it)."""
    wav = make_wav(tmp_path / "in" / "a.wav", 60.0)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert dgbatch(*args, "--param", "model=enhanced").exit_code == 0  # $0.0145
    os.utime(wav, (time.time() + 10, time.time() + 10))
    for _ in range(2):  # the same command again: the same answer
        stopped = dgbatch(*args, "--max-cost", "0.016")
        assert stopped.exit_code == 1 and "$0.0145 transcribed" in stopped.output, stopped.output
    assert len(emulator.log) == 1


def test_the_dry_run_says_whether_the_budget_would_stop_the_run(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A dry run under ``--max-cost`` or ``--max-audio-hours`` says whether the estimate
    fits the cap (counting what the state transcribed), as the run then behaves: it
    printed a cost over the cap and exit 0, and the run stopped halfway."""
    for n in range(4):
        make_wav(tmp_path / "in" / f"{n}.wav", 1.0, tone=n)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "1")
    over = dgbatch(*args, "--dry-run", "--max-cost", "0.0025", "--price-per-hour", "3.6")
    assert over.exit_code == 0, over.output
    assert "at --price-per-hour 3.6" in over.output
    assert (
        "budget: $0.0025, $0.0000 already transcribed in this state, each item at its model's "
        "price: the estimate passes it, so the run would stop there" in over.output
    )
    dry = dgbatch(*args, "--dry-run", "--json", "--max-audio-hours", str(5 / 3600))
    estimate = json.loads(dry.output)
    assert (estimate["over_budget"], estimate["budget_seconds"]) == (False, 5.0)
    assert emulator.log == []
    ran = dgbatch(*args, "--max-cost", "0.0025", "--price-per-hour", "3.6")
    assert ran.exit_code == 1 and "cost budget reached" in ran.output
    after = dgbatch(*args, "--dry-run", "--max-audio-hours", str(5 / 3600))
    assert "2.0 s already transcribed in this state: the estimate fits" in after.output
    urls = tmp_path / "urls.txt"  # no length known before Deepgram answers: no verdict
    urls.write_text("https://example.com/a.wav\n")
    unknown = dgbatch("run", str(urls), "--out", str(tmp_path / "u"), "--dry-run",
                      "--max-audio-hours", "1")  # fmt: skip
    assert "1 item(s) of unknown length may pass it" in unknown.output


def test_json_needs_dry_run(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """``--json`` without ``--dry-run`` is a usage error and sends nothing."""
    make_wav(tmp_path / "in" / "a.wav")
    result = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 2 and "--dry-run" in result.output
    assert emulator.log == []


@pytest.mark.timeout(60)
def test_a_throttled_first_url_under_a_budget_does_not_hang_the_run(tmp_path: Path) -> None:
    """The dispatch waits for the first URL's length without the request slot it took:
    after a 429 cut the limit to one, that URL needs the slot to retry (it used to wait
    for it for ever, and the run hung after one request)."""
    media = tmp_path / "media"
    make_wav(media / "a.wav")
    with (
        static_server(media) as base,
        emulator_with(fault_rate=1.0, faults=("429",), retry_after=False) as emu,
    ):
        manifest = tmp_path / "urls.txt"
        manifest.write_text("".join(f"{base}/a.wav?n={n}\n" for n in range(3)))
        result = Cli(emu)(
            "run", str(manifest), "--out", str(tmp_path / "out"), "--max-audio-hours", "1",
            "--max-retries", "2", "--backoff-cap", "0.05", "--no-preflight",
        )  # fmt: skip
        sent = len(emu.log)
    assert result.exit_code == 1, result.output
    assert sent == 9  # three URLs, three tries each, one at a time


def test_200s_without_a_transcript_count_against_the_budget(tmp_path: Path) -> None:
    """Deepgram bills a 200 whose body is no transcript: two of them for a 2 s file (its
    one retry) are 4 s, so a 5 s cap stops at the next file, in this run and the next.
    They counted nothing: a review saw 34 s billed against a 20 s cap over two runs."""
    for n in range(3):
        make_wav(tmp_path / "in" / f"{n}.wav", 2.0, tone=n)
    with emulator_with(fault_rate=1.0, faults=("garbage",)) as emu:
        args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-c", "1",
                "--max-audio-hours", str(5 / 3600), "--no-preflight")  # fmt: skip
        first = Cli(emu)(*args)
        assert first.exit_code == 1 and "audio budget reached: 4.0 s" in first.output, first.output
        assert len(emu.log) == 2
        again = Cli(emu)(*args)
        assert again.exit_code == 1 and "audio budget reached: 4.0 s" in again.output
        assert len(emu.log) == 2


def test_what_was_billed_before_a_requeue_still_counts(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``--retry-failed`` and ``--force`` queue an item again and reset its counts: what
    it was billed before left the budget, so a 3 s file forced four times under a 7.2 s
    cap was sent four times, and 200s without a transcript, retried, counted no more (a
    review billed 12 s against a 5.4 s cap so)."""
    make_wav(tmp_path / "in" / "a.wav", 3.0)
    args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    cap = ("--max-audio-hours", str(7.2 / 3600))
    assert dgbatch(*args, *cap).exit_code == 0
    assert dgbatch(*args, *cap, "--force").exit_code == 0  # 3 + 3 s: fits
    again = dgbatch(*args, *cap, "--force")
    assert again.exit_code == 1 and "audio budget reached: 6.0 s transcribed" in again.output
    assert len(emulator.log) == 2
    make_wav(tmp_path / "other" / "b.wav", 3.0, tone=1)
    with emulator_with(fault_rate=1.0, faults=("garbage",)) as emu:
        garbage = ("run", str(tmp_path / "other"), "--out", str(tmp_path / "g"), "--no-preflight")
        small = ("--max-audio-hours", str(5.4 / 3600))
        assert Cli(emu)(*garbage, *small).exit_code == 1  # two 200s without a transcript: 6 s
        retried = Cli(emu)(*garbage, *small, "--retry-failed")
        assert retried.exit_code == 1 and "audio budget reached: 6.0 s" in retried.output
        assert len(emu.log) == 2


def test_a_dedupe_copy_whose_answer_the_run_has_is_not_stopped_by_the_budget(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Two identical 1 s files with ``--dedupe`` under a 1.4 s cap: the copy would pass the
    cap, so the run waits for its original's answer and writes it for the copy, free (it
    stopped there before, and the next run, to which it is no copy, paid for it again)."""
    first = make_wav(tmp_path / "in" / "a.wav", 1.0, tone=3)
    shutil.copy(first, tmp_path / "in" / "c.wav")
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "-c", "1")
    result = dgbatch(*args, "--max-audio-hours", str(1.4 / 3600))
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 1 and "1 item(s) were copies" in result.output


@pytest.mark.timeout(60)
def test_copies_let_through_the_budget_never_send_when_their_original_fails(
    tmp_path: Path,
) -> None:
    """Four identical 1 s files with ``--dedupe`` under a 1.5 s cap, and the original's
    request fails: its copies, which were over the cap, are not sent on their own (three
    paid seconds, when a first version let them through before the original ended)."""
    app, calls = api_failing_first()
    for name in ("a", "c1", "c2", "c3"):
        make_wav(tmp_path / "in" / f"{name}.wav", 1.0, tone=3)
    args = ["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "4"]
    with serve_app(app) as url:
        result = Cli(None)(*args, "--api-url", url, "--no-preflight", "--max-retries", "0",
                           "--max-audio-hours", str(1.5 / 3600))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert len(calls) <= 2, f"{len(calls) - 1} s of audio paid under a 1.5 s cap"


def _slow_key(monkeypatch: pytest.MonkeyPatch, slow: str, *, before: Callable[[], None]) -> None:
    """Hash ``slow`` late (after ``before``), as a busy thread pool or disk may."""
    import batch.dedupe

    real = batch.dedupe.content_key

    def key(path: str, params: Params) -> str:
        if Path(path).name == slow:
            before()
        return real(path, params)

    monkeypatch.setattr(batch.dedupe, "content_key", key)


def test_a_copy_at_the_cap_waits_for_an_original_still_hashing_its_file(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original's task hashes its file in a thread while the dispatch loop hashes the
    copy the cap stops at: the copy waits until every item dispatched before it has its key
    (it missed its original in 4 of 20 runs of two 58 MB files, and was paid for again)."""
    for name in ("a", "c"):
        make_wav(tmp_path / "in" / f"{name}.wav", 1.0, tone=3)
    _slow_key(monkeypatch, "a.wav", before=lambda: time.sleep(0.2))
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "-c", "2")
    result = dgbatch(*args, "--max-audio-hours", str(1.4 / 3600))
    assert result.exit_code == 0, result.output
    assert len(emulator.log) == 1 and "1 item(s) were copies" in result.output


def test_a_copy_waiting_at_the_cap_is_not_dispatched_after_a_signal(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the copy the cap stops at is being hashed: nothing more is dispatched,
    the copy stays pending (exit 130)."""
    for name in ("a", "c"):
        make_wav(tmp_path / "in" / f"{name}.wav", 1.0, tone=3)
    hashed: list[int] = []

    def interrupt() -> None:
        hashed.append(1)
        if len(hashed) == 1:  # the dispatch loop hashing c, at the cap
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # a's outputs land and it publishes meanwhile

    _slow_key(monkeypatch, "c.wav", before=interrupt)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dedupe", "-c", "1")
    result = dgbatch(*args, "--max-audio-hours", str(1.4 / 3600))
    assert result.exit_code == 130, result.output
    rows = {
        Path(str(r["source"])).name: r["status"]
        for r in read_state_rows(out / ".dgbatch" / "state.sqlite")
    }
    assert rows == {"a.wav": "done", "c.wav": "pending"}


def test_a_copy_whose_original_failed_is_weighed_again_against_the_cap(tmp_path: Path) -> None:
    """The original fails while its copy waits at the cap: its reservation is back, the copy
    fits, and it is sent on its own (the run stopped claiming it would pass the cap)."""
    app, calls = api_failing_first()
    for name in ("a", "c"):
        make_wav(tmp_path / "in" / f"{name}.wav", 1.0, tone=3)
    args = ["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dedupe", "-c", "2"]
    with serve_app(app) as url:
        result = Cli(None)(*args, "--api-url", url, "--no-preflight", "--max-retries", "0",
                           "--max-audio-hours", str(1.5 / 3600))  # fmt: skip
    assert "budget reached" not in result.output, result.output
    assert len(calls) == 2 and (tmp_path / "out" / "c.json").exists()


def test_a_dry_run_leaves_no_lock_file_behind(
    dgbatch: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dry run's copy of the state is new each time and no other run can find it: it
    takes no second lock, which left one file per dry run under the temporary folder."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    make_wav(tmp_path / "in" / "a.wav")
    for _ in range(2):
        args = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dry-run")
        assert dgbatch(*args, key=None).exit_code == 0
    assert [p.name for p in (tmp_path / "tmp").rglob("*.lock")] == []


def test_a_long_estimate_says_how_far_it_got_and_stops_on_ctrl_c(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run of 100,000 files reads each one's duration: half a minute with nothing
    shown, and a Ctrl-C then was click's "Aborted!", exit 1 (README: a dry run stops with
    130). It says how far it got, and stops with 130, nothing sent."""
    import batch.dryrun

    make_wavs(tmp_path / "in", 3)
    monkeypatch.setattr(batch.dryrun, "ESTIMATE_NEWS", 0.0)
    dry = ("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dry-run")
    said = Cli(None)(*dry)  # (the fixture's runs ask for --progress none)
    assert said.exit_code == 0 and "dry run: 1 of 3 item(s) estimated" in said.output
    quiet = Cli(None)(*dry, "-q")
    assert quiet.exit_code == 0 and "estimated …" not in quiet.output  # -q: no progress
    real = batch.dryrun._add_item

    def interrupted(*args: object) -> float | None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(batch.dryrun, "_add_item", interrupted)
    stopped = dgbatch("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--dry-run")
    assert stopped.exit_code == 130, stopped.output
    assert "interrupted while estimating; nothing was sent" in stopped.output
    assert emulator.log == []


def test_a_dry_run_of_a_state_a_run_holds_says_its_counts_are_a_snapshot(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A dry run while a run writes the state counted the items that run was sending as
    to send, and the outputs it wrote since as "a state lost": it says a run holds it."""
    from batch.statefile import take_lock

    make_wavs(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    args = ("run", str(tmp_path / "in"), "--out", str(out), "--dry-run")
    assert "a run holds the state" not in dgbatch(*args).output
    lock = take_lock(out / ".dgbatch" / "state.sqlite", host=False)
    try:
        held = dgbatch(*args)
    finally:
        lock.close()
    assert held.exit_code == 0, held.output
    assert f"a run holds the state (pid {os.getpid()} on" in held.output
