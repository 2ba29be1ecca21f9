"""Tests for batch.redact: nothing secret leaves the process."""

from __future__ import annotations

import logging
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.redact import (
    REDACTED,
    SECRET_QUERY_KEYS,
    RedactingFilter,
    _redact_patterns,
    redact_source,
    redact_text,
    redact_url,
    was_redacted,
)

SIGV4 = (
    "https://bucket.s3.us-east-1.amazonaws.com/calls/a.wav"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
    "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLETOKEN"
    "&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)
SIGV4_REDACTED = (
    "https://bucket.s3.us-east-1.amazonaws.com/calls/a.wav"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=REDACTED"
    "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
    "&X-Amz-Security-Token=REDACTED"
    "&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=REDACTED"
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (SIGV4, SIGV4_REDACTED),
        (
            "https://b.s3.amazonaws.com/k.mp3?AWSAccessKeyId=AKIAEXAMPLE&Expires=1700000000"
            "&Signature=abc%2Bdef%3D",
            "https://b.s3.amazonaws.com/k.mp3?AWSAccessKeyId=REDACTED&Expires=1700000000"
            "&Signature=REDACTED",
        ),
        (
            "https://acct.blob.core.windows.net/c/a.wav?sv=2022-11-02&ss=b&srt=o&sp=r"
            "&se=2026-01-01T00:00:00Z&st=2025-01-01T00:00:00Z&spr=https&sig=abc%2Fdef%3D",
            "https://acct.blob.core.windows.net/c/a.wav?sv=2022-11-02&ss=b&srt=o&sp=r"
            "&se=2026-01-01T00:00:00Z&st=2025-01-01T00:00:00Z&spr=https&sig=REDACTED",
        ),
        (
            "https://storage.googleapis.com/b/a.flac?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20260101"
            "&X-Goog-Date=20260101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host"
            "&X-Goog-Signature=9f8e7d",
            "https://storage.googleapis.com/b/a.flac?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=REDACTED"
            "&X-Goog-Date=20260101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host"
            "&X-Goog-Signature=REDACTED",
        ),
        (
            "https://storage.googleapis.com/b/a.flac?GoogleAccessId=svc@p.iam&Expires=1&Signature=x",
            "https://storage.googleapis.com/b/a.flac?GoogleAccessId=REDACTED&Expires=1"
            "&Signature=REDACTED",
        ),
        ("https://user:pass@host.example/a.mp3", "https://REDACTED@host.example/a.mp3"),
        ("https://token@host.example/a.mp3?v=2", "https://REDACTED@host.example/a.mp3?v=2"),
        ("https://u:p@ss@host.example:8443/a", "https://REDACTED@host.example:8443/a"),
        ("https://cdn.example/a.mp3?v=2&lang=en", "https://cdn.example/a.mp3?v=2&lang=en"),
        (
            "https://cdn.example/a.mp3?api_key=k1&key=k2",
            "https://cdn.example/a.mp3?api_key=REDACTED&key=REDACTED",
        ),
        ("https://cdn.example/a.mp3?SIG=abc", "https://cdn.example/a.mp3?SIG=REDACTED"),
        (
            "https://cdn.example/a.mp3?x-custom-token=abc",
            "https://cdn.example/a.mp3?x-custom-token=REDACTED",
        ),
        ("https://cdn.example/a.mp3?token=", "https://cdn.example/a.mp3?token="),
        (
            "https://cdn.example/cb#access_token=abc&state=1",
            "https://cdn.example/cb#access_token=REDACTED&state=1",
        ),
        ("https://[bad/a.mp3?sig=abc", "https://[bad/a.mp3?sig=REDACTED"),
        ("s3://bucket/key.wav", "s3://bucket/key.wav"),
        ("x" * 40 + "://u:p@h/a?sig=1", "x" * 40 + "://REDACTED@h/a?sig=REDACTED"),
        ("see https://u:p@h/a", "see https://REDACTED@h/a"),
        ("calls/a.wav", "calls/a.wav"),
        ("", ""),
        ("not a url ?sig=abc", "not a url ?sig=abc"),
        # the rest of a secret after a ";" (it was left in clear), and other schemes'
        ("https://h/a?token=abc;def&x=1;2", "https://h/a?token=REDACTED;REDACTED&x=1;2"),
        ("https://h/a?q-sign-time=1;2&q-signature=f00d", "https://h/a?q-sign-time=1;2&q-signature=REDACTED"),
        ("https://h/a?verify=1700000000-f00d", "https://h/a?verify=REDACTED"),
        ("https://h/a?hdnts=exp%3D1~hmac%3Df00d", "https://h/a?hdnts=REDACTED"),
        ("https://h/a?OSSAccessKeyId=id&Expires=1&Signature=f00d",
         "https://h/a?OSSAccessKeyId=REDACTED&Expires=1&Signature=REDACTED"),
    ],
)  # fmt: skip
def test_redact_url_table(url: str, expected: str) -> None:
    """Signatures, credentials and userinfo are blanked while everything else stays byte-exact."""
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("stored", "redacted"),
    [
        ("http://h/REDACTED.wav", False),  # the URL's own text
        ("http://h/a.wav?x=REDACTED", False),
        ("http://h/REDACTED.wav?token=REDACTED", True),
        ("http://REDACTED@h/a.wav", True),
        ("https://h/a.wav?X-Amz-Signature=REDACTED&X-Amz-Date=1", True),
        ("/calls/REDACTED.wav", False),
    ],
)
def test_was_redacted_tells_a_taken_secret_from_the_urls_text(stored: str, redacted: bool) -> None:
    """A source the state keeps had a secret taken out only where redaction puts one."""
    assert was_redacted(stored) is redacted


