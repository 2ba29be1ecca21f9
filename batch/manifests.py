"""Read manifests (txt, jsonl, csv) line by line into Items.

A manifest can have millions of lines and some of them will be wrong. So files
are streamed (one line in memory at a time), read as bytes and decoded per
line (a bad byte sequence spoils only its own line), and every broken line
becomes a failed Item whose message names ``file:line`` and the reason, while
the lines after it carry on. Only a manifest that cannot be read at all raises.

Formats, chosen by suffix (anything unknown is read as ``.txt``):
- ``.txt``/``.list``: one source per line; blank lines and ``#`` lines skipped.
- ``.jsonl``/``.ndjson``: ``{"source": ..., "id": "...", "params": {...}}``.
- ``.csv``: a header with ``source``, optional ``id``; other columns are params.

How a JSONL or CSV line becomes an entry is :mod:`batch.manifest_lines`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from batch.errors import SourceError
from batch.itembuild import S3Expander, build_item
from batch.manifest_lines import (
    Entry,
    LineError,
    Parser,
    UnusableManifest,
    parser_for,
    reads_header,
    records,
)
from batch.models import Filters, Item, ItemKind
from batch.redact import redact_text

__all__ = [
    "MAX_LINE_BYTES",
    "SeenIds",
    "iter_lines_manifest",
    "iter_manifest",
    "iter_manifest_stream",
]

#: Longer lines are failed items: no real source is this long, and the cap
#: bounds the memory one line can take.
MAX_LINE_BYTES = 64 * 1024

_PREVIEW_CHARS = 200
# Bigger than the default 8 KiB: fewer read() calls, measurably faster per line.
_READ_BUFFER_BYTES = 256 * 1024
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class SeenIds:
    """The explicit ids of one run, shared by every manifest the run reads.

    An id keys its item's state row (``id:<id>``), so a second line using it,
    in the same manifest or in another one, would silently take over the first
    line's row and its recording would never be sent: it fails instead, naming
    both lines. One entry per id, as a per-manifest set already held: each
    remembers where it was first used as one int (manifest number in the high
    bits, line number in the low ones), the cost of a bare line number.
    """

    __slots__ = ("_first", "_labels")

    #: bits of a line number inside a packed position (a trillion lines)
    _LINE_BITS = 40

    def __init__(self) -> None:
        self._first: dict[str, int] = {}
        self._labels: list[str] = []

    def add_manifest(self, label: str) -> int:
        """Register a manifest by its label in messages; return its number for :meth:`claim`."""
        self._labels.append(label)
        return len(self._labels) - 1

    def claim(self, item_id: str, manifest: int, lineno: int) -> str | None:
        """Remember an id's first use; for a later use, say where the first one was."""
        position = manifest << self._LINE_BITS | lineno
        first = self._first.setdefault(item_id, position)
        if first == position:
            return None
        first_manifest, first_line = divmod(first, 1 << self._LINE_BITS)
        if first_manifest == manifest:
            return f"line {first_line}"
        return f"{self._labels[first_manifest]}:{first_line}"


_Raw = TypeVar("_Raw", bytes, str)


class LineStream(Protocol):
    """What a manifest is read from: a file, stdin's buffer, or stdin read so that a stop
    is noticed (``batch.pipes``)."""

    def readline(self, limit: int = -1, /) -> bytes:
        """The next line, at most ``limit`` bytes of it; ``b""`` at the end."""
        ...


def _preview(raw: bytes | str) -> str:
    """Show a broken line safely: decoded leniently, redacted, one line, truncated."""
    if isinstance(raw, str):  # a text stdin may hand us surrogate escapes
        raw = raw.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "backslashreplace")
    # Redact before truncating: a cut through "user:pass@" would hide the "@".
    text = _CONTROL_RE.sub("?", redact_text(text.strip()))
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"


def _reject_utf16(first_line: bytes) -> None:
    """Refuse a UTF-16 manifest (Notepad's "Unicode") whole: every line would be garbage."""
    if first_line[:2] in _UTF16_BOMS:
        msg = "manifest is UTF-16; save it as UTF-8"
        raise UnusableManifest(msg)


def _decode_bytes(raw: bytes, lineno: int) -> str:
    """Decode one line read from a file (newline removed) or say why it cannot be used."""
    raw = raw.rstrip(b"\r\n")
    if lineno == 1:
        _reject_utf16(raw)
        raw = raw.removeprefix(codecs.BOM_UTF8)
    if len(raw) > MAX_LINE_BYTES:
        raise LineError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"invalid UTF-8 at byte offset {exc.start}") from None
    if "\x00" in text:
        raise LineError("NUL character in line")
    return text


