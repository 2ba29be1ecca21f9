"""The adaptive concurrency limit: starts at --concurrency, AIMD, priority for retries."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import KEY, Cli
from reliability_helpers import full_project, make_tiny_wavs

from batch.emulator import EmulatorConfig, run_in_thread
from batch.limiter import AdaptiveLimit


def play(limit: AdaptiveLimit, script: str) -> None:
    """``s`` a success, ``t`` a 429 on a request sent now, ``o`` a 429 on a request sent
    before the last cut (a late answer of the same burst). A 429 comes with ``maximum``
    requests in flight unless a number says how many, its own included (``t5``)."""
    for step in script.split():
        kind, count = step[0], step[1:]
        limit.in_flight = int(count) if count else limit.maximum
        if kind == "s":
            limit.on_success()
        elif kind == "t":
            limit.on_throttle(limit.epoch)
        elif kind == "o":
            limit.on_throttle(limit.epoch - 1)
        else:  # pragma: no cover - a typo in a table
            raise AssertionError(step)
    limit.in_flight = 0


@pytest.mark.parametrize(
    ("maximum", "script", "expected"),
    [
        pytest.param(64, "", 64, id="starts at maximum"),
        pytest.param(6, "s " * 10, 6, id="never above maximum"),
        pytest.param(64, "t", 44, id="429 cuts to 70 percent"),
        pytest.param(64, "t o o o", 44, id="late 429s of a burst cut once"),
        pytest.param(64, "t t", 31, id="fresh 429 after a cut cuts again"),
        pytest.param(64, "t " * 12, 1, id="floor is one slot"),
        pytest.param(64, "t t" + " s" * 31, 32, id="after a cut one slot per window"),
        pytest.param(64, "t t" + " s" * 15, 31, id="not before the window is full"),
        pytest.param(1, "t s s", 1, id="maximum one stays one"),
        pytest.param(64, "t64 o60 o30 o9", 8, id="late 429s cap at the others in flight"),
        pytest.param(64, "t20", 19, id="a 429 with few in flight caps below 70 percent"),
        pytest.param(64, "t o50", 44, id="a cap above the limit changes nothing"),
        pytest.param(64, "t1", 1, id="alone in flight and throttled: one slot"),
        pytest.param(64, "t20 t20", 13, id="each fresh 429 still cuts by 30 percent"),
    ],
)
def test_limit_table(maximum: int, script: str, expected: int) -> None:
    """The limit after a sequence of successes and 429s."""
    limit = AdaptiveLimit(maximum)
    play(limit, script)
    assert limit.limit == expected


def test_not_adaptive_is_a_fixed_limit() -> None:
    """With adaptation off the limit is --concurrency, whatever Deepgram answers."""
    limit = AdaptiveLimit(64, adaptive=False)
    play(limit, "t t s t")
    assert limit.limit == 64
    limit.in_flight = 64
    assert not limit.covers_backoff(0)


def test_change_events() -> None:
    """Each visible change is reported once (the progress bar)."""
    changes: list[int] = []
    limit = AdaptiveLimit(64, on_change=changes.append)
    play(limit, "t " + "s " * 44 + "o9")
    assert changes == [44, 45, 8]


@pytest.mark.parametrize(
    ("maximum", "script", "in_flight", "covers"),
    [
        pytest.param(64, "", 64, False, id="no cut since it was sent"),
        pytest.param(64, "t", 45, True, id="cut since, the others fill the cut limit"),
        pytest.param(64, "t", 44, False, id="cut since, but a slot is free at once"),
        pytest.param(1, "t t t", 1, False, id="one slot: nothing to cut, nothing to wait for"),
        pytest.param(64, "t " * 12, 1, False, id="cut to one slot, alone in flight"),
        pytest.param(64, "t " * 12, 2, True, id="cut to one slot, another holds it"),
    ],
)
def test_a_throttled_retry_backs_off_unless_waiting_for_a_slot_covers_it(
    maximum: int, script: str, in_flight: int, covers: bool
) -> None:
    """After a 429 the retry skips its own backoff only when it will wait for a slot
    anyway: the limit was cut since the request went out and the others fill it."""
    limit = AdaptiveLimit(maximum)
    sent_at = limit.epoch
    play(limit, script)
    limit.in_flight = in_flight
    assert limit.covers_backoff(sent_at) is covers


@pytest.mark.parametrize(
    ("maximum", "before", "new_epoch"),
    [
        pytest.param(64, "", True, id="64 -> 44"),
        pytest.param(64, "t " * 12 + "s", True, id="2 -> 1"),
        pytest.param(64, "t " * 12 + "s t", False, id="1.4 -> 1, no whole slot"),
        pytest.param(64, "t " * 12, False, id="at one slot"),
        pytest.param(1, "", False, id="maximum one"),
    ],
)
def test_only_a_cut_of_whole_slots_starts_an_epoch(
    maximum: int, before: str, new_epoch: bool
) -> None:
    """A 429 at one slot (or a cut of a fraction of one) leaves the epoch alone, so the
    retries it causes still back off instead of counting a cut that changed nothing."""
    limit = AdaptiveLimit(maximum)
    play(limit, before)
    epoch = limit.epoch
    play(limit, "t")
    assert (limit.epoch != epoch) is new_epoch


async def test_acquire_waits_for_a_free_slot() -> None:
    """A full pool blocks the dispatcher until a slot is released."""
    limit = AdaptiveLimit(2, adaptive=False)
    assert await limit.acquire() and await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limit.release()
    assert await asyncio.wait_for(waiter, 1) is True
    assert limit.in_flight == 2


async def test_throttled_retry_goes_before_new_items() -> None:
    """A 429'd item waiting for its slot is served before the dispatcher spawns more."""
    limit = AdaptiveLimit(1, adaptive=False)
    assert await limit.acquire()
    order: list[str] = []

    async def take(name: str, retry: bool) -> None:
        await limit.acquire(retry=retry)
        order.append(name)

    new = asyncio.create_task(take("new", False))
    await asyncio.sleep(0)
    retry = asyncio.create_task(take("retry", True))
    await asyncio.sleep(0.01)
    limit.release()
    await asyncio.sleep(0.01)
    assert order == ["retry"]
    limit.release()
    await asyncio.wait_for(asyncio.gather(new, retry), 1)
    assert order == ["retry", "new"]


