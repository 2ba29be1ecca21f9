#!/usr/bin/env python3
"""Benchmark dgbatch against what a user would otherwise use, in one run on one machine.

    python scripts/bench.py            # full run, writes docs/BENCHMARKS.md (~10 minutes)
    python scripts/bench.py --quick    # smaller sizes, under a minute
    python scripts/bench.py --smoke --output /tmp/b.md   # seconds; what the test suite runs

Every client runs as its own process against the same ``dgbatch emulator`` (its own process
on 127.0.0.1), so each pays its own start-up and has its own peak RSS (from ``wait4``). URL
items point at a tiny WAV served by a small local HTTP server that the emulator fetches.
Each case runs ``repeats`` times with the clients interleaved (the rate case in a rotated
order each repeat), and every ratio is taken
between runs of the *same* repeat, because these machines are noisy: the tables show the
median and the min-max spread.

Cases: (1) request rate at C=64, no latency: dgbatch vs a bare aiohttp loop, on shared
cores and again with the emulator and the audio server on cores of their own; (2) 200 ms
latency: dgbatch vs C/latency; (3) peers: the official deepgram-sdk (async client, same
concurrency, and a plain sequential loop) and ``xargs -P 64 curl``; (4) streamed uploads at
C=4 vs a bare aiohttp upload, and peak RSS with 50 MB files vs one 1 GB sparse file;
(5) state on tmpfs vs on disk, and the CPU cost of the SQLite work per item; (6) planning a
1,000,000-line manifest and a 100,000-file folder, while sending with no latency and with
200 ms: time to the first request at the emulator, time until every item is in the state,
peak RSS.

The internal ``_audio``/``_bare-url``/``_bare-upload``/``_sdk``/``_sdk-loop`` commands are
the subprocesses the benchmark starts; they are not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import datetime
import os
import platform
import re
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KEY = "bench-key-0123456789abcdef"
QUERY = "model=nova-3&smart_format=true"
LISTENING = re.compile(r"listening on (http://\S+)")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
MB = 1_000_000


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How big each case is; ``full`` is what docs/BENCHMARKS.md records."""

    name: str
    repeats: int
    rate_items: int
    peer_items: int
    latency_items: int
    latency_loop_items: int
    loop_items: int
    upload_files: int
    upload_mb: int
    big_mb: int
    manifest_lines: int
    dir_files: int
    concurrency: int = 64
    latency: float = 0.2
    upload_concurrency: int = 4


SIZES = {
    "full": Sizes("full", 3, 5000, 2000, 2000, 20, 1000, 20, 50, 1024, 1_000_000, 100_000),
    "quick": Sizes("quick", 2, 1000, 300, 640, 5, 100, 3, 20, 200, 50_000, 5_000),
    "smoke": Sizes("smoke", 1, 100, 50, 64, 2, 20, 1, 2, 10, 2_000, 100),
}


# --------------------------------------------------------------------------- fixtures


def wav_header(data_bytes: int, rate: int = 8000) -> bytes:
    """A 44-byte RIFF/WAVE header for mono 16-bit PCM, so the emulator sniffs it as audio."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


TINY_WAV = wav_header(1600) + bytes(1600)


def write_manifest(path: Path, audio_url: str, count: int, *, signed: bool = False) -> Path:
    """``count`` distinct URLs of the tiny WAV (distinct names, as a real manifest has);
    ``signed``: each with a presigned URL's query (1.1 KB with its session token), which
    the audio server ignores and dgbatch must keep, unstored, until it sends the item."""
    query = f"?{PRESIGNED}" if signed else ""
    with path.open("w") as out:
        out.writelines(f"{audio_url}/audio/{i}.wav{query}{i:064x}\n" if signed
                       else f"{audio_url}/audio/{i}.wav\n" for i in range(count))  # fmt: skip
    return path


PRESIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261128%2F"
    "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261128T040000Z&X-Amz-Expires=604800"
    f"&X-Amz-SignedHeaders=host&X-Amz-Security-Token={'IQoJb3JpZ2luX2VjEJr' * 40}"
    "&X-Amz-Signature="
)


def write_audio_file(path: Path, size: int, *, sparse: bool = False) -> None:
    """A WAV header followed by zeros; ``sparse`` leaves a hole instead of writing them."""
    with path.open("wb") as out:
        out.write(wav_header(size - 44))
        if sparse:
            out.truncate(size)
            return
        block = bytes(1 << 20)
        left = size - 44
        while left > 0:
            left -= out.write(block[: min(left, len(block))])


def write_folder(folder: Path, count: int) -> Path:
    """``count`` tiny WAVs spread over 100 subfolders."""
    for i in range(count):
        sub = folder / f"d{i % 100:02d}"
        if i < 100:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.wav").write_bytes(TINY_WAV)
    return folder


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    """One finished client process."""

    wall: float
    rss_mb: float
    cpu: float
    code: int
    stderr: str


def env_for_clients() -> dict[str, str]:
    """The environment every client gets: the key, nothing of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "DGBATCH_"))}
    env["DEEPGRAM_API_KEY"] = KEY
    return env


