"""One SIGINT/SIGTERM/SIGHUP handler for a whole run, routed to whichever phase is running."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

from batch.errors import Interrupted

#: SIGHUP (the terminal closed: an ssh session that dropped) was ignored when this
#: process started (``nohup``): it stays ignored
_HUP_IGNORED = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run cleanly: SIGINT, SIGTERM, and SIGHUP (by default it
    killed the run as ``kill -9`` does, its in-flight requests paid again), unless the
    run was started ignoring it."""
    if _HUP_IGNORED:
        return (signal.SIGINT, signal.SIGTERM)
    return (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalLatch:
    """One SIGINT/SIGTERM handler for the whole run, so that no moment of it (opening
    the state, between planning and the pool, writing the report) dies by the signal's
    default action or drops it. The phase that is running decides what a signal does
    (planning stops between items, the pool stops gracefully); every signal is also
    remembered, so one that arrives between phases still ends the run with exit 130."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._target: Callable[[signal.Signals], None] | None = None

    def __call__(self, sig: signal.Signals) -> None:
        self.received = sig
        if self._target is not None:
            self._target(sig)

    @contextlib.contextmanager
    def routed_to(self, target: Callable[[signal.Signals], None]) -> Iterator[None]:
        """Send signals to ``target`` for a phase (at once, if one came before it)."""
        self._target = target
        if self.received is not None:
            target(self.received)
        try:
            yield
        finally:
            self._target = None

    def interruption(self) -> Interrupted | None:
        """The stop reason if a signal arrived at any point of the run."""
        if self.received is None:
            return None
        name = self.received.name
        return Interrupted(f"interrupted by {name}; the same command resumes the run")


@contextlib.contextmanager
def latched_signals() -> Iterator[SignalLatch]:
    """Install the latch on the running loop for the duration of the block."""
    latch = SignalLatch()
    loop = asyncio.get_running_loop()
    for sig in stop_signals():
        loop.add_signal_handler(sig, latch, sig)
    try:
        yield latch
    finally:
        for sig in stop_signals():
            loop.remove_signal_handler(sig)  # which restores the default (KeyboardInterrupt)


def note_late_signals() -> None:
    """The run is over (its state closed): a signal from now on is noted, not raised
    (see ``_after_the_run``). Only a run calls it: a dry run still probes after its plan,
    and a Ctrl-C must stop that."""
    if threading.current_thread() is threading.main_thread():
        for sig in stop_signals():
            signal.signal(sig, _after_the_run)


_late: list[int] = []


def _after_the_run(signum: int, frame: object) -> None:
    """A signal once the run is over (its state closed and consistent), while the event
    loop shuts down and the summary prints: noted, so that the exit is the run's (130 for
    the Ctrl-C that stopped it) rather than click's "Aborted!" and 1; the next one exits
    at once, with 130, should the teardown be stuck."""
    if signum == signal.SIGHUP:  # a closed terminal: it comes twice, and asks nothing
        return
    _late.append(signum)
    if len(_late) > 1:
        os._exit(130)


#: the command is the process's last (the console script): see ``until_exit``
_process_ends: list[bool] = []


def until_exit() -> None:
    """The command runs as the process itself: once a run is over, its late-signal
    handlers stay until the process exits. Restoring the defaults at the command's end
    let a SIGTERM during the interpreter's teardown kill it (143 for a run that ended 0;
    a SIGINT there printed a KeyboardInterrupt traceback)."""
    _process_ends.append(True)
    atexit.register(_ignored_at_exit)


def _ignored_at_exit() -> None:
    """The interpreter's finalization resets Python signal handlers to the default, which
    kills the process (143, for a run that ended 0): from the exit handlers on, a stop
    signal is ignored. The exit code is decided; a stuck teardown still ends with SIGKILL
    (and while threads are joined, before this, a second signal exits 130)."""
    if threading.current_thread() is threading.main_thread():
        for sig in stop_signals():
            signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def defaults_restored() -> Iterator[None]:
    """Around a command that runs a batch: the default handlers again at its end (tests
    run commands in-process; the next must not find ``_after_the_run`` installed), unless
    the process ends with it (``until_exit``): then a late signal is still only noted."""
    try:
        yield
    finally:
        if _process_ends:
            note_late_signals()
        else:
            _restore_defaults()


def _restore_defaults() -> None:
    _late.clear()
    if threading.current_thread() is threading.main_thread():  # signal.signal's rule
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN if _HUP_IGNORED else signal.SIG_DFL)
