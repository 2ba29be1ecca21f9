"""Sharding (pure and end to end), default state paths and the local run report."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import Cli, MotoS3, load_json, make_wav, outputs_under

from batch.config import default_state_path
from batch.emulator import Emulator
from batch.errors import UsageError
from batch.shard import Shard, in_shard, lock_tag, overlap, parse_shard

TX_DIGEST = hashlib.sha256(b"s3://media/tx").hexdigest()[:16]


@pytest.mark.parametrize(
    ("item_id", "n", "k"),
    [
        ("s3://media/incoming/a.wav", 1, 0),
        ("s3://media/incoming/a.wav", 2, 0),
        ("s3://media/incoming/a.wav", 16, 6),
        ("s3://media/incoming/b.wav", 16, 15),
        ("/calls/day1/a.wav", 4, 1),
        ("id:greeting", 3, 0),
    ],
)
def test_in_shard_is_stable(item_id: str, n: int, k: int) -> None:
    """The shard of a key is fixed by its bytes (blake2b), the same on every machine."""
    assert [j for j in range(n) if in_shard(item_id, j, n)] == [k]


def test_shards_partition_and_balance() -> None:
    """Every id lands in exactly one of N shards, and the shards are roughly even."""
    ids = [f"s3://b/k/{n:05}.wav" for n in range(8000)]
    owners = Counter(sum(in_shard(i, k, 8) for k in range(8)) for i in ids)
    assert owners == {1: 8000}
    sizes = Counter(next(k for k in range(8) if in_shard(i, k, 8)) for i in ids)
    assert min(sizes.values()) > 850 and max(sizes.values()) < 1150


@pytest.mark.parametrize(
    ("name", "stem", "ext", "tag"),
    [("out.lock", "out", "lock", ""), ("out-shard-0-of-2.lock", "out", "lock", "shard-0-of-2"),
     ("lock.json", "lock", "json", ""), ("lock-shard-1-of-3.json", "lock", "json", "shard-1-of-3"),
     ("lock.json", "out", "lock", None), ("state.sqlite.lock", "out", "lock", None),
     ("out-shard-x.lock", "out", "lock", None)],
)  # fmt: skip
def test_lock_tag_reads_the_shard_a_lock_is_of(
    name: str, stem: str, ext: str, tag: str | None
) -> None:
    """A run lock's name says which shard's run holds it: local (``out…lock``) or S3
    (``lock….json``); any other file is no lock of theirs."""
    assert lock_tag(name, stem, ext) == tag


@pytest.mark.parametrize(
    ("tag", "other", "shared"),
    [("", "", True), ("", "shard-0-of-2", True), ("shard-0-of-2", "", True),
     ("shard-0-of-2", "shard-1-of-2", False), ("shard-0-of-2", "shard-0-of-2", True),
     ("shard-0-of-2", "shard-1-of-3", True), ("shard-0-of-1", "", True),
     ("shard-3-of-16", "shard-15-of-16", False)],
)  # fmt: skip
def test_runs_of_other_shard_settings_overlap(tag: str, other: str, shared: bool) -> None:
    """Only shards of one N, each its own K, take no item in common."""
    assert overlap(tag, other) is shared


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3/16", Shard(3, 16)), ("0/1", Shard(0, 1)), (" 15/16 ", Shard(15, 16))],
)
def test_parse_shard(text: str, expected: Shard) -> None:
    """K/N parses into a 0-based shard."""
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["16/16", "1/0", "3", "-1/4", "a/b", "3/16/2", ""])
def test_parse_shard_rejects(text: str) -> None:
    """Anything but 0 <= K < N is a usage error."""
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


def test_a_state_kept_under_an_s3_uri_as_typed_is_found_again(tmp_path: Path) -> None:
    """``S3://b/x`` and ``s3://b/x`` share one state now; a release before kept it under the
    URI as typed: that state is found again, not left behind for a new one."""
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    fresh = default_state_path("S3://media/tx", environ=env)
    assert fresh == default_state_path("s3://media/tx", environ=env)
    typed = tmp_path / "dgbatch" / hashlib.sha256(b"S3://media/tx").hexdigest()[:16]
    (typed / "state.sqlite").parent.mkdir(parents=True)
    (typed / "state.sqlite").write_bytes(b"")
    assert default_state_path("S3://media/tx/", environ=env) == typed / "state.sqlite"
    assert default_state_path("s3://media/tx", environ=env) == typed / "state.sqlite"


@pytest.mark.parametrize("command", ["run", "status"])
def test_a_bad_shard_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """``DGBATCH_SHARD=zz`` was reported as ``--shard 'zz'``: the user looked for a
    ``--shard`` in a command that had none."""
    make_wav(tmp_path / "a.wav")
    monkeypatch.setenv("DGBATCH_SHARD", "zz")
    args = [str(tmp_path / "a.wav")] if command == "run" else []
    result = Cli(None)(command, *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "DGBATCH_SHARD 'zz': expected K/N" in result.output, result.output
    given = Cli(None)(command, *args, "--out", str(tmp_path / "out"), "--shard", "yy")
    assert "--shard 'yy': expected K/N" in given.output, given.output


@pytest.mark.parametrize(
    ("out", "shard", "expected"),
    [
        ("out", None, "out/.dgbatch/state.sqlite"),
        ("out", Shard(3, 16), "out/.dgbatch/shard-3-of-16/state.sqlite"),
        ("s3://media/tx/", None, f"/c/dgbatch/{TX_DIGEST}/state.sqlite"),
        ("s3://media/tx", None, f"/c/dgbatch/{TX_DIGEST}/state.sqlite"),
        ("s3://media/tx", Shard(0, 2), f"/c/dgbatch/{TX_DIGEST}-shard-0-of-2/state.sqlite"),
        ("S3://media/tx/", None, f"/c/dgbatch/{TX_DIGEST}/state.sqlite"),  # one prefix
    ],
)
def test_default_state_path(out: str, shard: Shard | None, expected: str) -> None:
    """Local outputs keep the state beside them; S3 outputs in the cache, one per shard."""
    assert str(default_state_path(out, shard, {"XDG_CACHE_HOME": "/c"})) == expected


def test_default_state_path_uses_home_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XDG_CACHE_HOME the state goes under ~/.cache/dgbatch."""
    monkeypatch.setenv("HOME", "/home/u")
    got = default_state_path("s3://m/t/", None, {})
    assert str(got).startswith("/home/u/.cache/dgbatch/")