def test_redact_url_extra_keys() -> None:
    """Extra keys are blanked too, so callers can drop volatile expiry fields."""
    url = "https://h/a?X-Amz-Date=1&v=2"
    assert (
        redact_url(url, extra_keys=frozenset({"x-amz-date"}))
        == "https://h/a?X-Amz-Date=REDACTED&v=2"
    )


def test_secret_keys_are_lowercase() -> None:
    """The key set is compared lowercased, so every entry must be lowercase."""
    assert all(key == key.lower() for key in SECRET_QUERY_KEYS)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 65536,
        "a-" * 32768,
        "a:" * 32768,
        "a" * 65536 + "://",
        "Token " + "a" * 65536,
        "password" + " " * 65536,
        "https://" + "@" * 65536,
        "https://h/?" + "a=b&" * 16384,
    ],
    ids=lambda text: repr(text[:10]),
)
def test_redaction_is_linear_on_hostile_text(text: str) -> None:
    """Long adversarial text is redacted in well under a second (no regex backtracking blowup)."""
    started = time.perf_counter()
    redact_text(text, ["secret"])
    redact_url(text)
    assert time.perf_counter() - started < 1.0


@given(st.text())
def test_redact_url_never_raises(text: str) -> None:
    """Any text at all goes through redact_url and redact_text without an exception."""
    assert isinstance(redact_url(text), str)
    assert isinstance(redact_text(text, [text]), str)


SECRETISH = st.sampled_from(
    ["http://", "https://u:p@", "?sig=", "#access_token=", "Token ", "Authorization: ",
     "api_key:", "API-KEY=", "apiKey:", "Bearer ", "PassWord:", "secret=", "accessToken=",
     "1234567890", " ", "@", "X-Amz-Signature=", "sig%3D", "Signature%3d", "%26", ")",
     "\t", "x", "/a.wav", ":", ";", "&"]
)  # fmt: skip


@given(st.lists(st.one_of(SECRETISH, st.text(max_size=8)), max_size=12).map("".join))
def test_the_quick_check_never_skips_a_redaction(text: str) -> None:
    """Text the quick check lets through unchanged is text every pattern leaves alone."""
    assert redact_text(text) == _redact_patterns(text)


