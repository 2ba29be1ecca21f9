"""Every request is tagged with dgbatch and its run, so Deepgram usage can be traced back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Cli, make_wav

from batch.emulator import Emulator
from batch.models import Params
from batch.params import request_params, run_tags


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ((), (("tag", "dgbatch"), ("tag", "dgbatch-run-7"))),
        (
            (("model", "nova-3"),),
            (("model", "nova-3"), ("tag", "dgbatch"), ("tag", "dgbatch-run-7")),
        ),
        ((("tag", "mine"),), (("tag", "mine"),)),
        (
            (("tag", "a"), ("diarize", "true"), ("tag", "b")),
            (("tag", "a"), ("tag", "b"), ("diarize", "true")),
        ),
    ],
)
def test_with_run_tags(params: Params, expected: Params) -> None:
    """Run tags are appended unless the user set their own ``tag``, which wins whole."""
    assert request_params((), params, tags=run_tags("dgbatch-run-7")) == expected


def _tags_sent(emulator: Emulator) -> list[list[str]]:
    return [[v for k, v in record.params if k == "tag"] for record in emulator.log]


def test_requests_carry_run_tags(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """Each run tags its requests with dgbatch and its own run id, resumed items included."""
    make_wav(tmp_path / "in" / "a.wav")
    out = tmp_path / "out"
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    make_wav(tmp_path / "in" / "b.wav", tone=1)
    assert dgbatch("run", str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    first, second = _tags_sent(emulator)
    assert first[0] == second[0] == "dgbatch"
    assert first[1].startswith("dgbatch-run-1-") and second[1].startswith("dgbatch-run-2-")
    answer = json.loads((out / "b.json").read_text())
    assert answer["metadata"]["tags"] == second


def test_manifest_tag_overrides_run_tags(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """A manifest's own ``tag`` replaces the run tags instead of being mixed with them."""
    make_wav(tmp_path / "a.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"source": "a.wav", "params": {"tag": ["team-x"]}}) + "\n")
    assert dgbatch("run", str(manifest), "--out", str(tmp_path / "out")).exit_code == 0
    assert _tags_sent(emulator) == [["team-x"]]