def _decode_str(raw: str, lineno: int) -> str:
    """Check one already-decoded line the way :func:`_decode_bytes` checks bytes."""
    text = raw.rstrip("\r\n")
    if lineno == 1:
        text = text.removeprefix("\ufeff")
    # Only long lines pay for encoding: 4 bytes per character at most.
    if len(text) > MAX_LINE_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_LINE_BYTES:
        raise LineError(f"line longer than {MAX_LINE_BYTES} bytes")
    if "\x00" in text:
        raise LineError("NUL character in line")
    return text


def _raw_lines(stream: LineStream) -> Iterator[tuple[int, bytes]]:
    """Yield ``(lineno, line)`` with each line cut at the size cap.

    A longer line comes back as its first ``MAX_LINE_BYTES + 1`` bytes (enough to
    flag it and show a preview) and the rest of it is skipped in chunks, so one
    runaway line never has to fit in memory.
    """
    readline = stream.readline
    limit = MAX_LINE_BYTES + 3  # room for "\r\n" after a line of exactly the cap
    lineno = 0
    while raw := readline(limit):
        lineno += 1
        if len(raw) == limit and not raw.endswith(b"\n"):
            while (rest := readline(limit)) and not rest.endswith(b"\n"):
                pass
        yield lineno, raw


@dataclass(slots=True)
class _Reader(Generic[_Raw]):
    """Turns the numbered lines of one manifest into Items."""

    label: str
    id_prefix: str
    base: Path
    decode: Callable[[_Raw, int], str]
    parse: Parser | None
    s3: S3Expander | None
    filters: Filters
    seen_ids: SeenIds = field(default_factory=SeenIds)
    manifest: int = 0

    def share_ids(self, seen_ids: SeenIds | None) -> None:
        """Check explicit ids against the run's (a fresh set when None), as manifest N of it."""
        if seen_ids is not None:
            self.seen_ids = seen_ids
        self.manifest = self.seen_ids.add_manifest(self.label)

    def items(self, lines: Iterable[tuple[int, _Raw]]) -> Iterator[Item]:
        """Yield each line's Items; a broken line yields one failed Item."""
        if self.parse is None:
            return self._plain_items(lines)
        return self._parsed_items(lines, self.parse)

    def _plain_items(self, lines: Iterable[tuple[int, _Raw]]) -> Iterator[Item]:
        """Read one source per line; blank and ``#`` lines are skipped.

        Plain lists are the million-line case (a bucket listing, a URL dump), so
        this loop is kept flat: no entry tuple and no parser call per line.
        """
        decode, base, label = self.decode, self.base, self.label
        for lineno, raw in lines:
            try:
                source = decode(raw, lineno).strip()
            except LineError as exc:
                yield self._line_error(lineno, str(exc), raw)
                continue
            if not source or source[0] == "#":
                continue
            if source.startswith(("s3://", "S3://")):
                yield from self._s3_items(Entry(source), lineno)
            else:
                yield build_item(source, base, None, (), f"{label}:{lineno}")

    def _parsed_items(self, lines: Iterable[tuple[int, _Raw]], parse: Parser) -> Iterator[Item]:
        """Read structured lines (JSONL, CSV) through their parser."""
        decode, items_for = self.decode, self._items_for
        for lineno, raw in records(parse, lines):
            try:
                entry = parse(decode(raw, lineno))
                if entry is None:
                    continue
                found = items_for(entry, lineno)
            except LineError as exc:
                if reads_header(parse):
                    raise UnusableManifest(f"line {lineno}, the CSV header: {exc}") from None
                found = self._line_error(lineno, str(exc), raw)
            if isinstance(found, Item):
                yield found
            else:
                yield from found

    def _line_error(self, lineno: int, reason: str, raw: bytes | str) -> Item:
        """Build the failed Item of a broken line, with an id stable across runs."""
        origin = f"{self.label}:{lineno}"
        return Item(
            id=f"{self.id_prefix}:{lineno}",
            source=_preview(raw),
            kind=ItemKind.FILE,
            name=origin,
            error=f"{origin}: {reason}",
            origin=origin,
        )

    def _claim_id(self, item_id: str, lineno: int) -> None:
        """Remember an explicit id; a second use of it in the run is an error on that line."""
        first = self.seen_ids.claim(item_id, self.manifest, lineno)
        if first is not None:
            raise LineError(f"duplicate id {item_id!r} (first at {first})")

    def _items_for(self, entry: Entry, lineno: int) -> Item | Iterator[Item]:
        """Build the Items of one valid entry (several for an S3 prefix)."""
        source, item_id, params = entry
        if item_id is not None:
            self._claim_id(item_id, lineno)
        if source.startswith(("s3://", "S3://")):
            return self._s3_items(entry, lineno)
        return build_item(source, self.base, item_id, params, f"{self.label}:{lineno}")

    def _s3_items(self, entry: Entry, lineno: int) -> Iterator[Item]:
        """Expand an ``s3://`` line through the S3 hook, applying the line's id and params.

        With an id, a single object takes it as is; the objects of a prefix get
        ``<id>/<name>`` so they stay distinct. A failing listing fails the line.
        """
        origin = f"{self.label}:{lineno}"
        if self.s3 is None:
            yield self._entry_error(entry, lineno, "S3 support is not configured")
            return
        try:
            found = self.s3(entry.source, self.filters)
            first = next(found, None)
            second = next(found, None)
            single = second is None
            for item in _chain(first, second, found):
                yield _adopt(item, entry, origin, single=single)
        except SourceError as exc:
            yield self._entry_error(entry, lineno, str(exc))

    def _entry_error(self, entry: Entry, lineno: int, reason: str) -> Item:
        """Fail a well-formed entry that cannot be expanded."""
        origin = f"{self.label}:{lineno}"
        return Item(
            id=f"id:{entry.id}" if entry.id is not None else f"{self.id_prefix}:{lineno}",
            source=redact_text(entry.source),
            kind=ItemKind.S3,
            name=entry.id or origin,
            params=entry.params,
            error=f"{origin}: {redact_text(reason)}",
            origin=origin,
        )


