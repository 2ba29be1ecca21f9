"""Expand SOURCE arguments into a lazy stream of Items.

A source is a file, a folder (walked recursively), an ``http(s)://`` URL, an
``s3://`` key or prefix (expanded by a hook, see :data:`S3Expander`), a manifest
or ``-`` for a list on stdin. Everything is a generator so that a million-line
manifest or a huge folder is planned in constant memory.

Two kinds of failure, on purpose:
- an unusable *argument* (missing path, unknown scheme, empty folder) raises
  :class:`~batch.errors.SourceError`: the user must fix the command (exit 2);
- a bad *entry* inside a manifest or folder becomes an ``Item`` with ``error``
  set, so it is recorded as failed and the rest of the batch still runs.

URL items are built by :mod:`batch.urls`, failed items by :mod:`batch.failed_items`.
"""

from __future__ import annotations

import fnmatch
import logging
import operator
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from batch.errors import SourceError
from batch.failed_items import error_item, is_utf8, not_utf8_item, printable
from batch.itembuild import S3Expander, item_for_source, stat_item
from batch.manifests import SeenIds, iter_lines_manifest, iter_manifest, iter_manifest_stream
from batch.models import Filters, Item
from batch.naming import AUDIO_EXTENSIONS, stem_of
from batch.pipes import stoppable
from batch.redact import redact_source
from batch.urls import file_url_path, hidden_clash, scheme_of

log = logging.getLogger("dgbatch")

__all__ = [
    "MANIFEST_SUFFIXES",
    "S3Expander",  # from batch.itembuild; imported from here by callers
    "WalkRules",
    "expand_sources",
    "hidden_clash",  # from batch.urls; imported from here by callers
    "item_for_source",  # from batch.itembuild; imported from here by callers
    "manifest_paths",
    "scheme_of",  # from batch.urls; imported from here by callers
]

#: A file argument with one of these suffixes is read as a list of sources.
MANIFEST_SUFFIXES: frozenset[str] = frozenset({".txt", ".list", ".jsonl", ".ndjson", ".csv"})


def _normalised_extensions(filters: Filters) -> frozenset[str]:
    """Accept ``wav``, ``.WAV`` or ``.wav`` from the CLI; default to every audio extension."""
    if not filters.extensions:
        return AUDIO_EXTENSIONS
    return frozenset("." + ext.lower().lstrip(".") for ext in filters.extensions if ext)


def _glob_matcher(
    globs: Sequence[str], *, folders: bool = False
) -> Callable[[str], re.Match[str] | None] | None:
    """Compile globs into one regex; None when there are no globs. A glob ending in ``/``
    names a folder (``--exclude day1/``, ``--exclude 'tmp*/'``): matched against folders
    (``folders``) as the folder itself, against files as everything under it, never as a
    file of that name (``tmp_take.wav``)."""
    if not globs:
        return None
    spelled = [_as_folder(glob, folders) for glob in globs]
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in spelled)).match


def _as_folder(glob: str, folders: bool) -> str:
    if not glob.endswith("/") or not glob.strip("/"):
        return glob
    folder = glob.rstrip("/")
    return folder if folders else f"{folder}/*"


class WalkRules:
    """Which entries of a folder walk are taken, decided once per walk."""

    __slots__ = ("exclude", "excluded_folders", "extensions", "include")

    def __init__(self, filters: Filters) -> None:
        self.extensions = _normalised_extensions(filters)
        self.include = _glob_matcher(filters.include)
        self.exclude = _glob_matcher(filters.exclude)
        self.excluded_folders = _glob_matcher(filters.exclude, folders=True)

    def prunes(self, rel: str, name: str) -> bool:
        """Tell whether a sub-folder is excluded as a whole (``--exclude .git``)."""
        excluded = self.excluded_folders
        return excluded is not None and bool(excluded(rel) or excluded(name))

    def takes(self, rel: str, name: str) -> bool:
        """Tell whether a file is audio and passes ``--include``/``--exclude``."""
        if name[len(stem_of(name)) :].lower() not in self.extensions:  # splitext, cheaper
            return False
        if self.include is not None and not (self.include(rel) or self.include(name)):
            return False
        return not (self.exclude is not None and (self.exclude(rel) or self.exclude(name)))


def _sorted_entries(path: str) -> list[os.DirEntry[str]]:
    """List one folder sorted by name: the same tree always yields the same order."""
    with os.scandir(path) as entries:
        return sorted(entries, key=_entry_name)


_entry_name = operator.attrgetter("name")


def _walk_item(entry: os.DirEntry[str], path: str, rel: str, origin: str) -> Item:
    """Build the item of a file found by a walk (``path``: its absolute path): id is its
    path, name its path in the walk."""
    if not is_utf8(path):
        return not_utf8_item(path, rel, origin)
    try:
        st = entry.stat()
    except OSError as exc:
        reason = "broken symlink" if isinstance(exc, FileNotFoundError) else exc.strerror
        return error_item(path, path, rel, f"{path}: {reason}", origin)
    if not stat.S_ISREG(st.st_mode):
        return error_item(path, path, rel, f"{path}: not a regular file", origin)
    return stat_item(path, path, rel, st, origin)