def wait_child(proc: subprocess.Popen[bytes], started: float, log: Path) -> Child:
    """Reap ``proc`` with ``wait4``: wall time, its own peak RSS and CPU time, exit code."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    stderr = log.read_text(errors="replace")[-2000:]
    return Child(wall, usage.ru_maxrss / 1024, cpu, proc.returncode, stderr)


def spawn(
    cmd: list[str],
    stdin: Path | None,
    log: Path,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a client with stdout discarded and stderr to ``log`` (on ``cpus`` only)."""
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        err = stack.enter_context(log.open("wb"))
        return subprocess.Popen(
            cmd,
            stdin=src,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env_for_clients() | (env or {}),
            preexec_fn=pinned(cpus),
        )


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """What a child runs before ``exec`` to stay on ``cpus`` (its threads inherit it)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def core_split() -> tuple[set[int], set[int]] | None:
    """Half of this process's physical cores for the API side, the other half for a
    client; None with a single core (or where affinity cannot be set)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    return halves([siblings(cpu) & cpus for cpu in sorted(cpus)])


def siblings(cpu: int) -> frozenset[int]:
    """The hardware threads sharing ``cpu``'s core (itself alone where /sys does not say),
    so that the API and the client never share a core through SMT."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        return frozenset(cpu_list(path.read_text()) | {cpu})
    except (OSError, ValueError):
        return frozenset({cpu})


def cpu_list(text: str) -> set[int]:
    """The CPUs of a Linux CPU list such as ``0-1,4-5``."""
    found: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def halves(cores: list[frozenset[int]]) -> tuple[set[int], set[int]] | None:
    """Split distinct cores (sets of hardware threads) into two halves of whole cores."""
    unique = sorted(set(cores), key=min)
    if len(unique) < 2:
        return None
    half = len(unique) // 2
    return set().union(*unique[:half]), set().union(*unique[half:])


def run_child(
    cmd: list[str],
    work: Path,
    stdin: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> Child:
    """Run a client to completion and measure it."""
    log = work / "child.err"
    started = time.perf_counter()
    child = wait_child(spawn(cmd, stdin, log, env, cpus), started, log)
    if check and child.code != 0:
        raise RuntimeError(f"{cmd[:4]}… exited {child.code}:\n{child.stderr}")
    return child


@dataclass
class Server:
    """A server process that printed ``… listening on URL``."""

    proc: subprocess.Popen[str]
    url: str

    def get(self, path: str) -> Any:
        import json

        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str) -> None:
        req = urllib.request.Request(self.url + path, method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def requests(self) -> int:
        return int(self.get("/_emulator/stats")["requests"])

    def reached(self) -> bool:
        """Whether a request arrived since the last reset (answered or not yet)."""
        stats = self.get("/_emulator/stats")
        return bool(stats["requests"] or stats["in_flight_max"])

    def sending_span(self, latency: float) -> float:
        """Seconds from the first request's arrival to the last answer (the last
        arrival plus the latency): a client's pool at work, without its start-up."""
        times = [record["time"] for record in self.get("/_emulator/log")]
        return max(times) + latency - min(times)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def server(cmd: list[str], cpus: set[int] | None = None) -> Iterator[Server]:
    """Start a server (on ``cpus`` only) and read its URL from the first line it prints."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env=env_for_clients(), preexec_fn=pinned(cpus)
    )
    assert proc.stdout is not None
    match = LISTENING.search(proc.stdout.readline())
    if match is None:
        proc.kill()
        raise RuntimeError(f"{cmd} did not print its URL")
    srv = Server(proc, match.group(1))
    try:
        yield srv
    finally:
        srv.stop()


def emulator(
    latency: float = 0.0, cpus: set[int] | None = None
) -> contextlib.AbstractContextManager[Server]:
    """``dgbatch emulator`` in its own process, accepting only the bench key."""
    cmd = [PY, "-m", "batch", "emulator", "--port", "0", "--key", KEY]
    return server([*cmd, "--latency", str(latency)], cpus)


# --------------------------------------------------------------------------- clients


def dgbatch_cmd(api: str, sources: list[str], out: Path, state: Path, c: int) -> list[str]:
    """The real CLI, as a user runs it (progress as log lines: stderr is not a terminal)."""
    return [
        *(PY, "-m", "batch", "run", *sources),
        *("--out", str(out), "--state", str(state), "--concurrency", str(c)),
        *("--api-url", api, "--param", "model=nova-3", "--progress", "log"),
    ]


def curl_cmd(api: str, c: int) -> list[str]:
    """``xargs -P C curl`` with one JSON body per manifest line."""
    return [
        *("xargs", "-P", str(c), "-I", "{}", "curl", "-sSf", "-o", "/dev/null"),
        *("-H", f"Authorization: Token {KEY}", "-H", "Content-Type: application/json"),
        *("--data", '{"url":"{}"}', f"{api}/v1/listen?{QUERY}"),
    ]


def helper_cmd(mode: str, *args: object) -> list[str]:
    """This script in one of its internal modes, imported byte-compiled (a script run by
    its path is compiled at every start, ~9 ms the clients it is compared with never pay)."""
    here = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import bench; bench.entry()"
    return [PY, "-c", code, mode, *map(str, args)]


async def _bare_url(api: str, manifest: str, concurrency: int) -> None:
    """The baseline: one session, a semaphore, the same requests, bodies read and dropped."""
    import aiohttp

    urls = Path(manifest).read_text().split()
    sem = asyncio.Semaphore(concurrency)
    endpoint = f"{api}/v1/listen?{QUERY}"
    headers = {"Authorization": f"Token {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> None:
            async with sem, session.post(endpoint, json={"url": url}, headers=headers) as resp:
                await resp.read()
                resp.raise_for_status()

        await asyncio.gather(*(one(url) for url in urls))


async def _bare_upload(api: str, folder: str, concurrency: int) -> None:
    """The upload baseline: each file object handed to aiohttp, which streams it."""
    import aiohttp

    files = sorted(p for p in Path(folder).rglob("*.wav"))
    sem = asyncio.Semaphore(concurrency)
    endpoint = f"{api}/v1/listen?{QUERY}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(path: Path) -> None:
            headers = {"Authorization": f"Token {KEY}", "Content-Type": "audio/wav"}
            async with sem:
                with path.open("rb") as body:
                    async with session.post(endpoint, data=body, headers=headers) as resp:
                        await resp.read()
                        resp.raise_for_status()

        await asyncio.gather(*(one(path) for path in files))


def _sdk_client(api: str, *, sync: bool = False) -> Any:
    """The official SDK (v7) pointed at the emulator through its environment."""
    from deepgram import AsyncDeepgramClient, DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    ws = api.replace("http://", "ws://")
    env = DeepgramClientEnvironment(base=api, production=ws, agent=ws, agent_rest=api)
    cls = DeepgramClient if sync else AsyncDeepgramClient
    return cls(api_key=KEY, environment=env)


async def _sdk_async(api: str, manifest: str, concurrency: int) -> None:
    """The async SDK client with the same concurrency."""
    client = _sdk_client(api)
    urls = Path(manifest).read_text().split()
    sem = asyncio.Semaphore(concurrency)

    async def one(url: str) -> None:
        async with sem:
            await client.listen.v1.media.transcribe_url(url=url, model="nova-3", smart_format=True)

    await asyncio.gather(*(one(url) for url in urls))


def _sdk_loop(api: str, manifest: str) -> None:
    """What the SDK's README shows: a plain loop of ``transcribe_url``."""
    client = _sdk_client(api, sync=True)
    for url in Path(manifest).read_text().split():
        client.listen.v1.media.transcribe_url(url=url, model="nova-3", smart_format=True)


