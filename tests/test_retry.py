"""Retry classification, Retry-After parsing and backoff: pure functions, table-driven."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from batch import retry
from batch.attempts import _gave_up
from batch.emulator import KEYWORDS_ON_NOVA3, build_response
from batch.retry import (
    MAX_RETRY_AFTER,
    Action,
    Decision,
    backoff,
    classify_response,
    parse_error_body,
    parse_retry_after,
    retry_delay,
)
from batch.transcripts import parse_transcript

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
VALID = json.dumps(
    build_response(request_id="r-1", sha256="ab" * 32, size=10, duration=1.0, params=())
).encode()


_HOST = "The remote server hosting the media"


def _err(code: str, msg: str, request_id: str = "req-9") -> bytes:
    return json.dumps({"err_code": code, "err_msg": msg, "request_id": request_id}).encode()


@pytest.mark.parametrize(
    ("status", "body", "action"),
    [
        (200, VALID, Action.SUCCEED),
        (200, VALID[: len(VALID) // 2], Action.RETRY),
        (200, b"\x00\x8b\xff<!-- not json -->\x89PNG", Action.RETRY),
        (200, b"", Action.RETRY),
        (200, b"[1, 2]", Action.RETRY),
        (400, _err("Bad Request", "corrupt or unsupported data"), Action.FAIL),
        (400, _err("REMOTE_CONTENT_ERROR", _HOST + " failed to return valid data"), Action.RETRY),
        (400, _err("REMOTE_CONTENT_ERROR", _HOST + " returned a server error: 503"), Action.RETRY),
        (400, _err("REMOTE_CONTENT_ERROR", _HOST + " returned a client error: 429"), Action.RETRY),
        (400, _err("REMOTE_CONTENT_ERROR", _HOST + " returned a client error: 404"), Action.FAIL),
        (400, _err("REMOTE_CONTENT_ERROR", _HOST + " returned a client error: 403"), Action.FAIL),
        (400, _err("REMOTE_CONTENT_ERROR", "URL must be publicly routable."), Action.FAIL),
        (400, _err("Bad Request", _HOST + " failed to return valid data"), Action.FAIL),
        (422, _err("REMOTE_CONTENT_ERROR", _HOST + " failed to return valid data"), Action.FAIL),
        (401, _err("INVALID_AUTH", "Invalid credentials."), Action.FATAL),
        (402, _err("ASR_PAYMENT_REQUIRED", "no credits"), Action.FATAL),
        (403, _err("INSUFFICIENT_PERMISSIONS", "no access"), Action.FATAL),
        (404, _err("NOT_FOUND", "no such path"), Action.MISDIRECTED),  # a wrong --api-url
        (404, b"404 page not found", Action.MISDIRECTED),
        (408, _err("SLOW_UPLOAD", "Request upload timeout."), Action.RETRY),
        (411, _err("LENGTH_REQUIRED", "Content-Length required"), Action.FAIL),
        (413, _err("PAYLOAD_TOO_LARGE", "too large"), Action.FAIL),
        (414, _err("URI_TOO_LONG", "too long"), Action.FAIL),
        (415, _err("UNSUPPORTED_MEDIA_TYPE", "bad type"), Action.FAIL),
        (422, _err("UNPROCESSABLE", "other 4xx"), Action.FAIL),
        (429, _err("TOO_MANY_REQUESTS", "slow down"), Action.RETRY),
        (499, _err("CLIENT_CLOSED_REQUEST", "closed"), Action.RETRY),
        (500, _err("INTERNAL_SERVER_ERROR", "oops"), Action.RETRY),
        (501, b"", Action.RETRY),
        (502, b"<html><title>502 Bad Gateway</title></html>", Action.RETRY),
        (503, b'{"error_code": "Service Unavailable", "err_msg": "later"}', Action.RETRY),
        (504, b"<html><title>504 Gateway Time-out</title></html>", Action.RETRY),
        (301, b"<html>Moved Permanently</html>", Action.MISDIRECTED),
        (302, b"", Action.MISDIRECTED),
        (307, b"", Action.MISDIRECTED),
        (308, b"", Action.MISDIRECTED),
    ],
)
def test_classify_response_follows_the_retry_table(
    status: int, body: bytes, action: Action
) -> None:
    """Every status of DESIGN's retry rules gets its documented action."""
    decision = classify_response(status, body)
    assert decision.action is action
    if action is Action.SUCCEED:
        assert decision.response is not None
        assert decision.response["metadata"]["request_id"] == "r-1"
    else:
        assert decision.response is None
        assert decision.reason.startswith("HTTP" if status != 200 else "200")