@pytest.mark.parametrize(
    "text",
    ["https://host/a.wav", "audio/x 1.wav", "s3://bucket/key.mp3", "internal error: KeyError"],
)
def test_plain_text_takes_the_quick_path(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources and messages with nothing secret-shaped skip the regexes (report speed)."""
    monkeypatch.setattr("batch.redact._redact_patterns", lambda text: pytest.fail(text))
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("key is dg_0123456789 here", ["dg_0123456789"], "key is REDACTED here"),
        ("short abc stays", ["abc"], "short abc stays"),
        ("empty secret", [""], "empty secret"),
        (f"failed: GET {SIGV4} 403", [], f"failed: GET {SIGV4_REDACTED} 403"),
        ("url 'https://u:p@h/x' quoted", [], "url 'https://REDACTED@h/x' quoted"),
        ("Authorization: Token 0123abcd4567", [], "Authorization: Token REDACTED"),
        ("{'Authorization': 'Token 0123abcd4567'}", [], "{'Authorization': 'Token REDACTED'}"),
        ("authorization=Bearer eyJhbGci0iJIUzI1", [], "authorization=Bearer REDACTED"),
        ("sent Token 3f2a9c0b1d2e3f4a5b6c", [], "sent Token REDACTED"),
        ("Token expired, retrying", [], "Token expired, retrying"),
        ("DEEPGRAM_API_KEY=abc123xyz", [], "DEEPGRAM_API_KEY=REDACTED"),
        ("password: hunter22", [], "password: REDACTED"),
        ("nothing to hide", [], "nothing to hide"),
        ("abcdabcdef", ["abcd", "abcdabcdef"], "REDACTED"),
        ("m:2: https://h/a?key=k1: gone", [], "m:2: https://h/a?key=REDACTED: gone"),
        ("see https://h/a?token=t0ken, then", [], "see https://h/a?token=REDACTED, then"),
        ("(at https://h/a?sig=s1g).", [], "(at https://h/a?sig=REDACTED)."),
        # a signature a URL split cannot reach: percent-encoded, JSON-escaped, on its own
        (
            "GET https%3A%2F%2Fb.s3%2Fk%3FX-Amz-Signature%3Dabc123def%26x%3D1",
            [],
            "GET https%3A%2F%2Fb.s3%2Fk%3FX-Amz-Signature%3DREDACTED%26x%3D1",
        ),
        (
            '{"url": "https://b.s3/k?a=1\\u0026X-Amz-Signature=abc123\\u0026b=2"}',
            [],
            '{"url": "https://b.s3/k?a=1\\u0026X-Amz-Signature=REDACTED\\u0026b=2"}',
        ),
        ("x-amz-credential=AKIA0000/2026 refused", [], "x-amz-credential=REDACTED refused"),
        ("Signature=0f1e2d3c, Expires=1", [], "Signature=REDACTED, Expires=1"),
        ("the signal is fine; design sig", [], "the signal is fine; design sig"),
        # a path or an id that holds such a word is no query: kept whole in reports
        ("/data/sig=2024/a.wav: no such file", [], "/data/sig=2024/a.wav: no such file"),
        ("s3://b/calls/signature=abc/day1/x.wav", [], "s3://b/calls/signature=abc/day1/x.wav"),
        ("id:sig=7", [], "id:sig=7"),
        # the key as a proxy may echo it: in another case, encoded, escaped, in base64
        ("got DGKEY_0123abcd back", ["dgkey_0123ABCD"], "got REDACTED back"),
        ("q=k%2By%2Fz%3D1", ["k+y/z=1"], "q=REDACTED"),
        ('{"echo": "a\\"b"}', ['a"b-key'], '{"echo": "a\\"b"}'),
        ('{"echo": "a\\"b-key"}', ['a"b-key'], '{"echo": "REDACTED"}'),
        ("Basic ZGdfMDEyMzQ1Njc4OQ", ["dg_0123456789"], "Basic REDACTED"),
        # HTML's &amp; and ; between query pairs
        (
            "<a href='https://h/a.wav?x=1&amp;sig=s3cr3t'>",
            [],
            "<a href='https://h/a.wav?x=1&amp;sig=REDACTED'>",
        ),
        ("https://h/a.wav?x=1;token=t0k", [], "https://h/a.wav?x=1;token=REDACTED"),
        # a JSON body's escaped slashes; a whole URL percent-encoded in prose
        ('{"src": "http:\\/\\/u:pw@h\\/a.wav"}', [], '{"src": "http://REDACTED@h/a.wav"}'),
        (
            "bad http%3A%2F%2Fu%3Apw%40h%2Fa.wav here",
            [],
            "bad http%3A%2F%2FREDACTED%40h%2Fa.wav here",
        ),
        # a password holding a quote, in aiohttp's repr of a proxy's URL
        (
            'url="http://proxyuser:Summer\'2026@127.0.0.1:3128"',
            [],
            'url="http://REDACTED@127.0.0.1:3128"',
        ),
        ("http://h:3128/x and h:p@q", [], "http://h:3128/x and h:p@q"),
        # a bearer token quoted outside a header; prose that names a token keeps its words
        ("upstream said: Bearer abcdef123456", [], "upstream said: Bearer REDACTED"),
        ("token validation failed", [], "token validation failed"),
    ],
)
def test_redact_text_table(text: str, secrets: list[str], expected: str) -> None:
    """Given secrets, URLs, auth headers and key assignments are scrubbed from free text."""
    assert redact_text(text, secrets) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("https://u:p@h/a.mp3?sig=1", "https://REDACTED@h/a.mp3?sig=REDACTED"),
        ("/data/calls/a.wav", "/data/calls/a.wav"),
        ("s3://b/k.wav", "s3://b/k.wav"),
        # an S3 key may hold '?': it is a name, never a credential
        ("s3://b/x?token=1.wav", "s3://b/x?token=1.wav"),
        # a presigned URL inside another one's query keeps its path, not its signature
        (
            "https://p/f?src=https%3A%2F%2Fb.s3%2Fk.wav%3FX-Amz-Signature%3Dabc%26v%3D1&n=2",
            "https://p/f?src=https%3A%2F%2Fb.s3%2Fk.wav%3FX-Amz-Signature%3DREDACTED%26v%3D1&n=2",
        ),
        ("https://p/f?q=a%3Dtoken%3Dt1", "https://p/f?q=a%3Dtoken%3Dt1"),
        ("https://p/f?q=token%3Dt1%26a%3D2", "https://p/f?q=token%3DREDACTED%26a%3D2"),
        ("https://p/f?q=a%20b&v=1", "https://p/f?q=a%20b&v=1"),
    ],
)
def test_redact_source(source: str, expected: str) -> None:
    """Sources keep their shape; only URL secrets go."""
    assert redact_source(source) == expected


def _record(msg: str, *args: object) -> logging.LogRecord:
    """Build a log record the way a logger call would."""
    return logging.LogRecord("batch", logging.INFO, __file__, 1, msg, args, None)


def test_filter_redacts_message_and_args() -> None:
    """A secret passed as a %-argument is removed from the formatted message."""
    record = _record("sending %s with key %s", SIGV4, "dg_secret_key_1234")
    assert RedactingFilter(["dg_secret_key_1234"]).filter(record)
    assert record.getMessage() == f"sending {SIGV4_REDACTED} with key REDACTED"
    assert record.args is None


def test_filter_survives_bad_format() -> None:
    """A record whose args do not fit its format string is still logged, redacted."""
    record = _record("value %d", "dg_secret_key_1234")
    RedactingFilter(["dg_secret_key_1234"]).filter(record)
    assert "dg_secret_key_1234" not in record.getMessage()


def test_filter_redacts_tracebacks() -> None:
    """A secret inside an exception's message does not reach the formatted traceback."""
    try:
        raise RuntimeError("boom https://u:p@h/x?sig=abc")
    except RuntimeError:
        import sys

        record = logging.LogRecord("b", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert "sig=abc" not in formatted
    assert "u:p@" not in formatted


def test_filter_scrubs_its_secrets_through_a_real_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A secret given to the filter is scrubbed from records through a real handler."""
    logger = logging.getLogger("batch.test_redact")
    redacting = RedactingFilter(("late_secret_value",))
    caplog.handler.addFilter(redacting)
    try:
        logger.warning("key=%s", "late_secret_value")
    finally:
        caplog.handler.removeFilter(redacting)
    assert "late_secret_value" not in caplog.text
    assert "REDACTED" in caplog.text
    assert REDACTED == "REDACTED"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("X-Custom-Token", True),
        ("db_password", True),
        ("authtoken", True),
        ("accessToken", True),
        ("access_key", True),
        ("APIKey", True),
        ("x-api-key", True),
        ("jwt", True),
        ("auth_key", True),
        ("signature_series", True),
        # once redacted, always: a URL's id is its redacted form (see the state's m007)
        ("secretary", True),
        ("tokens_per_page", True),
        ("access_tokens", True),
        ("Password1", True),
        ("lang", False),
        ("keyword", False),
        ("monkey", False),
    ],
)
def test_a_key_is_secret_by_its_name(key: str, secret: bool) -> None:
    """A name holding a secret's name, or two words that make one (``x-api-key``)."""
    assert (redact_url(f"https://h/a.wav?{key}=v1") == f"https://h/a.wav?{key}=REDACTED") == secret