def _serve_audio() -> None:
    """Serve the tiny WAV at every path; print the URL like the emulator does."""
    from aiohttp import web

    async def audio(request: web.Request) -> web.Response:
        return web.Response(body=TINY_WAV, content_type="audio/wav")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", audio)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"audio server listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


HELPERS: dict[str, Callable[[list[str]], None]] = {
    "_audio": lambda a: _serve_audio(),
    "_bare-url": lambda a: asyncio.run(_bare_url(a[0], a[1], int(a[2]))),
    "_bare-upload": lambda a: asyncio.run(_bare_upload(a[0], a[1], int(a[2]))),
    "_sdk": lambda a: asyncio.run(_sdk_async(a[0], a[1], int(a[2]))),
    "_sdk-loop": lambda a: _sdk_loop(a[0], a[1]),
}


# --------------------------------------------------------------------------- statistics


@dataclass
class Series:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def spread(self, fmt: str) -> str:
        if len(self.values) < 2:
            return ""
        return f" ({format(min(self.values), fmt)}–{format(max(self.values), fmt)})"

    def show(self, fmt: str = ".0f") -> str:
        return format(self.median, fmt) + self.spread(fmt)


@dataclass
class Row:
    """One line of a results table."""

    case: str
    what: str
    value: str
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        verdict = {None: "", True: "met", False: "**missed**"}[self.met]
        return [self.case, self.what, self.value, self.target, verdict]


