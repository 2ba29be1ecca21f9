"""Scrub secrets from every piece of text that leaves the process.

Presigned S3/GCS/Azure URLs carry their signature in the query string, URLs
may carry ``user:password@``, and the Deepgram key travels in an
``Authorization: Token ...`` header. Any of these can end up in a log line, an
exception message, the state file or a report, so everything that leaves the
process goes through :func:`redact_text` or :func:`redact_source` first.

The functions here never raise: they run on error paths, where a second
exception would hide the first one.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote_plus

from batch.terminal import plain

__all__ = [
    "REDACTED",
    "SECRET_QUERY_KEYS",
    "SIGNING_QUERY_KEYS",
    "RedactingFilter",
    "is_secret_key",
    "may_hold_secret",
    "redact_message",
    "redact_source",
    "redact_text",
    "redact_url",
    "url_may_hold_secret",
    "was_redacted",
]

REDACTED = "REDACTED"

#: Query keys (compared lowercased) whose values sign a URL: AWS SigV4 and SigV2, GCS V4
#: and V2, Azure SAS, CloudFront, Alibaba OSS, Tencent COS, Cloudflare signed URLs
#: (``verify``), Akamai tokens (``hdnts``, ``hmac``). They change each time the URL is
#: signed. Only ever added to: migration m011 re-keys the URLs a new one redacts.
SIGNING_QUERY_KEYS: frozenset[str] = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "signature",
        "sig",
        "x-goog-signature",
        "x-goog-credential",
        "x-goog-security-token",
        "googleaccessid",
        "key-pair-id",
        "policy",
        "ossaccesskeyid",
        "x-oss-signature",
        "x-oss-credential",
        "x-oss-security-token",
        "q-signature",
        "q-ak",
        "verify",
        "hdnts",
        "hmac",
    }
)

#: Query keys (compared lowercased) whose values are credentials or signatures: the
#: signing keys above, and generic API keys and tokens.
SECRET_QUERY_KEYS: frozenset[str] = SIGNING_QUERY_KEYS | frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "key",
        "api_key",
        "apikey",
        "api-key",
        "password",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "md5",  # nginx secure_link's signature (or a file's digest: part of the recording)
        "sign",  # Tencent CDN's
    }
)

# Keys not listed above are still secret when their name says so (``X-Custom-Token``,
# ``db_password``, ``access_tokens``): substring match, lowercased. Over-eager on purpose
# (``secretary``, ``tokens_per_page``): a URL's id is its redacted form, so a key redacted
# once must stay redacted, or every state naming it would plan its items anew and pay.
_SECRET_KEY_MARKERS = (
    "signature", "token", "secret", "password", "passwd", "credential", "apikey", "api_key",
    "jwt",
)  # fmt: skip
# Two words of a name that make a secret together (``x-api-key``, ``access_key``).
_SECRET_KEY_PAIRS = frozenset({"apikey", "accesskey", "authkey", "secretkey", "privatekey"})
_KEY_WORD_RE = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

# Too short to replace blindly: replacing "ab" everywhere would shred the text.
_MIN_SECRET_LEN = 4

# Every pattern here runs on text we do not control (error messages, manifest
# lines), so none may backtrack quadratically: schemes are capped at 32
# characters and no unbounded run precedes a literal that may be missing.
_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]{0,31}:)//([^/?#]*)(.*)", re.DOTALL)
# No lookbehind on purpose: in "xhttps://u:p@h" the URL must still be found.
# A URL in prose does not end in the punctuation after it ("…?key=x: no such file"):
# its secret value ends before the colon, which stays in the text.
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s'\"<>`]*[^\s'\"<>`:,.;!?)\]]")
_AUTH_HEADER_RE = re.compile(
    r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?)((?:token|bearer|basic)\s+)?([^\s'\",;}]+)"
)
# ``Token <key>`` outside a header; the lookahead for a digit spares prose like "Token expired".
_TOKEN_RE = re.compile(r"\b(Token|Bearer|token|bearer)(\s+)(?=[^\s]*\d)([A-Za-z0-9._~+/=\-]{8,})")
# ``api_key=...``, ``DEEPGRAM_API_KEY=...``, ``password: ...``: the name may be
# any word ending in one of these, so only the ending is matched.
_ASSIGNMENT_RE = re.compile(
    r"(?i)(api[_-]?key|password|passwd|secret|access[_-]?token)(\s*[=:]\s*['\"]?)([^\s'\"&,;}]+)"
)

# A signing value outside a URL this module can split: percent-encoded (``%3D``), in a
# JSON string (``\u0026X-Amz-Signature=…``, ``\/``), or on its own in a message.
_SIGNING_RE = re.compile(
    r"(?i)(?:^|(?<=[?&\s'\"(])|(?<=%26)|(?<=%3f)|(?<=\\u0026))"  # where a query key starts
    r"(x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|signature|sig)(=|%3d)(?!REDACTED)((?:(?!%26)[^&\s'\"<>\\,;)])+)"
)

# A URL's password, up to its ``@`` whatever it holds: a ``'`` in it ended
# ``_URL_IN_TEXT_RE`` there (``url="http://u:Summer'26@proxy"`` in aiohttp's repr).
_USERINFO_RE = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]{0,31}://[^/\s@:'\"<>]{0,256}:)([^@\s/]{1,256})(?=@)"
)

# A whole URL percent-encoded inside text (``http%3A%2F%2Fuser%3Apass%40host``).
_ENCODED_URL_RE = re.compile(r"(?i)[a-z][a-z0-9+.\-]{0,31}%3A%2F%2F[^\s'\"<>&]+")

# What at least one of the patterns above (or ``redact_url``) needs in order to match,
# lowercased: without any of it, text passes through unchanged and the regexes need not
# run. Plain substring tests: a case-insensitive regex alternation is ten times slower.
_SECRET_HINTS = (
    "@", "?", "#", "apikey", "api_key", "api-key", "passw", "secret", "token", "bearer",
    "authorization", "signature", "credential", "sig=", "sig%3d", "%3a%2f%2f", "jwt", ":\\/\\/",
)  # fmt: skip


def is_secret_key(key: str, extra_keys: frozenset[str] = frozenset()) -> bool:
    """Tell whether a query key's value must not be shown (case-insensitive)."""
    lowered = key.strip().lower()
    if lowered in SECRET_QUERY_KEYS or lowered in extra_keys:
        return True
    if any(marker in lowered for marker in _SECRET_KEY_MARKERS):
        return True
    words = [word.lower() for word in _KEY_WORD_RE.findall(key)]
    return any(a + b in _SECRET_KEY_PAIRS for a, b in itertools.pairwise(words))


