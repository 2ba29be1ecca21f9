"""Account features: key preflight, ``dgbatch check``, run tags and usage reconciliation."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner
from conftest import KEY, Cli, emulator_with, make_wav, make_wavs, serve_app

from batch.account import KeyDetails, TransientAccountError, _status_error, preflight
from batch.cli import cli
from batch.emulator import Emulator
from batch.errors import AccountError, FatalApiError
from batch.params import request_params, run_tags
from batch.usage import RunWindow, reconcile


@pytest.mark.parametrize(
    ("defaults", "own", "formats", "expected"),
    [
        ((("model", "nova-3"),), (), (), (("model", "nova-3"), ("tag", "dgbatch"), ("tag", "r"))),
        ((), (), ("json", "vtt"), (("utterances", "true"), ("tag", "dgbatch"), ("tag", "r"))),
        ((), (("utterances", "false"),), ("srt",), (("utterances", "false"), *run_tags("r"))),
        ((("tag", "mine"),), (), (), (("tag", "mine"),)),
        ((), (("tag", "item"),), ("srt",), (("tag", "item"), ("utterances", "true"))),
        ((("model", "a"),), (("model", "b"),), (), (("model", "b"), *run_tags("r"))),
    ],
)
def test_request_params(
    defaults: tuple[tuple[str, str], ...],
    own: tuple[tuple[str, str], ...],
    formats: tuple[str, ...],
    expected: tuple[tuple[str, str], ...],
) -> None:
    """Captions add utterances=true and runs add their tags, unless the user set the key."""
    assert request_params(defaults, own, formats=formats, tags=run_tags("r")) == expected


def test_invalid_key_exits_3_before_any_listen_request(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """A refused key stops the run at the preflight: exit 3, zero /v1/listen requests and
    no state file; the ``--run-report`` a monitor reads still says so."""
    make_wav(tmp_path / "in" / "a.wav")
    out = tmp_path / "out"
    monitor = tmp_path / "run-report.json"
    result = dgbatch(
        "run", str(tmp_path / "in"), "--out", str(out), "--run-report", str(monitor),
        key="wrong-key",
    )  # fmt: skip
    assert result.exit_code == 3
    assert "Deepgram refused the API key" in result.output and "wrong-key" not in result.output
    assert emulator.log == []
    assert not (out / ".dgbatch" / "state.sqlite").exists()
    report = json.loads(monitor.read_text())
    assert report["exit_code"] == 3 and "refused the API key" in report["error"]
    assert "wrong-key" not in monitor.read_text()


def test_check_prints_scopes_never_the_key(dgbatch: Cli, emulator: Emulator) -> None:
    """``dgbatch check`` shows accessor, scopes and expiry; a bad key exits 3."""
    result = dgbatch("check", "--api-url", emulator.url)
    assert result.exit_code == 0, result.output
    assert "scopes usage:write" in result.output and "expires never" in result.output
    assert KEY not in result.output
    as_json = json.loads(dgbatch("check", "--api-url", emulator.url, "--json").output)
    assert as_json["scopes"] == ["usage:write"]
    assert dgbatch("check", "--api-url", emulator.url, key="nope").exit_code == 3


class FlakyClient:
    """A stand-in AccountClient whose key check fails with the given errors, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def key_details(self) -> KeyDetails:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return KeyDetails("acc", "user", ("member",), None)


SECRET = "sk-account-0123456789"


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            401,
            b'{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}',
            FatalApiError,
            "Deepgram refused the API key (HTTP 401 INVALID_AUTH: Invalid credentials.); "
            "no audio was sent",  # true of ``dgbatch check`` too
        ),
        (
            404,
            b'{"category":"NOT_FOUND","message":"no such project"}',
            AccountError,
            "GET /v1/x: HTTP 404 NOT_FOUND: no such project",
        ),
        (
            502,
            b"<html><body>\n  Bad   gateway\n</body></html>",
            TransientAccountError,
            "GET /v1/x: HTTP 502: <html><body> Bad gateway </body></html>",
        ),
        (429, b"", TransientAccountError, "GET /v1/x: HTTP 429"),
        (
            400,
            f'{{"err_msg":"bad key {SECRET}"}}'.encode(),
            AccountError,
            "GET /v1/x: HTTP 400: bad key REDACTED",
        ),
        (
            502,
            f"<p>{'x' * 190} {SECRET}</p>".encode(),
            TransientAccountError,
            f"GET /v1/x: HTTP 502: <p>{'x' * 190} …",
        ),
    ],
    ids=[
        "401-json",
        "404-category",
        "502-gateway-html",
        "429-empty",
        "400-echoes-key",
        "502-key-past-the-quote",
    ],
)
def test_management_error_bodies_are_read_as_listen_errors_are(
    status: int, body: bytes, kind: type[Exception], message: str
) -> None:
    """Every error shape Deepgram (or a gateway) sends is named, and an echoed key never is."""
    error = _status_error("/v1/x", status, body, (SECRET,))
    assert type(error) is kind
    assert str(error) == message


