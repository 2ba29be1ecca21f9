"""What the state was billed for, and the run's budget made of it: ``--max-audio-hours``
and ``--max-cost`` count what earlier runs paid (``batch.budget`` keeps the ledger)."""

from __future__ import annotations

from batch.budget import Budget, Ledger
from batch.config import RunConfig
from batch.errors import UsageError
from batch.keeping import kept_audio
from batch.planrows import BILLED
from batch.pricing import ItemPrices, price_per_hour, priced_model
from batch.records import stored_params
from batch.state import State

__all__ = ["check_budget", "make_budget", "used_audio", "used_cost"]


def check_budget(config: RunConfig) -> None:
    """Refuse ``--max-cost`` before anything starts when the run's own model has no price
    (an item of a manifest line asking for an unpriced model stops the run when reached)."""
    if config.max_cost is not None:
        model = priced_model(config.params)
        if price_per_hour(model, config.price_per_hour) is None:
            msg = f"--max-cost: no list price known for model {model!r}; pass --price-per-hour"
            raise UsageError(msg)


def make_budget(config: RunConfig, state: State) -> Budget | None:
    """The run's caps, with what the state already transcribed counted against them; None
    without ``--max-audio-hours`` and ``--max-cost``."""
    if config.max_audio_hours is None and config.max_cost is None:
        return None
    check_budget(config)
    used, longest = used_audio(state)
    prices = ItemPrices(config.params, config.price_per_hour)
    audio = cost = None
    if config.max_audio_hours is not None:
        audio = Ledger(config.max_audio_hours * 3600, used=used)
    if config.max_cost is not None:
        cost = Ledger(config.max_cost, used=used_cost(state, prices), dollars=True)
    return Budget(audio, cost, prices, longest=longest)


def used_cost(state: State, prices: ItemPrices) -> float:
    """USD of the audio the state billed, each item at the model it was sent with: its
    own params over those of the run that sent it (``billed_run`` for what it was billed
    before a re-queue; this run's for a run that recorded none; this run's model for one
    that has no price, and for answers kept unwritten)."""
    fallback = prices.per_second(()) or 0.0
    rows = state.query(
        f"SELECT COALESCE(sent_params, params), sent.priced, billed.priced, SUM({BILLED}), "
        "SUM(items.billed_before) FROM items "
        "LEFT JOIN runs AS sent ON sent.id = items.run_id "
        "LEFT JOIN runs AS billed ON billed.id = COALESCE(items.billed_run, items.run_id) "
        "GROUP BY 1, 2, 3"
    )
    total = 0.0
    for own, now_run, before_run, now, before in rows:
        for priced, seconds in ((now_run, now), (before_run, before)):
            run = prices if priced is None else ItemPrices(stored_params(priced), prices.override)
            total += float(seconds) * (run.per_second(stored_params(own)) or fallback)
    return total + sum(kept_audio(state)) * fallback


#: the seconds an item was billed for: before it was last queued, and since
_BILLED = f"items.billed_before + {BILLED}"


def used_audio(state: State) -> tuple[float, float]:
    """Audio the state was billed for (transcripts, and 200s that held none), and the
    longest transcript (copies made by --dedupe were not paid; answers kept unwritten were)."""
    ((seconds, longest),) = state.query(
        f"SELECT COALESCE(SUM({_BILLED}), 0), "
        "COALESCE(MAX(CASE WHEN status = 'done' AND copy_of IS NULL THEN duration END), 0) "
        "FROM items"
    )
    kept = kept_audio(state)
    return float(seconds) + sum(kept), max([float(longest), *kept])