@lru_cache(maxsize=4096)
def _is_secret_raw_key(raw_key: str, extra_keys: frozenset[str]) -> bool:
    """Decide once per distinct key as written: presigned URLs repeat the same few keys."""
    return is_secret_key(unquote_plus(raw_key), extra_keys)


def _redact_pairs(query: str, extra_keys: frozenset[str]) -> str:
    """Replace secret values in ``k=v&k=v`` text (``;`` separates too, and so an HTML
    page's ``&amp;`` does), leaving every other byte as it was."""
    if "=" not in query:
        return query
    semicolons = ";" in query  # rare: split on "&" alone, faster, for every presigned URL
    parts = _PAIR_SEPARATOR_RE.split(query) if semicolons else query.split("&")
    redacted = False  # the pair before was: what follows it after a ";" (COS's
    for index in range(0, len(parts), 2 if semicolons else 1):  # "q-sign-time=1;2") too
        key, sep, value = parts[index].partition("=")
        if not sep and redacted and parts[index - 1] == ";":
            parts[index] = REDACTED
            continue
        redacted = False
        if not (sep and value):
            continue
        if _is_secret_raw_key(key, extra_keys):
            parts[index], redacted = f"{key}={REDACTED}", True
        elif "%" in value:
            parts[index] = f"{key}={_redact_encoded(value, extra_keys)}"
    return "".join(parts) if semicolons else "&".join(parts)


