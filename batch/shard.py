"""Split one batch between N workers that never talk to each other (pure).

Every worker lists the same sources and keeps the items whose output name hashes to
its shard: the name's root (``naming.name_root``: ``a`` for ``a.wav``, ``a.mp3`` and
``a.wav.flac``), so items that could want the same output (``a.json``) go to one shard,
whose state names them apart; by id, ``a.wav`` and ``a.mp3`` could land in two shards,
each writing ``a.json`` over the other's. The hash is blake2b of the bytes, not
Python's ``hash`` (salted per process), so worker 3 of 16 takes the same items on every
machine, every night, and each item belongs to exactly one shard. Shards are 0-based,
like Kubernetes' ``JOB_COMPLETION_INDEX`` and ``AWS_BATCH_JOB_ARRAY_INDEX``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from batch.errors import UsageError
from batch.naming import name_root, safe_name

__all__ = [
    "SHARD_ENV",
    "Shard",
    "in_shard",
    "lock_tag",
    "overlap",
    "overlap_message",
    "parse_shard",
]

#: Environment variable read when ``--shard`` is not given.
SHARD_ENV = "DGBATCH_SHARD"


@dataclass(frozen=True, slots=True)
class Shard:
    """Worker ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def suffix(self) -> str:
        """The tag that keeps a shard's state, lock and report apart: ``shard-3-of-16``."""
        return f"shard-{self.index}-of-{self.count}"

    def takes(self, name: str) -> bool:
        """Tell whether this shard owns the item named ``name`` (``Item.name``)."""
        return in_shard(name_root(safe_name(name)), self.index, self.count)


_TAG_RE = re.compile(r"shard-\d+-of-(\d+)")
#: a run lock's file name: ``<stem>.<ext>`` without ``--shard``, ``<stem>-<tag>.<ext>``
_LOCK_RE = re.compile(r"(?P<stem>[a-z]+)(?:-(?P<tag>shard-\d+-of-\d+))?\.(?P<ext>[a-z]+)")


def lock_tag(name: str, stem: str, ext: str) -> str | None:
    """The shard tag ('' for none) of a run lock named ``name`` (``out.lock``,
    ``lock-shard-0-of-2.json``), or None when ``name`` is no lock of ``stem`` and ``ext``."""
    found = _LOCK_RE.fullmatch(name)
    if found is None or (found["stem"], found["ext"]) != (stem, ext):
        return None
    return found["tag"] or ""


def overlap(tag: str, other: str) -> bool:
    """Whether runs tagged ``tag`` and ``other`` (``Shard.suffix``, '' without ``--shard``)
    on one ``--out`` take items in common: each keeps its own state, so both would send
    them. Only shards of one N (each its own K) share nothing."""
    mine, theirs = _TAG_RE.fullmatch(tag), _TAG_RE.fullmatch(other)
    return tag == other or mine is None or theirs is None or mine[1] != theirs[1]


def overlap_message(place: str, holder: str, tag: str, mine: str) -> str:
    """Why a run tagged ``mine`` may not write to ``place`` while ``holder`` writes there
    tagged ``tag`` (they ``overlap``)."""

    def said(tag: str) -> str:
        return f"as {tag.replace('-', ' ')}" if tag else "without --shard"

    return (
        f"{place}: another dgbatch run ({holder}) writes its transcripts there {said(tag)}, "
        f"and this run would {said(mine)}: each has its own state, so both would send the "
        "items they share. Wait for it to finish, or run every worker with the same N"
    )


def in_shard(key: str, k: int, n: int) -> bool:
    """Tell whether ``key`` belongs to shard ``k`` of ``n`` (0 <= k < n)."""
    if n == 1:
        return True
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == k


def parse_shard(text: str, given_as: str = "--shard") -> Shard:
    """Read ``K/N`` (e.g. ``3/16``); anything else is a usage error naming the value and
    where it was given (``--shard``, or ``DGBATCH_SHARD`` when it came from there)."""
    index, slash, count = text.strip().partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        msg = f"{given_as} {text!r}: expected K/N with 0 <= K < N, e.g. 3/16"
        raise UsageError(msg)
    shard = Shard(int(index), int(count))
    if shard.count < 1 or shard.index >= shard.count:
        msg = f"{given_as} {text!r}: K must be between 0 and N-1 (shards are 0-based)"
        raise UsageError(msg)
    return shard
