"""Parse one line of a JSONL or CSV manifest into what it asks for.

Kept apart from reading the file (``batch.manifests``) because this part is
pure, text in and entry out, so each format's rules can be read and tested on
their own. A bad line raises :class:`LineError`, which fails that line alone; a
manifest that cannot be read at all (a CSV without a ``source`` column) raises
:class:`UnusableManifest`. These run once per line of million-line manifests:
the reader calls them directly, with no wrapper in between.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from batch.models import Params
from batch.params import DEEPGRAM_PARAMS, deepgram_key, normalise_value, params_from_mapping

__all__ = [
    "Entry",
    "LineError",
    "Parser",
    "UnusableManifest",
    "parser_for",
    "reads_header",
    "records",
]


class LineError(Exception):
    """Raised while parsing one line; becomes that line's failed Item."""


class UnusableManifest(Exception):
    """Raised when the whole manifest is unusable; becomes a SourceError naming it."""


class Entry(NamedTuple):
    """What one manifest line asks for, before it becomes an Item (a tuple: built per line)."""

    source: str
    id: str | None = None
    params: Params = ()


Parser = Callable[[str], Entry | None]

#: a JSONL line's own keys; any other is the user's (a title, an account) and is left alone
_LINE_KEYS = frozenset({"source", "id", "params"})
#: other keys that mean one of them, misspelled (one letter off ``params`` or ``source``
#: is too: ``parms``, ``paramss``, ``sources``)
_NEAR_KEYS = frozenset({"param", "parameters", "options", "parmas"})


