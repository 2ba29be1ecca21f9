"""What an emulator is told and what it remembers: its knobs, and the records of its log.

The knobs default to a well-behaved Deepgram, so a test turns on only the faults, limits and
oddities it is about; ``duration_ratio`` scales every ``metadata.duration`` (e.g. 0.5 to
simulate a transcript that covers half the audio).

A record keeps the raw ``Authorization`` header so tests can check how the key was sent; the
control endpoints serve the log without auth, which is why they answer only loopback peers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from batch.params import FEATURE_CONCURRENCY, PROJECT_CONCURRENCY

#: Faults drawn by default when ``fault_rate`` > 0.
DEFAULT_FAULTS: tuple[str, ...] = ("429", "500", "502", "503", "reset", "truncated", "garbage")
#: Further faults a config may name; not drawn unless listed in ``faults``.
EXTRA_FAULTS: tuple[str, ...] = ("408", "504")
#: Values ``Emulator.auth_mode`` accepts.
AUTH_MODES: tuple[str, ...] = ("ok", "401", "402", "403")
#: Deepgram's documented file-size limit; above it the emulator answers 413 (an inference).
MAX_UPLOAD_BYTES = 2 * 1024**3
#: Deepgram's pre-recorded concurrency limit per project (PAYG/Growth), in requests in flight.
DEEPGRAM_CONCURRENCY = PROJECT_CONCURRENCY
#: The same for ``model=whisper*`` requests, which are counted apart.
WHISPER_CONCURRENCY = FEATURE_CONCURRENCY["whisper"]


@dataclass
class EmulatorConfig:
    """How the emulator behaves; every knob defaults to a well-behaved Deepgram.

    ``key`` None accepts any non-empty token. ``latency`` is the seconds a request takes
    from its arrival; the emulator's own work (reading an upload, fetching a URL) counts
    towards it. ``fault_rate`` is the probability that one
    ``/v1/listen`` request gets a fault drawn from ``faults``. ``max_concurrency`` answers 429 as
    soon as more requests than that are in flight. ``retry_after`` on 429: True always sends
    ``Retry-After: <retry_after_seconds>``, False never, None on a seeded coin flip, so clients
    must work both ways (Deepgram does not document the header). ``allow_private_urls`` False
    refuses loopback and private URLs like Deepgram does; tests leave it on to fetch from their
    own servers.
    """

    host: str = "127.0.0.1"
    port: int = 0
    key: str | None = None
    latency: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    max_concurrency: int | None = None
    retry_after: bool | None = None
    #: the ``Retry-After`` value in seconds (tests use a short one)
    retry_after_seconds: float = 1.0
    seed: int | None = None
    allow_private_urls: bool = True
    #: ``metadata.duration`` = the audio's real duration times this (< 1: a short transcript)
    duration_ratio: float = 1.0
    #: seconds between callback deliveries to a receiver that failed (Deepgram: 30; tests: tiny)
    callback_retry_gap: float = 30.0
    #: refuse callback URLs on other ports than Deepgram allows (80, 443, 8080, 8443); off by
    #: default because test receivers listen on random ports
    callback_ports_only: bool = False
    #: models the project has no access to: a request for one is answered 403
    forbidden_models: tuple[str, ...] = ()
    #: seconds Deepgram processes a request before it cancels it with a 504 (10 minutes;
    #: Whisper gets twice as long): a ``latency`` over it is answered so
    max_processing: float = 600.0

    def __post_init__(self) -> None:
        """Fail at construction: a misspelt fault name would otherwise silently never fire,
        and ``nan`` passes every comparison below."""
        for name in (
            "latency", "fault_rate", "duration_ratio", "callback_retry_gap", "max_processing"
        ):  # fmt: skip
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"'{name}' {str(value)!r} is not a finite number")
        unknown = sorted(set(self.faults) - set(DEFAULT_FAULTS) - set(EXTRA_FAULTS))
        if unknown:
            msg = f"'faults' has unknown names {unknown}; known: {DEFAULT_FAULTS + EXTRA_FAULTS}"
            raise ValueError(msg)
        if not 0.0 <= self.fault_rate <= 1.0:
            msg = "'fault_rate' must be between 0 and 1"
            raise ValueError(msg)
        if self.latency < 0:
            msg = "'latency' must be >= 0"
            raise ValueError(msg)
        if not self.duration_ratio > 0:
            msg = "'duration_ratio' must be > 0"
            raise ValueError(msg)
        if self.max_concurrency is not None and self.max_concurrency < 1:
            msg = "'max_concurrency' must be >= 1 (unset: Deepgram's limits)"
            raise ValueError(msg)
        if not self.max_processing > 0:
            msg = "'max_processing' must be > 0"
            raise ValueError(msg)
        if self.callback_retry_gap < 0:
            msg = "'callback_retry_gap' must be >= 0"
            raise ValueError(msg)


@dataclass(slots=True)
class RequestRecord:
    """One ``/v1/listen`` request as the emulator saw it, faulted or not.

    ``mode`` is ``url`` for a JSON content type, ``upload`` otherwise, and ``invalid`` when the
    JSON could not be used. ``bytes_received`` and ``sha256`` describe the audio (uploaded or
    fetched), not the JSON. ``status`` is 0 when the emulator dropped the connection (fault
    ``reset``) and 499 when the client went away before its upload was complete.
    """

    request_id: str
    time: float
    mode: str
    url: str | None
    content_type: str
    content_length: int | None
    bytes_received: int
    sha256: str | None
    params: list[tuple[str, str]]
    status: int
    fault: str | None
    authorization: str
    #: seconds of audio transcribed (None when the request never got that far)
    duration: float | None = None
    #: callback mode: the receiver's URL, without credentials or query (a signature may be there)
    callback: str | None = None
    #: callback mode: the receiver's status for each delivery attempt in order (0: no answer)
    callback_attempts: list[int] = field(default_factory=list)