def test_callback_acknowledgement_is_not_resent() -> None:
    """A callback-mode 200 ``{"request_id"}`` was accepted and billed: fail, never pay twice."""
    decision = classify_response(200, b'{"request_id": "cb-1"}')
    assert decision.action is Action.FAIL
    assert decision.request_id == "cb-1"
    assert "callback" in decision.reason


@pytest.mark.parametrize(
    ("status", "body", "code", "message", "request_id"),
    [
        (400, _err("Bad Request", "corrupt data", "r1"), "Bad Request", "corrupt data", "r1"),
        (
            503,
            b'{"error_code": "Service Unavailable", "err_msg": "Please try again later"}',
            "Service Unavailable",
            "Please try again later",
            None,
        ),
        (
            400,
            b'{"category": "INVALID_JSON", "message": "Invalid JSON submitted.", "details": "x"}',
            "INVALID_JSON",
            "Invalid JSON submitted. (x)",  # the details say what was wrong
            None,
        ),
        (
            502,
            b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>\r\n",
            None,
            "<html> <head><title>502 Bad Gateway</title></head> </html>",
            None,
        ),
        (500, b"upstream connect error", None, "upstream connect error", None),
        (500, b"", None, None, None),
        (500, b"   \n", None, None, None),
        (500, b'["a list"]', None, '["a list"]', None),
        (500, b"\xff\xfe broken utf-8", None, "\ufffd\ufffd broken utf-8", None),
        (
            502,
            b"<p>" + b"x" * 190 + b" sk-0123456789abcdef</p>",
            None,
            "<p>" + "x" * 190 + " …",
            None,
        ),
        (502, b"a " * 150, None, " ".join("a" * 100) + " …", None),
        # JSON messages on one line, a runaway one cut by whole words at 1,000
        (
            400,
            _err("Bad Request", "two  spaces\nand a line", "r2"),
            "Bad Request",
            "two spaces and a line",
            "r2",
        ),
        # no control character reaches a terminal (an OSC retitles it, a line break or a
        # carriage return forges a line of the summary); a request id is an id or nothing
        (
            401,
            _err("BAD\x1b[2J", "\x1b]0;owned\x07\nstate: 1 done\r", "Token sekretKEY0123"),
            "BAD [2J",
            "]0;owned state: 1 done",
            None,
        ),
        (502, b"<p>\x1b]0;x\x07\xc2\x9bhi</p>", None, "<p> ]0;x hi</p>", None),
        (400, _err("Bad", "m", "1f2e-4a_b.c:9"), "Bad", "m", "1f2e-4a_b.c:9"),
        (400, _err("Bad", "m", "a" * 129), "Bad", "m", None),
        (400, b'{"err_code": "Bad", "err_msg": "m", "request_id": 7}', "Bad", "m", None),
        (
            400,
            _err("Bad Request", "word " * 300 + "sk-0123456789abcdef", "r3"),
            "Bad Request",
            " ".join(["word"] * 200) + " …",
            "r3",
        ),
        (400, _err("Bad Request", "x" * 1500, "r4"), "Bad Request", None, "r4"),
    ],
)
def test_error_bodies_of_every_shape_are_read(
    status: int, body: bytes, code: str | None, message: str | None, request_id: str | None
) -> None:
    """err_code/err_msg, error_code (503), category/message, HTML, text and empty bodies;
    a gateway's text and a runaway JSON message are quoted by whole words (a key they echo
    is never cut in two, where redaction could no longer recognise it)."""
    err = parse_error_body(body)
    assert (err.code, err.message, err.request_id) == (code, message, request_id)
    decision = classify_response(status, body)
    assert decision.err_code == (code or f"http_{status}")  # a gateway's page has none
    assert decision.request_id == request_id
    expected = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    assert decision.reason == expected


