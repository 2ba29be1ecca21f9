"""Caption and reading formats: SRT/WebVTT via deepgram-captions, Markdown with speakers."""

from __future__ import annotations

import itertools
import json
import math
import re
import wave
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli, make_silent_wav, make_wav, read_state_rows

from batch.captions import (
    EMPTY_SRT,
    EMPTY_VTT,
    is_empty_transcript,
    render_markdown,
    render_srt,
    render_vtt,
)
from batch.emulator import Emulator, build_response
from batch.formats import parse_formats, render_all

SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"
DIARIZED = [("diarize", "true"), ("utterances", "true"), ("smart_format", "true")]


def seconds(match: tuple[str, ...]) -> float:
    """``HH, MM, SS, mmm`` → seconds."""
    h, m, s, ms = map(int, match)
    return h * 3600 + m * 60 + s + ms / 1000


def diarized_response(silent: bool = False) -> dict[str, object]:
    """A two-speaker response of the emulator with utterances and paragraphs."""
    return build_response(
        request_id="r-1", sha256="ab" * 32, size=9000, duration=6.0, params=DIARIZED, silent=silent
    )


def cue_times(text: str, pattern: str) -> list[tuple[float, float]]:
    """Every ``start --> end`` of a caption document, in seconds."""
    found = re.findall(rf"{pattern} --> {pattern}", text)
    return [(seconds(m[:4]), seconds(m[4:])) for m in found]


def test_srt_is_well_formed_for_a_diarized_response() -> None:
    """SRT cues are numbered 1..n, timed in order, and mark each speaker change."""
    text = render_srt(diarized_response(), 2).decode()
    blocks = [b for b in text.strip().split("\n\n") if b]
    assert [int(b.splitlines()[0]) for b in blocks] == list(range(1, len(blocks) + 1))
    times = cue_times(text, SRT_TIME)
    assert len(times) == len(blocks) >= 3
    assert all(start <= end for start, end in times)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(times))
    assert "[speaker 0]" in text and "[speaker 1]" in text


def test_vtt_is_well_formed_for_a_diarized_response() -> None:
    """WebVTT starts with its signature, carries Deepgram's NOTE and voice-tagged ordered cues."""
    text = render_vtt(diarized_response()).decode()
    assert text.startswith("WEBVTT\n\nNOTE")
    times = cue_times(text, VTT_TIME)
    assert times and all(start <= end for start, end in times)
    assert times == sorted(times)
    assert "<v Speaker 0>" in text and "<v Speaker 1>" in text


Renderer = Callable[[dict[str, object], int | None], bytes]
CAPTIONS: list[tuple[Renderer, str]] = [(render_srt, SRT_TIME), (render_vtt, VTT_TIME)]


def stereo_response() -> dict[str, object]:
    """What the emulator answers for ``multichannel=true`` on a stereo call, diarized."""
    return build_response(
        request_id="r-2", sha256="ab" * 32, size=9000, duration=6.0, params=DIARIZED, channels=2
    )


@pytest.mark.parametrize(("render", "time_pattern"), CAPTIONS)
def test_multichannel_captions_follow_channel_zero(render: Renderer, time_pattern: str) -> None:
    """With several channels the cues are channel 0's utterances alone, one timeline
    without overlaps, rather than every channel's cues interleaved."""
    response = stereo_response()
    results = response["results"]
    assert isinstance(results, dict)
    text = render(response, 3).decode()
    times = cue_times(text, time_pattern)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(times))
    utterances = [u for u in results["utterances"] if u["channel"] == 0]
    assert len(times) == sum(math.ceil(len(u["words"]) / 3) for u in utterances) >= 2
    assert "on channel 1" not in text.lower()


@pytest.mark.parametrize(("render", "empty"), [(render_srt, EMPTY_SRT), (render_vtt, EMPTY_VTT)])
def test_multichannel_captions_of_a_silent_channel_zero_are_empty(
    render: Renderer, empty: bytes
) -> None:
    """Channel 0 silent and channel 1 talking: channel 0's captions are the empty document."""
    response = stereo_response()
    results = response["results"]
    assert isinstance(results, dict)
    results["channels"][0] = {"alternatives": [{"transcript": "", "words": []}]}
    results["utterances"] = [u for u in results["utterances"] if u["channel"] == 1]
    assert render(response, None) == empty


def test_caption_line_length_sets_words_per_cue() -> None:
    """``line_length`` caps the words of every cue."""
    text = render_srt(diarized_response(), 1).decode()
    cues = [b.splitlines()[-1] for b in text.strip().split("\n\n")]
    assert all(len(cue.split()) == 1 for cue in cues)


