"""Where an output may go: never over a file this batch did not write, a SOURCE of the
run or the recording itself; and which write errors are one item's (its path) and which
stop the run (the disk). Checked before a request is sent and again as outputs are
written (``batch.outputs``)."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Collection
from pathlib import Path
from urllib.parse import unquote

from batch.errors import ItemError, OutputError
from batch.formats import CONTENT_TYPES
from batch.naming import output_relpath, resolve_inside
from batch.records import Ownership
from batch.redact import redact_source

#: a crashed run's output counts as its own when written after the claim (clock slack)
CLAIM_SLACK = 0.1
#: a file written within this of the time its item was queued (filesystems whose clocks
#: are coarse: FAT's 2 s) may be the item's own
QUEUE_SLACK = 2.0
#: what to do about a file in an output's place: a failed item needs --retry-failed, a
#: format rendered later is rendered by any next run
_MOVE_IT = (
    "move it away and run again (with --retry-failed for an item that failed), or choose "
    "another --out"
)
FOREIGN = (
    "is already there, and this batch did not write it (a file of yours, another batch's, "
    f"or one whose state was lost): not replaced; {_MOVE_IT}"
)


#: errors that belong to one output path (a folder in its place, a name too long): that
#: item fails and the run goes on. Any other stops the run: a disk full or read-only, or
#: a folder that is a file (ENOTDIR), which every item going there would meet, each paid.
_PATH_ERRNOS = frozenset({errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


def output_error(path: Path, exc: OSError) -> ItemError | OutputError:
    """The error for a failed write of ``path``: the item's own, or the whole run's."""
    message = describe_os_error(path, exc)
    if exc.errno in _PATH_ERRNOS:
        return ItemError(message, code="output_path")
    blocker = _output_in_the_way(path) if exc.errno == errno.ENOTDIR else None
    if blocker is not None:
        message = (
            f"{path}: cannot write output: {blocker} (another item's output) is where its "
            "folder goes; its paid answer is kept (README: names that meet)"
        )
        return ItemError(message, code="output_path")
    return OutputError(message)


def check_spares_source(root: Path, out_name: str, formats: Collection[str], source: str) -> None:
    """Refuse outputs of which one would be the local file ``source`` itself: a recording
    named ``rec.json`` (or ``voice.srt`` with ``--formats srt``) transcribed into its own
    folder was overwritten by its transcript. Only a source named like an output can be.

    Raises:
        ItemError: ``output_path``, naming the format.
    """
    fmt = os.path.splitext(source)[1][1:].lower()
    if fmt not in formats:
        return
    try:
        target = resolve_inside(root, output_relpath(out_name, fmt))
        replaced = os.path.realpath(target) == os.path.realpath(source)
    except (OSError, ValueError):
        return
    if replaced:
        msg = f"{source}: its {fmt} output would replace the recording itself; choose another --out"
        raise ItemError(msg, code="output_path")


def foreign_message(location: str, other: str) -> str:
    """Why an object of an S3 ``--out`` is not written over: ``other`` is the source its
    metadata names (percent-encoded, maybe none)."""
    named = (
        f"for another source ({redact_source(unquote(other))})" if other else ("and not dgbatch's")
    )
    return f"{location}: already there {named}, not replaced; {_MOVE_IT}"


def check_not_foreign(
    path: str, owner: Ownership | None, inputs: Inputs, data: bytes | None = None
) -> None:
    """Refuse to replace a file this batch did not write: a subtitle made by hand beside
    the video, the run's manifest, an earlier batch's paid transcript (its own
    ``--state``, the same ``--out``) were replaced without a word. The item's own files
    are those the state records as its outputs, those written since it was queued (a
    crashed attempt's), and one holding just what it would write (``data``).

    Raises:
        ItemError: ``output_path`` for a SOURCE of the run, or a folder when writing,
            whatever the owner; ``output_exists`` for a file of another.
    """
    if not os.access(path, os.F_OK, follow_symlinks=False):
        return  # (``access`` first: most outputs are new, and a failed lstat costs more)
    try:
        found = os.lstat(path)
    except OSError:
        return
    if (found.st_dev, found.st_ino) in inputs:
        raise ItemError(
            f"{path}: is a SOURCE of this run; choose another --out", code="output_path"
        )
    if stat.S_ISDIR(found.st_mode):  # before sending, left to the writer: "names that meet"
        if data is None:
            return
        raise ItemError(f"{path}: is a folder, where an output goes", code="output_path")
    if owner is None or _written_by(owner, path, found.st_mtime):
        return
    if stat.S_ISREG(found.st_mode) and _holds(path, data):  # (a FIFO would block on open)
        return
    raise ItemError(f"{path}: {FOREIGN}", code="output_exists")


def _written_by(owner: Ownership, path: str, mtime: float) -> bool:
    """``path`` (there, written at ``mtime``) is the item's own (see ``check_not_foreign``):
    a recorded output of its (or one of its name, when the recorded one is gone: ``--out``
    was moved), or a file written by a crashed attempt of it."""
    since = owner.queued_at
    if since is not None and since - QUEUE_SLACK <= mtime <= time.time() + QUEUE_SLACK:
        return True
    if not owner.recorded:
        return False
    real, name = os.path.realpath(path), os.path.basename(path)
    return any(
        recorded == real
        or (os.path.basename(recorded) == name and not os.path.exists(recorded))  # moved
        for recorded in owner.recorded
    )


def _holds(path: str, data: bytes | None) -> bool:
    """The file holds ``data`` already: writing it again changes nothing (a format
    rendered earlier from the same json, by a run stopped before it recorded it)."""
    if data is None:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(data) + 1) == data
    except OSError:
        return False


class OutputPlaces:
    """What was in each output folder when the run first looked there, for the check made
    before an item is sent (``check_free``). A path looked up on the event loop while the
    writer renames files into that folder waits on the folder's lock (32 µs a lookup was
    measured); one listing per folder does not. A file that turns up later, mid-run, is
    still met by the writer's own check."""

    #: a folder holding more names than this is not listed: its names are looked up
    MOST = 100_000

    def __init__(self, root: str, inputs: Inputs, unwritable: str | None = None) -> None:
        self.root = root
        self.inputs = inputs
        #: why nothing can be written under ``root`` (``unwritable_reason``), or None
        self.unwritable = unwritable
        self._seen: dict[str, frozenset[str] | None] = {}

    def check_free(self, out_name: str, formats: Collection[str], owner: Ownership | None) -> None:
        """``check_not_foreign`` for every output of an item that was there at the start.

        Raises:
            OutputError: nothing can be written under the root: the run stops, unsent (each
                answer would be paid for, then kept in the state unwritten).
            ItemError: as ``check_not_foreign``.
        """
        if self.unwritable is not None:
            msg = (
                f"{self.root}: cannot write outputs there ({self.unwritable}); nothing more "
                "is sent, since no answer could be written"
            )
            raise OutputError(msg)
        for fmt in formats:
            folder, _, leaf = output_relpath(out_name, fmt).rpartition("/")
            names = self._seen[folder] if folder in self._seen else self._list(folder)
            if names is None or leaf in names:
                place = f"{folder}/{leaf}" if folder else leaf
                check_not_foreign(f"{self.root}/{place}", owner, self.inputs)

    def _list(self, folder: str) -> frozenset[str] | None:
        """The folder's names (none: it is not there); None when it is too big to keep."""
        names: frozenset[str] | None = frozenset()
        try:
            with os.scandir(f"{self.root}/{folder}" if folder else self.root) as entries:
                found = list(itertools.islice((entry.name for entry in entries), self.MOST + 1))
            names = frozenset(found) if len(found) <= self.MOST else None
        except OSError:  # not there (yet), or not a folder: the writer meets that
            pass
        self._seen[folder] = names
        return names