def test_a_retry_after_waits_ten_minutes_at_most() -> None:
    """The table below compares with the constant; REFERENCE promises ten minutes."""
    assert parse_retry_after("99999") == 600.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        ("0", 0.0),
        (" 1.5 ", 1.5),
        ("-3", None),
        ("-inf", None),
        ("-0", 0.0),
        ("99999", MAX_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("nan", None),
        ("soon", None),
        ("Thu, 99 Foo 2026", None),
        ("", None),
        (None, None),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
        ("Fri, 27 Nov 2026 12:00:10", 10.0),  # no zone: read as UTC
        (format_datetime(NOW + timedelta(days=1), usegmt=True), MAX_RETRY_AFTER),
    ],
)
def test_retry_after_is_parsed_clamped_or_ignored(value: str | None, seconds: float | None) -> None:
    """Delta-seconds and HTTP dates are read, garbage ignored, negative and huge values clamped."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_is_kept_only_for_retryable_answers() -> None:
    """A 429 carries its Retry-After into the decision; a 400 or 401 never waits."""
    assert classify_response(429, b"", "7").retry_after == 7.0
    assert classify_response(503, b"", "garbage").retry_after is None
    assert classify_response(400, b"", "7").retry_after is None
    assert classify_response(401, b"", "7").retry_after is None


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (4, 1.0, 60.0, 8.0),
        (7, 1.0, 60.0, 60.0),
        (3, 0.5, 60.0, 2.0),
        (3, 1.0, 3.0, 3.0),
        (0, 1.0, 60.0, 1.0),
        (-5, 1.0, 60.0, 1.0),
        (64, 1.0, 60.0, 60.0),
        (1025, 1.0, 60.0, 60.0),
        (10_000, 1.0, 60.0, 60.0),
    ],
)
def test_backoff_is_full_jitter_below_the_doubling_ceiling(
    attempt: int, base: float, cap: float, ceiling: float
) -> None:
    """The delay is uniform in [0, min(cap, base * 2**(attempt-1))], seeded RNG reproducible."""
    delays = [backoff(attempt, base=base, cap=cap, rng=random.Random(seed)) for seed in range(300)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert min(delays) < ceiling * 0.05, "full jitter reaches down to zero"
    assert max(delays) > ceiling * 0.95, "full jitter reaches up to the ceiling"
    assert backoff(attempt, base=base, cap=cap, rng=random.Random(42)) == random.Random(42).uniform(
        0.0, ceiling
    )


def test_backoff_does_not_overflow_at_attempt_ten_thousand() -> None:
    """Regression: a huge attempt number gives the cap, not an OverflowError."""
    assert 0.0 <= backoff(10_000, base=1.0, cap=60.0, rng=random.Random(1)) <= 60.0
    assert 0.0 <= backoff(10**9, base=1e300, cap=5.0) <= 5.0


JITTERED = random.Random(5).uniform(0.0, 4.0)  # the third attempt's backoff, base 1 s


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Decision(Action.RETRY, retry_after=30.0), 30.0),
        (Decision(Action.RETRY, retry_after=JITTERED / 2), JITTERED),
        # "Retry-After: 0" under load: retried at once, every item failed within seconds
        (Decision(Action.RETRY, retry_after=0.0), JITTERED),
        (Decision(Action.RETRY), JITTERED),
    ],
)
def test_retry_after_is_a_floor_under_the_backoff(decision: Decision, expected: float) -> None:
    """Retry-After is never waited less than; the jittered backoff still applies, so a
    server saying 0 (or too little) is not retried in a tight loop."""
    assert retry_delay(decision, 3, base=1.0, cap=60.0, rng=random.Random(5)) == expected


@pytest.mark.parametrize(
    "body",
    [VALID, json.dumps({"metadata": {}, "results": {}}).encode()],
)
def test_parse_transcript_accepts_deepgram_shapes(body: bytes) -> None:
    """A body with ``metadata`` and ``results`` objects is a transcript."""
    assert parse_transcript(body) is not None


@pytest.mark.parametrize(
    "body",
    [b"", b"null", b"{}", b'{"request_id": "x"}', b'{"metadata": [], "results": {}}', b"\xff"],
)
def test_parse_transcript_refuses_everything_else(body: bytes) -> None:
    """Truncated, garbage, acknowledgements and wrong shapes are not transcripts."""
    assert parse_transcript(body) is None


@pytest.mark.parametrize(
    ("status", "what"),
    [
        (401, "the API key"),
        (403, "the API key, or the model"),
        (402, "the account"),
        (None, "the API key"),
    ],
)
def test_a_402_names_the_account_not_the_key(status: int | None, what: str) -> None:
    """A 402 is the account's balance: "refused the API key" sent users to make a new key."""
    assert retry.refused(status).startswith(what)


