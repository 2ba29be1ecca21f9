"""Render a Deepgram response into the output formats (pure: no file I/O).

``json`` is the response body byte for byte as Deepgram returned it; everything
else is derived from the parsed response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batch.captions import render_markdown, render_srt, render_vtt
from batch.errors import ItemError

Response = dict[str, Any]
Renderer = Callable[[bytes, Response], bytes]

CONTENT_TYPES = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
}


def render_json(body: bytes, response: Response) -> bytes:
    """The body exactly as received: no re-serialisation, nothing lost."""
    return body


def channel_texts(response: Response) -> list[str]:
    """Each channel's best transcript, as paragraphs when Deepgram returned them."""
    texts = []
    for channel in response.get("results", {}).get("channels", []) or []:
        alternatives = channel.get("alternatives") or [{}]
        best = alternatives[0]
        paragraphs = best.get("paragraphs")
        if isinstance(paragraphs, dict) and paragraphs.get("transcript"):
            texts.append(str(paragraphs["transcript"]).strip())
        else:
            texts.append(str(best.get("transcript") or "").strip())
    return texts


def render_txt(body: bytes, response: Response) -> bytes:
    """Plain text: one block per channel, labelled when there is more than one."""
    texts = channel_texts(response)
    if len(texts) > 1:
        texts = [f"Channel {n}:\n{text}" for n, text in enumerate(texts)]
    return ("\n\n".join(texts) + "\n").encode()


CaptionRenderer = Callable[[Response, int | None], bytes]

#: Formats whose cue length ``--caption-line-length`` sets (words per cue).
CAPTION_RENDERERS: dict[str, CaptionRenderer] = {"srt": render_srt, "vtt": render_vtt}

RENDERERS: dict[str, Renderer] = {
    "json": render_json,
    "txt": render_txt,
    "srt": lambda body, response: render_srt(response),
    "vtt": lambda body, response: render_vtt(response),
    "md": lambda body, response: render_markdown(response),
}


def parse_formats(value: str) -> tuple[str, ...]:
    """``json,txt`` → ('json', 'txt'); unknown names raise ValueError naming them.

    An empty list is refused too, with its own reason: there would be nothing to
    write, and "unknown format(s) (none)" would not say what went wrong.
    """
    names = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    known = ", ".join(RENDERERS)
    if not names:
        raise ValueError(f"no format given; choose from {known}")
    unknown = [name for name in names if name not in RENDERERS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; known: {known}")
    return names


def render_all(
    formats: tuple[str, ...],
    body: bytes,
    response: Response,
    *,
    line_length: int | None = None,
    source: str = "the item",
) -> dict[str, bytes]:
    """Every requested format, rendered; captions with ``line_length`` words per cue.

    Raises:
        ItemError: an answer of a shape the format cannot be made from (a proxy's, or a
            field of another type): the item fails naming the format, not as a bug.
    """
    files = {}
    for fmt in formats:
        try:
            if fmt in CAPTION_RENDERERS:
                files[fmt] = CAPTION_RENDERERS[fmt](response, line_length)
            else:
                files[fmt] = RENDERERS[fmt](body, response)
        except (LookupError, TypeError, ValueError, AttributeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:200]
            msg = (
                f"{source}: cannot render {fmt} from Deepgram's answer, not of the usual "
                f"shape ({reason})"
            )
            raise ItemError(msg, code="unrenderable") from exc
    return files