@dataclass
class Bench:
    """Shared state of one benchmark run."""

    sizes: Sizes
    work: Path
    shm: Path
    audio_url: str = ""
    serial: int = 0
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fresh(self, name: str, base: Path | None = None) -> Path:
        """A new empty folder for one run's outputs or state.

        Old ones are left until the end: creating thousands of files right after
        deleting thousands makes ext4's inode allocator slow, and would bill dgbatch.
        """
        self.serial += 1
        path = (base or self.work) / f"{name}-{self.serial}"
        path.mkdir(parents=True)
        return path

    def row(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))
        print(" | ".join(self.rows[-1].cells()), flush=True)


def ratio_series(top: Series, bottom: Series) -> Series:
    """Per-repeat ratios: each repeat's runs faced the same machine state."""
    return Series([t / b for t, b in zip(top.values, bottom.values, strict=True)])


# --------------------------------------------------------------------------- cases


def run_dgbatch(
    b: Bench,
    api: str,
    sources: list[str],
    c: int,
    state_dir: Path,
    loop: str = "",
    cpus: set[int] | None = None,
) -> Child:
    """One dgbatch run on fresh outputs and a fresh state (``loop`` may force asyncio)."""
    out = b.fresh("out")
    state = b.fresh("state", state_dir) / "state.sqlite"
    env = {"DGBATCH_LOOP": loop} if loop else None
    return run_child(dgbatch_cmd(api, sources, out, state, c), b.work, env=env, cpus=cpus)


@dataclass
class Client:
    """One client of the rate case: how to run it and how many items it sends."""

    label: str
    items: int
    run: Callable[[], Child]
    rate: Series = field(default_factory=Series)
    #: items/s from its first request to its last answer (start-up and exit left out)
    pool: Series = field(default_factory=Series)
    cpu_us: Series = field(default_factory=Series)
    rss: Series = field(default_factory=Series)


def rate_clients(b: Bench, emu: Server) -> dict[str, Client]:
    """Cases 1, 3 and 5: the same URL items through every client."""
    s, c, api = b.sizes, b.sizes.concurrency, emu.url
    manifest = write_manifest(b.work / "rate.txt", b.audio_url, s.rate_items)
    peers = write_manifest(b.work / "peers.txt", b.audio_url, s.peer_items)
    loop = write_manifest(b.work / "loop.txt", b.audio_url, s.loop_items)
    return {
        "bare": Client(
            "bare aiohttp loop", s.rate_items,
            lambda: run_child(helper_cmd("_bare-url", api, manifest, c), b.work),
        ),
        "dgbatch": Client(
            "dgbatch (state and outputs on disk)", s.rate_items,
            lambda: run_dgbatch(b, api, [str(manifest)], c, b.work),
        ),
        "dgbatch-asyncio": Client(
            "dgbatch, DGBATCH_LOOP=asyncio (no uvloop)", s.rate_items,
            lambda: run_dgbatch(b, api, [str(manifest)], c, b.work, loop="asyncio"),
        ),
        "dgbatch-shm": Client(
            "dgbatch (state on tmpfs)", s.rate_items,
            lambda: run_dgbatch(b, api, [str(manifest)], c, b.shm),
        ),
        "sdk": Client(
            f"deepgram-sdk async, C={c}", s.peer_items,
            lambda: run_child(helper_cmd("_sdk", api, peers, c), b.work),
        ),
        "sdk-loop": Client(
            "deepgram-sdk sequential loop", s.loop_items,
            lambda: run_child(helper_cmd("_sdk-loop", api, loop), b.work),
        ),
        "curl": Client(
            f"xargs -P {c} curl", s.peer_items,
            lambda: run_child(curl_cmd(api, c), b.work, stdin=peers),
        ),
    }  # fmt: skip


def case_rate(b: Bench, emu: Server) -> dict[str, Client]:
    """Cases 1, 3 and 5, every client on every core, beside the emulator."""
    clients = rate_clients(b, emu)
    run_interleaved(b, emu, clients)
    return clients


