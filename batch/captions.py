"""Caption and reading formats rendered from a Deepgram response (pure: no file I/O).

SRT and WebVTT come from the official ``deepgram-captions`` package, which uses
``results.utterances`` when present, else channel 0's words (a new cue on every speaker
change). With several channels (``multichannel=true``) the utterances of every channel
share one timeline, so captions are rendered from channel 0 alone (its utterances, else
its words): one track of cues that never overlap. The package raises on an empty
transcript (silence), which must not fail an item, so an empty transcript renders as an
empty but valid document instead. ``md`` is readable text with ``**Speaker N:**`` labels
taken from the paragraphs (diarize=true), one section per channel.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from deepgram_captions import (
    ConverterException,
    DeepgramConverter,
    EmptyTranscriptException,
    srt,
    webvtt,
)

Response = dict[str, Any]

#: The smallest valid WebVTT file: the signature and a blank line.
EMPTY_VTT = b"WEBVTT\n\n"
#: SRT has no header: zero cues is an empty file.
EMPTY_SRT = b""


def _alternatives(response: Response) -> list[dict[str, Any]]:
    """Each channel's best alternative (an empty dict for a channel without any)."""
    channels = (response.get("results") or {}).get("channels") or []
    return [(channel.get("alternatives") or [{}])[0] for channel in channels]


def is_empty_transcript(response: Response) -> bool:
    """True when no channel and no utterance has any text: silence, or nothing recognised."""
    if any(str(alt.get("transcript") or "").strip() for alt in _alternatives(response)):
        return False
    utterances = (response.get("results") or {}).get("utterances") or []
    return not any(str(u.get("transcript") or "").strip() for u in utterances)


def _channel_zero(response: Response) -> Response:
    """The response as channel 0 alone when it has several channels (unchanged otherwise).

    Each channel's utterances carry their ``channel``, and deepgram-captions would cue
    them all on one timeline: two speakers on two lines of a call, overlapping. One
    caption track follows one channel, as the words fallback already does.
    """
    results = response.get("results") or {}
    channels = results.get("channels") or []
    if len(channels) < 2:
        return response
    alone: dict[str, Any] = {**results, "channels": channels[:1]}
    if "utterances" in results:
        utterances = results["utterances"] or []
        alone["utterances"] = [u for u in utterances if u.get("channel", 0) == 0]
    return {**response, "results": alone}


def _captions(
    writer: Callable[[DeepgramConverter, int | None], str],
    empty: bytes,
    response: Response,
    line_length: int | None,
    converter: type[DeepgramConverter] | None = None,
) -> bytes:
    """Run a deepgram-captions writer on channel 0, answering ``empty`` where it would
    raise (channel 0 silent counts as empty, whatever the other channels hold)."""
    response = _channel_zero(response)
    if is_empty_transcript(response):
        return empty
    try:
        return writer((converter or _Converter)(response), line_length).encode()
    except (ConverterException, EmptyTranscriptException):
        return empty


class _Converter(DeepgramConverter):
    """deepgram-captions' converter without its empty lines. It starts a new line at each
    change of speaker from speaker 0, so words whose first speaker is 1 (diarized, without
    utterances) begin with an empty line, and an utterance without words is one: a first
    empty line makes ``srt`` and ``webvtt`` raise as for silence, and the item's captions
    came out empty."""

    def get_lines(self, line_length: int = 8) -> list[list[dict[str, Any]]]:
        return [line for line in super().get_lines(line_length) if line] or [[]]


class _VttConverter(_Converter):
    """Cue text escaped as WebVTT requires: ``AT&T`` or a ``<b>`` in a transcript is a
    character reference or a tag to a player, and ``-->`` in one ends the cue text."""

    def get_lines(self, line_length: int = 8) -> list[list[dict[str, Any]]]:
        return [[_escaped(word) for word in line] for line in super().get_lines(line_length)]


def _escaped(word: dict[str, Any]) -> dict[str, Any]:
    """``word`` with its texts escaped (a copy; most words need nothing)."""
    changed = {}
    for key in ("word", "punctuated_word"):
        text = word.get(key)
        if isinstance(text, str) and any(c in text for c in "&<>"):
            changed[key] = html.escape(text, quote=False)
    return {**word, **changed} if changed else word


def render_vtt(response: Response, line_length: int | None = None) -> bytes:
    """WebVTT with Deepgram's NOTE header; ``EMPTY_VTT`` for an empty transcript."""
    return _captions(webvtt, EMPTY_VTT, response, line_length, _VttConverter)


def render_srt(response: Response, line_length: int | None = None) -> bytes:
    """Numbered SRT cues; ``EMPTY_SRT`` for an empty transcript."""
    return _captions(srt, EMPTY_SRT, response, line_length)


def _paragraph_lines(alternative: dict[str, Any]) -> list[str]:
    """One line per paragraph, labelled with its speaker when Deepgram diarized."""
    paragraphs = (alternative.get("paragraphs") or {}).get("paragraphs") or []
    lines = []
    for paragraph in paragraphs:
        text = " ".join(str(s.get("text", "")) for s in paragraph.get("sentences") or [])
        speaker = paragraph.get("speaker")
        lines.append(f"**Speaker {speaker}:** {text}" if speaker is not None else text)
    return lines


def _speaker_turn_lines(alternative: dict[str, Any]) -> list[str]:
    """Without paragraphs: words grouped into speaker turns (or the plain transcript)."""
    words = alternative.get("words") or []
    if not words or "speaker" not in words[0]:
        text = str(alternative.get("transcript") or "").strip()
        return [text] if text else []
    lines: list[str] = []
    end = object()  # after the last word: a turn of its own, never a speaker
    speaker, turn = words[0]["speaker"], list[str]()
    for word in [*words, {"speaker": end}]:
        said_by = word.get("speaker", speaker)  # a word without one (a proxy's) goes on
        if said_by != speaker:
            lines.append(f"**Speaker {speaker}:** {' '.join(turn)}")
            speaker, turn = said_by, []
        turn.append(str(word.get("punctuated_word") or word.get("word", "")))
    return lines


def render_markdown(response: Response) -> bytes:
    """Paragraphs with speaker labels, one section per channel when there are several."""
    sections = []
    alternatives = _alternatives(response)
    for number, alternative in enumerate(alternatives):
        lines = _paragraph_lines(alternative) or _speaker_turn_lines(alternative)
        body = "\n\n".join(lines)
        sections.append(f"## Channel {number}\n\n{body}" if len(alternatives) > 1 else body)
    return ("\n\n".join(sections).strip() + "\n").encode()
