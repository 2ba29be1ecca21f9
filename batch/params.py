"""Deepgram query parameters: parse, merge the layers, encode (pure).

Three layers decide what one request asks for, later ones winning per key:
``DEFAULT_PARAMS`` ← ``--param`` ← a manifest's per-item ``params``. A key can
repeat (``keyterm=a&keyterm=b``), so params are an ordered tuple of pairs and a
layer that sets a key replaces *all* earlier values of it. Deepgram wants
lowercase booleans and repeated keys for lists (DEEPGRAM-API.md §1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from urllib.parse import urlencode

from batch.errors import UsageError
from batch.models import Params

__all__ = [
    "CAPTION_FORMATS",
    "DEFAULT_PARAMS",
    "check_not_callback",
    "encode_query",
    "merge_params",
    "normalise_value",
    "params_from_mapping",
    "parse_param",
    "request_params",
    "run_tags",
]

DEFAULT_PARAMS: Params = (("model", "nova-3"), ("smart_format", "true"))
#: Deepgram's concurrent requests per project (PAYG/Growth): 100, lower for a Whisper model
#: and for each Audio Intelligence feature; a request with several gets the lowest
PROJECT_CONCURRENCY = 100
FEATURE_CONCURRENCY: dict[str, int] = {
    "whisper": 5,
    "sentiment": 10,
    "intents": 10,
    "topics": 10,
    "summarize": 10,
    "detect_entities": 5,
}
#: Deepgram's query parameters for pre-recorded audio (its API spec), by their names: a
#: manifest key or CSV column spelled as one of them (``Language``) means it
DEEPGRAM_PARAMS = frozenset(
    {
        "model", "version", "language", "detect_language", "punctuate", "smart_format",
        "paragraphs", "diarize", "diarize_model", "utterances", "utt_split", "multichannel",
        "numerals", "measurements", "dictation", "filler_words", "profanity_filter",
        "redact", "keywords", "keyterm", "search", "replace", "tag", "extra", "callback",
        "callback_method", "sentiment", "topics", "intents", "detect_entities", "summarize",
        "custom_topic", "custom_topic_mode", "custom_intent", "custom_intent_mode",
        "mip_opt_out", "encoding", "sample_rate", "channels",
    }
)  # fmt: skip
#: Output formats that read ``results.utterances`` when Deepgram returns them.
CAPTION_FORMATS = frozenset({"srt", "vtt"})
#: The tag every dgbatch request carries, beside its run's own tag.
DGBATCH_TAG = "dgbatch"

#: Keys dgbatch cannot send: in callback mode Deepgram answers ``{"request_id"}`` and
#: delivers the transcript elsewhere, so every item would be paid for and none kept.
_CALLBACK_KEYS = frozenset({"callback", "callback_method"})
_CALLBACK_REASON = (
    "callback mode sends transcripts to the callback URL, not to dgbatch: every item "
    "would be paid for and none written (dgbatch writes each transcript itself)"
)
_KEY_RE = re.compile(r"[A-Za-z0-9_.\-\[\]]+")
_SCALAR_TYPES = (str, int, float)  # bool is an int
_SEQUENCE_TYPES = (list, tuple)
_BOOLEAN_SPELLINGS = {"True": "true", "False": "false", "TRUE": "true", "FALSE": "false"}


def deepgram_key(name: str) -> str:
    """A parameter's name as Deepgram spells it: one of its own in any case (``Language``
    from a CSV header, a JSONL line or ``--param``) is lowercase; any other is kept."""
    lowered = name.lower()
    return lowered if lowered != name and lowered in DEEPGRAM_PARAMS else name


def normalise_value(value: str) -> str:
    """Spell Python-style booleans (``True``) the way Deepgram parses them (``true``)."""
    return _BOOLEAN_SPELLINGS.get(value, value)


def parse_param(text: str) -> tuple[str, str]:
    """Split one ``--param KEY=VALUE``; an empty value means "remove this key".

    Raises:
        UsageError: no ``=``, or a key that cannot be a Deepgram parameter name.
    """
    key, sep, value = text.partition("=")
    key = deepgram_key(key.strip())
    if not sep:
        msg = f"--param {text!r}: expected KEY=VALUE"
        raise UsageError(msg)
    if not _KEY_RE.fullmatch(key):
        reason = "empty key" if not key else f"invalid key {key!r}"
        msg = f"--param {text!r}: {reason} (expected KEY=VALUE)"
        raise UsageError(msg)
    if _is_callback(key, value):
        raise UsageError(f"--param {key}: {_CALLBACK_REASON}")
    return key, normalise_value(value.strip())  # a CSV cell is stripped too


def _values_by_key(layer: Params) -> dict[str, list[str]]:
    """Group one layer's values per key, keeping first-seen key order."""
    grouped: dict[str, list[str]] = {}
    for key, value in layer:
        grouped.setdefault(key, []).append(value)
    return grouped