def run_interleaved(b: Bench, emu: Server, clients: dict[str, Client]) -> None:
    """Run every client ``repeats`` times, interleaved, checking the emulator saw them all."""
    names = list(clients)
    for rep in range(b.sizes.repeats):
        # a new order each repeat: a client that always ran right after the same one
        # would carry what that one left behind (dirty pages, a busy emulator) every time
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            client = clients[name]
            emu.post("/_emulator/reset")
            child = client.run()
            sent = emu.requests()
            if sent != client.items:
                raise RuntimeError(f"{name}: emulator saw {sent} requests, not {client.items}")
            client.rate.add(client.items / child.wall)
            client.pool.add(client.items / emu.sending_span(0.0))
            client.cpu_us.add(child.cpu / client.items * 1e6)
            client.rss.add(child.rss_mb)
            print(f"  rep {rep + 1} {name}: {client.items / child.wall:.0f} items/s", flush=True)


def case_rate_isolated(b: Bench) -> None:
    """Case 1 again with the API side (emulator and audio server) on half of the cores and
    the client on the other half, as with a remote API, whose CPU is not the client's.
    On shared cores every microsecond a client spends is taken from the emulator, so that
    ratio also charges dgbatch's own work (state, durable files); this one shows whether
    dgbatch keeps the API as busy as the bare loop does."""
    split = core_split()
    if split is None:
        b.notes.append("rate with the API on cores of its own: skipped (one core, or no way "
                       "to set a process's CPU affinity here)")  # fmt: skip
        return
    api_cpus, client_cpus = split
    s, c = b.sizes, b.sizes.concurrency
    where = f"API on CPU {min(api_cpus)}, client on CPU {min(client_cpus)}"
    if len(api_cpus) > 1 or len(client_cpus) > 1:
        where = f"API on CPUs {sorted(api_cpus)}, client on CPUs {sorted(client_cpus)}"
    with server(helper_cmd("_audio"), api_cpus) as audio, emulator(cpus=api_cpus) as emu:
        manifest = write_manifest(b.work / "isolated.txt", audio.url, s.rate_items)
        clients = {
            "bare": Client(
                f"bare aiohttp loop, {where}", s.rate_items,
                lambda: run_child(helper_cmd("_bare-url", emu.url, manifest, c), b.work,
                                  cpus=client_cpus),
            ),
            "dgbatch": Client(
                f"dgbatch, {where}", s.rate_items,
                lambda: run_dgbatch(b, emu.url, [str(manifest)], c, b.work, cpus=client_cpus),
            ),
        }  # fmt: skip
        run_interleaved(b, emu, clients)
    for client in clients.values():
        b.row("rate", f"{client.label}: items/s; CPU µs/item",
              f"{client.rate.show()}; {client.cpu_us.show()}")  # fmt: skip
    # no target: the bare loop is held back by the API's own core here, an easier bar
    ratio = ratio_series(clients["dgbatch"].rate, clients["bare"].rate)
    b.row("1 rate", f"dgbatch / bare aiohttp, {where}", ratio.show(".2f"))


def report_rate(b: Bench, clients: dict[str, Client]) -> None:
    """Rows for cases 1, 3 and 5."""
    for client in clients.values():
        b.row("rate", f"{client.label}: items/s", client.rate.show())
        b.row("rate", f"{client.label}: CPU µs/item, peak RSS MB",
              f"{client.cpu_us.show()}; {client.rss.median:.0f}")  # fmt: skip
    dg = clients["dgbatch"].rate
    ratio = ratio_series(dg, clients["bare"].rate)
    b.row("1 rate", "dgbatch / bare aiohttp", ratio.show(".2f"), "≥ 0.70", ratio.median >= 0.7)
    pure = ratio_series(clients["dgbatch-asyncio"].rate, clients["bare"].rate)
    b.row("1 rate", "dgbatch without uvloop / bare aiohttp", pure.show(".2f"))
    pool = ratio_series(clients["dgbatch"].pool, clients["bare"].pool)
    b.row("1 rate", "from first request to last answer: dgbatch / bare", pool.show(".2f"))
    for name, target in (("sdk", 10.0), ("sdk-loop", 10.0), ("curl", 5.0)):
        peer = ratio_series(dg, clients[name].rate)
        b.row("3 peers", f"dgbatch / {clients[name].label}", peer.show(".1f"),
              f"≥ {target:.0f}", peer.median >= target)  # fmt: skip
    state = ratio_series(dg, clients["dgbatch-shm"].rate)
    b.row("5 state", "rate, state on disk / on tmpfs", state.show(".2f"), "≥ 0.95",
          state.median >= 0.95)  # fmt: skip