_PAIR_SEPARATOR_RE = re.compile(r"([&;])")


def _redact_encoded(value: str, extra_keys: frozenset[str]) -> str:
    """A query value that holds a URL or a query of its own, percent-encoded (a proxy's
    ``?src=https%3A%2F%2F…%26X-Amz-Signature%3D…``), without that one's secrets: encoded
    again whole when it had any, as it was otherwise."""
    decoded = unquote_plus(value)
    if decoded == value or not ("=" in decoded or "@" in decoded):
        return value
    inner = redact_url(decoded, extra_keys=extra_keys) if "://" in decoded else None
    if inner is None:
        inner = _redact_pairs(decoded, extra_keys)
    return value if inner == decoded else quote(inner, safe="")


def _redact_tail(tail: str, extra_keys: frozenset[str]) -> str:
    """Redact the query and the fragment (OAuth puts tokens there) of a URL's tail."""
    before_fragment, hash_sign, fragment = tail.partition("#")
    path, question, query = before_fragment.partition("?")
    redacted = path + question + _redact_pairs(query, extra_keys)
    return redacted + hash_sign + _redact_pairs(fragment, extra_keys)


def url_may_hold_secret(url: str) -> bool:
    """Whether a URL has anywhere a secret can hide (userinfo, a query, a fragment): the
    one test ``redact_url`` and the planner's hot paths share, so that a URL they store
    as it is could never have been redacted."""
    return "@" in url or "?" in url or "#" in url


def redact_url(url: str, *, extra_keys: frozenset[str] = frozenset()) -> str:
    """Return ``url`` safe to show: no userinfo, no signature or key values.

    Parsing is done by hand rather than with ``urlsplit`` so that a URL it would
    reject (a bad IPv6 literal) is still redacted and every non-secret byte is
    kept exactly as written.

    Args:
        url: any text; text that is not ``scheme://...`` comes back unchanged.
        extra_keys: lowercased query keys to blank as well, e.g. the expiry
            fields that make presigned URLs differ from one run to the next.
    """
    if not url_may_hold_secret(url) or url[:5].lower() == "s3://":
        return url  # the common case, and the cheap one; an S3 key holds no credential
    try:
        match = _URL_RE.fullmatch(url)
        if match is not None:
            return _redact_parts(match, extra_keys)
        if "://" not in url:
            return url
        # Not a URL from its first character (a 40-letter "scheme", leading
        # junk): redact whatever URL-shaped text it contains instead.
        return _URL_IN_TEXT_RE.sub(lambda m: redact_url(m.group(0), extra_keys=extra_keys), url)
    except Exception:  # pragma: no cover - defensive: never leak, never raise
        return f"{url.partition(':')[0]}://{REDACTED}"


def _redact_parts(match: re.Match[str], extra_keys: frozenset[str]) -> str:
    """Rebuild a split URL without its userinfo and secret values."""
    scheme, authority, tail = match.groups()
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    return f"{scheme}//{authority}{_redact_tail(tail, extra_keys)}"


def redact_source(source: str) -> str:
    """Return what may be stored or shown for a source (URLs lose their secrets)."""
    return redact_url(source) if "://" in source else source


def was_redacted(stored: str) -> bool:
    """Whether a source as the state keeps it (``redact_source``) had secrets taken out:
    its ``REDACTED`` stands where redaction puts one (a secret query value, a password),
    not in the URL's own text (``/REDACTED.wav``)."""
    if REDACTED not in stored:
        return False
    probe = stored.replace(REDACTED, "x")
    return redact_source(probe) != probe


