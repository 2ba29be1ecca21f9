"""Tests for batch.models: new_item builds the same Item as its dataclass constructor."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from batch.models import Item, ItemKind, new_item

_FIELDS = (
    ("id:x", "https://h/a.wav", ItemKind.URL, "a.wav", (("tier", "nova"),), None, "", None, "m:1"),
    ("/a.wav", "/a.wav", ItemKind.FILE, "a.wav", (), 12, "12:34", None, ""),
    ("s3://b/k", "s3://b/k", ItemKind.S3, "k", (), 5, "etag", "m:2: gone", "m:2"),
)


@pytest.mark.parametrize("values", _FIELDS)
def test_new_item_is_the_item_the_constructor_builds(values: tuple[object, ...]) -> None:
    """Equal, hashed, shown, compared field by field and pickled as ``Item(...)``."""
    built = new_item(*values)  # type: ignore[arg-type]
    expected = Item(*values)  # type: ignore[arg-type]
    assert type(built) is Item
    assert built == expected
    assert hash(built) == hash(expected)
    assert repr(built) == repr(expected)
    assert dataclasses.astuple(built) == values
    assert pickle.loads(pickle.dumps(built)) == expected
    assert dataclasses.replace(built, name="b") == dataclasses.replace(expected, name="b")


def test_new_item_stays_frozen() -> None:
    """Setting the slots directly does not make the item writable afterwards."""
    item = new_item("i", "s", ItemKind.FILE, "n", (), None, "", None, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.name = "other"  # type: ignore[misc]
