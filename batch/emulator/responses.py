"""The body of a successful ``/v1/listen``: Deepgram's shape, filled in from the audio.

The words are the transcript's, spread evenly over the audio's duration, and the flags that
change the shape (``punctuate``, ``paragraphs``, ``smart_format``, ``diarize``,
``utterances``, and ``multichannel`` through the channel count it is given) are honoured, so
what dgbatch writes from a response can be checked word by word. ``metadata.model_info``
names the model the request asked for.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batch.emulator.audio import transcript_for

_DIARIZE_SPLIT = 2  # with diarize, speaker 0 says the first two words, speaker 1 the rest
_DEFAULT_MODEL = "nova-3"
_MODEL_VERSION = "2025-01-20.1"
#: model families, longest first where one is a prefix of another (``nova-3`` before ``nova``)
_ARCHES = ("nova-3", "nova-2", "nova", "enhanced", "base", "whisper")
#: the tier a bare family name means (``model=whisper`` is Deepgram's medium Whisper)
_DEFAULT_TIERS = {"whisper": "medium"}
_MODEL_NAMESPACE = uuid.UUID("4d892fb6-7df8-4b94-8e9a-6a2e4c5b0f31")


@dataclass(frozen=True, slots=True)
class _Options:
    """The query flags that change the response's shape (``smart_format`` implies the others)."""

    punctuate: bool
    paragraphs: bool
    diarize: bool
    utterances: bool

    @classmethod
    def parse(cls, params: Sequence[tuple[str, str]]) -> _Options:
        """Read booleans the way Deepgram does: lowercase ``true`` is on, anything else off."""
        on = {key for key, value in params if value.lower() == "true"}
        paragraphs = bool(on & {"paragraphs", "smart_format"})
        diarize = "diarize" in on or any(key == "diarize_model" for key, _ in params)
        return cls(
            punctuate=paragraphs or "punctuate" in on,
            paragraphs=paragraphs,
            diarize=diarize,
            utterances="utterances" in on,
        )


def build_response(
    *,
    request_id: str,
    sha256: str,
    size: int,
    duration: float,
    params: Sequence[tuple[str, str]],
    silent: bool = False,
    channels: int = 1,
) -> dict[str, Any]:
    """A 200 body of Deepgram's shape whose transcript, words and digest come from the audio;
    ``silent`` audio gets what Deepgram answers for silence: an empty transcript, no words.
    ``channels`` > 1 (``multichannel`` on a multichannel upload) answers each channel apart."""
    opts = _Options.parse(params)
    entries: list[dict[str, Any]] = []
    utterances: list[dict[str, Any]] = []
    for channel in range(channels):
        transcript = "" if silent else transcript_for(sha256, size, channel)
        turns = _turns(transcript.split(), duration, opts) if transcript else []
        entries.append({"alternatives": [_alternative(transcript, turns, opts)]})
        utterances += [_utterance(turn, opts.diarize, channel) for turn in turns]
    results: dict[str, Any] = {"channels": entries}
    if opts.utterances:
        results["utterances"] = sorted(utterances, key=lambda u: float(u["start"]))
    metadata = _metadata(request_id, sha256, duration, params, channels)
    return {"metadata": metadata, "results": results}


def _alternative(
    transcript: str, turns: list[list[dict[str, Any]]], opts: _Options
) -> dict[str, Any]:
    """A channel's one alternative, with ``paragraphs`` when the flags ask for them."""
    alternative: dict[str, Any] = {
        "transcript": transcript,
        "confidence": 0.99,
        "words": [word for turn in turns for word in turn],
    }
    if opts.paragraphs:
        alternative["paragraphs"] = _paragraphs(turns, opts.diarize)
    return alternative


def _turns(tokens: list[str], duration: float, opts: _Options) -> list[list[dict[str, Any]]]:
    """Words spread evenly over the audio, grouped by speaker turn (one turn without diarize)."""
    step = duration / len(tokens)
    split = _DIARIZE_SPLIT if opts.diarize else len(tokens)
    bounds = [(0, split), (split, len(tokens))] if opts.diarize else [(0, len(tokens))]
    turns: list[list[dict[str, Any]]] = []
    for speaker, (low, high) in enumerate(bounds):
        turn = [_word(tokens[i], i, step) for i in range(low, high)]
        if opts.diarize:
            for word in turn:
                word.update(speaker=speaker, speaker_confidence=0.9)
        if opts.punctuate:
            _punctuate(turn)
        turns.append(turn)
    return turns


