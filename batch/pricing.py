"""Deepgram list prices, in ONE place, for dry-run estimates and ``--max-cost``.

Source: Deepgram's pay-as-you-go price list for pre-recorded speech-to-text
(https://deepgram.com/pricing), as remembered on the date below: these machines have no
internet, so the figures could not be re-checked. **Verify on deepgram.com/pricing**;
Growth and Enterprise plans pay less, add-ons (diarization, redaction, Audio
Intelligence) cost extra and are not included. ``--price-per-hour`` overrides the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from batch.models import Params
from batch.params import merge_params

#: When the table was written; printed with every estimate.
PRICES_AS_OF = "2025-06 (verify on deepgram.com/pricing)"

#: USD per minute of audio, pay-as-you-go, pre-recorded; keys are model names or prefixes.
PRICE_PER_MINUTE: dict[str, float] = {
    "nova-3": 0.0043,
    "nova-3-multilingual": 0.0052,
    "nova-2": 0.0043,
    "nova": 0.0043,
    "enhanced": 0.0145,
    "base": 0.0125,
    "whisper": 0.0048,
}

#: What Deepgram uses when a request names no model (DEEPGRAM-API.md §1: ``base``).
DEFAULT_MODEL = "base"


def price_per_hour(model: str | None, override: float | None = None) -> float | None:
    """USD per audio hour for ``model`` (longest matching prefix), or None if unknown.

    ``nova-3-medical`` is priced as ``nova-3`` and ``whisper-large`` as ``whisper``.
    """
    if override is not None:
        return override
    name = (model or DEFAULT_MODEL).lower()
    matches = [key for key in PRICE_PER_MINUTE if name == key or name.startswith(key + "-")]
    if not matches:
        return None
    return PRICE_PER_MINUTE[max(matches, key=len)] * 60


def _last(params: Iterable[tuple[str, str]], key: str) -> str | None:
    found = None
    for name, value in params:
        if name == key:
            found = value
    return found


def price_params(params: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The params a price depends on (``model``, ``language``): what a run records of its
    ``--param``s (the others may hold a secret)."""
    return tuple((key, value) for key, value in params if key in ("model", "language"))


def priced_model(params: Iterable[tuple[str, str]]) -> str | None:
    """The model a request is billed as: its ``model``, except that Nova-3 asked for
    ``language=multi`` is Nova-3 Multilingual, which has a price of its own (Deepgram selects
    it so: "Nova-3 Language Prompting", developers.deepgram.com)."""
    values = list(params)
    model, language = _last(values, "model"), _last(values, "language")
    nova_3 = (model or "").lower() in ("nova-3", "nova-3-general")
    if nova_3 and (language or "").lower() == "multi":
        return "nova-3-multilingual"
    return model


def estimate_cost(seconds: float, per_hour: float | None) -> float | None:
    """USD for ``seconds`` of audio at ``per_hour`` (None when the price is unknown)."""
    if per_hour is None:
        return None
    return seconds / 3600 * per_hour


@dataclass(frozen=True, slots=True)
class ItemPrices:
    """What an item's audio costs at the model it is sent with: a manifest line's own
    params over the run's (``--param``), merged as its request merges them. A dollar cap
    priced at the run's model alone let lines asking for a dearer model pass it."""

    #: the run's params (``RunConfig.params``)
    defaults: Params
    #: ``--price-per-hour``: every model at this price
    override: float | None = None

    def model(self, own: Params) -> str | None:
        """The model an item with ``own`` params is sent with."""
        return priced_model(merge_params(self.defaults, own))

    def per_second(self, own: Params) -> float | None:
        """USD per second of audio for an item with ``own`` params; None if unknown."""
        return _per_second(self, own)


@lru_cache(maxsize=256)
def _per_second(prices: ItemPrices, own: Params) -> float | None:
    """Cached: it is asked for every item admitted, and a run's items share a few params."""
    per_hour = price_per_hour(prices.model(own), prices.override)
    return None if per_hour is None else per_hour / 3600