async def test_close_wakes_waiters_and_keeps_retries_balanced() -> None:
    """Closing returns False to everyone; a retry still holds a slot to release."""
    limit = AdaptiveLimit(1, adaptive=False)
    assert await limit.acquire()
    new = asyncio.create_task(limit.acquire())
    retry = asyncio.create_task(limit.acquire(retry=True))
    await asyncio.sleep(0.01)
    limit.close()
    assert await asyncio.wait_for(new, 1) is False
    assert await asyncio.wait_for(retry, 1) is False
    assert limit.in_flight == 2
    assert await limit.acquire() is False


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "new"])
@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed-first"])
async def test_a_cancelled_waiter_stays_balanced(retry: bool, closed: bool) -> None:
    """A throttled item cancelled while it waits to take its slot back still holds one
    (its owner releases it once, as for any item); a new item cancelled holds none. Also
    when the limiter closes in the same tick, as on a second Ctrl-C during a 429 wait."""
    limit = AdaptiveLimit(1, adaptive=False)
    assert await limit.acquire()
    waiter = asyncio.create_task(limit.acquire(retry=retry))
    await asyncio.sleep(0.01)
    if closed:
        limit.close()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limit.in_flight == 1 + retry
    for _ in range(limit.in_flight):
        limit.release()
    assert limit.in_flight == 0
    assert await asyncio.wait_for(limit.acquire(), 1) is not closed


async def test_in_flight_never_exceeds_the_limit() -> None:
    """Under a stream of 429s and successes, holders never outnumber the slots."""
    limit = AdaptiveLimit(16)
    peak_over = 0

    async def worker(index: int) -> None:
        nonlocal peak_over
        if not await limit.acquire():
            return
        try:
            for attempt in range(3):
                peak_over = max(peak_over, limit.in_flight - limit.maximum)
                epoch = limit.epoch
                await asyncio.sleep(0.001)
                if (index + attempt) % 5:
                    limit.on_success()
                    return
                limit.on_throttle(epoch)
                limit.release()
                await limit.acquire(retry=True)
        finally:
            limit.release()

    tasks = []
    for index in range(200):
        assert await limit.acquire()
        limit.release()
        tasks.append(asyncio.create_task(worker(index)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert peak_over <= 0
    assert limit.in_flight == 0


def test_run_adapts_to_a_project_limit(tmp_path: Path) -> None:
    """Against a limit of 3 with -c 16 every item is done, the limit comes down within a
    few cuts and the later requests are mostly not throttled; limit changes are logged
    at debug level and the progress line shows the limit."""
    make_tiny_wavs(tmp_path / "in", 60)
    with run_in_thread(EmulatorConfig(key=KEY, latency=0.01, max_concurrency=3)) as emu:
        result = Cli(None)(
            "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--api-url", emu.url,
            "-c", "16", "-vv", "--progress", "log", "--backoff-base", "0.01",
        )  # fmt: skip
        statuses = Counter(record.status for record in emu.log)
        late = Counter(record.status for record in emu.log[len(emu.log) // 2 :])
    limits = [int(n) for n in re.findall(r"concurrency limit \d+ -> (\d+)", result.output)]
    assert result.exit_code == 0, result.output
    assert statuses[200] == 60
    assert limits[0] == 11  # the first 429 of the burst cuts by 30 percent …
    assert min(limits[:13]) <= 4  # … and its 12 late ones bring 16 down near the project's 3
    assert late[429] * 3 <= late[200]  # adapted: the later requests mostly get through
    assert "DEBUG concurrency limit" in result.output
    assert re.search(r"progress: 60/60 items .* limit=\d+", result.output)


def test_a_full_project_at_one_slot_is_waited_out(tmp_path: Path) -> None:
    """At -c 1, while another client holds the project's only slot, each 429 backs off:
    the item is done once the slot is free, instead of spending every retry at once."""
    (wav,) = make_tiny_wavs(tmp_path / "in", 1)
    with full_project(wav, KEY, hold=0.8) as emu:
        result = Cli(None)(
            "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--api-url", emu.url,
            "-c", "1", "--backoff-base", "0.1", "--backoff-cap", "0.3", "--max-retries", "12",
            "--progress", "none",
        )  # fmt: skip
    statuses = Counter(record.status for record in emu.log)
    throttled = [record.time for record in emu.log if record.status == 429]
    assert result.exit_code == 0, result.output
    assert statuses[200] == 2  # the other client's and ours
    assert throttled and throttled[-1] - throttled[0] >= 0.2  # backed off, not all at once
