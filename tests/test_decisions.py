"""Table tests of the small pure decisions that had only end-to-end coverage: the run's
exit code, the proxy a URL goes through, where a run report may go, what a run report
is, and which features Deepgram holds to a lower concurrency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.config import run_report_problem
from batch.errors import BudgetExceeded, Interrupted, UsageError
from batch.job import exit_code_for
from batch.params import limited_features, project_limit
from batch.proxies import proxy_for
from batch.runreport import is_run_report, refusal_may_write

COUNTS = {"done": 3, "failed": 0, "pending": 0, "running": 0}


@pytest.mark.parametrize(
    ("counts", "stop", "code"),
    [
        ({}, None, 0),
        ({"failed": 1}, None, 1),
        ({"pending": 2}, None, 1),
        ({"running": 1}, None, 1),
        ({}, Interrupted("x"), 130),
        ({"failed": 1}, UsageError("x"), 2),  # a stop reason wins over counts
        ({}, BudgetExceeded("x"), 1),
    ],
)
def test_the_exit_code_of_a_run(counts: dict[str, int], stop: Exception | None, code: int) -> None:
    """0 only when every item of the run is done; a stop reason wins over the counts."""
    assert exit_code_for({**COUNTS, **counts}, stop) == code  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "url", "proxy"),
    [
        ({}, "https://api.deepgram.com/v1/listen", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https://api.deepgram.com/v1/listen", "p:3128"),
        ({"HTTPS_PROXY": "p:3128"}, "https://api.deepgram.com/v1/listen", "p:3128"),  # no scheme
        ({"HTTP_PROXY": "http://p:3128"}, "https://api.deepgram.com/v1/listen", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http://media.example/a.wav", "p:3128"),
        ({"ALL_PROXY": "http://a:1"}, "https://api.deepgram.com/", "a:1"),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "deepgram.com"},
         "https://api.deepgram.com/v1/listen", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://127.0.0.1:8080/v1/listen", None),  # loopback
        ({"HTTPS_PROXY": "socks5://p:1080"}, "https://api.deepgram.com/", "refused: only an http://"),
        ({"HTTPS_PROXY": "https://p:3128"}, "https://api.deepgram.com/", "refused: only an http://"),
        ({"HTTPS_PROXY": "u:pw@p:notaport"}, "https://h.example/", "refused: not a proxy URL"),
    ],
)  # fmt: skip
def test_the_proxy_a_url_goes_through(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, proxy: str | None
) -> None:
    """Read as curl and boto3 read them: scheme-less is http, loopback is never proxied,
    an https or socks proxy or no URL at all is refused naming the variable."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        for variable in (name, name.lower()):
            monkeypatch.delenv(variable, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if proxy is None or not proxy.startswith("refused: "):
        found = proxy_for(url)
        assert (None if found is None else f"{found.host}:{found.port}") == proxy
        return
    with pytest.raises(UsageError, match=proxy.removeprefix("refused: ")) as refused:
        proxy_for(url)
    assert "pw" not in str(refused.value)  # the value is never shown


@pytest.mark.parametrize(
    ("report", "out", "problem"),
    [
        ("s3://b/reports/r.json", "s3://b/out/", None),
        ("s3://b/reports/", "s3://b/out/", "give an object key"),
        ("s3://b", "s3://b/out/", "give an object key"),
        ("s3://b/out/day1/r.json", "s3://b/out/", "a transcript could be written there"),
        ("s3://b/out/.dgbatch/r.json", "s3://b/out/", None),
        ("s3://b/out/.dgbatch/lock.json", "s3://b/out/", "is a run's lock"),
        ("s3://b/out/.dgbatch/lock-shard-1-of-4.json", "s3://b/out/", "is a run's lock"),
        ("s3://other/out/day1/r.json", "s3://b/out/", None),  # another bucket
    ],
)
def test_where_a_run_report_may_go_in_s3(report: str, out: str, problem: str | None) -> None:
    """Never where a transcript of --out could be, nor over a run's lock."""
    found = run_report_problem(report, out, Path("/nonexistent/state.sqlite"))
    assert (found is None) if problem is None else (problem in str(found)), found


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (json.dumps({"exit_code": 0, "started": 1.0, "command": "dgbatch run x"}), True),
        (json.dumps({"exit_code": 0, "started": 1.0}), False),
        (json.dumps([1, 2]), False),
        ('{"exit_code": 0, "started"', False),  # cut short
        ("not json", False),
        ("", False),
    ],
)
def test_what_a_run_report_is(data: str, expected: bool) -> None:
    """Only a whole JSON object with a run report's fields is replaced by the next one."""
    assert is_run_report(data.encode()) is expected


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("{tmp}/reports/new.json", True),  # a new .json file
        ("{tmp}/reports/new.txt", False),  # not a .json: maybe a file of the user's to be
        ("{tmp}/reports/.dgbatch/new.json", False),
        ("{tmp}/reports/existing.txt", True),  # there: save_run_report looks at it
        ("", False),
        ("https://h/r.json", False),
        ("s3://b/reports/r.json", True),
        ("s3://b/reports/.dgbatch/r.json", False),
    ],
)
def test_where_a_refused_run_may_write_its_report(
    tmp_path: Path, dest: str, expected: bool
) -> None:
    """The options that would have checked the place may be the wrong ones: only a new
    ``.json`` outside ``.dgbatch``, or a file that is there (to be looked at)."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "existing.txt").write_text("x")
    out = str(tmp_path / "out")
    assert refusal_may_write(dest.format(tmp=tmp_path), out) is expected


@pytest.mark.parametrize(
    ("params", "features", "limit"),
    [
        ((("model", "nova-3"),), (), 100),
        ((("model", "whisper-large"),), ("whisper",), 5),
        ((("sentiment", "true"),), ("sentiment",), 10),
        ((("sentiment", "false"),), (), 100),
        ((("sentiment", "FALSE"),), (), 100),
        ((("sentiment", "true"), ("sentiment", "false")), (), 100),  # the last value counts
        ((("topics", "1"), ("detect_entities", "true")), ("topics", "detect_entities"), 5),
        ((("model", "whisper"), ("intents", "true")), ("whisper", "intents"), 5),
    ],
)
def test_features_deepgram_holds_to_a_lower_concurrency(
    params: tuple[tuple[str, str], ...], features: tuple[str, ...], limit: int
) -> None:
    """A Whisper model and each Audio Intelligence feature turned on; the lowest wins."""
    assert limited_features(params) == features
    assert project_limit(params) == limit
