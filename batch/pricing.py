"""Deepgram list prices, in ONE place, for dry-run estimates and ``--max-cost``.

Source: Deepgram's pay-as-you-go price list for pre-recorded speech-to-text
(https://deepgram.com/pricing), as remembered on the date below: these machines have no
internet, so the figures could not be re-checked. **Verify on deepgram.com/pricing**;
Growth and Enterprise plans pay less, add-ons (diarization, redaction, Audio
Intelligence) cost extra and are not included. ``--price-per-hour`` overrides the table.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def model_of(params: Iterable[tuple[str, str]]) -> str | None:
    """The ``model`` a request asks for (the last value wins, as in a query string)."""
    model = None
    for key, value in params:
        if key == "model":
            model = value
    return model


def estimate_cost(seconds: float, per_hour: float | None) -> float | None:
    """USD for ``seconds`` of audio at ``per_hour`` (None when the price is unknown)."""
    if per_hour is None:
        return None
    return seconds / 3600 * per_hour
