"""Text on its way to a terminal. Names come from file names, S3 keys, URLs and manifest
lines that others chose: a control character in one would act on the terminal
(``ESC]0;…BEL`` retitles it, ``ESC[2J`` clears it) or forge a line of the output."""

from __future__ import annotations

import re

__all__ = ["plain", "shown"]

#: C0, DEL and C1 control characters, newline and tab included
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: runs of them, each one space in text quoted from an answer (``plain``)
_CONTROL_RUN_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def shown(text: str) -> str:
    """``text`` with each control character as its ``\\xNN`` escape: one line, and inert."""
    if _CONTROL_RE.search(text) is None:
        return text
    return _CONTROL_RE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def plain(text: str) -> str:
    """``text`` from an answer on one line, without control characters (each run of them
    is one space): quoted to a terminal, an escape sequence would act on it."""
    return _CONTROL_RUN_RE.sub(" ", text).strip()
