"""Output names from item names: deterministic, collision-free, never outside ``--out`` (pure).

An item's name comes from places we do not control: a manifest ``id``, a URL
path, an S3 key, a file name on someone's disk. It is turned into a relative
POSIX path that is safe on every filesystem we write to (local disk or an S3
prefix), so the same item always lands at the same place and no name can climb
out of the output directory.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "AUDIO_EXTENSIONS",
    "CONTENT_TYPES",
    "content_type_for",
    "disambiguate",
    "folder_prefix",
    "is_s3_uri",
    "name_variants",
    "output_location",
    "output_place_problem",
    "output_relpath",
    "output_root",
    "resolve_inside",
    "safe_name",
    "split_s3_uri",
    "stem_of",
]

#: Extensions (lowercase, with the dot) a folder walk takes as audio: Deepgram's
#: listed containers plus common video containers whose audio track it reads.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp3", ".mp4", ".mp2", ".aac", ".wav", ".flac", ".pcm", ".m4a", ".ogg",
        ".opus", ".webm", ".wma", ".aiff", ".aif", ".amr", ".3gp", ".mka", ".mkv",
        ".mov", ".avi", ".m4v", ".caf", ".spx", ".ac3", ".mpga", ".mpeg", ".oga",
        ".weba", ".wave", ".m4b", ".3g2", ".au", ".snd", ".mulaw", ".alaw",
    }
)  # fmt: skip

#: ``Content-Type`` for a streamed upload. Deepgram sniffs the container anyway,
#: so the fallback ``application/octet-stream`` is safe for anything unknown.
CONTENT_TYPES: dict[str, str] = {
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".mp3": "audio/mpeg",
    ".mp2": "audio/mpeg",
    ".mpga": "audio/mpeg",
    ".mpeg": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/opus",
    ".spx": "audio/ogg",
    ".webm": "audio/webm",
    ".weba": "audio/webm",
    ".m4a": "audio/mp4",
    ".m4b": "audio/mp4",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".aac": "audio/aac",
    ".ac3": "audio/ac3",
    ".wma": "audio/x-ms-wma",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".amr": "audio/amr",
    ".3gp": "audio/3gpp",
    ".3g2": "audio/3gpp2",
    ".mka": "audio/x-matroska",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".caf": "audio/x-caf",
    ".au": "audio/basic",
    ".snd": "audio/basic",
    ".pcm": "application/octet-stream",
}

_FALLBACK_NAME = "item"
_MAX_SEGMENT_BYTES = 200
_MAX_KEPT_EXT_BYTES = 16
_SEPARATORS_RE = re.compile(r"[/\\]+")
_ASCII_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._ -")
# A name ``safe_name`` would return unchanged: ASCII-safe segments of 1-200 characters
# that do not start with a dot or a space nor end with a space. Most names are like
# this, and matching them is the per-item cost of planning a million items.
_ALREADY_SAFE_RE = re.compile(
    r"[A-Za-z0-9_\-](?:[A-Za-z0-9._ \-]{0,198}[A-Za-z0-9._\-])?"
    r"(?:/[A-Za-z0-9_\-](?:[A-Za-z0-9._ \-]{0,198}[A-Za-z0-9._\-])?)*"
)


def content_type_for(path: str) -> str:
    """Pick the upload's ``Content-Type`` from the extension (case-insensitive)."""
    return CONTENT_TYPES.get(posixpath.splitext(path.lower())[1], "application/octet-stream")


def _safe_char(char: str) -> str:
    """Keep ASCII-safe characters and unicode letters/digits; anything else becomes ``_``."""
    return char if char in _ASCII_SAFE or char.isalnum() else "_"


def _cap_segment(segment: str) -> str:
    """Cut a segment to the byte cap, keeping its extension and a hash of the whole.

    The hash keeps two long names that share their first 200 bytes apart.
    """
    encoded = segment.encode("utf-8")
    if len(encoded) <= _MAX_SEGMENT_BYTES:
        return segment
    stem, ext = posixpath.splitext(segment)
    if len(ext.encode("utf-8")) > _MAX_KEPT_EXT_BYTES:
        stem, ext = segment, ""
    digest = hashlib.sha1(encoded).hexdigest()[:8]
    budget = _MAX_SEGMENT_BYTES - len(ext.encode("utf-8")) - len(digest) - 1
    head = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return f"{head}-{digest}{ext}"


def _clean_segment(segment: str) -> str:
    """Sanitise one path segment; an empty result means "drop it"."""
    if segment in (".", ".."):
        return ""
    cleaned = "".join(_safe_char(char) for char in segment)
    cleaned = cleaned.lstrip(". ").rstrip(" ")
    return _cap_segment(cleaned) if cleaned else ""


def safe_name(name: str) -> str:
    """Turn any item name into a relative POSIX path that stays under its root.

    ``..``, ``.`` and empty segments vanish (``../../etc/passwd`` → ``etc/passwd``),
    leading dots are stripped so nothing is hidden, characters a filesystem or a
    shell could trip on become ``_``, segments are capped at 200 bytes, and an
    empty result becomes ``item``. Text is NFC-normalised first so that the
    same name typed on macOS (NFD) and Linux lands on one path.
    """
    if _ALREADY_SAFE_RE.fullmatch(name):
        return name
    normalised = unicodedata.normalize("NFC", name)
    segments = (_clean_segment(part) for part in _SEPARATORS_RE.split(normalised))
    return "/".join(segment for segment in segments if segment) or _FALLBACK_NAME