def merge_params(*layers: Params) -> Params:
    """Merge layers so that a later layer replaces all earlier values of each key it sets.

    A key keeps the position where it first appeared, so the encoded query is
    stable from item to item. Empty values are dropped; a layer whose only
    values for a key are empty removes the key (``--param smart_format=``).
    """
    merged: dict[str, list[str]] = {}
    for layer in layers:
        for key, values in _values_by_key(layer).items():
            kept = [value for value in values if value != ""]
            if kept:
                merged[key] = kept
            else:
                merged.pop(key, None)
    return tuple((key, value) for key, values in merged.items() for value in values)


def _scalar_text(key: str, value: object) -> str:
    """Render one JSON scalar as Deepgram expects it in a query string."""
    if isinstance(value, str):
        return normalise_value(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"param {key!r}: {value!r} is not a finite number"
            raise ValueError(msg)
        return repr(value)
    msg = f"param {key!r}: unsupported value of type {type(value).__name__}"
    raise ValueError(msg)


def _pairs_of(key: str, value: object) -> list[tuple[str, str]]:
    """Turn one mapping entry into its pairs (a list repeats the key)."""
    if isinstance(value, _SCALAR_TYPES):  # the common case first: one cheap check per value
        return [(key, _scalar_text(key, value))]
    if value is None:
        return []
    if isinstance(value, _SEQUENCE_TYPES):
        return [(key, _scalar_text(key, element)) for element in value if element is not None]
    if isinstance(value, Mapping):
        msg = f"param {key!r}: nested objects are not supported"
        raise ValueError(msg)
    return [(key, _scalar_text(key, value))]


@lru_cache(maxsize=1024)
def _is_valid_key(key: str) -> bool:
    """Validate a key once: a manifest repeats the same few keys on every line."""
    return _KEY_RE.fullmatch(key) is not None


def params_from_mapping(obj: Mapping[str, object]) -> Params:
    """Convert a manifest's ``params`` object into a params layer.

    ``None`` values are skipped; an empty string is kept so that it can remove a
    default when merged.

    Raises:
        ValueError: a nested object, a non-string key, a non-finite number or a
            callback; the message names the key, for the manifest's line error.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in obj.items():
        if not isinstance(key, str) or not _is_valid_key(key):
            msg = f"param {key!r}: invalid key"
            raise ValueError(msg)
        check_not_callback(key, value)
        pairs += _pairs_of(deepgram_key(key), value)
    return tuple(pairs)


def check_not_callback(key: str, value: object = "set") -> None:
    """Raise ``ValueError`` for a callback key with a value (an empty one removes it)."""
    if _is_callback(key, value):
        raise ValueError(f"param {key!r}: {_CALLBACK_REASON}")


def _is_callback(key: str, value: object) -> bool:
    """In any case: ``deepgram_key`` sends ``CALLBACK`` as ``callback``."""
    return key.lower() in _CALLBACK_KEYS and value not in ("", None)


@lru_cache(maxsize=1024)
def encode_query(params: Params) -> str:
    """Encode params as a query string, repeating keys and keeping their order (cached:
    every request of a run usually sends the same few param sets)."""
    return urlencode(list(params), doseq=True)


def run_tags(run_tag: str) -> Params:
    """The ``tag`` values of one run's requests: ``dgbatch`` and the run's own tag, so
    Deepgram's usage and request log can be filtered to the run (``dgbatch usage``)."""
    return (("tag", DGBATCH_TAG), ("tag", run_tag))


@lru_cache(maxsize=1024)
def request_params(
    defaults: Params,
    own: Params,
    *,
    formats: tuple[str, ...] = (),
    tags: Params = (),
) -> Params:
    """The query one request sends: ``defaults`` ← the item's ``own`` layer, plus what the
    run needs unless the user already set the key.

    - ``utterances=true`` when SRT/WebVTT are rendered (captions follow utterances);
      ``--param utterances=false`` keeps it off.
    - ``tags`` (``run_tags``) unless ``tag`` is set by ``--param`` or the manifest: the
      user's own tags then stand alone.

    Cached: it runs for every request, and a run's items share a few param sets.
    """
    merged = merge_params(defaults, own)
    keys = {key for key, _ in merged}
    extra: list[tuple[str, str]] = []
    if CAPTION_FORMATS.intersection(formats) and "utterances" not in keys:
        extra.append(("utterances", "true"))
    if "tag" not in keys:
        extra.extend(tags)
    return merged + tuple(extra)


def limited_features(params: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The features of a request's params that Deepgram holds to a lower concurrency: a
    Whisper model, and each Audio Intelligence feature turned on (any value but false);
    the last value of a key counts, as in the query Deepgram reads."""
    given = dict(params)
    features = tuple(
        name
        for name in FEATURE_CONCURRENCY
        if name != "whisper" and given.get(name, "false").lower() != "false"
    )
    return ("whisper", *features) if given.get("model", "").startswith("whisper") else features


def project_limit(params: Iterable[tuple[str, str]]) -> int:
    """How many requests with these params Deepgram takes at once."""
    return min([PROJECT_CONCURRENCY, *(FEATURE_CONCURRENCY[f] for f in limited_features(params))])