def _is_walkable_file(entry: os.DirEntry[str]) -> bool:
    """Tell files (and links to files) from links to folders, which the walk skips. A link
    that cannot be followed (a loop, a folder that may not be searched) is walked: its
    item fails, naming why, instead of the walk stopping there."""
    try:
        return not (entry.is_symlink() and entry.is_dir())
    except OSError:
        return True


def _say_links_not_walked(links: list[str], count: int) -> None:
    """Links to folders are not walked (a loop, or a way out of the tree): said once, at
    the end of a whole walk (not of the try of its first item), naming the first few, or
    the recordings under them were left out of an exit-0 run without a word."""
    if not count:
        return
    named = ", ".join(printable(path) for path in links)
    more = f" and {count - len(links)} more" if count > len(links) else ""
    log.warning(
        "%s%s: link(s) to folders, not walked; give them as SOURCEs to send what is in them",
        named,
        more,
    )


def _folder_prefix(path: str) -> str:
    """The absolute path of a folder, ending in ``/``: ``os.path.abspath(entry.path)`` of
    each entry listed from it is this plus the entry's name (a name is one component,
    never ``.`` or ``..``), so it is worked out once per folder, not once per file."""
    folder = os.path.abspath(path)
    return folder if folder.endswith(os.sep) else folder + os.sep


def _walk(root: str, rules: WalkRules, origin: str) -> Iterator[Item]:
    """Walk a folder depth-first in sorted order, one listing in memory per level.

    Symlinked folders are not followed (no loops, no walking out of the tree);
    symlinked files are. A sub-folder that cannot be listed becomes a failed
    item instead of stopping the walk. A level is left for a sub-folder by a
    ``break`` and resumed where it was: the per-entry loop is a plain ``for``.
    """
    listing = _sorted_entries(root)
    stack = [("", _folder_prefix(root), iter(listing))]
    links: list[str] = []
    linked = 0
    while stack:
        prefix, folder, entries = stack[-1]
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if entry.is_dir(follow_symlinks=False):
                if rules.prunes(rel, name):
                    continue
                try:
                    listing = _sorted_entries(entry.path)
                except OSError as exc:
                    path = folder + name
                    yield error_item(path, path, rel, f"{path}: {exc.strerror}", origin)
                    continue
                stack.append((rel + "/", folder + name + os.sep, iter(listing)))
                break
            if not _is_walkable_file(entry):
                if not rules.prunes(rel, name):
                    linked += 1
                    if len(links) < 3:
                        links.append(folder + name)
            elif rules.takes(rel, name):
                yield _walk_item(entry, folder + name, rel, origin)
        else:
            stack.pop()
    _say_links_not_walked(links, linked)


def _expand_dir(arg: str, filters: Filters) -> Iterator[Item]:
    """Yield a folder's audio files, failing (after the walk) if there were none."""
    rules = WalkRules(filters)
    try:
        walker = _walk(arg, rules, redact_source(arg))
        first = next(walker, None)
    except OSError as exc:
        msg = f"{printable(arg)}: cannot read directory: {exc.strerror}"
        raise SourceError(msg) from exc
    if first is None:
        shown = ", ".join(sorted(rules.extensions))
        msg = f"{printable(arg)}: no audio files found (extensions: {shown})"
        if rules.include is not None or rules.exclude is not None:
            msg += (
                "; --include/--exclude left none: their globs match a file's name or its "
                f"path under {printable(arg)} (e.g. 'day1/*.wav'), case-sensitively"
            )
        raise SourceError(msg)
    yield first
    yield from walker


def _checked(item: Item) -> Item:
    """Turn a failed item from a command-line argument into a usage error."""
    if item.error is not None:
        raise SourceError(item.error)
    return item


def _expand_path(
    arg: str, path: str, filters: Filters, s3: S3Expander | None, seen_ids: SeenIds
) -> Iterator[Item]:
    """Expand a path argument: folder, manifest or a single file named explicitly."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        msg = f"{printable(arg)}: no such file or directory"
        raise SourceError(msg) from None
    except OSError as exc:
        msg = f"{printable(arg)}: {exc.strerror}"
        raise SourceError(msg) from exc
    if stat.S_ISDIR(st.st_mode):
        yield from _expand_dir(path, filters)
        return
    if os.path.splitext(path)[1].lower() in MANIFEST_SUFFIXES:
        yield from iter_manifest(Path(path), s3=s3, filters=filters, seen_ids=seen_ids)
        return
    yield _checked(item_for_source(path, base=Path.cwd()))


def _expand_stdin(
    stdin: TextIO | None,
    filters: Filters,
    s3: S3Expander | None,
    seen_ids: SeenIds,
    stop: threading.Event | None,
) -> Iterator[Item]:
    """Read ``-`` as a plain-text manifest; bytes when possible, so bad UTF-8 spoils one line.
    With ``stop``, a silent producer no longer holds a stopped run (``batch.pipes``)."""

    stream = sys.stdin if stdin is None else stdin
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        yield from iter_manifest_stream(
            binary if stop is None else stoppable(binary, stop),
            base=Path.cwd(),
            origin="<stdin>",
            s3=s3,
            filters=filters,
            seen_ids=seen_ids,
        )
    else:
        yield from iter_lines_manifest(
            stream, Path.cwd(), "<stdin>", s3=s3, filters=filters, seen_ids=seen_ids
        )


def _expand_s3(arg: str, filters: Filters, s3: S3Expander | None) -> Iterator[Item]:
    """Hand ``s3://`` to the S3 hook; without one, S3 is a usage error."""
    if s3 is None:
        msg = f"{redact_source(arg)}: S3 support is not configured"
        raise SourceError(msg)
    yield from s3(arg, filters)


