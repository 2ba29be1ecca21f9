"""One written source (a path, a ``file://`` or ``http(s)://`` URL) into one Item, and
the Item of a file already stat'ed: what a folder walk (``batch.sources``) and a
manifest's lines (``batch.manifests``) both build, so neither imports the other for it.
Never raises: a problem is an Item with ``error`` set (``batch.failed_items``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from batch.failed_items import error_item, is_utf8, not_utf8_item
from batch.localfiles import file_fingerprint
from batch.models import Filters, Item, ItemKind, Params, new_item
from batch.redact import redact_source
from batch.urls import HTTP_URL_RE, file_url_path, scheme_of, url_item

__all__ = ["S3Expander", "build_item", "item_for_source", "stat_item"]

#: Expands ``s3://bucket/key`` or ``s3://bucket/prefix/`` into Items (``batch.s3``).
S3Expander = Callable[[str, Filters], Iterator[Item]]

#: an enum member read from the class costs a lookup through its metaclass
_FILE = ItemKind.FILE


def _relative_name(path: str, base: str) -> str:
    """Name a file by its path under ``base``, or by its basename when outside it."""
    prefix = base if base.endswith(os.sep) else base + os.sep
    if path.startswith(prefix):
        return path[len(prefix) :].replace(os.sep, "/")
    return os.path.basename(path)


def _stat_problem(st: os.stat_result) -> str | None:
    """Say why a stat'ed path cannot be uploaded, or None if it can."""
    if stat.S_ISDIR(st.st_mode):
        return "is a directory (list files, not folders, in a manifest)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def _file_item(
    path: str, *, base: Path, name_hint: str | None, params: Params, origin: str
) -> Item:
    """Build a FILE item from an absolute path, stat'ing it once for size and fingerprint."""
    item_id = f"id:{name_hint}" if name_hint is not None else path
    name = name_hint if name_hint is not None else _relative_name(path, os.path.abspath(base))
    if not is_utf8(path):
        return not_utf8_item(path, name, origin, params)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return error_item(item_id, path, name, f"{path}: no such file", origin, params)
    except OSError as exc:
        return error_item(item_id, path, name, f"{path}: {exc.strerror}", origin, params)
    problem = _stat_problem(st)
    if problem is not None:
        return error_item(item_id, path, name, f"{path}: {problem}", origin, params)
    return stat_item(item_id, path, name, st, origin, params)


def _absolute(source: str, base: Path) -> str:
    """Resolve a path as written in a manifest: ``~`` expanded, relative to ``base``."""
    return os.path.abspath(os.path.join(base, os.path.expanduser(source)))


def item_for_source(
    source: str,
    *,
    base: Path,
    name_hint: str | None = None,
    params: Params = (),
    origin: str = "",
) -> Item:
    """Turn one written source into one Item; never raises.

    A problem (missing file, bad URL, unsupported scheme) comes back as an Item
    with ``error`` set, so one bad manifest line cannot stop a run. ``s3://``
    sources need the S3 hook and are handled by the callers that have it.

    Args:
        source: a path (relative to ``base``), ``file://``, ``http(s)://`` URL.
        base: folder relative paths are resolved against (the manifest's folder).
        name_hint: an explicit id from a manifest; it names the outputs and keys
            the state as ``id:<hint>``, so it survives the file moving.
        params: the item's own params layer (merged later over the defaults).
        origin: where the source was written, e.g. ``urls.txt:12``.
    """
    return build_item(source, base, name_hint, params, origin)


def build_item(source: str, base: Path, name_hint: str | None, params: Params, origin: str) -> Item:
    """Positional :func:`item_for_source`, for the per-line loop of a manifest."""
    match = HTTP_URL_RE.fullmatch(source)
    if match is not None:
        return url_item(source, match, name_hint, params, origin)
    scheme = scheme_of(source)
    if scheme in ("http", "https"):
        return url_item(source, None, name_hint, params, origin)
    local = file_url_path(source) if scheme == "file" else None
    if local is not None:
        return _file_item(local, base=base, name_hint=name_hint, params=params, origin=origin)
    if scheme:
        shown = redact_source(source)
        item_id = f"id:{name_hint}" if name_hint is not None else shown
        problem = "not a local file URL" if scheme == "file" else f"unsupported scheme {scheme!r}"
        return error_item(
            item_id, source, name_hint or shown, f"{shown}: {problem}", origin, params
        )
    path = _absolute(source, base)
    return _file_item(path, base=base, name_hint=name_hint, params=params, origin=origin)


def stat_item(
    item_id: str, path: str, name: str, st: os.stat_result, origin: str, params: Params = ()
) -> Item:
    # new_item and _FILE, as in url_item: once per file of a folder walk
    fingerprint = file_fingerprint(st)
    return new_item(item_id, path, _FILE, name, params, st.st_size, fingerprint, None, origin)
