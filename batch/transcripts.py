"""What a 200 from Deepgram is: a transcript or not, and what it carries that dgbatch
keeps (the request id, the digest of the audio it transcribed). Pure: no I/O."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["Response", "audio_digest", "parse_transcript", "request_id_of", "transcript_request_id"]

#: a parsed answer
Response = dict[str, Any]

#: what a request id may look like (Deepgram's are UUIDs): anything else in that field (a
#: proxy echoing the ``Authorization`` header it refused) is not recorded
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id_of(value: object) -> str | None:
    """``value`` when it can be a request id, else None: the field is stored and shown as
    it is, so text that is not an id (a quoted header, a key) never gets there."""
    if isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value):
        return value
    return None


def transcript_request_id(response: Response) -> str | None:
    """The ``metadata.request_id`` of a transcript, when it can be one."""
    metadata = response.get("metadata")
    return request_id_of(metadata.get("request_id")) if isinstance(metadata, dict) else None


def parse_transcript(body: bytes) -> dict[str, Any] | None:
    """The parsed response when a 200 body is a Deepgram transcript (not truncated,
    not garbage, not a callback acknowledgement), else None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    results, metadata = data.get("results"), data.get("metadata")
    if isinstance(results, dict) and isinstance(metadata, dict):
        return data
    return None


def audio_digest(response: dict[str, Any] | None) -> str | None:
    """``metadata.sha256`` of an answer, lowercase: the digest of the bytes Deepgram was
    sent, which ties a json to the audio it transcribes."""
    metadata = (response or {}).get("metadata")
    digest = metadata.get("sha256") if isinstance(metadata, dict) else None
    return digest.lower() if isinstance(digest, str) and digest else None
