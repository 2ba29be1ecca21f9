"""The budget of ``--max-audio-hours`` / ``--max-cost`` (pure accounting).

The cap counts what was transcribed across the whole state file (every run, copies made
by ``--dedupe`` excluded), not only this run: a budget is a ceiling on what a batch may
cost, so Ctrl-C and the same command again must not grant a fresh one. To continue
past it, run again with a higher cap. An item is admitted only if what was already
transcribed, plus the estimates of items in flight, plus its own estimate stays within
each cap; its reservation is replaced by Deepgram's ``metadata.duration`` when it ends.
A dollar cap prices each item at the model it is sent with (``ItemPrices``): a manifest
line may ask for a dearer model than the run's.
An item of unknown length (a URL: no local header, no size) is estimated at the longest
length measured so far; before there is one, such items go one at a time. URLs much longer
than any measured can still pass the cap, by at most the items in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batch.errors import BudgetExceeded
from batch.models import Params
from batch.pricing import ItemPrices


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``Budget.admit`` set aside for one item, to be settled when it ends."""

    seconds: float
    #: an item of unknown length admitted before any item's length was known
    blind: bool = False
    #: USD per second of the item's audio (0 without a dollar cap)
    rate: float = 0.0


@dataclass
class Ledger:
    """One cap and what counts against it, in seconds of audio or in US dollars."""

    cap: float
    used: float = 0.0
    reserved: float = 0.0
    dollars: bool = False
    #: ``used`` when the run began: what the state transcribed before it
    before: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.before = self.used

    @property
    def kind(self) -> str:
        return "cost" if self.dollars else "audio"

    def full(self) -> bool:
        return self.used + self.reserved >= self.cap

    def fits(self, amount: float) -> bool:
        return self.used + self.reserved + amount <= self.cap

    def show(self, amount: float) -> str:
        return dollars(amount) if self.dollars else audio_span(amount)


@dataclass
class Budget:
    """The caps (audio and/or dollars) and the items in flight against them."""

    audio: Ledger | None = None
    cost: Ledger | None = None
    #: the price of an item's audio; needed with a dollar cap only
    prices: ItemPrices | None = None
    #: the longest length measured so far (in the state, then in this run): it stands in
    #: for the length of an item nobody could measure (a URL); 0 before any
    longest: float = 0.0
    #: items of unknown length in flight before any length was measured
    blind: int = 0
    _ledgers: tuple[Ledger, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ledgers = tuple(ledger for ledger in (self.audio, self.cost) if ledger)

    def rate(self, params: Params) -> float | None:
        """USD per second of an item sent with ``params``: 0 without a dollar cap, None
        when its model has no known price (what it would cost cannot be told)."""
        if self.cost is None or self.prices is None:
            return 0.0
        return self.prices.per_second(params)

    def holds(self) -> bool:
        """Whether items in flight hold a reservation (they may give some of it back)."""
        return self.blind > 0 or any(ledger.reserved > 1e-9 for ledger in self._ledgers)

    def must_wait(self, estimate: float | None) -> bool:
        """An item of unknown length waits while another one is in flight and no length is
        known yet: the first one's length, once Deepgram gives it, stands in for the rest."""
        return estimate is None and not self.longest and self.blind > 0

    def admit(self, estimate: float | None, rate: float = 0.0) -> Reservation | None:
        """Reserve the item's seconds (and their price at ``rate``) if they fit each cap,
        else None (the run stops). An unknown estimate is the longest length measured so
        far (an estimate that stops early rather than late); with none measured yet, the
        item goes alone (see ``must_wait``), reserving nothing."""
        if estimate == 0:  # it costs nothing (it fails unsent, or is adopted): never stopped
            return Reservation(0.0, rate=rate)
        if any(ledger.full() for ledger in self._ledgers):
            return None
        if estimate is None and not self.longest:
            self.blind += 1
            return Reservation(0.0, blind=True, rate=rate)
        seconds = estimate if estimate is not None else self.longest
        amounts = self._amounts(seconds, rate)
        if not all(ledger.fits(amount) for ledger, amount in amounts):
            return None
        for ledger, amount in amounts:
            ledger.reserved += amount
        return Reservation(seconds, rate=rate)

    def settle(
        self, reservation: Reservation | None, actual: float | None, unanswered: float = 0.0
    ) -> None:
        """Replace an item's reservation by the audio it really used (0 if it failed), plus
        ``unanswered`` seconds billed for 200s that held no transcript."""
        rate = 0.0 if reservation is None else reservation.rate
        if reservation is not None:
            for ledger, amount in self._amounts(reservation.seconds, rate):
                ledger.reserved -= amount
            self.blind -= reservation.blind
        if actual or unanswered:
            for ledger, amount in self._amounts((actual or 0.0) + unanswered, rate):
                ledger.used += amount
        if actual:
            self.longest = max(self.longest, actual)

    def _amounts(self, seconds: float, rate: float) -> list[tuple[Ledger, float]]:
        """What ``seconds`` of audio at ``rate`` count against each cap."""
        return [(ledger, seconds * rate if ledger.dollars else seconds) for ledger in self._ledgers]

    def exceeded(self, source: str, estimate: float | None, rate: float = 0.0) -> BudgetExceeded:
        """The error that stops the run, naming the cap passed, its usage and the next item."""
        seconds = estimate if estimate is not None else self.longest
        guess = "unknown length" if estimate is None else f"~{audio_span(estimate)}"
        passed = [ledger for ledger, amount in self._amounts(seconds, rate)
                  if ledger.full() or not ledger.fits(amount)]  # fmt: skip
        ledger = (passed or list(self._ledgers))[0]
        if ledger.dollars and seconds:
            guess += f", ~{dollars(seconds * rate)}"
        return BudgetExceeded(
            f"{ledger.kind} budget reached: "
            f"{ledger.show(ledger.used)} transcribed and {ledger.show(ledger.reserved)} in "
            f"flight of a {ledger.show(ledger.cap)} cap; next item {source} ({guess}) would "
            "pass it. Remaining items stay pending: run again with a higher "
            "--max-audio-hours/--max-cost to continue"
        )

    def passed(self) -> BudgetExceeded | None:
        """A cap this run's items passed after all, which the run cannot stop before: items
        billed for more than the estimate they were admitted at (URLs above all). Said,
        with exit 1, else the run ended as if within its budget; a cap passed by earlier
        runs is not this run's."""
        for ledger in self._ledgers:
            if ledger.used > max(ledger.cap, ledger.before) + 1e-9:
                return BudgetExceeded(
                    f"{ledger.kind} budget passed: {ledger.show(ledger.used)} transcribed of a "
                    f"{ledger.show(ledger.cap)} cap: items were billed for more than their "
                    "estimate (a URL counts as the longest length measured before it, a file as "
                    "its header's length, and a 200 without a transcript was billed too)"
                )
        return None

    def unpriced(self, source: str, params: Params) -> BudgetExceeded:
        """The error that stops a ``--max-cost`` run at an item whose model has no price."""
        model = self.prices.model(params) if self.prices is not None else None
        return BudgetExceeded(
            f"--max-cost: no list price known for model {model!r}, which item {source} is "
            "sent with; pass --price-per-hour to price it. Remaining items stay pending"
        )


def audio_span(seconds: float) -> str:
    """A length of audio in the unit that shows it: seconds, minutes or hours (a cap of a
    few seconds printed as "0.001 h" reads as nothing)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def dollars(amount: float) -> str:
    """US dollars, to the cent, or to a hundredth of a cent below a dollar (a minute of
    audio costs less than one)."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"
