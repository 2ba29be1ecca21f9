"""The plan's fast paths store exactly what the plain paths store.

A batch of up to ``PLAN_BATCH`` items is inserted and named in one statement per group of
rows; a bigger call (or a state an older dgbatch left with unnamed items) is stored
unnamed and named afterwards by ``assign_names``. Whatever the path, and however a batch
is cut into statements, the rows must be the same.
"""

from __future__ import annotations

import posixpath
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batch import state as state_module
from batch.models import Item, ItemKind
from batch.naming import stem_of
from batch.planrows import FIELDS, TAIL
from batch.state import State

_COLUMNS = (
    "rowid, id, source, kind, name, out_stem, out_full, out_name, params, status, error, "
    "size, fingerprint, attempts, run_id"
)

# Few distinct parts, so that stems, names and ids collide often: shared stems
# (a.wav, a.mp3), names equal to another's full name (a.wav vs a.wav.mp3), the same
# id twice, an id already stored under another name.
_PART = st.sampled_from(["a", "b", "a.wav", "b.mp3", ".c", "d.", "x/a", "a.wav.mp3", "é"])
_NAME = st.builds(lambda parts: "/".join(parts), st.lists(_PART, min_size=1, max_size=3))


@st.composite
def _items(draw: st.DrawFn) -> Item:
    """An item of any kind, maybe broken, maybe with params, secrets or a size."""
    name = draw(_NAME)
    item_id = draw(st.sampled_from([f"/src/{name}", f"id:{name}", "/src/same"]))
    kind = draw(st.sampled_from(list(ItemKind)))
    source = draw(st.sampled_from([item_id, "https://u:pw@h/x.wav?sig=abc", "/f\x00/nul"]))
    return Item(
        id=item_id,
        source=source,
        kind=kind,
        name=name,
        params=draw(st.sampled_from([(), (("model", "nova-2"),)])),
        size=draw(st.sampled_from([None, 0, 10])),
        fingerprint=draw(st.sampled_from(["", "10:1", "10:2"])),
        error=draw(st.sampled_from([None, "", "x.txt:3: token=hunter22 bad"])),
    )


_ROUNDS = st.lists(st.lists(_items(), max_size=12), min_size=1, max_size=3)


@pytest.fixture
def states(tmp_path: Path) -> Iterator[tuple[State, State]]:
    """Two fresh states, one per path."""
    fast, plain = State.open(tmp_path / "fast.sqlite"), State.open(tmp_path / "plain.sqlite")
    try:
        yield fast, plain
    finally:
        fast.close()
        plain.close()


def _rows(state: State) -> list[tuple[object, ...]]:
    return state.query(f"SELECT {_COLUMNS} FROM items ORDER BY rowid")


def _stored(state: State) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The items in order, and apart the failed items planned for ids already planned with
    other params (``clash:``): a batch plans them after its rows, a batch of one after its
    row, so only their rowids differ."""
    rows = [row[1:] for row in _rows(state)]
    clashes = sorted((row for row in rows if str(row[0]).startswith("clash:")), key=repr)
    return [row for row in rows if not str(row[0]).startswith("clash:")], clashes


def _reset(*states: State) -> None:
    for state in states:
        state.query("DELETE FROM items")


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=_ROUNDS)
@example(rounds=[[Item("/1", "/1", ItemKind.FILE, "a.wav"), Item("/2", "/2", ItemKind.FILE, "a")]])
@example(  # a stored id keeps its stem (b), so the new a.mp3 shares "a" with no one
    rounds=[
        [Item("/same", "/same", ItemKind.FILE, "b.wav")],
        [Item("/same", "/same", ItemKind.FILE, "a.wav"), Item("/2", "/2", ItemKind.FILE, "a.mp3")],
    ]
)
@example(  # the same id twice in one batch is one item
    rounds=[[Item("/1", "/1", ItemKind.FILE, "a.wav"), Item("/1", "/1", ItemKind.FILE, "a.mp3")]]
)
@example(  # two clashes (ids planned again with other params) of one stem: named as a batch
    rounds=[
        [
            Item("/src/a", "/src/a", ItemKind.FILE, "a"),
            Item("/src/a", "/src/a", ItemKind.FILE, "a", (("model", "nova-2"),)),
            Item("/src/a.wav", "/src/a.wav", ItemKind.FILE, "a.wav"),
            Item("/src/a.wav", "/src/a.wav", ItemKind.FILE, "a.wav", (("model", "nova-2"),)),
        ]
    ]
)
def test_named_batches_store_what_assign_names_would(
    states: tuple[State, State], monkeypatch: pytest.MonkeyPatch, rounds: list[list[Item]]
) -> None:
    """Each round is one plan call (a later run adding items): named as it goes in, or
    stored unnamed in batches of one and named by ``assign_names``, the rows are equal."""
    fast, plain = states
    _reset(fast, plain)
    for run_id, items in enumerate(rounds, start=1):
        fast.plan(items, run_id=run_id)
        fast.assign_names()  # what the background plan calls after each chunk
        with monkeypatch.context() as patch:
            patch.setattr(state_module, "PLAN_BATCH", 1)
            plain.plan(items, run_id=run_id)
        plain.assign_names()
    assert _stored(fast) == _stored(plain)
    names = [row[7] for row in _rows(fast)]
    assert None not in names
    assert len(set(names)) == len(names)


def test_a_state_left_with_unnamed_items_is_named_the_old_way(states: tuple[State, State]) -> None:
    """Unnamed items from an older dgbatch's crash are named together with the new ones."""
    fast, plain = states
    old = [Item(f"/src/{n}", f"/src/{n}", ItemKind.FILE, n) for n in ("a.wav", "b.wav")]
    new = [Item(f"/src/{n}", f"/src/{n}", ItemKind.FILE, n) for n in ("a.mp3", "c.wav")]
    for state in states:
        state.plan(old, run_id=1)
        state.query("UPDATE items SET out_name = NULL")
    fast.plan(new, run_id=2)
    fast.assign_names()
    plain.plan([*old, *new], run_id=2)  # what the old plan + assign_names did with both
    plain.assign_names()
    assert dict(fast.query("SELECT id, out_name FROM items")) == {
        "/src/a.wav": "a.wav",
        "/src/b.wav": "b",
        "/src/a.mp3": "a.mp3",
        "/src/c.wav": "c",
    }
    assert [r[7] for r in _rows(fast)] == [r[7] for r in _rows(plain)]


@pytest.mark.parametrize("variables", [FIELDS * 1 + TAIL, FIELDS * 5 + TAIL, 999])
def test_a_batch_is_cut_into_statements_without_changing_its_rows(
    states: tuple[State, State], variables: int
) -> None:
    """However many rows SQLite lets one statement take (one, four, 64 or the usual 512
    here), the batch goes in whole and in order."""
    fast, plain = states
    items = [
        Item(f"/src/{i % 700}", f"/src/{i % 700}", ItemKind.FILE, f"d{i % 3}/{i % 900}.wav")
        for i in range(1234)
    ]
    fast._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
    fast.plan(items, run_id=1)
    plain.plan(items, run_id=1)
    ids = [row[1] for row in _rows(fast)]
    assert ids == list(dict.fromkeys(item.id for item in items))
    assert _rows(fast) == _rows(plain)


@given(st.text(alphabet="ab./", max_size=12))
@example("a/.b")
@example("..a.b")
@example("a/..")
@example(".")
def test_stem_of_is_splitext(name: str) -> None:
    """``stem_of`` is the fast ``posixpath.splitext(name)[0]``."""
    assert stem_of(name) == posixpath.splitext(name)[0]
