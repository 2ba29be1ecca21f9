"""The deploy examples parse, and their shard expressions give valid ``--shard`` values."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from conftest import SRC_ROOT

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
    """The CronJob parses and runs dgbatch; every example named in the README exists."""
    cron = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["run", "s3://media/incoming/"]
    readme = (SRC_ROOT / "README.md").read_text()
    for path in sorted(DEPLOY.iterdir()):
        assert f"scripts/deploy/{path.name}" in readme, path.name


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
