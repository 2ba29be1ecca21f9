"""Every error dgbatch raises on purpose, each with a message meant for the user.

::

    BatchError                      base; ``cli`` maps each subclass to an exit code
    ├── UsageError                  bad CLI input or unusable source (exit 2)
    │   └── SourceError             a source argument or manifest cannot be read
    ├── ItemError                   one item cannot be processed (the item fails, the run goes on)
    ├── StateError                  the state file is corrupt or unusable (exit 2)
    ├── StateLocked                 another run holds the state lock (exit 4)
    ├── FatalApiError               Deepgram refused the key: 401/402/403 (exit 3)
    ├── OutputError                 outputs cannot be written (disk full, read-only) (exit 1)
    ├── BudgetExceeded              the audio/cost cap is reached; the rest stays pending (exit 1)
    ├── AccountError                a key check or usage query failed (network, 5xx) (exit 1)
    ├── ApiUnreachable              Deepgram cannot be reached at all; the run stops (exit 1)
    └── Interrupted                 SIGINT/SIGTERM stopped the run (exit 130)

Messages never contain the API key or presigned-URL signatures: callers pass
redacted sources (see ``batch.redact``).
"""

from __future__ import annotations


class BatchError(Exception):
    """Base of every error dgbatch raises on purpose; ``str()`` is the user-facing message."""

    exit_code = 1


class UsageError(BatchError):
    """Raised when the command line or a source argument cannot be used."""

    exit_code = 2


class SourceError(UsageError):
    """Raised when a source argument (path, manifest, URL) cannot be expanded into items."""


class PlanCutShort(BatchError):
    """Raised when a source fails after some of its items were planned (and sent): the
    run did part of the batch, not nothing for a bad argument."""

    exit_code = 1


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

    exit_code = 2


class StateWriteError(StateError):
    """Raised when the state file cannot be written (its disk full, an I/O error): the run
    stops, the file is as consistent as before, and the same command goes on later."""

    exit_code = 1


class StateLocked(BatchError):
    """Raised when another run holds the lock on the same state file."""

    exit_code = 4


class FatalApiError(BatchError):
    """Raised when Deepgram refuses the key or the account (401, 402, 403): the run stops."""

    exit_code = 3


class OutputError(BatchError):
    """Raised when an output cannot be written (disk full, read-only folder, S3 refused)."""

    exit_code = 1


class ScratchError(BatchError):
    """Raised when the run's own temporary files (``TMPDIR``) cannot be written or read:
    the run stops and unfinished items stay pending."""

    exit_code = 1


class BudgetExceeded(BatchError):
    """Raised when the next item would pass the audio/cost cap; untouched items stay pending."""

    exit_code = 1


class AccountError(BatchError):
    """Raised when a management API call (key check, usage, requests) cannot be answered."""


class ApiUnreachable(BatchError):
    """Raised when an item gave up because no connection to Deepgram could be made:
    the run stops and unfinished items stay pending instead of all failing."""

    exit_code = 1


class StoreUnreachable(BatchError):
    """Raised when the audio of an S3 item cannot be read because S3 cannot be reached:
    every item would fail the same way, so the run stops and they stay pending."""

    exit_code = 1


class Interrupted(BatchError):
    """Raised when SIGINT or SIGTERM stopped the run; the state is consistent."""

    exit_code = 130