def _replace_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace each long-enough secret in any case, and as it reads percent-encoded,
    JSON-escaped or in base64 (a proxy echoing a request), longest first so overlapping
    ones vanish whole."""
    pattern = _secrets_pattern(tuple(secrets))
    return text if pattern is None else pattern.sub(REDACTED, text)


@lru_cache(maxsize=16)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    forms = {
        form for secret in secrets if len(secret) >= _MIN_SECRET_LEN for form in _forms(secret)
    }
    if not forms:
        return None
    alternatives = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE)


def _forms(secret: str) -> set[str]:
    encoded = base64.b64encode(secret.encode()).decode()
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        encoded if len(secret) % 3 == 0 else encoded.rstrip("="),
    }


def _auth_header(match: re.Match[str]) -> str:
    """Keep the header name and scheme, drop the credential."""
    return f"{match.group(1)}{match.group(2) or ''}{REDACTED}"


def may_hold_secret(text: str) -> bool:
    """False when ``redact_text`` (without explicit secrets) would return ``text`` as it
    is: a few substring tests instead of five regex substitutions."""
    lowered = text.lower()
    return any(hint in lowered for hint in _SECRET_HINTS)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with known secrets, URL credentials and auth headers removed.

    Args:
        text: a log message, an exception message, a report cell.
        secrets: exact strings to remove wherever they appear (the API key);
            strings shorter than 4 characters are ignored.
    """
    try:
        text = _replace_secrets(text, secrets)
        if not may_hold_secret(text):
            return text  # what every pattern below needs is absent: the common, cheap case
        return _redact_patterns(text)
    except Exception:  # pragma: no cover - defensive: never leak, never raise
        return REDACTED


def redact_message(text: str, secrets: Iterable[str] = ()) -> str:
    """Return one of dgbatch's own messages without known secrets and URL secrets. The
    prose patterns of :func:`redact_text` are for servers' text: here they would eat
    words of ours (``DEEPGRAM_API_KEY: the key …``), and a server's text in a message
    went through ``redact_text`` already."""
    try:
        return _redact_urls(_replace_secrets(text, secrets))
    except Exception:  # pragma: no cover - defensive: never leak, never raise
        return REDACTED


def _redact_urls(text: str) -> str:
    """URLs in ``text`` without their secrets, also a whole URL percent-encoded in it
    (``http%3A%2F%2Fuser%3Apass%40host``: encoded again without them)."""
    if "%" in text:
        text = _ENCODED_URL_RE.sub(lambda m: _redact_encoded(m.group(0), frozenset()), text)
    if "://" in text:
        text = _USERINFO_RE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
        text = _URL_IN_TEXT_RE.sub(lambda m: redact_url(m.group(0)), text)
    return text


def _redact_patterns(text: str) -> str:
    """URL credentials, auth headers, ``Token …`` and ``api_key=…`` assignments."""
    try:
        if ":\\/\\/" in text:  # a JSON body's escaped slashes: "http:\/\/user:pass@…"
            text = text.replace("\\/", "/")
        text = _redact_urls(text)
        text = _AUTH_HEADER_RE.sub(_auth_header, text)
        text = _TOKEN_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        text = _ASSIGNMENT_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _SIGNING_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    except Exception:  # pragma: no cover - defensive: never leak, never raise
        return REDACTED


class RedactingFilter(logging.Filter):
    """A logging filter that makes each record safe before any handler sees it.

    Attach it to handlers (not only loggers) so records propagated from child
    loggers are scrubbed too. The message is formatted once with its args and
    the args are dropped, because a secret can hide in either.
    """

    def __init__(self, secrets: Iterable[str] = (), name: str = "") -> None:
        super().__init__(name)
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the message
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact_text(message, self._secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self._secrets)
        return True


def whole_words(text: str, limit: int) -> str | None:
    """The first whole words of ``text`` that fit in ``limit`` characters, with `` …`` when
    some are left out: a secret the text echoes is either whole, so redaction still finds
    it, or left out, never cut in two."""
    kept: list[str] = []
    size = 0
    words = plain(text).split()
    for word in words:
        size += len(word) + bool(kept)
        if size > limit:
            break
        kept.append(word)
    if not kept:
        return None
    return " ".join(kept) + (" …" if len(kept) < len(words) else "")