def case_latency(b: Bench) -> None:
    """Case 2: 200 ms per request; the ceiling is C/latency. Also the SDK loop (case 3) at
    that latency, the way a user loops it against the real API."""
    s, c = b.sizes, b.sizes.concurrency
    manifest = write_manifest(b.work / "latency.txt", b.audio_url, s.latency_items)
    loop = write_manifest(b.work / "latency-loop.txt", b.audio_url, s.latency_loop_items)
    ceiling = c / s.latency
    frac, bare, sdk_loop = Series(), Series(), Series()
    pool, bare_pool = Series(), Series()
    with emulator(s.latency) as emu:
        for _ in range(s.repeats):
            emu.post("/_emulator/reset")
            child = run_child(helper_cmd("_bare-url", emu.url, manifest, c), b.work)
            bare.add(s.latency_items / child.wall / ceiling)
            bare_pool.add(s.latency_items / emu.sending_span(s.latency) / ceiling)
            emu.post("/_emulator/reset")
            child = run_dgbatch(b, emu.url, [str(manifest)], c, b.work)
            frac.add(s.latency_items / child.wall / ceiling)
            pool.add(s.latency_items / emu.sending_span(s.latency) / ceiling)
            child = run_child(helper_cmd("_sdk-loop", emu.url, loop), b.work)
            sdk_loop.add(s.latency_loop_items / child.wall)
    b.row("2 latency", f"bare aiohttp / (C/latency = {ceiling:.0f}/s)", bare.show(".3f"))
    b.row("2 latency", "dgbatch / (C/latency)", frac.show(".3f"), "≥ 0.90", frac.median >= 0.9)
    b.row("2 latency", "dgbatch / bare aiohttp", ratio_series(frac, bare).show(".2f"))
    b.row("2 latency", "from first request to last answer: bare / (C/latency)",
          bare_pool.show(".3f"))  # fmt: skip
    b.row("2 latency", "from first request to last answer: dgbatch / (C/latency)",
          pool.show(".3f"))  # fmt: skip
    peer = Series([f * ceiling / r for f, r in zip(frac.values, sdk_loop.values, strict=True)])
    b.row("3 peers", f"dgbatch / deepgram-sdk sequential loop, {s.latency * 1000:.0f} ms latency",
          peer.show(".0f"), "≥ 10", peer.median >= 10)  # fmt: skip


def case_upload(b: Bench, emu: Server) -> None:
    """Case 4: streamed uploads at C=4 vs bare aiohttp; RSS with 50 MB files vs 1 GB."""
    s = b.sizes
    folder = b.fresh("uploads")
    for i in range(s.upload_files):
        write_audio_file(folder / f"u{i:02d}.wav", s.upload_mb * MB)
    big = b.fresh("big")
    write_audio_file(big / "big.wav", s.big_mb * MB, sparse=True)
    total = s.upload_files * s.upload_mb
    c = s.upload_concurrency
    dg, bare, rss = Series(), Series(), Series()
    for _ in range(s.repeats):
        child = run_child(helper_cmd("_bare-upload", emu.url, folder, c), b.work)
        bare.add(total / child.wall)
        child = run_dgbatch(b, emu.url, [str(folder)], c, b.work)
        dg.add(total / child.wall)
        rss.add(child.rss_mb)
    big_run = run_dgbatch(b, emu.url, [str(big)], c, b.work)
    ratio = ratio_series(dg, bare)
    files = f"{s.upload_files}×{s.upload_mb} MB"
    b.row("4 upload", f"bare aiohttp, MB/s ({files}, C={c})", bare.show())
    b.row("4 upload", f"dgbatch, MB/s ({files}, C={c})", dg.show())
    b.row("4 upload", "dgbatch / bare aiohttp", ratio.show(".2f"), "≥ 0.80", ratio.median >= 0.8)
    b.row("4 upload", f"dgbatch peak RSS, MB ({files})", rss.show(), "< 150", rss.median < 150)
    label = f"dgbatch peak RSS, MB (1 × {s.big_mb} MB sparse, {s.big_mb / big_run.wall:.0f} MB/s)"
    b.row("4 upload", label, f"{big_run.rss_mb:.0f}", "< 150", big_run.rss_mb < 150)


def state_cost_per_item(b: Bench, count: int, rate: float) -> float:
    """CPU seconds of the SQLite work one item costs in a run: plan, claim, record, flush
    (the median of three runs: one is a tenth of a second).

    As the runner does it: claims come in batches of the concurrency, and results are
    flushed in the groups its flusher makes every ``FLUSH_INTERVAL`` at ``rate`` items a
    second. The items are built before the clock starts: reading sources is not state.
    """
    sys.path.insert(0, str(ROOT))
    from batch.runner import FLUSH_INTERVAL

    group = max(b.sizes.concurrency, round(FLUSH_INTERVAL * rate))
    return statistics.median(_state_cost(b, count, group) for _ in range(3))