async def test_preflight_retries_network_errors_then_proceeds() -> None:
    """Transient failures are retried twice with backoff, then the run proceeds (None)."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    flaky = FlakyClient(TransientAccountError("down"), TransientAccountError("down"))
    assert (await preflight(flaky, sleep=sleep)) is not None  # type: ignore[arg-type]
    down = FlakyClient(*[TransientAccountError("down")] * 3)
    assert await preflight(down, sleep=sleep) is None  # type: ignore[arg-type]
    assert down.calls == 3 and slept == [0.5, 1.0, 0.5, 1.0]
    missing = FlakyClient(AccountError("GET /v1/auth/token: HTTP 404"))
    assert await preflight(missing, sleep=sleep) is None  # type: ignore[arg-type]
    with pytest.raises(FatalApiError):
        await preflight(FlakyClient(FatalApiError("refused")), sleep=sleep)  # type: ignore[arg-type]


def test_preflight_unreachable_proceeds_and_run_reports_it(tmp_path: Path) -> None:
    """With nothing listening, the preflight gives up with a warning and the run's own
    requests fail as transport errors (exit 1), not as a crash."""
    make_wav(tmp_path / "in" / "a.wav")
    result = Cli(None)(
        "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--progress", "none",
        "--api-url", "http://127.0.0.1:9", "--max-retries", "0",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "key check failed" in result.output and "proceeding without it" in result.output
    assert "cannot connect" in (tmp_path / "out" / ".dgbatch" / "report.jsonl").read_text()
    check = Cli(None)("check", "--api-url", "http://127.0.0.1:9")
    assert check.exit_code == 1  # said as a run says it, not in aiohttp's words
    assert "no answer (cannot connect to 127.0.0.1:9: connection refused)" in check.output


def test_a_tls_failure_is_said_as_one(emulator: Emulator) -> None:
    """TLS to a plain-http port (or a proxy inspecting TLS) read "operation not
    permitted": ssl's errno 1 through os.strerror."""
    check = Cli(None)("check", "--api-url", emulator.url.replace("http://", "https://"))
    assert check.exit_code == 1
    assert "tls error: wrong version number" in check.output.lower(), check.output
    assert "operation not permitted" not in check.output


def test_a_host_that_does_not_resolve_is_said_so(tmp_path: Path) -> None:
    """A DNS failure read "unknown error -2" (getaddrinfo's errno through os.strerror)."""
    check = Cli(None)("check", "--api-url", "https://api.deepgram.invalid")
    assert check.exit_code == 1
    said = check.output.lower()
    assert "cannot connect to api.deepgram.invalid:443" in said and "unknown error" not in said
    assert "name" in said  # "name or service not known", "temporary failure in name resolution"


