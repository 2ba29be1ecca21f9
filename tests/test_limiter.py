"""The adaptive concurrency limit: starts at --concurrency, AIMD, priority for retries."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import KEY, Cli
from reliability_helpers import make_tiny_wavs

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
    assert not limit.shrunk_since(0)


def test_shrunk_since_and_change_events() -> None:
    """Each visible change is reported once (the progress bar), and a request knows
    whether the pool slowed down after it was sent."""
    changes: list[int] = []
    limit = AdaptiveLimit(64, on_change=changes.append)
    sent_at = limit.epoch
    assert not limit.shrunk_since(sent_at)
    play(limit, "t")
    assert limit.shrunk_since(sent_at)
    play(limit, "s " * 44 + "o9")
    assert changes == [44, 45, 8]


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