def _state_cost(b: Bench, count: int, group: int) -> float:
    from batch.models import Item, ItemKind, ItemStatus
    from batch.state import Result, State

    url = f"{b.audio_url}/audio"
    items = [
        Item(f"{url}/{i}.wav", f"{url}/{i}.wav", ItemKind.URL, f"audio/{i}.wav")
        for i in range(count)
    ]
    state = State.open(b.fresh("microstate") / "state.sqlite")
    try:
        started = time.process_time()
        state.plan(items, run_id=1)
        state.assign_names()
        cursor = 0
        while batch := state.claim(b.sizes.concurrency, cursor, 1):
            cursor = batch[-1].rowid
            for work in batch:
                outputs = (f"/out/{work.out_name}.json", f"/out/{work.out_name}.txt")
                state.record(Result(work.id, ItemStatus.DONE, 1, 200, request_id="r",
                                    duration=0.2, outputs=outputs))  # fmt: skip
            if state.pending_results() >= group:
                state.flush()
        state.flush()
        return (time.process_time() - started) / count
    finally:
        state.close()


def report_state_cost(b: Bench, clients: dict[str, Client]) -> None:
    """Case 5, second half: SQLite CPU per item, as a share of a second at dgbatch's rate."""
    rate = clients["dgbatch"].rate.median
    per_item = state_cost_per_item(b, b.sizes.rate_items, rate)
    share = per_item * rate
    b.row("5 state", "SQLite CPU per item (plan+claim+record+flush), µs", f"{per_item * 1e6:.0f}")
    b.row("5 state", "SQLite CPU share at dgbatch's rate", f"{share:.1%}", "≤ 5 %", share <= 0.05)


def max_rowid(state: Path) -> int:
    """Items in a fresh state so far (cheap: no table scan); 0 until the file exists."""
    if not state.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=0.1)
        try:
            return int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@dataclass
class PlanTiming:
    """How a big plan went: seconds to the first request, to a full state, peak RSS."""

    first_request: float
    planned: float
    rss_mb: float


def time_planning(b: Bench, emu: Server, source: Path, count: int) -> PlanTiming:
    """Run dgbatch on a big source, watch the emulator and the state, stop it when planned."""
    quiet(emu)
    out = b.fresh("out")
    state = b.fresh("state") / "state.sqlite"
    cmd = dgbatch_cmd(emu.url, [str(source)], out, state, b.sizes.concurrency)
    started = time.perf_counter()
    proc = spawn(cmd, None, b.work / "plan.err")
    first = planned = float("nan")
    deadline = started + 600
    while proc.poll() is None and time.perf_counter() < deadline:
        now = time.perf_counter() - started
        if first != first and emu.reached():
            first = now
        if planned != planned and max_rowid(state) >= count:
            planned = now
        if first == first and planned == planned:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    child = wait_child(proc, started, b.work / "plan.err")
    return PlanTiming(first, planned, child.rss_mb)


def case_planning(b: Bench, emu: Server) -> None:
    """Case 6: a 1,000,000-line manifest and a 100,000-file folder, planned while the
    runner sends to the zero-latency emulator (the planner thread then shares the cores
    with the runner and the emulator at full speed) and to one answering in 200 ms."""
    s = b.sizes
    manifest = write_manifest(b.work / "big-manifest.txt", b.audio_url, s.manifest_lines)
    folder = write_folder(b.fresh("folder"), s.dir_files)
    sources = (
        (f"{s.manifest_lines:,}-line manifest", manifest, s.manifest_lines),
        (f"{s.dir_files:,}-file folder", folder, s.dir_files),
    )
    signed = write_manifest(b.work / "signed.txt", b.audio_url, s.manifest_lines, signed=True)
    with emulator(s.latency) as slow:
        latency = f"{s.latency * 1000:.0f} ms latency"
        for api, when in ((emu, "no latency"), (slow, latency)):
            for label, source, count in sources:
                time_plans(b, api, source, count, f"{label}, {when}")
        # once: what it shows is memory, which is not noisy
        label = f"{s.manifest_lines:,}-line manifest of presigned URLs (1.1 KB), {latency}"
        time_plans(b, slow, signed, s.manifest_lines, label, repeats=1)


def time_plans(
    b: Bench, emu: Server, source: Path, count: int, label: str, repeats: int = 0
) -> None:
    """``repeats`` (default: the run's) plans of one source against one emulator, and
    their rows."""
    first, planned, rss = Series(), Series(), Series()
    for _ in range(repeats or b.sizes.repeats):
        timing = time_planning(b, emu, source, count)
        first.add(timing.first_request)
        planned.add(timing.planned)
        rss.add(timing.rss_mb)
    b.row("6 plan", f"{label}: first request, s", first.show(".2f"), "≤ 5", first.median <= 5)
    b.row("6 plan", f"{label}: all items in the state, s", planned.show(".1f"), "≤ 5",
          planned.median <= 5)  # fmt: skip
    b.row("6 plan", f"{label}: peak RSS, MB", rss.show(), "< 300", rss.median < 300)


