"""The deploy examples parse, and their shard expressions give valid ``--shard`` values."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from conftest import SRC_ROOT, documentation

from batch.shard import Shard, parse_shard

DEPLOY = SRC_ROOT / "scripts" / "deploy"


def shell_args(command: str, env: dict[str, str]) -> list[str]:
    """Expand a ``sh -c`` command line the way the container would, with echo for dgbatch."""
    script = command.replace("exec dgbatch", "for a in", 1) + '; do printf "%s\\n" "$a"; done'
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def shard_of(args: list[str]) -> Shard:
    """The ``--shard`` value of an argument list."""
    return parse_shard(args[args.index("--shard") + 1])


@pytest.mark.parametrize("index", [0, 7, 15])
def test_indexed_job_maps_completion_index_to_shard(index: int) -> None:
    """The Kubernetes Indexed Job turns JOB_COMPLETION_INDEX into --shard INDEX/16."""
    job = yaml.safe_load((DEPLOY / "k8s-indexed-job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = shell_args(container["args"][0], {"JOB_COMPLETION_INDEX": str(index)})
    assert shard_of(args) == Shard(index, job["spec"]["completions"])
    assert args[:2] == ["run", "s3://media/incoming/"]


@pytest.mark.parametrize("index", [0, 15])
def test_aws_batch_maps_array_index_to_shard(index: int) -> None:
    """The AWS Batch job definition turns AWS_BATCH_JOB_ARRAY_INDEX into --shard INDEX/16."""
    definition = json.loads((DEPLOY / "aws-batch-job-definition.json").read_text())
    props = definition["containerProperties"]
    env = {e["name"]: e["value"] for e in props["environment"]}
    args = shell_args(props["command"][2], {**env, "AWS_BATCH_JOB_ARRAY_INDEX": str(index)})
    assert shard_of(args) == Shard(index, 16)


def test_cronjob_and_files_are_well_formed() -> None:
    """The CronJob parses and runs dgbatch; every example is named in the documentation."""
    cron = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["run", "s3://media/incoming/"]
    docs = documentation()
    for path in sorted(DEPLOY.iterdir()):
        assert f"scripts/deploy/{path.name}" in docs, path.name


def test_crontab_line_has_five_time_fields() -> None:
    """The cron example is one schedule line plus comments and a SHELL setting."""
    lines = [
        line
        for line in (DEPLOY / "crontab.txt").read_text().splitlines()
        if line and not line.startswith("#") and "=" not in line.split()[0]
    ]
    (line,) = lines
    fields = line.split()
    assert fields[:5] == ["15", "2", "*", "*", "*"] and "dgbatch" in fields[7]


def test_no_example_puts_its_run_report_where_a_transcript_goes() -> None:
    """Every example's ``--run-report`` passes the check a run makes (it used to sit under
    the ``--out`` prefix, where the transcript of a source named ``_reports/latest.wav``
    would go and be replaced by the report)."""
    from batch.config import check_own_paths

    checked = 0
    for path in sorted(DEPLOY.iterdir()):
        words = path.read_text().replace('"', " ").replace("\\", " ").split()
        if "--run-report" not in words:
            continue
        report = words[words.index("--run-report") + 1]
        out = words[words.index("--out") + 1]
        check_own_paths(out, SRC_ROOT / "state.sqlite", report)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    ("report", "refused"),
    [
        ("s3://media/transcripts/_reports/latest.json", True),
        ("s3://media/transcripts/latest.txt", True),
        ("s3://media/transcripts/.dgbatch/report.json", False),
        ("s3://media/dgbatch-reports/latest.json", False),
        ("s3://other/transcripts/latest.json", False),
        ("s3://media/transcripts/latest.csv", False),
    ],
)
def test_an_s3_run_report_where_a_transcript_goes_is_refused(report: str, refused: bool) -> None:
    """The rule a local ``--out`` had, for an S3 one: a report named as an output, under
    the prefix and outside ``.dgbatch/``, would replace a transcript (exit 2)."""
    from batch.config import check_own_paths
    from batch.errors import UsageError

    if refused:
        with pytest.raises(UsageError, match="a transcript could be written there"):
            check_own_paths("s3://media/transcripts/", SRC_ROOT / "state.sqlite", report)
    else:
        check_own_paths("s3://media/transcripts/", SRC_ROOT / "state.sqlite", report)


def test_no_container_example_retries_a_failed_run_with_an_empty_state() -> None:
    """A retried pod or Batch attempt starts with an empty state and sends the failed
    items again (some of them paid again): none of the examples retries."""
    cron = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    indexed = yaml.safe_load((DEPLOY / "k8s-indexed-job.yaml").read_text())
    assert indexed["spec"]["backoffLimitPerIndex"] == 0
    batch = json.loads((DEPLOY / "aws-batch-job-definition.json").read_text())
    assert batch["retryStrategy"]["attempts"] == 1
    service = (DEPLOY / "dgbatch-nightly.service").read_text()
    assert "SuccessExitStatus=4 130\n" in service  # exit 1 fails the unit