#: the local files given as SOURCEs, by (device, inode)
Inputs = frozenset[tuple[int, int]]


def run_inputs(sources: Collection[str]) -> Inputs:
    """The local files given as SOURCEs (manifests, recordings): no output replaces one,
    however new (a manifest written by the script that runs dgbatch is as new as the
    batch). Told by inode: two manifests of one name in two folders are two files."""
    found = set()
    for source in sources:
        try:
            info, link = os.stat(source), os.lstat(source)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(info.st_mode):  # a link given as the SOURCE counts, and its file
            found |= {(info.st_dev, info.st_ino), (link.st_dev, link.st_ino)}
    return frozenset(found)


def _output_in_the_way(path: Path) -> Path | None:
    """The output file of another item that stands where a folder of ``path`` must be
    (``q.wav``'s ``q.json`` and ``q.json/z.wav``'s ``q.json/z.json``): only that item
    meets it, so only that item fails; any other file there stops the run."""
    for parent in path.parents:
        if parent.is_file():
            return parent if parent.suffix[1:] in CONTENT_TYPES else None
        if parent.is_dir():
            return None
    return None


def describe_os_error(path: Path, exc: OSError) -> str:
    """A message naming the path and the reason, with a hint for the usual suspects."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += " (disk full)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (output folder is not writable)"
    return f"{path}: cannot write output: {reason}"