def quiet(emu: Server, timeout: float = 30.0) -> None:
    """Reset the emulator once nothing is in flight: a request left over from the previous
    run would otherwise count as this run's first (a reset keeps what is in flight)."""
    deadline = time.perf_counter() + timeout
    while emu.get("/_emulator/stats")["in_flight"] and time.perf_counter() < deadline:
        time.sleep(0.05)
    emu.post("/_emulator/reset")


# --------------------------------------------------------------------------- report


def loop_used() -> str:
    """The event loop ``dgbatch run`` picks in this environment."""
    sys.path.insert(0, str(ROOT))
    try:
        from batch.eventloop import loop_name
    except ImportError:  # a dgbatch from before the option
        return "asyncio"
    return loop_name()


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "ram": f"{int(mem) / 1024**2:.1f} GiB",
        "cpu": cpu,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def markdown(b: Bench, command: str, elapsed: float) -> str:
    """The generated section of BENCHMARKS.md."""
    m = machine()
    lines = [
        BEGIN,
        f"## Latest run ({b.sizes.name})",
        "",
        f"Command: `{command}` — {elapsed:.0f} s, {m['date']}.  ",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram']} RAM, Python {m['python']}, "
        f"{m['os']}. The emulator, the audio server and the client share the cores, except "
        "in the rows that say where each ran. "
        f"dgbatch ran on {loop_used()} unless the row says otherwise.",
        "",
        f"Each value is the median of {b.sizes.repeats} runs, (min–max) in brackets; "
        "ratios are taken within a repeat.",
        "",
        "| case | measure | value | target | |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(row.cells()) + " |" for row in b.rows),
        "",
        *(f"- {note}" for note in b.notes),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_report(path: Path, section: str) -> None:
    """Replace the generated section of ``path``, keeping whatever is written around it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def print_table(rows: list[Row]) -> None:
    """The compact table on stdout."""
    cells = [["case", "measure", "value", "target", ""], *(row.cells() for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(5)]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: does it work at all")
    parser.add_argument("--repeats", type=int, help="runs per case (default 3, smoke 1)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument(
        "--cases", default="rate,latency,upload,planning", help="comma-separated subset"
    )
    return parser.parse_args(argv)


def run_cases(b: Bench, cases: set[str]) -> None:
    """Every requested case, with the servers they share."""
    with server(helper_cmd("_audio")) as audio, emulator() as emu:
        b.audio_url = audio.url
        if "rate" in cases:
            clients = case_rate(b, emu)
            report_rate(b, clients)
            report_state_cost(b, clients)
            case_rate_isolated(b)
        if "latency" in cases:
            case_latency(b)
        if "upload" in cases:
            case_upload(b, emu)
        if "planning" in cases:
            case_planning(b, emu)


def main(argv: list[str]) -> int:
    if argv and argv[0] in HELPERS:
        HELPERS[argv[0]](argv[1:])
        return 0
    args = parse_args(argv)
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.repeats:
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    os.chdir(ROOT)
    compile_package()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="dgbatch-bench-", dir="/var/tmp") as work,
        tempfile.TemporaryDirectory(prefix="dgbatch-bench-", dir=shm_root()) as shm,
    ):
        b = Bench(sizes, Path(work), Path(shm))
        run_cases(b, set(args.cases.split(",")))
    elapsed = time.perf_counter() - started
    command = "python scripts/bench.py" + "".join(f" {a}" for a in argv)
    write_report(args.output, markdown(b, command, elapsed))
    print_table(b.rows)
    print(f"\nwrote {args.output} in {elapsed:.0f} s")
    return 0


def compile_package() -> None:
    """Byte-compile dgbatch as ``pip install`` does for an installed package. A checkout
    installed with ``-e`` under ``PYTHONDONTWRITEBYTECODE`` (as on these machines) would
    otherwise compile every module at every start (81 ms of import time here), which the
    installed tool never pays and the peers (installed packages) are not charged."""
    if not (
        compileall.compile_dir(str(ROOT / "batch"), quiet=1)
        and compileall.compile_file(__file__, quiet=1)
    ):
        raise RuntimeError("byte-compiling dgbatch failed")


def shm_root() -> str:
    """A tmpfs for the state-on-tmpfs run (falls back to the temp dir when there is none)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