def test_every_request_carries_the_run_tags(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """Requests carry ``tag=dgbatch`` and the run's own tag, which the runs table keeps."""
    make_wav(tmp_path / "in" / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    db = sqlite3.connect(out / ".dgbatch" / "state.sqlite")
    (tag,) = db.execute("SELECT tag FROM runs").fetchone()
    db.close()
    assert tag.startswith("dgbatch-run-1-")
    tags = [v for k, v in emulator.log[0].params if k == "tag"]
    assert tags == ["dgbatch", tag]
    make_wav(tmp_path / "in2" / "b.wav")
    result = dgbatch("run", str(tmp_path / "in2"), "--out", str(out), "--param", "tag=mine")
    assert result.exit_code == 0
    assert [v for k, v in emulator.log[1].params if k == "tag"] == ["mine"]


def duplicate_request(emulator: Emulator, tag: str, audio: Path) -> str:
    """Send a request outside dgbatch with the run's tag: paid for, never recorded."""
    request = urllib.request.Request(
        f"{emulator.url}/v1/listen?tag=dgbatch&tag={tag}",
        data=audio.read_bytes(),
        headers={"Authorization": f"Token {KEY}", "Content-Type": "audio/wav"},
    )
    with urllib.request.urlopen(request) as response:
        return str(json.load(response)["metadata"]["request_id"])


def test_usage_finds_a_duplicated_request(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """``dgbatch usage`` matches the run's requests to the state and lists the one Deepgram
    recorded (and billed) that has no result in the state; exit 1 when there is one."""
    files = [make_wav(tmp_path / "in" / f"{n}.wav", 0.5, tone=n) for n in range(3)]
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    args = ("usage", "--project", "p-1", "--state", str(state), "--api-url", emulator.url)
    clean = dgbatch(*args)
    assert clean.exit_code == 0, clean.output
    assert "3 succeeded" in clean.output and "3 matched" in clean.output
    assert "Deepgram's log searched" in clean.output and "(the run ± 2 min)" in clean.output
    db = sqlite3.connect(state)
    (tag,) = db.execute("SELECT tag FROM runs").fetchone()
    db.close()
    extra = duplicate_request(emulator, tag, files[0])
    result = dgbatch(*args, "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [u["request_id"] for u in report["unmatched_requests"]] == [extra]
    assert report["requests"] == 4 and report["items_done"] == 3 and report["items_matched"] == 3
    assert report["billed_hours"] == pytest.approx(4 * 0.5 / 3600, abs=1e-6)
    assert report["transcribed_hours"] == pytest.approx(3 * 0.5 / 3600, abs=1e-6)
    assert report["usage_requests"] == 4
    assert dgbatch(*args, key="bad").exit_code == 3


def test_usage_says_when_deepgrams_log_was_cut_off(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is read up to MAX_PAGES pages: past that (a run of a million requests, a
    busy project), the reconciliation ended as if the log had, exit 0, blaming "log lag"
    for the items it never read. It says the counts are partial, exit 1; only the run's
    requests are kept while paging (the whole window's entries took 800 MB)."""
    make_wavs(tmp_path / "in", 5)
    out, state = tmp_path / "out", tmp_path / "out" / ".dgbatch" / "state.sqlite"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    monkeypatch.setattr("batch.usage.PAGE_SIZE", 2)
    args = ("usage", "--project", "p-1", "--state", str(state), "--api-url", emulator.url)
    whole = dgbatch(*args, "--json")
    assert whole.exit_code == 0 and json.loads(whole.output)["items_matched"] == 5
    monkeypatch.setattr("batch.usage.MAX_PAGES", 2)
    cut = dgbatch(*args)
    assert cut.exit_code == 1, cut.output
    assert "holds more than 4 requests in this window: the rest was not read" in cut.output


@pytest.mark.parametrize(
    ("given", "env", "named"),
    [
        (["--project", ""], {}, "--project '': not a Deepgram project id"),
        (["--project", "a/b?c"], {}, "--project 'a/b?c': not a Deepgram project id"),
        ([], {"DEEPGRAM_PROJECT_ID": ""}, "Missing option '--project'"),  # click: unset
        ([], {"DEEPGRAM_PROJECT_ID": "p 1"}, "DEEPGRAM_PROJECT_ID 'p 1': not a Deepgram"),
    ],
)
def test_usage_refuses_a_project_id_that_is_none(
    emulator: Emulator, tmp_path: Path, given: list[str], env: dict[str, str], named: str
) -> None:
    """An empty project id asked for ``/v1/projects//requests`` (a 404, exit 1); one with
    a ``/`` or ``?`` went into the URL as it was. Exit 2, naming where it came from."""
    result = CliRunner().invoke(
        cli, ["usage", *given, "--state", str(tmp_path), "--api-url", emulator.url],
        env={"DEEPGRAM_API_KEY": KEY, **env},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert emulator.log == []


def test_usage_does_not_call_an_injected_error_paid(tmp_path: Path) -> None:
    """The emulator listed its injected 503s as billed 200s, so ``dgbatch usage`` said
    "paid but unused: 2" for a run whose two 503s Deepgram bills nothing; they are listed
    with their status now."""
    make_wav(tmp_path / "in" / "a.wav", 0.5)
    out = tmp_path / "out"
    state = out / ".dgbatch" / "state.sqlite"
    with emulator_with(fault_rate=1.0, faults=("503",)) as emu:
        cli = Cli(emu)
        run = cli("run", str(tmp_path / "in"), "--out", str(out), "--max-retries", "1",
                  "--backoff-base", "0.01")  # fmt: skip
        assert run.exit_code == 1, run.output
        usage = cli("usage", "--project", "p-1", "--state", str(state), "--api-url", emu.url,
                    "--json")  # fmt: skip
    assert usage.exit_code == 0, usage.output
    report = json.loads(usage.output)
    assert (report["requests"], report["unmatched_requests"], report["billed_hours"]) == (2, [], 0)
    assert (report["usage_hours"], report["usage_requests"]) == (0, 0)  # its /usage agrees


def test_reconcile_pages_and_tags() -> None:
    """Requests of other runs are ignored; failed ones are counted but never billed."""
    window = RunWindow(2, "run-2", 0.0, 10.0)

    def entry(request_id: str, tags: list[str], code: int = 200) -> dict[str, object]:
        details = {"duration": 60.0, "tags": tags}
        return {"request_id": request_id, "response": {"code": code, "details": details}}

    requests = [
        entry("a", ["run-2"]),
        entry("b", ["run-1"]),
        entry("c", ["run-2"], 500),
        {"request_id": "d", "path": "/v1/listen?tag=run-2", "response": {"code": 200}},
    ]
    result = reconcile(window, requests, {"a": "item-a"}, [("item-a", "a", 60.0), ("x", None, 1)])
    assert (result.requests, result.succeeded, result.failed) == (3, 2, 1)
    assert [u["request_id"] for u in result.unmatched] == ["d"]
    assert result.billed_seconds == 60.0 and result.missing == ["x"]


def test_reconcile_finds_a_request_that_carried_its_own_tag() -> None:
    """An item sent with its own ``tag`` (a manifest's params) replaced the run's tag: its
    request is still this run's, found by its request id (it was "no request in
    Deepgram's log yet")."""
    window = RunWindow(2, "run-2", 0.0, 10.0)
    own = {"request_id": "m", "response": {"code": 200, "details": {"duration": 5.0,
           "tags": ["meetings"]}}}  # fmt: skip
    result = reconcile(window, [own], {"m": "item-m"}, [("item-m", "m", 5.0)])
    assert result.missing == [] and result.items_matched == 1 and result.billed_seconds == 5.0


async def test_requests_endpoint_pages_newest_first(emulator: Emulator, tmp_path: Path) -> None:
    """The emulator's request log is paged and bounded by start/end, like Deepgram's."""
    audio = make_wav(tmp_path / "a.wav")
    for _ in range(3):
        await asyncio.to_thread(duplicate_request, emulator, "t", audio)

    def get(query: str) -> dict[str, object]:
        request = urllib.request.Request(
            f"{emulator.url}/v1/projects/p/requests?{query}",
            headers={"Authorization": f"Token {KEY}"},
        )
        with urllib.request.urlopen(request) as response:
            return dict(json.load(response))

    first, second = get("limit=2&page=0"), get("limit=2&page=1")
    ids = [r["request_id"] for r in [*first["requests"], *second["requests"]]]  # type: ignore[attr-defined, index]
    assert ids == [r.request_id for r in reversed(emulator.log)]
    assert get("end=2000-01-01")["requests"] == []


def test_the_key_check_does_not_follow_a_redirect(dgbatch: Cli) -> None:
    """``GET /v1/auth/token`` followed a 302 (to another host, without the key): the check
    then named a connection error or the other host's 404. It names the redirect, as a
    ``/v1/listen`` redirect does, and the other host is never asked."""
    asked: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"scopes": ["usage:write"]})

    target = web.Application()
    target.router.add_get("/{tail:.*}", elsewhere)
    with serve_app(target) as other:

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{other}/v1/auth/token")

        api = web.Application()
        api.router.add_get("/v1/auth/token", moved)
        with serve_app(api) as url:
            result = dgbatch("check", "--api-url", url)
    assert result.exit_code == 1, result.output
    assert f"HTTP 302 (a redirect to {other}/v1/auth/token), which dgbatch does not follow" in (
        result.output
    )
    assert asked == []
