"""S3 sources: the audio objects of an ``s3://`` key or prefix, listed lazily, a page at
a time, for the planner (which runs in a thread): a prefix of a million keys is never
held in memory. Objects are sent by ``batch.s3``."""

from __future__ import annotations

import posixpath
import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from batch.errors import SourceError
from batch.models import Filters, Item, ItemKind
from batch.redact import redact_source
from batch.s3 import S3, describe_error, is_not_found, parse_s3_uri
from batch.sources import WalkRules

__all__ = ["expand"]

T = TypeVar("T")


def expand(s3: S3, uri: str, filters: Filters) -> Iterator[Item]:
    """The ``S3Expander``: one object, or the audio objects under a prefix, lazily.

    ``s3://b/k`` is an object; when there is none, ``s3://b/k/`` is tried as a
    prefix. ``s3://b/p/`` and ``s3://b`` are prefixes. A named object is taken
    whatever its extension (like a file named on the command line).

    Raises:
        SourceError: while iterating: no bucket, no such key, nothing under the
            prefix, access denied, S3 unreachable.
    """
    bucket, key = parse_s3_uri(uri)
    if key and not key.endswith("/"):
        single = _head_item(s3, bucket, key)
        if single is not None:
            yield single
            return
        yield from _expand_prefix(s3, uri, bucket, key + "/", filters, missing="no such key")
        return
    yield from _expand_prefix(s3, uri, bucket, key, filters, missing="")


def _head_item(s3: S3, bucket: str, key: str) -> Item | None:
    """The item of one named object, or None when there is no such key."""
    uri = f"s3://{bucket}/{key}"
    try:
        head = s3.client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise SourceError(f"{uri}: {describe_error(exc)[1]}") from exc
    return _object_item(bucket, key, posixpath.basename(key), head["ContentLength"], head)


def _expand_prefix(
    s3: S3, uri: str, bucket: str, prefix: str, filters: Filters, *, missing: str
) -> Iterator[Item]:
    """Yield a prefix's items page by page; an empty result is a usage error."""
    counts = [0, 0]  # objects listed, items yielded
    for item in _list(s3, uri, bucket, prefix, WalkRules(filters), counts):
        counts[1] += 1
        yield item
    if counts[1] == 0:
        raise SourceError(f"{redact_source(uri)}: {missing or _empty_reason(counts[0])}")


def _list(
    s3: S3, uri: str, bucket: str, prefix: str, rules: WalkRules, counts: list[int]
) -> Iterator[Item]:
    """List ``prefix``; a failure names ``uri`` as the user gave it (``s3://b/k.wav``,
    not the ``s3://b/k.wav/`` that is tried after the key was not found)."""
    paginator = s3.client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": s3.options.page_size}
    )
    try:
        for page in _prefetched(iter(pages)):
            for obj in page.get("Contents", []):
                counts[0] += 1
                rel = obj["Key"][len(prefix) :]
                if rel and _takes(rules, rel):
                    yield _object_item(bucket, obj["Key"], rel, obj["Size"], obj)
    except SourceError:
        raise
    except Exception as exc:
        msg = f"{redact_source(uri)}: {describe_error(exc)[1]}"
        raise SourceError(msg) from exc


def _prefetched(pages: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Fetch the next page in a thread while the caller plans this one.

    Listing waits on the network and planning on SQLite; overlapping them makes a big
    prefix cost about the longer of the two instead of their sum. At most ``depth + 2``
    pages exist at once (one planned, ``depth`` queued, one being fetched), and the
    thread stops when the caller stops reading. Errors come out in order.
    """
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for page in pages:
                if not offer((True, page)):
                    return
            offer((False, None))
        except BaseException as exc:  # handed to the caller, who raises it
            offer((False, exc))

    threading.Thread(target=pump, name="dgbatch-s3-list", daemon=True).start()
    try:
        while True:
            is_page, value = box.get()
            if not is_page:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()


def _takes(rules: WalkRules, rel: str) -> bool:
    """Folder semantics for keys: a pruned "folder" on the way drops the key too."""
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        if rules.prunes("/".join(parts[:depth]), parts[depth - 1]):
            return False
    return rules.takes(rel, parts[-1])


def _empty_reason(listed: int) -> str:
    if listed == 0:
        return "no objects under this prefix"
    return f"no audio objects under this prefix ({listed} listed, none matched the filters)"


def _object_item(bucket: str, key: str, name: str, size: int, obj: Any) -> Item:
    uri = f"s3://{bucket}/{key}"
    return Item(
        id=uri,
        source=uri,
        kind=ItemKind.S3,
        name=name,
        size=size,
        fingerprint=_etag(str(obj.get("ETag", ""))),
        origin=uri,
    )


def _etag(value: str) -> str:
    """ETags come quoted; the fingerprint is the bare value."""
    return value.strip('"')
