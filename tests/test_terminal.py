"""What reaches a terminal: control characters of names others chose are shown, inert."""

from __future__ import annotations

import pytest

from batch.terminal import shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("calls/a b.wav", "calls/a b.wav"),
        ("x\x1b]0;PWNED\x07y", "x\\x1b]0;PWNED\\x07y"),
        ("x\x1b[2Jy", "x\\x1b[2Jy"),
        ("a\nb\tc\rd", "a\\x0ab\\x09c\\x0dd"),
        ("\x7f\x9b31m", "\\x7f\\x9b31m"),
        ("café → ü", "café → ü"),
    ],
)
def test_control_characters_are_shown_as_escapes(text: str, expected: str) -> None:
    assert shown(text) == expected