def _expand_one(
    arg: str,
    filters: Filters,
    stdin: TextIO | None,
    s3: S3Expander | None,
    seen_ids: SeenIds,
    stop: threading.Event | None = None,
) -> Iterator[Item]:
    """Expand a single SOURCE argument by what it looks like."""
    if arg == "-":
        return _expand_stdin(stdin, filters, s3, seen_ids, stop)
    if not arg:  # ``"$FILE"`` with FILE unset, not the current folder
        raise SourceError(f"{arg!r}: an empty SOURCE argument")
    scheme = scheme_of(arg)
    if scheme == "s3":
        return _expand_s3(arg, filters, s3)
    if scheme in ("http", "https"):
        return iter((_checked(item_for_source(arg, base=Path.cwd())),))
    local = _local_path(arg, scheme)
    if local is not None:
        return _expand_path(arg, local, filters, s3, seen_ids)
    problem = "not a local file URL" if scheme == "file" else f"unsupported scheme {scheme!r}"
    msg = f"{redact_source(arg)}: {problem} (expected a path, a manifest, -, http(s):// or s3://)"
    raise SourceError(msg)


def _local_path(arg: str, scheme: str) -> str | None:
    """The local path a SOURCE argument of ``scheme`` names ('' for a plain path), or None."""
    if scheme == "file":
        return file_url_path(arg)
    return None if scheme else os.path.expanduser(arg)


def manifest_paths(args: Sequence[str]) -> list[str]:
    """The local manifest files among SOURCE arguments, each as its broken lines' ids
    begin (``iter_manifest``: ``<absolute path>:<lineno>``)."""
    paths = []
    for arg in args:
        local = _local_path(arg, scheme_of(arg)) if arg and arg != "-" else None
        suffix = os.path.splitext(local)[1].lower() if local else ""
        if local and suffix in MANIFEST_SUFFIXES and os.path.isfile(local):
            paths.append(str(Path(local).absolute()))
    return paths


def expand_sources(
    args: Sequence[str],
    filters: Filters,
    stdin: TextIO | None = None,
    *,
    s3: S3Expander | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Item]:
    """Yield the Items of every SOURCE argument, in order, lazily.

    Args:
        args: SOURCE arguments as typed on the command line.
        filters: ``--include``/``--exclude``/extensions for folders and S3 prefixes.
        stdin: where ``-`` reads from (``sys.stdin`` when None).
        s3: the S3 expander; ``s3://`` arguments fail with a usage error without it.
        stop: once set, reading ``-`` raises ``Interrupted`` instead of waiting for a
            silent producer.

    Explicit manifest ids are checked across all the arguments: a second use
    of one, in any manifest, is a failed item (see :class:`~batch.manifests.SeenIds`).
    A plain source cannot take an explicit id's state row: its id is an
    absolute path, a URL or ``s3://bucket/key``, never ``id:<id>``.

    Every argument but ``-`` is tried first, up to its first item, then closed: a
    mistyped last argument is a usage error before the first request, not after the
    runner has sent (and paid for) every chunk planned ahead of it. Then they are read
    for real, one at a time and in order (so a manifest id is claimed by its first use,
    and only one argument's file or listing is open at once).

    Raises:
        SourceError: at the first item, when an argument cannot be used at all (later,
            only for what a listing finds on its way: a folder gone mid-walk).
    """

    for arg in args:
        if _readable_twice(arg):
            _try_first(_expand_one(arg, filters, None, s3, SeenIds()))
    seen_ids = SeenIds()
    for arg in args:
        yield from _expand_one(arg, filters, stdin, s3, seen_ids, stop)


def _readable_twice(arg: str) -> bool:
    """Whether an argument can be tried and then read: not stdin, nor a named pipe or a
    device (``<(producer)``, ``/dev/stdin``), which give their lines once."""
    if arg == "-":
        return False
    if scheme_of(arg):
        return True
    try:
        mode = os.stat(os.path.expanduser(arg)).st_mode
    except OSError:
        return True  # trying it says what is wrong with it
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _try_first(items: Iterator[Item]) -> None:
    """Take an argument's first item (which raises if it cannot be used), then close it:
    its file, its folder walk or its S3 listing thread."""
    try:
        next(items, None)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
