"""One item's requests: send it, classify the answer, then retry after a backoff or
give up. Every way out is the item's ``Result``; what an exception or a cancel cuts
short, the runner records from the tallies kept here as the tries go (``tries``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

from batch import retry
from batch.adoption import Adoption
from batch.client import Answer, DeepgramClient, TransportError
from batch.errors import (
    ApiUnreachable,
    BatchError,
    FatalApiError,
    ForeignOutputs,
    ItemError,
    UsageError,
)
from batch.limiter import AdaptiveLimit
from batch.media import Sender
from batch.models import ItemKind, ItemStatus
from batch.placing import Placer
from batch.progress import Progress
from batch.realsources import RealSources
from batch.redact import was_redacted
from batch.retry import Action, Decision
from batch.runtypes import RunnerSettings, RunStats, until_stopped
from batch.state import Result, WorkItem
from batch.terminal import plain
from batch.transcripts import transcript_request_id

log = logging.getLogger("dgbatch")


@dataclasses.dataclass(slots=True)
class _Try:
    """One request's answer (None: none came), what it means, and the item's attempts."""

    answer: Answer | None
    decision: Decision
    attempts: int
    #: Deepgram saw the request (a try that reached no one is no attempt, nor a retry)
    reached: bool = True
    #: no connection could be made (the run stops when every item meets it)
    unreachable: bool = False


class Attempts:
    """The retry loop of one run's items, under the run's limiter and stop."""

    def __init__(
        self,
        settings: RunnerSettings,
        client: DeepgramClient,
        senders: dict[ItemKind, Sender],
        limit: AdaptiveLimit,
        placer: Placer,
        adoption: Adoption,
        progress: Progress,
        stats: RunStats,
        *,
        secret_sources: RealSources,
        tries: dict[str, tuple[int, int]],
        note_tries: Callable[[str, int, int, int], None],
        stopped: asyncio.Event,
        stop: Callable[[BatchError], None],
    ) -> None:
        self.settings = settings
        self.client = client
        self.senders = senders
        self.limit = limit
        self.progress = progress
        self.stats = stats
        self.secret_sources = secret_sources
        self.stop = stop
        self._placer = placer
        self._adoption = adoption
        #: the runner's per in-flight item (attempts, 200s without a transcript) so far
        self._tries = tries
        #: keeps the tries of an item that will try again in the state (``State.note_tries``)
        self._note_tries = note_tries
        self._stopped = stopped
        self._rng = random.Random()

    @property
    def stopping(self) -> bool:
        """True once anything asked the run to stop."""
        return self._stopped.is_set()

    async def process(self, item: WorkItem) -> Result:
        """The item's result once an answer decides it, its tries run out or the run
        stops; meanwhile ``tries`` holds its tallies, in case a cancel cuts it short."""
        source = self.secret_sources.get(item.id, item.source)
        sender = self.senders[item.kind]  # every kind has one (``job.make_senders``)
        item, settled = await self._settled_unsent(item)
        settled = settled or _secret_not_given(item, source)
        if settled is not None:
            return settled
        attempts, paid_200s = item.attempts, item.paid_200s
        # tries an earlier run made count (a stop left the item pending): --max-retries
        # bounds the item's requests, not each run's; a pending item gets one try at least
        first = min(item.attempts, self.settings.max_retries) + 1
        for tries in range(first, self.settings.max_retries + 2):
            attempts += 1
            self._tries[item.id] = (attempts, paid_200s)
            epoch = self.limit.epoch
            done = await self._try_once(sender, item, source, attempts)
            if isinstance(done, Result):  # failed before the request went out
                return _with_tallies(done, paid_200s)
            attempts = done.attempts
            decision, paid_200s = self._tally(item, done, paid_200s)
            outcome = await self._decide(item, attempts, tries, done.answer, decision, epoch)
            if outcome is not None:
                tallied = _with_tallies(outcome, paid_200s)
                return self._unless_unreachable(tallied, done.unreachable)
        raise AssertionError("unreachable: the last try always decides")  # pragma: no cover

    async def _try_once(
        self, sender: Sender, item: WorkItem, source: str, attempts: int
    ) -> _Try | Result:
        """One request and what its answer means; the item's result when it failed before
        the request went out (no attempt), and a try that reached no one is none either."""
        try:
            answer, decision = await self._attempt(sender, item, source)
        except ItemError as exc:  # found before the request went out: no attempt
            attempts = self._not_sent(item, attempts)
            return Result(item.id, ItemStatus.FAILED, attempts, error=str(exc), err_code=exc.code)
        except TransportError as exc:  # an answer cut short keeps its status and request id
            if not exc.reached:
                attempts = self._not_sent(item, attempts)
            decision = _transport_decision(exc)
            return _Try(exc.partial, decision, attempts, exc.reached, exc.connect_failed)
        except BatchError:  # the run's (S3 unreachable), found before the request
            self._not_sent(item, attempts)
            raise
        return _Try(answer, decision, attempts)

    def _tally(self, item: WorkItem, done: _Try, paid_200s: int) -> tuple[Decision, int]:
        """Count a retry Deepgram saw (any run's), and a 200 without a transcript: it was
        processed and billed, so it is tried once more at most."""
        if done.reached and done.attempts > 1:
            self.stats.retries += 1
            self.progress.retried()
        decision, answer = done.decision, done.answer
        if answer is not None and answer.status == 200 and decision.action is Action.RETRY:
            paid_200s += 1
            self._tries[item.id] = (done.attempts, paid_200s)
            decision = _once_more_at_most(dataclasses.replace(decision, billed=True), paid_200s)
        return decision, paid_200s

    async def _settled_unsent(self, item: WorkItem) -> tuple[WorkItem, Result | None]:
        """The item's result when nothing need be sent: an answer an earlier run paid for
        and could not write, or outputs already there (``--skip-existing``); and the item
        to send otherwise, renamed when another source's outputs hold its name.

        Raises:
            ForeignOutputs: they do, and its other name is taken too.
        """
        kept = await self._placer.kept_result(item)
        if kept is not None:
            return item, kept
        if item.forced:
            return item, None
        if not self.settings.skip_existing:  # a local --out
            done = None
            if item.kind is ItemKind.FILE and not item.recorded:  # never done in this state
                done = await self._adoption.same_audio(item)
            return item, self._adopted(done)
        adopt = self._adoption
        try:
            done = await adopt.existing_outputs(item, None) or await adopt.under_other_name(item)
        except ForeignOutputs:
            done = await adopt.under_other_name(item)
            if done is None:
                renamed = await adopt.elsewhere(item)
                if renamed is None:
                    raise
                return renamed, None
        return item, self._adopted(done)

    def _adopted(self, done: Result | None) -> Result | None:
        """An item whose outputs were already there, counted as skipped."""
        if done is None:
            return None
        self.stats.skipped += 1
        return dataclasses.replace(done, adopted=True)

    def _not_sent(self, item: WorkItem, attempts: int) -> int:
        """The try counted in ``attempts`` reached no one (found before the request, or no
        connection made): it is no attempt, and was not sent. The attempts without it."""
        self.stats.sent -= 1
        self._tries[item.id] = (attempts - 1, self._tries[item.id][1])
        return attempts - 1

    def _unless_unreachable(self, result: Result, unreachable: bool) -> Result:
        """An item that gave up because Deepgram could not be reached at all is not at
        fault: every other item would fail the same way (and need --retry-failed), so
        the run stops and the item stays pending for the next run."""
        if not unreachable or result.status is not ItemStatus.FAILED:
            return result
        message = (
            f"Deepgram cannot be reached ({result.error}); stopped so that unfinished "
            "items stay pending: check the network or --api-url, then run the same command"
        )
        self.stop(ApiUnreachable(message))
        return dataclasses.replace(result, status=ItemStatus.PENDING)

    async def _attempt(
        self, sender: Sender, item: WorkItem, source: str
    ) -> tuple[Answer, Decision]:
        self.stats.sent += 1
        answer = await sender(self.client, item, source)
        if answer.truncated and answer.status == 200:  # cut the same way on every try: a
            reason = "200 with an answer too long to read (over 1 GiB); paid, not sent again"
            return answer, Decision(Action.FAIL, reason, "answer_too_long")  # paid at each try
        decision = retry.classify_response(answer.status, answer.body, answer.retry_after)
        return answer, retry.own_refusal(self._without_key(decision), answer.status, item.params)

    def _without_key(self, decision: Decision) -> Decision:
        """The decision with the key taken out of what it quotes from the answer's body,
        which goes to the state, the reports and the error message."""
        if not decision.reason and not decision.err_code and not decision.request_id:
            return decision
        code = decision.err_code
        return dataclasses.replace(
            decision,
            reason=self.client.redacted(decision.reason),
            err_code=self.client.redacted(code) if code else code,
            request_id=self._key_free(decision.request_id),
        )

    def _stopping_error(
        self, decision: Decision, answer: Answer | None, item: WorkItem
    ) -> BatchError:
        """What stops the run: the key, the model or the query refused (exit 3, 2), or a
        redirect or a 404 (exit 1), which mean that ``--api-url`` is not the API itself."""
        status = answer.status if answer is not None else None
        if decision.action is Action.BAD_PARAMS:
            fix = "--param" if not item.params else f"--param or the params of {item.source}"
            return UsageError(
                f"Deepgram refused the query parameters ({decision.reason}); nothing more "
                f"was sent and unfinished items stay pending: fix {fix}, then run the same "
                "command again"
            )
        if decision.action is Action.FATAL:
            model = f"{item.source}'s params" if "model" in dict(item.params) else "--param"
            fix = (
                f"the key, the account, or the model ({model})"
                if status == 403
                else ("the key or the account")
            )
            return FatalApiError(
                f"Deepgram refused {retry.refused(status)} ({decision.reason}); "
                f"nothing more was sent and unfinished items stay pending: fix {fix}, "
                "then run the same command again"
            )
        where = answer.location if answer is not None else None
        to = f" to {plain(self.client.redacted(where))}" if where else ""
        what = (
            f"(no such path: {decision.reason})"
            if status == 404
            else f"(a redirect{to}), which dgbatch does not follow"
        )
        return ApiUnreachable(
            f"the API answered HTTP {status or '3xx'} {what}: point --api-url (or "
            "DEEPGRAM_API_URL) at the API itself, then run the same command; unfinished "
            "items stay pending"
        )

    def _key_free(self, request_id: str | None) -> str | None:
        """A request id that is not the key (a proxy echoing it there): it is stored as it
        is, so one that redaction would change is dropped, not stored redacted."""
        if request_id is None or self.client.redacted(request_id) != request_id:
            return None
        return request_id

    async def _decide(
        self,
        item: WorkItem,
        attempts: int,
        tries: int,
        answer: Answer | None,
        decision: Decision,
        epoch: int,
    ) -> Result | None:
        """The result of the item, or None to try again (after sleeping here)."""
        status = answer.status if answer is not None else None
        header_id = answer.request_id if answer is not None else None
        request_id = decision.request_id or self._key_free(header_id)
        if decision.action is Action.SUCCEED and decision.response is not None:
            self.limit.on_success()
            assert answer is not None  # a decision to succeed is made on an answer
            paid_id = self._key_free(transcript_request_id(decision.response))
            try:
                outputs = await self._placer.write_paid(item, answer.body, decision.response)
            except ItemError as exc:  # paid, yet no output can be written (a path in the way)
                return Result(
                    item.id, ItemStatus.FAILED, attempts, 200, str(exc), exc.code, paid_id
                )
            done = self._placer.done_result(item, attempts, decision.response, outputs)
            return dataclasses.replace(done, request_id=paid_id)
        if decision.action in (Action.FATAL, Action.MISDIRECTED, Action.BAD_PARAMS):
            self.stop(self._stopping_error(decision, answer, item))
            code, reason = decision.err_code, decision.reason
            return Result(item.id, ItemStatus.PENDING, attempts, status, reason, code, request_id)
        failed = Result(
            item.id,
            ItemStatus.FAILED,
            attempts,
            status,
            decision.reason,
            decision.err_code,
            request_id,
        )
        if decision.action is Action.FAIL:
            return failed
        return await self._retry_or_give_up(item, attempts, tries, status, decision, failed, epoch)

    async def _retry_or_give_up(
        self,
        item: WorkItem,
        attempts: int,
        tries: int,
        status: int | None,
        decision: Decision,
        failed: Result,
        epoch: int,
    ) -> Result | None:
        if status == 429:
            self.limit.on_throttle(epoch)
        if tries > self.settings.max_retries:
            error = f"{decision.reason} ({_gave_up(attempts, tries)})"
            # sent again by the next run only if none of its tries, in any run, may have
            # been billed: the state's flush knows them all (``timeout_retries``)
            again = retry.busy_or_down(status, decision)
            return dataclasses.replace(failed, error=error, retry_next=again)
        if decision.billed:  # a retry of a request Deepgram may have processed: counted
            self.stats.timeout_retries += 1  # now, should a stop leave it to the next run
        tried, paid_200s = self._tries[item.id]  # kept, should a kill -9 cut the backoff
        self._note_tries(item.id, tried, paid_200s, int(decision.billed))
        if self.stopping:
            return Result(item.id, ItemStatus.PENDING, attempts, status, decision.reason)
        delay = retry.retry_delay(
            decision,
            tries,
            base=self.settings.backoff_base,
            cap=self.settings.backoff_cap,
            rng=self._rng,
        )
        if status == 429:
            delay = self._throttled_delay(decision, epoch, delay)
        log.debug("retry %s in %.2fs: %s", item.source, delay, decision.reason)
        wait = self._wait_without_slot if status == 429 else self._sleep_unless_stopped
        await wait(delay)
        if self.stopping:
            return Result(item.id, ItemStatus.PENDING, attempts, status, decision.reason)
        return None

    def _throttled_delay(self, decision: Decision, epoch: int, backoff: float) -> float:
        """No backoff of its own for a 429 when the pool already slowed down since the
        request went out and is full: waiting for a slot under the cut limit is the
        backoff. ``Retry-After`` is still honoured."""
        if decision.retry_after is None and self.limit.covers_backoff(epoch):
            return 0.0
        return backoff

    async def _wait_without_slot(self, delay: float) -> None:
        """A throttled item waits without its slot (in-flight stays under the cut limit)."""
        await self.limit.without_slot(self._sleep_unless_stopped(delay))

    async def _sleep_unless_stopped(self, delay: float) -> None:
        if delay > 0:
            await until_stopped(asyncio.sleep(delay), self._stopped)


def _gave_up(attempts: int, tries: int) -> str:
    """How an item gave up: after its attempts (requests Deepgram saw, in every run), or
    after tries of which none reached it."""
    if attempts == 0:
        return f"gave up after {tries} tr{'y' if tries == 1 else 'ies'}, none reached Deepgram"
    return f"gave up after {attempts} attempt{'' if attempts == 1 else 's'}"


def _once_more_at_most(decision: Decision, paid_200s: int) -> Decision:
    """A 200 without a usable transcript (cut short, or not Deepgram's) was processed and
    billed: it is tried once more (a dropped connection), not ``--max-retries`` times,
    each paid again; the second one fails the item."""
    if paid_200s < 2:
        return decision
    reason = f"{decision.reason}; a second 200 without a transcript (each one billed): not retried"
    return dataclasses.replace(
        decision, action=Action.FAIL, reason=reason, err_code=retry.NO_TRANSCRIPT
    )


def _secret_not_given(item: WorkItem, source: str) -> Result | None:
    """The result of a URL an earlier run left pending whose secret (a token, a
    signature) the state does not keep, and which this run's sources do not give
    (``source`` is the stored one): sent as stored, it went out with ``REDACTED`` for the
    secret. It fails unsent, and the next run that lists its URL sends it (``retry_next``).
    None for any other item."""
    if item.kind is not ItemKind.URL or not was_redacted(source):
        return None
    error = (
        f"{item.source}: its URL holds a secret that the state does not keep, and this "
        "run's sources do not list it: not sent; list its manifest (or URL) again to send it"
    )
    return Result(
        item.id,
        ItemStatus.FAILED,
        item.attempts,
        error=error,
        err_code="source_needed",
        retry_next=True,
    )


def _with_tallies(result: Result, paid_200s: int) -> Result:
    """The result with the item's 200s without a transcript so far: a stop in a backoff
    left it pending and forgot them, and the next run paid for more. (Its possibly billed
    retries are in the state already: ``State.note_tries``.)"""
    if not paid_200s:
        return result
    return dataclasses.replace(result, paid_200s=paid_200s)


def _transport_decision(exc: TransportError) -> Decision:
    """What a request without a complete answer means: try again. It may have been
    processed (``billed``) once Deepgram had its whole body; one that never had it
    (``unbilled``: an upload cut off, the audio not read) was not."""
    partial = exc.partial
    if partial is not None and partial.status != 200:  # its status came, and decides: a 503
        decision = retry.classify_response(partial.status, b"", partial.retry_after)  # unbilled
        return dataclasses.replace(decision, reason=f"{decision.reason} ({exc})")
    billed = exc.body_sent and exc.reached
    unbilled = not billed and partial is None
    code = "timeout" if exc.timeout else "connection_failed"
    return Decision(Action.RETRY, str(exc), code, unbilled=unbilled, billed=billed)
