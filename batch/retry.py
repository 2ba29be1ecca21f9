"""Pure retry decisions: what an answer from Deepgram means for the item and the run.

Deepgram's docs sort errors into "may succeed if retried" (408, 429, 499, 5xx) and
"need a changed request" (400, 404, 411, 413, 414, 415); 401/402/403 mean the key or
the account is refused, so retrying any item is pointless. ``Retry-After`` is not
documented by Deepgram: honour it when present, never depend on it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from batch.models import Params
from batch.redact import whole_words
from batch.terminal import plain
from batch.transcripts import parse_transcript, request_id_of

RETRYABLE_STATUSES = frozenset({408, 429, 499, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 402, 403})
MAX_RETRY_AFTER = 600.0
#: how much of a non-JSON error body (a gateway's page) a message quotes, and reads for it
_PREVIEW_CHARS = 200
_PREVIEW_READ = 4096
#: how much of a JSON error message is kept: Deepgram's are one sentence, so only a
#: runaway one (a proxy echoing a whole request) is cut, and every report line stays short
_MESSAGE_CHARS = 1000
#: Deepgram's fetch of a URL failed for the media host's sake, not the URL's: the host sent
#: nothing valid ("failed to return valid data", intermittent and host-side, a Deepgram
#: maintainer said) or answered a 5xx, 429 or 408. Deepgram quotes the host's status as
#: "returned a client error: 404 Not Found"
_HOST_STATUS_RE = re.compile(r"\b(?:client|server) error: (\d{3})\b")
_HOST_SENT_NOTHING = "failed to return valid data"


#: the ``err_code`` of a 200 that is no transcript (cut short, garbage): Deepgram's
#: answers carry a code only when they are errors; this one is dgbatch's, as are
#: ``http_<status>`` (an error answer without one: a gateway's page), ``timeout`` and
#: ``connection_failed``
NO_TRANSCRIPT = "not_a_transcript"


class Action(StrEnum):
    """What the runner does next with an item."""

    #: the response is a transcript: write the outputs
    SUCCEED = "succeed"
    #: try again after a delay
    RETRY = "retry"
    #: the item fails permanently; the run goes on
    FAIL = "fail"
    #: the key or account is refused: stop dispatching, exit 3
    FATAL = "fatal"
    #: the answer is not Deepgram's to give (a redirect: a wrong ``--api-url`` or proxy):
    #: stop dispatching, the item stays pending, exit 1
    MISDIRECTED = "misdirected"
    #: Deepgram refused the run's own query parameters (``--param``, the defaults): every
    #: item would fail the same way; stop dispatching, the item stays pending, exit 2
    BAD_PARAMS = "bad_params"


@dataclass(frozen=True, slots=True)
class Decision:
    """The classification of one attempt, with what to record about it."""

    action: Action
    reason: str = ""
    err_code: str | None = None
    request_id: str | None = None
    retry_after: float | None = None
    #: no answer, and Deepgram never had the whole request (an upload cut off, the audio
    #: not read): nothing was processed, so the next run may send it again
    unbilled: bool = False
    #: Deepgram may have processed (and billed) this try: a 200 without a transcript, or
    #: no complete answer once it had the whole request; its retry is counted as such
    billed: bool = False
    #: the parsed transcript, for SUCCEED (parsed once, here)
    response: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The useful parts of a Deepgram error body, whatever its shape."""

    code: str | None
    message: str | None
    request_id: str | None


def parse_error_body(body: bytes) -> ErrorBody:
    """Read ``err_code``/``err_msg``/``request_id`` from any of Deepgram's error shapes.

    Bodies come as ``{err_code, err_msg}``, ``{error_code, err_msg}`` (503),
    ``{category, message, details}`` (invalid JSON) or plain text/HTML from a gateway.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        text = body[:_PREVIEW_READ].decode("utf-8", "replace")
        return ErrorBody(None, whole_words(text, _PREVIEW_CHARS), None)
    code = _first_str(data, "err_code", "error_code", "category")
    message = _first_str(data, "err_msg", "message", "reason", "error")
    details = _first_str(data, "details")  # what was wrong, in the INVALID_JSON shape
    if details is not None:
        message = f"{message} ({details})" if message else details
    if message is not None:
        message = whole_words(message, _MESSAGE_CHARS)
    return ErrorBody(code and plain(code), message, request_id_of(data.get("request_id")))


def _first_str(data: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def classify_response(
    status: int, body: bytes, retry_after: str | None = None, *, now: datetime | None = None
) -> Decision:
    """Classify an HTTP answer from ``/v1/listen``."""
    if status == 200:
        response = parse_transcript(body)
        if response is not None:
            return Decision(Action.SUCCEED, response=response)
        accepted = _callback_acknowledgement(body)
        if accepted is not None:  # resending would be accepted (and billed) again
            reason = "200 callback acknowledgement: the transcript goes to the callback URL"
            accepted_id = request_id_of(accepted)
            return Decision(Action.FAIL, reason, "callback_acknowledged", accepted_id)
        return Decision(
            Action.RETRY, "200 with a body that is not a Deepgram transcript", NO_TRANSCRIPT
        )
    err = parse_error_body(body)
    reason = status_reason(status, err)
    if status in FATAL_STATUSES:
        action = Action.FATAL
    elif 300 <= status < 400 or status == 404:  # Deepgram does not redirect /v1/listen,
        action = Action.MISDIRECTED  # and a 404 is its path: a wrong --api-url, every item
    elif status in RETRYABLE_STATUSES or media_host_trouble(status, err):
        action = Action.RETRY
    elif 400 <= status < 500:
        action = Action.FAIL
    else:
        action = Action.RETRY
    delay = parse_retry_after(retry_after, now=now) if action is Action.RETRY else None
    return Decision(action, reason, err.code or f"http_{status}", err.request_id, delay)


def media_host_trouble(status: int | None, err: ErrorBody) -> bool:
    """Whether a 400 ``REMOTE_CONTENT_ERROR`` is the media host's passing trouble (a 5xx,
    a 429 or 408, or no valid data), which a later fetch of the same URL may get past:
    unbilled, so it is retried as a 503 is. A client error (a 404, an expired signature's
    403) or a URL that is not public fails the item."""
    if status != 400 or err.code != "REMOTE_CONTENT_ERROR" or not err.message:
        return False
    if _HOST_SENT_NOTHING in err.message.lower():
        return True
    found = _HOST_STATUS_RE.search(err.message)
    return found is not None and (found[1] in {"408", "429"} or found[1].startswith("5"))


def _callback_acknowledgement(body: bytes) -> str | None:
    """The ``request_id`` of callback mode's ``{"request_id": ...}`` acknowledgement."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and set(data) == {"request_id"}:
        return _first_str(data, "request_id")
    return None