def _chain(first: Item | None, second: Item | None, rest: Iterator[Item]) -> Iterator[Item]:
    """Put back the two items looked ahead at."""
    if first is not None:
        yield first
    if second is not None:
        yield second
        yield from rest


def _adopt(item: Item, entry: Entry, origin: str, *, single: bool) -> Item:
    """Give an S3 item the manifest line's id, params and origin."""
    params = (*item.params, *entry.params)
    if entry.id is None:
        return replace(item, params=params, origin=origin)
    name = entry.id if single else f"{entry.id}/{item.name}"
    return replace(item, id=f"id:{name}", name=name, params=params, origin=origin)


def iter_manifest_stream(
    stream: LineStream,
    *,
    base: Path,
    origin: str,
    fmt: str = "txt",
    id_prefix: str | None = None,
    s3: S3Expander | None = None,
    filters: Filters | None = None,
    seen_ids: SeenIds | None = None,
) -> Iterator[Item]:
    """Yield the Items of a manifest read from a binary stream (a file, stdin's buffer).

    Args:
        stream: read line by line, never whole.
        base: folder relative paths are resolved against.
        origin: the manifest's label in messages (``urls.txt``, ``<stdin>``).
        fmt: ``txt``, ``jsonl`` or ``csv``.
        id_prefix: prefix of broken lines' ids (``<prefix>:<lineno>``); ``origin``
            when None.
        s3: expands ``s3://`` lines; without it they are failed items.
        filters: applied to S3 prefixes named by the manifest.
        seen_ids: the explicit ids of the run so far, shared by all its
            manifests; a fresh set when None.

    Raises:
        SourceError: the manifest is UTF-16 or its CSV header lacks ``source``.
    """
    reader = _Reader(
        origin, id_prefix or origin, base, _decode_bytes, parser_for(fmt), s3, filters or Filters()
    )
    reader.share_ids(seen_ids)
    try:
        yield from reader.items(_raw_lines(stream))
    except UnusableManifest as exc:
        raise SourceError(f"{origin}: {exc}") from None
    except OSError as exc:
        msg = f"{origin}: cannot read manifest: {exc.strerror or exc}"
        raise SourceError(msg) from exc


def iter_manifest(
    path: Path,
    *,
    s3: S3Expander | None = None,
    filters: Filters | None = None,
    seen_ids: SeenIds | None = None,
) -> Iterator[Item]:
    """Yield the Items of a manifest file, lazily; relative paths are from its folder.

    Broken lines are failed Items with ids ``<absolute manifest path>:<lineno>``
    and messages ``<file name>:<lineno>: <reason>``. Pass the run's
    ``seen_ids`` so that an id used by an earlier manifest fails here too.

    Raises:
        SourceError: the file cannot be opened or read, is UTF-16, or its CSV
            header lacks ``source``; raised while iterating.
    """
    fmt = _FORMATS.get(path.suffix.lower(), "txt")
    absolute = path.absolute()
    try:
        stream = absolute.open("rb", buffering=_READ_BUFFER_BYTES)
    except OSError as exc:
        msg = f"{path}: cannot open manifest: {exc.strerror or exc}"
        raise SourceError(msg) from exc
    with stream:
        yield from iter_manifest_stream(
            stream,
            base=absolute.parent,
            origin=path.name,
            fmt=fmt,
            id_prefix=str(absolute),
            s3=s3,
            filters=filters,
            seen_ids=seen_ids,
        )


def iter_lines_manifest(
    lines: Iterable[str],
    base: Path,
    origin: str,
    *,
    s3: S3Expander | None = None,
    filters: Filters | None = None,
    seen_ids: SeenIds | None = None,
) -> Iterator[Item]:
    """Yield the Items of a plain-text list already decoded (``-`` on a text stdin)."""
    reader = _Reader(origin, origin, base, _decode_str, None, s3, filters or Filters())
    reader.share_ids(seen_ids)
    yield from reader.items(enumerate(lines, start=1))