def _word(token: str, index: int, step: float) -> dict[str, Any]:
    """One entry of ``words``: lowercase, unpunctuated, with increasing start and end."""
    start, end = round(index * step, 4), round((index + 0.9) * step, 4)
    return {"word": token, "start": start, "end": end, "confidence": 0.99}


def _punctuate(turn: list[dict[str, Any]]) -> None:
    """Each turn reads as one sentence, as punctuate/smart_format would render it."""
    for word in turn:
        word["punctuated_word"] = word["word"]
    turn[0]["punctuated_word"] = turn[0]["word"].capitalize()
    turn[-1]["punctuated_word"] += "."


def _text(turn: list[dict[str, Any]]) -> str:
    """The turn as displayed text, preferring punctuated words like caption renderers do."""
    return " ".join(word.get("punctuated_word", word["word"]) for word in turn)


def _paragraphs(turns: list[list[dict[str, Any]]], diarize: bool) -> dict[str, Any]:
    """``alternatives[].paragraphs``: one paragraph of one sentence per turn."""
    items: list[dict[str, Any]] = []
    lines: list[str] = []
    for turn in turns:
        start, end, text = turn[0]["start"], turn[-1]["end"], _text(turn)
        item: dict[str, Any] = {"sentences": [{"text": text, "start": start, "end": end}]}
        if diarize:
            item["speaker"] = turn[0]["speaker"]
        item.update(num_words=len(turn), start=start, end=end)
        items.append(item)
        lines.append(f"Speaker {turn[0]['speaker']}: {text}" if diarize else text)
    if not lines:
        return {"transcript": "", "paragraphs": []}
    return {"transcript": "\n" + "\n\n".join(lines), "paragraphs": items}


def _utterance(turn: list[dict[str, Any]], diarize: bool, channel: int) -> dict[str, Any]:
    """One entry of ``results.utterances``."""
    utterance: dict[str, Any] = {
        "start": turn[0]["start"],
        "end": turn[-1]["end"],
        "confidence": 0.99,
        "channel": channel,
        "transcript": _text(turn),
        "words": turn,
    }
    if diarize:
        utterance["speaker"] = turn[0]["speaker"]
    utterance["id"] = str(uuid.uuid4())
    return utterance


def _metadata(
    request_id: str,
    sha256: str,
    duration: float,
    params: Sequence[tuple[str, str]],
    channels: int,
) -> dict[str, Any]:
    """``metadata`` with the fields the spec marks required, plus echoed ``tag``/``extra``."""
    created = _iso_time(time.time())
    model_uuid, name, arch = model_info(params)
    metadata: dict[str, Any] = {
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": created,
        "duration": duration,
        "channels": channels,
        "models": [model_uuid],
        "model_info": {model_uuid: {"name": name, "version": _MODEL_VERSION, "arch": arch}},
    }
    tags = [value for key, value in params if key == "tag"]
    if tags:
        metadata["tags"] = tags
    extra: dict[str, str] = {}
    for key, value in params:
        if key == "extra":
            name, _, text = value.partition(":")
            extra[name] = text
    if extra:
        metadata["extra"] = extra
    return metadata


def model_info(params: Sequence[tuple[str, str]]) -> tuple[str, str, str]:
    """``(uuid, name, arch)`` of the model a request's ``model=`` names (the last one wins),
    nova-3 when it names none, so a client that reads ``model_info`` sees what it asked for."""
    model = next((value for key, value in reversed(params) if key == "model"), "")
    return _model_info(model or _DEFAULT_MODEL)


@functools.lru_cache(maxsize=256)
def _model_info(model: str) -> tuple[str, str, str]:
    """``nova-2`` is ``general-nova-2`` of arch ``nova-2``, ``nova-2-phonecall`` is
    ``phonecall-nova-2``, ``whisper-large`` is ``large-whisper`` of arch ``whisper``; a
    custom model is its own name and arch. The uuid is stable per name, as Deepgram's are."""
    arch, tier = model, ""
    for family in _ARCHES:
        if model == family or model.startswith(f"{family}-"):
            arch, tier = family, model[len(family) + 1 :] or _DEFAULT_TIERS.get(family, "general")
            break
    name = f"{tier}-{arch}" if tier else model
    return str(uuid.uuid5(_MODEL_NAMESPACE, name)), name, arch


def _iso_time(epoch: float) -> str:
    """Deepgram's timestamps: UTC with milliseconds (``2026-11-27T19:37:05.123Z``)."""
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