def own_refusal(decision: Decision, status: int | None, own_params: Params) -> Decision:
    """Whose request Deepgram refused: the item's, or the run's.

    A 403 ``INSUFFICIENT_PERMISSIONS`` (Deepgram's "no access to the requested model") to
    an item whose own params (its manifest line) name a model fails that item, and the
    items on the run's model go on; any other 403 (the run's model, a weak key's
    ``FORBIDDEN``, a proxy's page) stops the run. A 400 ``INVALID_QUERY_PARAMETER`` fails
    the item when its message names one of the item's own params, and otherwise stops the
    run (``BAD_PARAMS``): it is the run's ``--param`` (every item would fail), or a line
    whose fault cannot be told, which stops rather than failing every line for good."""
    if status == 400 and decision.err_code == "INVALID_QUERY_PARAMETER":
        if _names_one(decision.reason, own_params):
            return dataclasses.replace(decision, action=Action.FAIL)
        return dataclasses.replace(decision, action=Action.BAD_PARAMS)
    if decision.action is not Action.FATAL or status != 403:
        return decision
    if decision.err_code != "INSUFFICIENT_PERMISSIONS" or "model" not in dict(own_params):
        return decision
    reason = f"{decision.reason} (the model its manifest line asks for)"
    return dataclasses.replace(decision, action=Action.FAIL, reason=reason)


def _names_one(text: str, own_params: Params) -> bool:
    """``text`` names (as a word, in any case: "Keywords are not supported for Nova-3")
    one of the keys of ``own_params``; not the one it suggests instead ("Please use
    `keyterm` instead": a line asking for keyterm is not at fault)."""
    blamed = _SUGGESTED.sub("", text)
    return any(re.search(rf"\b{re.escape(key)}\b", blamed, re.I) for key, _ in own_params)


#: a parameter an error message suggests using instead of the one at fault
_SUGGESTED = re.compile(r"\buse\s+`[^`]*`", re.I)


def busy_or_down(status: int | None, decision: Decision | None = None) -> bool:
    """Whether an item that gave up on ``status`` failed for Deepgram's sake (throttled,
    or a 5xx: nothing billed), its media host's (a retried 400) or the network's before
    the request was whole (an upload cut off), not its own: the next run sends it again.
    Other timeouts and dropped connections may have been billed, so they wait for
    ``--retry-failed``; so does a 504, Deepgram's "processing exceeded the maximum time":
    the same recording would take as long every night."""
    if decision is not None and decision.unbilled:
        return True
    if status == 400:  # retried only when the media host was at fault
        return decision is not None and decision.action is Action.RETRY
    return status is not None and (status == 429 or (500 <= status <= 599 and status != 504))


def refused(status: int | None) -> str:
    """What Deepgram refused when it stops a run: a 402 is the account's balance, which a
    new key would not fix; 401 is the key; 403 the key, or the model asked for (Deepgram
    answers it to a model the project may not use)."""
    if status == 402:
        return "the account (no credit left, or billing off: HTTP 402)"
    return "the API key, or the model for its project" if status == 403 else "the API key"


def status_reason(status: int, err: ErrorBody) -> str:
    """``HTTP 400 INVALID_QUERY_PARAMETER: the message``: the status, then the error
    code and message when the body has them."""
    parts = [f"HTTP {status}"]
    if err.code:
        parts.append(err.code)
    text = " ".join(parts)
    return f"{text}: {err.message}" if err.message else text


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        until = _seconds_until(value, now)
        seconds = None if until is None else max(until, 0.0)  # a date passed: at once
    if seconds is None or not seconds >= 0:  # NaN, or a negative delay, which RFC 9110
        return None  # does not allow: the backoff decides, as for any value not understood
    return min(seconds, MAX_RETRY_AFTER)


def _seconds_until(value: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - (now or datetime.now(UTC))).total_seconds()


def backoff(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    exponent = max(attempt - 1, 0)
    ceiling = cap if exponent >= 64 else min(cap, base * (2.0**exponent))
    return (rng or random).uniform(0.0, ceiling)


def retry_delay(
    decision: Decision,
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """How long to wait before the next attempt: the backoff, and never less than the
    answer's ``Retry-After``. The backoff still applies under it: a server under load
    that says ``Retry-After: 0`` got every item's retries at once, and all of them failed."""
    delay = backoff(attempt, base=base, cap=cap, rng=rng)
    return delay if decision.retry_after is None else max(decision.retry_after, delay)