def test_empty_transcript_renders_empty_captions() -> None:
    """Silence gives a valid empty WebVTT and an empty SRT instead of an exception."""
    response = diarized_response(silent=True)
    assert is_empty_transcript(response)
    assert render_vtt(response) == EMPTY_VTT == b"WEBVTT\n\n"
    assert render_srt(response) == EMPTY_SRT == b""
    assert render_markdown(response) == b"\n"


def test_markdown_labels_speakers() -> None:
    """``md`` is one paragraph per speaker turn, labelled when Deepgram diarized."""
    text = render_markdown(diarized_response()).decode()
    assert text.startswith("**Speaker 0:** ") and "\n\n**Speaker 1:** " in text
    plain = build_response(request_id="r", sha256="cd" * 32, size=100, duration=1.0, params=[])
    assert render_markdown(plain).decode().strip() == "audio cdcdcdcdcdcdcdcd has 100 bytes"


def test_markdown_falls_back_to_speaker_turns_of_words() -> None:
    """Without paragraphs, words are grouped into labelled speaker turns."""
    response = build_response(
        request_id="r", sha256="ef" * 32, size=100, duration=1.0, params=[("diarize", "true")]
    )
    lines = render_markdown(response).decode().strip().split("\n\n")
    assert [line.split(":**")[0] for line in lines] == ["**Speaker 0", "**Speaker 1"]


def _words_answer(words: list[dict[str, object]], **results: object) -> dict[str, object]:
    """A transcript of ``words`` (diarized, no utterances unless given in ``results``)."""
    text = " ".join(str(w["word"]) for w in words)
    alternative = {"transcript": text, "confidence": 0.9, "words": words}
    return {
        "metadata": {"request_id": "r", "duration": 3.0, "channels": 1},
        "results": {"channels": [{"alternatives": [alternative]}], **results},
    }


_FIRST_BY_SPEAKER_1 = [
    {"word": "hello", "start": 0.0, "end": 0.5, "speaker": 1, "punctuated_word": "Hello"},
    {"word": "there", "start": 0.5, "end": 1.0, "speaker": 1, "punctuated_word": "there."},
    {"word": "hi", "start": 1.2, "end": 1.5, "speaker": 0, "punctuated_word": "Hi."},
]


@pytest.mark.parametrize(
    ("answer", "cues"),
    [
        # diarized without utterances, speaker 1 first: the captions came out empty
        (_words_answer(_FIRST_BY_SPEAKER_1), ["Hello there.", "Hi."]),
        # an utterance without words first
        (
            _words_answer(
                _FIRST_BY_SPEAKER_1,
                utterances=[
                    {"start": 0.0, "end": 0.0, "words": [], "transcript": ""},
                    {"start": 0.0, "end": 1.5, "words": _FIRST_BY_SPEAKER_1, "transcript": "x"},
                ],
            ),
            ["Hello there. Hi."],
        ),
    ],
)
def test_captions_are_not_emptied_by_an_empty_first_line(
    answer: dict[str, object], cues: list[str]
) -> None:
    """deepgram-captions starts a line at each change from speaker 0, and an utterance
    without words is a line too: a first empty line made it raise as for silence."""
    srt_text = render_srt(answer).decode()
    assert [line for line in srt_text.splitlines() if line in cues] == cues
    assert render_vtt(answer).decode().count(" --> ") == len(cues)


def test_markdown_takes_a_word_without_a_speaker_into_the_turn() -> None:
    """A word without ``speaker`` (a proxy's answer) was a KeyError: it goes on the turn."""
    words = [dict(w) for w in _FIRST_BY_SPEAKER_1]
    del words[1]["speaker"]
    text = render_markdown(_words_answer(words)).decode().strip()
    assert text == "**Speaker 1:** Hello there.\n\n**Speaker 0:** Hi."


def test_formats_accept_captions_and_markdown() -> None:
    """``srt``, ``vtt`` and ``md`` are known formats and render_all passes the line length."""
    assert parse_formats("json,srt,vtt,md") == ("json", "srt", "vtt", "md")
    files = render_all(("srt", "md"), b"{}", diarized_response(), line_length=3)
    assert set(files) == {"srt", "md"}
    with pytest.raises(ValueError, match="unknown format"):
        parse_formats("json,docx")


