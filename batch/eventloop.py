"""Run the top-level coroutine on uvloop when it is installed (``pip install dgbatch[fast]``).

uvloop's event loop and transports cost less CPU per request than asyncio's; the
default install stays pure Python. ``DGBATCH_LOOP=asyncio`` forces the standard loop.

A run allocates a few dozen short-lived containers per request; with the default
threshold (700) the cyclic collector ran hundreds of times a second and cost ~15 % of
the client's CPU at high request rates. Objects alive after start-up are frozen out
of it and the youngest generation is collected every 50,000 allocations instead.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` will use."""
    if os.environ.get("DGBATCH_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


#: allocations between two collections of the youngest generation (default 700)
GC_THRESHOLD = 50_000


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when available, with a calmer garbage collector."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    if loop_name() == "uvloop":
        import uvloop

        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)
