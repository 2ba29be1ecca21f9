"""Items that are already failed, and the text checks that make them.

A source that cannot be sent (a missing file, a bad URL, a name that is not
UTF-8) is planned as a failed Item rather than raised, so one bad entry does not
stop a batch. Both the URL and the file side of :mod:`batch.sources` build them,
so they live below both; the text is made printable here because an item is
stored and its message shown, and neither survives a lone surrogate.
"""

from __future__ import annotations

from batch.models import Item, ItemKind, Params
from batch.redact import redact_source

__all__ = ["error_item", "is_utf8", "not_utf8_item", "printable"]


def error_item(
    item_id: str,
    source: str,
    name: str,
    reason: str,
    origin: str,
    params: Params = (),
    kind: ItemKind = ItemKind.FILE,
) -> Item:
    """Build an item that is already failed; its message names where it came from.

    Every text field is made printable: the item is stored and its message
    shown, and neither survives a lone surrogate from an undecodable name.
    """
    message = f"{origin}: {reason}" if origin else reason
    return Item(
        id=printable(item_id),
        source=printable(redact_source(source)),
        kind=kind,
        name=printable(name),
        params=params,
        error=printable(message),
        origin=origin,
    )


def is_utf8(text: str) -> bool:
    """Tell whether text can be stored and sent as UTF-8 (no lone surrogates).

    Undecodable file names reach Python as surrogate escapes; such a name would
    break the state file and every message that prints it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """Show a surrogate-escaped name with its bad bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def not_utf8_item(path: str, name: str, origin: str, params: Params = ()) -> Item:
    """Fail a file whose name is not UTF-8 (the error item makes it printable)."""
    reason = f"{path}: file name is not valid UTF-8 (rename the file)"
    return error_item(path, path, name, reason, origin, params)
