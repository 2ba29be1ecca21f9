"""A Deepgram-compatible ``POST /v1/listen`` on loopback, for the demo, the tests and benchmarks.

The machines that build dgbatch have no internet, so everything that talks to Deepgram is
exercised against this server instead. It follows the shared notes on the Deepgram API
(``DEEPGRAM-API.md`` §1-3 and its §7 "Emulator checklist"): ``Token``/``Bearer`` auth, URL
submissions that the emulator fetches itself, streamed binary uploads checked by magic bytes,
responses of Deepgram's shape (``model_info``, ``multichannel``), Deepgram's concurrency limits
(or a configured one), callback mode, and injectable faults (429 with or without
``Retry-After``, 5xx, non-JSON gateway pages, connection resets, truncated and garbage bodies).

One module per concern: ``config`` (the knobs, the log's records), ``audio`` (what the audio
says), ``responses`` (the 200 body), ``faults`` (refusals and broken answers), ``fetch`` (URL
submissions), ``callbacks`` (callback mode's deliveries), ``management`` (the management API),
``control`` (the ``/_emulator`` routes), ``server`` (the routes and a request's life) and
``running`` (in a thread, or in the foreground). Code outside the package imports from here.
"""

from batch.emulator.audio import (
    estimate_duration,
    looks_like_audio,
    transcript_for,
    wav_channels,
    wav_duration,
)
from batch.emulator.callbacks import CALLBACK_PORTS, CALLBACK_RETRIES
from batch.emulator.config import (
    AUTH_MODES,
    DEEPGRAM_CONCURRENCY,
    DEFAULT_FAULTS,
    EXTRA_FAULTS,
    MAX_UPLOAD_BYTES,
    WHISPER_CONCURRENCY,
    EmulatorConfig,
    RequestRecord,
)
from batch.emulator.control import control_allowed
from batch.emulator.fetch import safe_url
from batch.emulator.responses import build_response, model_info
from batch.emulator.running import run_in_thread, serve
from batch.emulator.server import KEYWORDS_ON_NOVA3, Emulator, answer_delay

__all__ = [
    "AUTH_MODES",
    "CALLBACK_PORTS",
    "CALLBACK_RETRIES",
    "DEEPGRAM_CONCURRENCY",
    "DEFAULT_FAULTS",
    "EXTRA_FAULTS",
    "KEYWORDS_ON_NOVA3",
    "MAX_UPLOAD_BYTES",
    "WHISPER_CONCURRENCY",
    "Emulator",
    "EmulatorConfig",
    "RequestRecord",
    "answer_delay",
    "build_response",
    "control_allowed",
    "estimate_duration",
    "looks_like_audio",
    "model_info",
    "run_in_thread",
    "safe_url",
    "serve",
    "transcript_for",
    "wav_channels",
    "wav_duration",
]
