"""Turn an ``http(s)://`` source into an Item: validate, name and key it.

URLs are the million-line case (a URL dump as a manifest), so one regex both
validates and splits a URL, and its item is built positionally; see the
comments. The id is the redacted URL with the signing values blanked, so a
presigned URL signed again is the same item, and :func:`hidden_clash` fails the
rare second URL that only a secret told apart. ``scheme_of`` and ``file://``
parsing are here too: every source is sorted by its scheme first.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, unquote_plus, urlsplit

from batch.failed_items import error_item, is_utf8
from batch.models import Item, ItemKind, Params, new_item
from batch.redact import SIGNING_QUERY_KEYS, redact_source, redact_url, url_may_hold_secret

__all__ = [
    "HTTP_URL_RE",
    "file_url_path",
    "hidden_clash",
    "same_recording",
    "scheme_of",
    "url_item",
]

# Query keys that change every time a presigned URL is minted (expiry, date) but
# do not change what it points at; blanking them keeps a URL item's id stable.
_VOLATILE_QUERY_KEYS = frozenset(
    {
        "x-amz-date", "x-amz-expires", "expires", "x-goog-date", "x-goog-expires", "se", "st",
        "skt", "ske",  # Azure user-delegation SAS: the key's start and expiry
        "x-oss-date", "x-oss-expires", "q-sign-time", "q-key-time",  # Alibaba OSS, Tencent COS
    }
)  # fmt: skip

#: Query keys whose values change each time a URL is signed, not from one recording to
#: another: two URLs with one id that differ only in these are the same recording.
_SIGNING_KEYS = _VOLATILE_QUERY_KEYS | SIGNING_QUERY_KEYS

#: an enum member read from the class costs a lookup through its metaclass
_URL = ItemKind.URL

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]{0,31})://")  # capped: no backtracking blowup
_BAD_URL_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f]")
# What may not appear anywhere in a URL we send: whitespace (exactly what
# str.isspace accepts), C0 controls, DEL and lone surrogates. Spelled out as
# ranges because sre matches a class of ranges faster than one holding "\s".
_NOT_URL = r"\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ud800-\udfff"
# One pass validates and splits an http(s) URL: it is the per-line cost of a
# million-line manifest, and ``urlsplit`` alone would be most of it.
HTTP_URL_RE = re.compile(
    r"[hH][tT][tT][pP][sS]?://"
    rf"(?:[^{_NOT_URL}/?#]*@)?"  # userinfo (may hold "@"; the last one wins)
    rf"(?P<host>\[[0-9A-Za-z:.%]+\]|[^{_NOT_URL}/?#@:\[\]]+)"
    r"(?::[0-9]*)?"
    rf"(?P<path>/[^{_NOT_URL}?#]*)?"
    rf"(?:\?[^{_NOT_URL}#]*)?"
    rf"(?:#[^{_NOT_URL}]*)?"
)


def scheme_of(source: str) -> str:
    """Return the lowercased ``scheme`` of ``scheme://...``, or ``""`` for a path."""
    match = _SCHEME_RE.match(source)
    return match.group(1).lower() if match else ""


def _url_problem(url: str) -> str:
    """Say why ``url`` did not parse, for the failed item's message."""
    if _BAD_URL_CHAR_RE.search(url):
        return "URL contains whitespace or control characters"
    if not is_utf8(url):
        return "URL is not valid UTF-8"
    return "malformed URL or no host"


def _url_name(match: re.Match[str]) -> str:
    """Name a URL item after its path (``https://h/pod/ep1.mp3?x`` → ``pod/ep1.mp3``)."""
    path, host = match.group("path", "host")
    if not path:
        return host
    if "%" in path:  # unquote's own test, without its call: once per line of a manifest
        path = unquote(path)
    return path.lstrip("/") or host


def url_id(url: str) -> str:
    """Key a URL item by its redacted URL, so re-signing a presigned URL keeps the id."""
    return redact_url(url, extra_keys=_VOLATILE_QUERY_KEYS)


def hidden_clash(first: str, item: Item, nth: int = 1) -> Item | None:
    """The failed item to plan instead of ``item`` when an earlier source ``first`` has
    its id but differs from it in a secret other than a signature (``?key=file1`` and
    ``?key=file2``): ids hide secrets, so both would be one item and one would silently
    never be sent. The same URL signed again is the same recording: None. ``nth``: the
    how-manieth clash of this id in the run (URLs on the command line have no line to
    tell their rows apart)."""
    if same_recording(first, item.source):
        return None
    reason = (
        f"{redact_source(item.source)}: an earlier source differs from it only in a secret "
        "query value or password, which dgbatch does not store, so both would be one item; "
        "give each its own id (a .jsonl or .csv manifest)"
    )
    # named by its id, not the recording's name: a row that never has outputs must not
    # take a name from the item it clashed with (which then got its full name)
    numbered = item.id + (f"#{nth}" if nth > 1 else "")
    clash_id = f"clash:{item.origin or numbered}"
    return error_item(clash_id, item.source, clash_id, reason, item.origin, item.params, item.kind)


def same_recording(url: str, other: str) -> bool:
    """Whether two URLs (as given, or as the state keeps them, redacted) differ only in
    the values that change each time a URL is signed: one recording, signed again. The
    quick test splits the query on ``&``; one with ``;`` pairs (``?a=1;Expires=1``) is
    told by the ids (``url_id``), which read them."""
    if url == other or _unsigned(url) == _unsigned(other):
        return True
    return ";" in url and ";" in other and url_id(url) == url_id(other)


def _unsigned(url: str) -> str:
    """``url`` without the values that change at each signing."""
    head, _, query = url.partition("?")
    kept = [
        p
        for p in query.split("&")
        if unquote_plus(p.partition("=")[0]).lower() not in _SIGNING_KEYS
    ]
    return f"{head}?{'&'.join(kept)}"


def url_item(
    url: str, match: re.Match[str] | None, name_hint: str | None, params: Params, origin: str
) -> Item:
    """Build a URL item, or a failed one when Deepgram could not fetch it."""
    if name_hint is not None:
        item_id = f"id:{name_hint}"
    elif url_may_hold_secret(url):
        item_id = url_id(url)
    else:
        item_id = url  # nothing to redact: redact_url's own test, without its call
    if match is None:
        shown = redact_source(url)
        reason = f"{shown}: {_url_problem(url)}"
        return error_item(item_id, url, name_hint or shown, reason, origin, params, ItemKind.URL)
    name = name_hint if name_hint is not None else _url_name(match)
    # new_item and _URL: this is the hot path of a million-line manifest
    return new_item(item_id, url, _URL, name, params, None, "", None, origin)


def file_url_path(url: str) -> str | None:
    """Turn ``file:///abs/path`` into ``/abs/path``; None unless it names a local file."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.netloc not in ("", "localhost") or not parts.path:
        return None
    return unquote(parts.path)


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback address: the emulator's host, never proxied, and the
    only one plain ``http://`` may reach without ``--allow-insecure-http``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False