_KNOWN = "json, txt, srt, vtt, md"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("json,txt", ("json", "txt")),
        (" JSON , srt,json ", ("json", "srt")),
        ("md", ("md",)),
        ("", f"no format given; choose from {_KNOWN}"),
        (" , ,", f"no format given; choose from {_KNOWN}"),
        ("json,docx", f"unknown format(s) docx; known: {_KNOWN}"),
        ("doc,pdf", f"unknown format(s) doc, pdf; known: {_KNOWN}"),
    ],
)
def test_parse_formats_table(value: str, expected: tuple[str, ...] | str) -> None:
    """Names are trimmed, lowercased and deduplicated; none at all and unknown ones say why."""
    if isinstance(expected, tuple):
        assert parse_formats(value) == expected
        return
    with pytest.raises(ValueError) as caught:
        parse_formats(value)
    assert str(caught.value) == expected


def test_empty_formats_exit_2(dgbatch: Cli, tmp_path: Path) -> None:
    """``--formats ''`` is a usage error that says no format was given and lists the choices."""
    make_wav(tmp_path / "a.wav")
    result = dgbatch("run", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--formats", "")
    assert result.exit_code == 2, result.output
    assert f"Error: --formats: no format given; choose from {_KNOWN}\n" in result.output


def test_captions_run_side_by_side_and_flag_silence(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A run writes a.json a.srt a.vtt a.md side by side, asks for utterances, and keeps a
    silent file done with empty captions and an ``empty transcript`` warning."""
    make_wav(tmp_path / "in" / "talk.wav", 1.0)
    make_silent_wav(tmp_path / "in" / "quiet.wav")
    out = tmp_path / "out"
    result = dgbatch(
        "run", str(tmp_path / "in"), "--out", str(out), "--formats", "json,srt,vtt,md",
        "--param", "diarize=true", "--caption-line-length", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir() if p.is_file()} == {
        f"{stem}.{ext}" for stem in ("talk", "quiet") for ext in ("json", "srt", "vtt", "md")
    }
    assert all(("utterances", "true") in record.params for record in emulator.log)
    assert (out / "quiet.vtt").read_bytes() == b"WEBVTT\n\n"
    assert (out / "quiet.srt").read_bytes() == b""
    assert "<v Speaker 1>" in (out / "talk.vtt").read_text()
    rows = {Path(str(r["source"])).name: r for r in read_state_rows(out / ".dgbatch/state.sqlite")}
    assert rows["quiet.wav"]["status"] == "done"
    assert rows["quiet.wav"]["warning"] == "empty transcript"
    assert rows["talk.wav"]["warning"] is None
    assert "1 item(s) with a warning" in result.output
    assert (
        json.loads((out / "quiet.json").read_text())["results"]["channels"][0]["alternatives"][0][
            "transcript"
        ]
        == ""
    )


def test_a_multichannel_run_captions_channel_zero(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``run --param multichannel=true --param diarize=true`` on a stereo WAV writes SRT and
    WebVTT of channel 0 alone: cues that never overlap and none of channel 1's words."""
    source = tmp_path / "in" / "stereo.wav"
    source.parent.mkdir()
    with wave.open(str(source), "wb") as audio:
        audio.setnchannels(2)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x01\x02" * 2 * 8000)
    out = tmp_path / "out"
    result = dgbatch(
        "run", str(source), "--out", str(out), "--param", "multichannel=true",
        "--param", "diarize=true", "--formats", "json,srt,vtt", "--caption-line-length", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    channels = json.loads((out / "stereo.json").read_text())["results"]["channels"]
    assert "on channel 1" in channels[1]["alternatives"][0]["transcript"]
    for name, pattern in (("stereo.srt", SRT_TIME), ("stereo.vtt", VTT_TIME)):
        text = (out / name).read_text()
        times = cue_times(text, pattern)
        assert len(times) >= 2 and all(a[1] <= b[0] for a, b in itertools.pairwise(times))
        assert "on channel 1" not in text.lower() and "speaker 1" in text.lower()  # diarized


def test_vtt_cue_text_is_escaped() -> None:
    """``AT&T``, a ``<b>`` or a ``-->`` in a transcript were written raw into WebVTT cue
    text, where they are a character reference, a tag, or the end of the cue; SRT has no
    escaping and keeps them as they are."""
    words = [
        {"word": "at&t", "start": 0.0, "end": 0.5, "punctuated_word": "AT&T"},
        {"word": "<b>", "start": 0.5, "end": 1.0, "punctuated_word": "<b>"},
        {"word": "-->", "start": 1.0, "end": 1.5, "punctuated_word": "-->."},
    ]
    vtt_text = render_vtt(_words_answer(words)).decode()
    assert "AT&amp;T &lt;b&gt; --&gt;." in vtt_text
    assert vtt_text.count(" --> ") == 1  # the cue's timing line only
    assert "AT&T <b> -->." in render_srt(_words_answer(words)).decode()