def name_variants(name: str) -> tuple[str, str]:
    """Return ``(stem, stem_with_ext)`` of a safe name, the two output-name candidates.

    Outputs normally drop the audio extension (``a.wav`` → ``a.json``); when two
    items share a stem (``a.wav``, ``a.mp3``) the runner falls back to keeping it.
    """
    return stem_of(name), name


def stem_of(name: str) -> str:
    """``posixpath.splitext(name)[0]`` for a ``str``, at a fraction of its cost: it runs
    once per planned item. Leading dots of the last segment are not an extension."""
    dot = name.rfind(".")
    start = name.rfind("/") + 1
    if dot <= start:
        return name
    if name[start] != "." or name[start:dot].lstrip("."):
        return name[:dot]
    return name


def id_stem(name: str) -> str:
    """The stem of a name a manifest ``id`` gave: an id is no file name, so only an audio
    extension is dropped (``call.wav`` → ``call``); ``interview.2026-01-05`` or
    ``Dr. Smith`` stay whole, where ``stem_of`` made them ``interview`` and ``Dr``."""
    stem = stem_of(name)
    return stem if name[len(stem) :].lower() in AUDIO_EXTENSIONS else name


def name_root(name: str) -> str:
    """The start of every output name a safe name can take: its folders and its last
    segment up to the first dot (``calls/a`` for ``calls/a.wav.flac``). Items whose outputs
    could meet (``a.wav`` and ``a.mp3`` both wanting ``a.json``) share it."""
    start = name.rfind("/") + 1
    dot = name.find(".", start)
    return name if dot < 0 else name[:dot]


def disambiguate(stem_with_ext: str, item_id: str) -> str:
    """Make a last-resort unique name from the item's stable id."""
    digest = hashlib.sha1(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem_with_ext}-{digest}"


def output_relpath(out_name: str, fmt: str) -> str:
    """Name the output file of one format (``day1/a`` + ``json`` → ``day1/a.json``)."""
    return f"{out_name}.{fmt}"


def is_s3_uri(text: str) -> bool:
    """Tell ``s3://...`` from anything else (case-insensitive scheme)."""
    return text[:5].lower() == "s3://"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``, the key taken literally; ``uri`` is one
    (``is_s3_uri``), checked by the caller (``s3.parse_s3_uri`` refuses one without a
    bucket)."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def folder_prefix(prefix: str) -> str:
    """An S3 key prefix as a folder: empty, or ending in one ``/``."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


#: Linux's PATH_MAX, its terminating NUL included: a longer path cannot be opened
PATH_MAX = 4096
#: what a temporary output adds to its output's path (``.NAME.XXXXXXXX.tmp``)
TEMP_EXTRA = len("..12345678.tmp")
#: S3's longest object key, in UTF-8 bytes
S3_KEY_MAX = 1024


def output_root(out: str) -> str:
    """Where an ``--out``'s outputs are written: an S3 one as given, a local one resolved
    (its links followed, as ``resolve_inside`` does: a link to a longer path makes every
    output's path longer)."""
    return out if is_s3_uri(out) else os.path.realpath(out)


def output_place_problem(out_root: str, out_name: str, formats: Iterable[str]) -> str | None:
    """Why an item's outputs could never be written (a path or an S3 key too long), or
    None. Asked before sending: the answer would be paid for, then kept unwritten.

    Args:
        out_root: ``output_root`` of the ``--out``.
    """
    relpath = output_relpath(out_name, max(formats, key=len))
    if is_s3_uri(out_root):
        key = folder_prefix(split_s3_uri(out_root)[1]) + relpath
        size, most, what = len(key.encode("utf-8", "surrogateescape")), S3_KEY_MAX, "S3 key"
    else:
        path = f"{out_root.rstrip('/')}/{relpath}"
        size, most = len(os.fsencode(path)) + TEMP_EXTRA + 1, PATH_MAX
        what = "path"
    if size <= most:
        return None
    reason = f"output {what} too long ({size} bytes, at most {most})"
    return f"{output_location(out_root, relpath)}: {reason}"


def output_location(out: str, relpath: str) -> str:
    """Say where a run writes an output, as its summaries show it (dry run, report).

    An ``s3://`` ``--out`` is joined as text, the way the S3 sink builds its keys:
    a ``Path`` would fold ``s3://`` into ``s3:/``.
    """
    if not is_s3_uri(out):
        return str(Path(out) / relpath)
    bucket, prefix = split_s3_uri(out)
    return f"s3://{bucket}/{folder_prefix(prefix)}{relpath}"


def resolve_inside(root: Path, relpath: str) -> Path:
    """Join ``relpath`` under ``root`` and prove the result is strictly inside it.

    ``safe_name`` already guarantees this; the check is a second line of defence
    against a future caller or a symlink inside the output folder.

    Raises:
        ValueError: the resolved path is ``root`` itself or lies outside it, or a symlink
            loop under ``root`` leaves it nowhere (Python 3.11 raises ``RuntimeError`` for
            that, 3.13 ``OSError``: one bad link stopped every run).
    """
    try:
        base = root.resolve()
        target = (base / relpath).resolve()
    except (RuntimeError, OSError) as exc:
        msg = f"output path {relpath!r} cannot be resolved under {str(root)!r} ({exc})"
        raise ValueError(msg) from None
    if target == base or not target.is_relative_to(base):
        msg = f"output path {relpath!r} escapes the output folder {str(root)!r}"
        raise ValueError(msg)
    return target
