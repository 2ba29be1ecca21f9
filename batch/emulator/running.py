"""Running an emulator away from the caller's event loop: in a thread, or as the CLI's process.

A client under test or under measurement must not share its loop with the server it talks
to, or each would slow the other; and the CLI needs a foreground server that stops cleanly on
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from batch.emulator.config import EmulatorConfig
from batch.emulator.server import Emulator


@contextmanager
def run_in_thread(config: EmulatorConfig) -> Iterator[Emulator]:
    """Start the emulator in a background thread with its own event loop; yield it; stop on exit.

    For sync tests and benchmarks whose client runs on the main thread's loop: the emulator then
    never competes with the client for the same loop. ``log`` is safe to read from the caller.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dgbatch-emulator", daemon=True)
    thread.start()
    emulator = Emulator(config)
    try:
        asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(timeout=30)
        yield emulator
    finally:
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def serve(config: EmulatorConfig) -> None:
    """Blocking: run until SIGINT/SIGTERM, then return normally so the CLI can exit 0.

    Prints exactly one line, ``dgbatch emulator listening on http://HOST:PORT``, flushed, so a
    script that started it with ``--port 0`` can read the port.
    """
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(config))


async def _serve_until_signal(config: EmulatorConfig) -> None:
    """The async body of :func:`serve`; signals only set an event so shutdown is one path."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stopping.set)
    async with Emulator(config) as emulator:
        print(f"dgbatch emulator listening on {emulator.url}", flush=True)
        await stopping.wait()
