"""Every error dgbatch raises on purpose, each with a message meant for the user.

::

    BatchError                      base; its exit code is ``EXIT_CODES``'s (1 unless listed)
    ├── UsageError                  bad CLI input or unusable source (exit 2)
    │   └── SourceError             a source argument or manifest cannot be read
    ├── PlanCutShort                a source failed once some of its items were planned (exit 1)
    ├── ItemError                   one item cannot be processed (the item fails, the run goes on)
    │   └── ForeignOutputs          another source's outputs are where the item's go
    ├── StateError                  the state file is corrupt or unusable (exit 2)
    │   └── StateWriteError         the state file cannot be written: a full disk (exit 1)
    ├── StateLocked                 another run holds the state lock (exit 4)
    ├── FatalApiError               Deepgram refused the key: 401/402/403 (exit 3)
    ├── OutputError                 outputs cannot be written (disk full, read-only) (exit 1)
    ├── ScratchError                the run's own temporary files cannot be used (exit 1)
    ├── BudgetExceeded              the audio/cost cap is reached; the rest stays pending (exit 1)
    ├── AccountError                a key check or usage query failed (network, 5xx) (exit 1)
    ├── ApiUnreachable              Deepgram cannot be reached at all; the run stops (exit 1)
    ├── StoreUnreachable            S3 cannot be reached for an item's audio (exit 1)
    └── Interrupted                 SIGINT/SIGTERM stopped the run (exit 130)

Messages never contain the API key or presigned-URL signatures: callers pass
redacted sources (see ``batch.redact``).
"""

from __future__ import annotations


class BatchError(Exception):
    """Base of every error dgbatch raises on purpose; ``str()`` is the user-facing message."""


class UsageError(BatchError):
    """Raised when the command line or a source argument cannot be used."""


class SourceError(UsageError):
    """Raised when a source argument (path, manifest, URL) cannot be expanded into items."""


class PlanCutShort(BatchError):
    """Raised when a source fails after some of its items were planned (and sent): the
    run did part of the batch, not nothing for a bad argument."""


class ItemError(BatchError):
    """Raised for a problem with a single item; the item fails and the run continues."""

    def __init__(self, message: str, *, code: str = "item_error") -> None:
        super().__init__(message)
        self.code = code


class ForeignOutputs(ItemError):
    """Outputs of another source are where an item's go (S3 metadata names it): they are
    not replaced; a night whose state was lost wrote over the night before's transcript
    of another recording."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="output_exists")


class StateError(BatchError):
    """Raised when the state file is corrupt or not a dgbatch state file."""


class StateWriteError(StateError):
    """Raised when the state file cannot be written (its disk full, an I/O error): the run
    stops, the file is as consistent as before, and the same command goes on later."""


class StateLocked(BatchError):
    """Raised when another run holds the lock on the same state file."""


class FatalApiError(BatchError):
    """Raised when Deepgram refuses the key or the account (401, 402, 403): the run stops."""


class OutputError(BatchError):
    """Raised when an output cannot be written (disk full, read-only folder, S3 refused)."""


class ScratchError(BatchError):
    """Raised when the run's own temporary files (``TMPDIR``) cannot be written or read:
    the run stops and unfinished items stay pending."""


class BudgetExceeded(BatchError):
    """Raised when the next item would pass the audio/cost cap; untouched items stay pending."""


class AccountError(BatchError):
    """Raised when a management API call (key check, usage, requests) cannot be answered."""


class ApiUnreachable(BatchError):
    """Raised when an item gave up because no connection to Deepgram could be made:
    the run stops and unfinished items stay pending instead of all failing."""


class StoreUnreachable(BatchError):
    """Raised when the audio of an S3 item cannot be read because S3 cannot be reached:
    every item would fail the same way, so the run stops and they stay pending."""


class Interrupted(BatchError):
    """Raised when SIGINT or SIGTERM stopped the run; the state is consistent."""


#: The exit code of each error, in one table: a class not listed takes its nearest listed
#: base's (``exit_code_of``). The README's exit-code table is checked against it.
EXIT_CODES: dict[type[BatchError], int] = {
    BatchError: 1,
    UsageError: 2,
    StateError: 2,
    StateWriteError: 1,
    StateLocked: 4,
    FatalApiError: 3,
    Interrupted: 130,
}


def exit_code_of(exc: BatchError) -> int:
    """The exit code a run stopped by ``exc`` ends with (and records)."""
    return next(EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES)
