"""Open a local file to read it, only if it is a regular file, and never wait doing so.

A file planned as audio may be replaced by a named pipe or a device before it is read
(or a link may point at one). Opening a pipe waits for a writer, for ever, and a device
such as ``/dev/zero`` never ends: a sniff on the event loop stopped the whole run, a
length read filled the memory. ``O_NONBLOCK`` makes the open return at once; ``fstat``
of what was opened (not of the name, which may change again) decides.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import BinaryIO


class NotRegular(OSError):
    """What the name leads to is not a regular file (a pipe, a device, a socket)."""


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for binary reading, checked to be a regular file.

    Raises:
        NotRegular: it is something else.
        OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_sha256(path: str) -> str:
    """The hex sha256 of a file's bytes, read in chunks (a pipe or a device put in its
    place: ``NotRegular``, not a wait for ever)."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_CHUNK = 1 << 20


def file_fingerprint(st: os.stat_result) -> str:
    """Size and mtime in ns: cheap, and changes whenever the content is rewritten."""
    return f"{st.st_size}:{st.st_mtime_ns}"