def test_two_shards_cover_every_item_once(
    dgbatch: Cli,
    moto: MotoS3,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers on one prefix send each object exactly once, each with its own state."""
    objects = {
        f"in/{n:02}.wav": make_wav(tmp_path / "w" / f"{n}.wav", tone=n).read_bytes()
        for n in range(24)
    }
    moto.bucket("shards", objects)
    cmd = ("run", "s3://shards/in/", "--out", "s3://shards/tx/", "--concurrency", "4")
    first = dgbatch(*cmd, "--shard", "0/2")
    monkeypatch.setenv("DGBATCH_SHARD", "1/2")
    second = dgbatch(*cmd)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    hashes = Counter(r.sha256 for r in emulator.log)
    assert len(hashes) == 24 and set(hashes.values()) == {1}
    states = sorted(p.parent.name.split("-", 1)[1] for p in (tmp_path / "cache").rglob("*.sqlite"))
    assert states == ["shard-0-of-2", "shard-1-of-2"]
    keys = moto.client.list_objects_v2(Bucket="shards", Prefix="tx/")["Contents"]
    assert len([k for k in keys if k["Key"].endswith(".json")]) == 24


@pytest.mark.parametrize(
    ("names", "together"),
    [
        (["a.wav", "a.mp3", "a.wav.flac", "a"], True),
        (["calls/x.wav", "calls/x.mp3"], True),
        (["../calls/x.wav", "calls/x.ogg", "calls//x"], True),  # the same safe name
        (["calls/x.wav", "other/x.wav"], False),
    ],
)
def test_names_that_could_share_an_output_share_a_shard(names: list[str], together: bool) -> None:
    """Items whose outputs could meet (``a.json``) go to one shard, whose state names them
    apart; names in other folders need not (here they happen to be apart at N=16)."""
    owners = {next(k for k in range(16) if Shard(k, 16).takes(name)) for name in names}
    assert (len(owners) == 1) is together


def test_shards_on_one_out_never_write_over_each_other(
    dgbatch: Cli, emulator: Emulator, tmp_path: Path
) -> None:
    """``cN.wav`` beside ``cN.mp3``, split between two shards writing to one ``--out``: each
    output answers its own file (by id, a pair split between the shards wrote one
    ``cN.json`` twice, and one transcript was lost though both were recorded done)."""
    src = tmp_path / "in"
    pairs = [(n, ext) for n in range(12) for ext in ("wav", "mp3")]
    wavs = [make_wav(src / f"c{n}.{ext}", tone=2 * n + (ext == "mp3")) for n, ext in pairs]
    out = tmp_path / "out"
    for k in range(2):
        result = dgbatch("run", str(src), "--out", str(out), "--shard", f"{k}/2", "--no-sniff")
        assert result.exit_code == 0, result.output
    assert len(emulator.log) == 24
    answered = Counter(load_json(p)["metadata"]["sha256"] for p in outputs_under(out))  # type: ignore[index]
    assert answered == {hashlib.sha256(wav.read_bytes()).hexdigest(): 1 for wav in wavs}


def test_empty_shard_is_not_an_error(
    dgbatch: Cli, moto: MotoS3, emulator: Emulator, tmp_path: Path
) -> None:
    """A shard that owns none of the items exits 0 (the prefix itself was not empty)."""
    moto.bucket("tiny", {"in/a.wav": make_wav(tmp_path / "a.wav").read_bytes()})
    owner = next(k for k in range(8) if Shard(k, 8).takes("a.wav"))
    other = (owner + 1) % 8
    result = dgbatch("run", "s3://tiny/in/", "--out", str(tmp_path / "o"), "--shard", f"{other}/8")
    assert result.exit_code == 0, result.output
    assert emulator.log == []


def test_local_run_report(dgbatch: Cli, emulator: Emulator, tmp_path: Path) -> None:
    """--run-report works for local runs: counts, audio hours, failures and exit code."""
    src = tmp_path / "calls"
    make_wav(src / "a.wav")
    (src / "b.wav").write_bytes(b"")
    report = tmp_path / "reports" / "run.json"
    result = dgbatch("run", str(src), "--out", str(tmp_path / "out"), "--run-report", str(report))
    assert result.exit_code == 1
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 1 and doc["counts"]["done"] == 1 and doc["counts"]["failed"] == 1
    assert doc["audio_hours"] > 0 and doc["failures_total"] == 1
    assert doc["failures"][0]["source"].endswith("b.wav")
    assert doc["started"].endswith("Z") and doc["finished_epoch"] >= doc["started_epoch"]


def test_run_report_on_a_refused_run(dgbatch: Cli, tmp_path: Path) -> None:
    """A run refused before it starts still leaves a report with its exit code and reason."""
    report = tmp_path / "run.json"
    result = dgbatch(
        "run", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--run-report", str(report)
    )
    assert result.exit_code == 2
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 2 and "no such file" in doc["error"]
