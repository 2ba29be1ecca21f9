"""The audio budget of ``--max-audio-hours`` / ``--max-cost`` (pure accounting).

The cap counts audio transcribed across the whole state file (every run, copies made
by ``--dedupe`` excluded), not only this run: a budget is a ceiling on what a batch may
cost, so Ctrl-C and the same command again must not grant a fresh one. To continue
past it, run again with a higher cap. An item is admitted only if audio already
transcribed, plus the estimates of items in flight, plus its own estimate stays within
the cap; its reservation is replaced by Deepgram's ``metadata.duration`` when it ends.
An item of unknown length (a URL: no local header, no size) is estimated at the longest
length measured so far; before there is one, such items go one at a time. URLs much longer
than any measured can still pass the cap, by at most the items in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from batch.errors import BudgetExceeded


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``Budget.admit`` set aside for one item, to be settled when it ends."""

    seconds: float
    #: an item of unknown length admitted before any item's length was known
    blind: bool = False


@dataclass
class Budget:
    """Seconds of audio allowed, used and reserved by in-flight items."""

    cap_seconds: float
    used_seconds: float = 0.0
    reserved_seconds: float = 0.0
    #: the longest length measured so far (in the state, then in this run): it stands in
    #: for the length of an item nobody could measure (a URL); 0 before any
    longest: float = 0.0
    #: items of unknown length in flight before any length was measured
    blind: int = 0

    def must_wait(self, estimate: float | None) -> bool:
        """An item of unknown length waits while another one is in flight and no length is
        known yet: the first one's length, once Deepgram gives it, stands in for the rest."""
        return estimate is None and not self.longest and self.blind > 0

    def admit(self, estimate: float | None) -> Reservation | None:
        """Reserve the item's seconds if they fit, else None (the run stops). An unknown
        estimate is the longest length measured so far (an estimate that stops early rather
        than late); with none measured yet, the item goes alone (see ``must_wait``),
        reserving nothing."""
        committed = self.used_seconds + self.reserved_seconds
        if committed >= self.cap_seconds:
            return None
        if estimate is None and not self.longest:
            self.blind += 1
            return Reservation(0.0, blind=True)
        seconds = estimate if estimate is not None else self.longest
        if committed + seconds > self.cap_seconds:
            return None
        self.reserved_seconds += seconds
        return Reservation(seconds)

    def settle(self, reservation: Reservation | None, actual: float | None) -> None:
        """Replace an item's reservation by the audio it really used (0 if it failed)."""
        if reservation is not None:
            self.reserved_seconds -= reservation.seconds
            self.blind -= reservation.blind
        if actual:
            self.used_seconds += actual
            self.longest = max(self.longest, actual)

    def exceeded(self, source: str, estimate: float | None) -> BudgetExceeded:
        """The error that stops the run, naming the cap, the usage and the next item."""
        guess = f"~{audio_span(estimate)}" if estimate else "unknown length"
        return BudgetExceeded(
            f"audio budget reached: {audio_span(self.used_seconds)} transcribed and "
            f"{audio_span(self.reserved_seconds)} in flight of a {audio_span(self.cap_seconds)} "
            f"cap; next item {source} ({guess}) would pass it. Remaining items stay pending: "
            "run again with a higher --max-audio-hours/--max-cost to continue"
        )


def audio_span(seconds: float) -> str:
    """A length of audio in the unit that shows it: seconds, minutes or hours (a cap of a
    few seconds printed as "0.001 h" reads as nothing)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def cap_seconds(
    max_hours: float | None, max_cost: float | None, per_hour: float | None
) -> float | None:
    """The stricter of ``--max-audio-hours`` and ``--max-cost`` (at ``per_hour`` USD), in
    seconds of audio; None when neither is set."""
    caps = []
    if max_hours is not None:
        caps.append(max_hours * 3600)
    if max_cost is not None and per_hour:
        caps.append(max_cost / per_hour * 3600)
    return min(caps) if caps else None