def _entry_id(value: object) -> str | None:
    """Accept an optional string (or integer) id; reject anything else."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise LineError(f"'id' must be a string, not {type(value).__name__}")
    if not value.strip():
        raise LineError("'id' is empty")
    return value.strip()


def _entry_params(value: object) -> Params:
    """Convert an optional ``params`` object into a params layer."""
    if value is None:
        return ()
    if not isinstance(value, dict):  # what JSON gives; cheaper than the Mapping ABC
        raise LineError(f"'params' must be an object, not {type(value).__name__}")
    try:
        return params_from_mapping(value)
    except ValueError as exc:
        raise LineError(str(exc)) from None


#: the C scanner ``json.loads`` ends in, with ``json.loads``'s own settings (typeshed
#: does not list the decoder's ``scan_once``)
_scan_json: Callable[[str, int], tuple[object, int]]
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json_value(stripped: str) -> object:
    """``json.loads(stripped)`` for a line without whitespace around it, at less cost.

    ``json.loads`` goes through three Python layers and two whitespace regexes to reach
    its C scanner; a stripped line needs none of them, so the scanner is called directly.
    What the scanner does not take whole (no value, or data after it) goes to
    ``json.loads`` itself, which raises its own error with its own message.
    """
    try:
        value, end = _scan_json(stripped, 0)
    except StopIteration:
        return json.loads(stripped)
    return value if end == len(stripped) else json.loads(stripped)


def _parse_jsonl(text: str) -> Entry | None:
    """One JSON object per line; blank lines are skipped."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        obj = _json_value(stripped)
    except RecursionError:
        raise LineError("invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:  # one clause: status groups failures by the last
        reason = exc.msg.partition(" (")[0].lower()  # "Unexpected UTF-8 BOM (decode using …)"
        raise LineError(f"invalid JSON ({reason} at column {exc.colno})") from None
    except ValueError as exc:
        raise LineError(f"invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    source = obj.get("source")
    if source is None:
        raise LineError("missing 'source'")
    if not isinstance(source, str):
        raise LineError(f"'source' is not text (a JSON {type(source).__name__})")
    if not source.strip():
        raise LineError("empty 'source'")
    if len(obj) > 1 and not _LINE_KEYS.issuperset(obj):
        _check_other_keys(obj)
    entry = Entry(source.strip(), _entry_id(obj.get("id")), _entry_params(obj.get("params")))
    if "\\u" in stripped:
        _check_escaped_text(entry)
    return entry


def _check_other_keys(obj: dict[str, object]) -> None:
    """Keys besides ``source``, ``id`` and ``params`` are the user's and left alone, but a
    Deepgram parameter beside them (``"language": "fr"``) or a misspelt one of them
    (``"param"``, ``"ID"``) was meant to be read: sent without it, the line would be paid
    for with the defaults. Such a line fails, saying where the key goes."""
    meant = [key for key in obj if key not in _LINE_KEYS and _meant(key)]
    if not meant:
        return
    named = ", ".join(repr(key) for key in meant)
    raise LineError(
        f"key(s) {named} not read: a line has 'source', 'id' and 'params' (lowercase), "
        'and its Deepgram parameters go in \'params\' ({"params": {"language": "fr"}})'
    )


def _meant(key: str) -> bool:
    """Whether ``key`` (not a line key itself) means a line key or a Deepgram parameter."""
    near = key.strip().lower()
    if near in _LINE_KEYS or near in _NEAR_KEYS or near in DEEPGRAM_PARAMS:
        return True
    return _one_edit(near, "params") or _one_edit(near, "source")


def _one_edit(word: str, target: str) -> bool:
    """``word`` is ``target`` with one letter added, dropped or changed."""
    if abs(len(word) - len(target)) > 1:
        return False
    short, long = sorted((word, target), key=len)
    for i, (a, b) in enumerate(zip(short, long, strict=False)):
        if a != b:
            rest = i + 1 if len(short) == len(long) else i
            return short[rest:] == long[i + 1 :]
    return True  # equal, or one letter added at the end


def _check_escaped_text(entry: Entry) -> None:
    """Reject what only ``\\u`` escapes can sneak past the line checks: NUL, lone surrogates.

    A lone surrogate cannot be encoded as UTF-8, so it would break the state
    file or the request much later, far from the line that caused it.
    """
    texts = [entry.source, entry.id or "", *(value for _, value in entry.params)]
    for text in texts:
        if "\x00" in text:
            raise LineError("NUL character in 'source', 'id' or 'params'")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LineError("lone surrogate escape in 'source', 'id' or 'params'") from None


@dataclass(frozen=True, slots=True)
class _CsvHeader:
    """Column positions of a CSV manifest, read from its first non-blank line."""

    source: int
    id: int | None
    params: tuple[tuple[int, str], ...]
    width: int

    @classmethod
    def from_row(cls, row: list[str]) -> _CsvHeader:
        """Read the header; a manifest without a ``source`` column is unusable."""
        names = [name.strip() for name in row]
        lowered = [name.lower() for name in names]
        duplicates = sorted({name for name in lowered if name and lowered.count(name) > 1})
        if duplicates:
            msg = f"CSV header repeats column(s) {', '.join(duplicates)}"
            raise UnusableManifest(msg)
        if "source" not in lowered:
            msg = f"CSV header has no 'source' column (got {', '.join(names)!r})"
            raise UnusableManifest(msg)
        id_column = lowered.index("id") if "id" in lowered else None
        for name in names:
            if name and name.lower() not in ("source", "id"):
                _check_param_column(name)
        params = tuple(
            (index, deepgram_key(name))
            for index, name in enumerate(names)
            if name and lowered[index] not in ("source", "id")
        )
        return cls(lowered.index("source"), id_column, params, len(names))

    def entry(self, row: list[str]) -> Entry:
        """Read one data row; empty cells are absent, not "remove the default"."""
        if len(row) > self.width and any(cell.strip() for cell in row[self.width :]):
            raise LineError(f"expected {self.width} fields, got {len(row)}")
        cells = [cell.strip() for cell in row] + [""] * (self.width - len(row))
        if not cells[self.source]:
            raise LineError("empty 'source'")
        item_id = (cells[self.id] or None) if self.id is not None else None
        params = tuple((name, normalise_value(cells[i])) for i, name in self.params if cells[i])
        return Entry(cells[self.source], item_id, params)


class _CsvParser:
    """Stateful CSV record parser: the first non-blank record is the header. Records are
    cut by ``records``: a quoted field may span lines, as Excel writes them."""

    __slots__ = ("header",)

    def __init__(self) -> None:
        self.header: _CsvHeader | None = None

    def __call__(self, text: str) -> Entry | None:
        """Parse one line; the header line yields no entry."""
        if not text.strip():
            return None
        try:
            row = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise LineError(f"invalid CSV: {exc}") from None
        if self.header is None:
            self.header = _CsvHeader.from_row(row)
            return None
        return self.header.entry(row)


#: most physical lines, and bytes, one CSV record may span (a quoted field with line
#: breaks); a quote left open longer is a broken line, and the lines after it are records
RECORD_LINES = 100
RECORD_BYTES = 64 * 1024

_Line = TypeVar("_Line", str, bytes)


def records(parse: Parser, lines: Iterable[tuple[int, _Line]]) -> Iterator[tuple[int, _Line]]:
    """The numbered records of a manifest: its lines, except that a CSV record whose
    quoted field spans lines is joined into one, numbered by its first line."""
    if not isinstance(parse, _CsvParser):
        return iter(lines)
    return _csv_records(iter(lines))


def _csv_records(lines: Iterator[tuple[int, _Line]]) -> Iterator[tuple[int, _Line]]:
    """Join the lines of a record whose quoted cell is still open at the end of its first
    line until it closes. If it does not close cleanly within ``RECORD_LINES`` or
    ``RECORD_BYTES`` (a stray quote), the first line is given alone, to fail as invalid
    CSV, and the lines read past it are read again as records of their own: never
    swallowed, never sent as fragments. A quote inside an unquoted cell (``12" single``)
    is text, as CSV reads it."""
    replay: deque[tuple[int, _Line]] = deque()
    while (line := replay.popleft() if replay else next(lines, None)) is not None:
        group = [line]
        state = _csv_state(group)
        while state == "open" and len(group) < RECORD_LINES:
            more = replay.popleft() if replay else next(lines, None)
            if more is None:
                break
            group.append(more)
            state = _csv_state(group)
        text = group[0][1][:0].join(part for _, part in group)
        if len(group) == 1 or (state == "ok" and len(text) <= RECORD_BYTES):
            yield group[0][0], text
        else:
            yield group[0]
            replay.extendleft(reversed(group[1:]))


def _csv_state(group: list[tuple[int, _Line]]) -> str:
    """How CSV reads the lines as one record: ``ok``, ``open`` (they end inside a quoted
    cell) or ``bad`` (any other error). A line without a quote is ``ok`` unread."""
    first = group[0][1]
    if (b'"' if isinstance(first, bytes) else '"') not in first:
        return "ok"
    parts = [part.decode("utf-8", "surrogateescape") if isinstance(part, bytes) else part
             for _, part in group]  # fmt: skip
    try:
        next(csv.reader(["".join(parts)], strict=True), None)
    except csv.Error as exc:
        return "open" if "unexpected end of data" in str(exc) else "bad"
    return "ok"


def reads_header(parse: Parser) -> bool:
    """Whether ``parse`` has yet to read its header line: a broken header line makes the
    manifest unusable (the next line would be taken for the header)."""
    return isinstance(parse, _CsvParser) and parse.header is None


def parser_for(fmt: str) -> Parser | None:
    """Pick the line parser of a manifest format; None for a plain list."""
    if fmt == "jsonl":
        return _parse_jsonl
    if fmt == "csv":
        return _CsvParser()
    return None


def _check_param_column(name: str) -> None:
    """A CSV column other than source and id is a param: its name must be one a query
    string can carry, as ``--param`` and a JSONL line's params keys must; and not
    ``params``, which would be sent as a parameter of that name (each column is one)."""
    if name.lower() in ("params", "param"):
        msg = (
            f"CSV header: column {name!r} would be sent to Deepgram as a parameter of that "
            "name: each column besides source and id is one parameter (language, diarize, …)"
        )
        raise UnusableManifest(msg)
    try:
        params_from_mapping({name: "set"})
    except ValueError as exc:
        raise UnusableManifest(f"CSV header: {exc}") from None