@pytest.mark.parametrize(
    ("status", "again"),
    [(429, True), (500, True), (502, True), (503, True), (504, False), (599, True),
     (408, False), (499, False), (400, False), (200, False), (None, False)],
)  # fmt: skip
def test_only_deepgram_busy_or_down_is_sent_again_by_the_next_run(
    status: int | None, again: bool
) -> None:
    """429 and 5xx were Deepgram's, and unbilled; a timeout or a dropped connection (no
    status) may have been billed, and waits for ``--retry-failed``."""
    assert retry.busy_or_down(status) is again


@pytest.mark.parametrize(
    ("message", "again"),
    [(_HOST + " failed to return valid data", True),
     (_HOST + " returned a server error: 502 Bad Gateway", True),
     (_HOST + " returned a client error: 404 Not Found", False)],
)  # fmt: skip
def test_a_media_hosts_trouble_is_sent_again_by_the_next_run(message: str, again: bool) -> None:
    """A 400 for the media host's trouble was nobody's fault of the item's, and unbilled:
    the next run fetches the URL again, as after a 503; a 404 of the host waits."""
    decision = classify_response(400, _err("REMOTE_CONTENT_ERROR", message))
    assert retry.busy_or_down(400, decision) is again


@pytest.mark.parametrize(
    ("attempts", "tries", "said"),
    [
        (3, 3, "gave up after 3 attempts"),
        (1, 1, "gave up after 1 attempt"),
        (5, 2, "gave up after 5 attempts"),  # with tries of an earlier run
        (0, 3, "gave up after 3 tries, none reached Deepgram"),
        (0, 1, "gave up after 1 try, none reached Deepgram"),
    ],
)
def test_how_an_item_gave_up_is_worded(attempts: int, tries: int, said: str) -> None:
    """The error counts what ``attempts`` counts; tries that reached no one are said so."""
    assert _gave_up(attempts, tries) == said


_MODEL_403 = _err(
    "INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."
)


_NOVA3_KEYWORDS = _err("INVALID_QUERY_PARAMETER", KEYWORDS_ON_NOVA3)


@pytest.mark.parametrize(
    ("status", "body", "own", "action"),
    [
        (403, _MODEL_403, (("model", "whisper-large"),), Action.FAIL),
        (403, _MODEL_403, (("diarize", "true"),), Action.FATAL),  # the run's model
        (403, _MODEL_403, (), Action.FATAL),
        (403, _err("FORBIDDEN", "weak key"), (("model", "x"),), Action.FATAL),  # the key
        (400, _err("INVALID_QUERY_PARAMETER", "bad"), (), Action.BAD_PARAMS),  # the run's
        (400, _err("INVALID_QUERY_PARAMETER", "bad diarize"), (("diarize", "x"),), Action.FAIL),
        (400, _err("INVALID_QUERY_PARAMETER", "bad"), (("diarize", "x"),), Action.BAD_PARAMS),
        (400, _NOVA3_KEYWORDS, (("keywords", "a:2"),), Action.FAIL),
        # the run's --param keywords: a line asking for the keyterm it suggests is not at fault
        (400, _NOVA3_KEYWORDS, (("keyterm", "a"),), Action.BAD_PARAMS),
        (403, b"<html>403 by a WAF</html>", (("model", "x"),), Action.FATAL),  # not Deepgram's
        (401, _err("INVALID_AUTH", "Invalid credentials."), (("model", "x"),), Action.FATAL),
        (402, _err("ASR_PAYMENT_REQUIRED", "no credit"), (("model", "x"),), Action.FATAL),
        (400, _err("Bad Request", "corrupt"), (("model", "x"),), Action.FAIL),
        (503, _err("Service Unavailable", "later"), (("model", "x"),), Action.RETRY),
    ],
)
def test_whose_request_deepgram_refused(
    status: int, body: bytes, own: tuple[tuple[str, str], ...], action: Action
) -> None:
    """One manifest line asking for a model the project may not use (403) stopped the
    whole batch, exit 3, "refused the API key"; it is that item's failure now. A bad
    query parameter of the run's own (no params of the item's) failed every item for good;
    it stops the run now."""
    decision = retry.own_refusal(classify_response(status, body), status, own)
    assert decision.action is action
    if action is Action.FAIL and status == 403:
        assert decision.reason.endswith("(the model its manifest line asks for)")
