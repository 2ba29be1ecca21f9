"""Tests for batch.params: parsing, layering and encoding Deepgram query params."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.errors import UsageError
from batch.models import Params
from batch.params import (
    DEFAULT_PARAMS,
    encode_query,
    merge_params,
    params_from_mapping,
    parse_param,
    project_limit,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("language=en", ("language", "en")),
        ("keyterm=a=b", ("keyterm", "a=b")),
        ("diarize=True", ("diarize", "true")),
        ("diarize=False", ("diarize", "false")),
        ("smart_format=", ("smart_format", "")),
        (" tag =x y", ("tag", "x y")),
        ("model= nova-2 ", ("model", "nova-2")),  # spaces around a value, as in a CSV cell
        ("diarize= True", ("diarize", "true")),
        ("smart_format= ", ("smart_format", "")),
        ("utt_split=0.8", ("utt_split", "0.8")),
        ("callback=", ("callback", "")),
    ],
)
def test_parse_param_table(text: str, expected: tuple[str, str]) -> None:
    """``KEY=VALUE`` splits at the first ``=`` and Python booleans become lowercase."""
    assert parse_param(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("foo", "--param 'foo': expected KEY=VALUE"),
        ("=x", "--param '=x': empty key"),
        ("a b=1", "invalid key 'a b'"),
        ("a&b=1", "invalid key 'a&b'"),
    ],
)
def test_parse_param_errors(text: str, reason: str) -> None:
    """A malformed ``--param`` is a usage error that quotes the text and the reason."""
    with pytest.raises(UsageError, match=reason):
        parse_param(text)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ((DEFAULT_PARAMS,), DEFAULT_PARAMS),
        ((DEFAULT_PARAMS, (("model", "nova-2"),)), (("model", "nova-2"), ("smart_format", "true"))),
        ((DEFAULT_PARAMS, (("smart_format", ""),)), (("model", "nova-3"),)),
        ((DEFAULT_PARAMS, (("language", "fr"),)), (*DEFAULT_PARAMS, ("language", "fr"))),
        (
            ((("keyterm", "a"), ("keyterm", "b")), (("keyterm", "c"),)),
            (("keyterm", "c"),),
        ),
        (
            ((("keyterm", "a"),), (("keyterm", "b"), ("keyterm", "c"))),
            (("keyterm", "b"), ("keyterm", "c")),
        ),
        (
            (DEFAULT_PARAMS, (("language", "en"),), (("language", "de"),)),
            (*DEFAULT_PARAMS, ("language", "de")),
        ),
        (
            (DEFAULT_PARAMS, (("model", ""),), (("model", "base"),)),
            (("smart_format", "true"), ("model", "base")),
        ),
        (((("tag", "a"), ("tag", "")),), (("tag", "a"),)),
        ((), ()),
        (((("language", ""),),), ()),
    ],
)
def test_merge_params_table(layers: tuple[Params, ...], expected: Params) -> None:
    """Each layer replaces all earlier values of the keys it sets; empty values remove keys."""
    assert merge_params(*layers) == expected


_pairs = st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["", "1", "2"])), max_size=6)


@given(st.lists(_pairs.map(tuple), max_size=4))
def test_merge_params_later_layer_wins(layers: list[Params]) -> None:
    """Each key's values come from the last layer that set it, and no empty value survives."""
    merged = merge_params(*layers)
    assert all(value != "" for _, value in merged)
    for key in {key for layer in layers for key, _ in layer}:
        last = next(layer for layer in reversed(layers) if any(k == key for k, _ in layer))
        expected = [value for k, value in last if k == key and value != ""]
        assert [value for k, value in merged if k == key] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Language=fr", ("language", "fr")), ("DIARIZE=true", ("diarize", "true")),
     ("My_Custom=1", ("My_Custom", "1"))],
)  # fmt: skip
def test_a_deepgram_param_in_another_case_is_sent_lowercase(
    text: str, expected: tuple[str, str]
) -> None:
    """Deepgram's parameter names are lowercase: ``--param Language=fr`` means ``language``."""
    assert parse_param(text) == expected


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"diarize": True, "punctuate": False}, (("diarize", "true"), ("punctuate", "false"))),
        ({"utt_split": 0.8, "channels": 2}, (("utt_split", "0.8"), ("channels", "2"))),
        ({"keyterm": ["a", "b"]}, (("keyterm", "a"), ("keyterm", "b"))),
        ({"keyterm": ["a", None, True]}, (("keyterm", "a"), ("keyterm", "true"))),
        ({"language": None}, ()),
        ({"smart_format": ""}, (("smart_format", ""),)),
        ({"diarize": "True"}, (("diarize", "true"),)),
        ({}, ()),
    ],
)
def test_params_from_mapping_table(obj: Mapping[str, object], expected: Params) -> None:
    """JSON values map to Deepgram's spelling: lowercase booleans, repeated keys for lists."""
    assert params_from_mapping(obj) == expected


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"redact": {"pci": True}}, "param 'redact': nested objects are not supported"),
        ({"keyterm": [["a"]]}, "param 'keyterm': unsupported value of type list"),
        ({"keyterm": [{"a": 1}]}, "param 'keyterm': unsupported value of type dict"),
        ({"utt_split": float("nan")}, "not a finite number"),
        ({"utt_split": float("inf")}, "not a finite number"),
        ({"a b": "1"}, "param 'a b': invalid key"),
        ({"": "1"}, "invalid key"),
        ({"callback": "https://x.example/cb"}, "param 'callback': callback mode sends"),
        ({"callback_method": "put"}, "param 'callback_method': callback mode"),
        ({"CALLBACK": "https://x.example/cb"}, "param 'CALLBACK': callback mode sends"),
        ({"Callback_Method": "put"}, "param 'Callback_Method': callback mode"),
    ],
)
def test_params_from_mapping_errors(obj: Mapping[str, object], message: str) -> None:
    """Values a query string cannot carry raise ValueError naming the key."""
    with pytest.raises(ValueError, match=message):
        params_from_mapping(obj)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (DEFAULT_PARAMS, "model=nova-3&smart_format=true"),
        ((("keyterm", "a"), ("keyterm", "b c")), "keyterm=a&keyterm=b+c"),
        ((("keywords", "snuffleupagus:2"),), "keywords=snuffleupagus%3A2"),
        ((("callback", "https://x/y?a=1&b=2"),), "callback=https%3A%2F%2Fx%2Fy%3Fa%3D1%26b%3D2"),
        ((("search", "é"),), "search=%C3%A9"),
        ((), ""),
    ],
)
def test_encode_query_table(params: Params, expected: str) -> None:
    """Params encode in order with repeated keys and every reserved character escaped."""
    assert encode_query(params) == expected


@given(st.lists(st.tuples(st.text(min_size=1), st.text())))
def test_encode_query_round_trips(pairs: list[tuple[str, str]]) -> None:
    """Whatever the text, a standard query parser reads back the same pairs in order."""
    params = tuple(pairs)
    decoded = parse_qsl(encode_query(params), keep_blank_values=True)
    # parse_qsl cannot tell a pair with NUL or lone surrogates apart; skip those.
    if all(k.isprintable() and v.isprintable() for k, v in params):
        assert tuple(decoded) == params


@pytest.mark.parametrize(
    ("params", "limit"),
    [
        ((("model", "nova-3"),), 100),
        ((("model", "whisper-large"),), 5),
        ((("model", "nova-3"), ("sentiment", "true")), 10),
        ((("summarize", "v2"), ("detect_entities", "true")), 5),
        ((("sentiment", "false"),), 100),
        ((("model", "whisper"), ("model", "nova-2")), 100),  # the last one counts
    ],
)
def test_deepgrams_limit_for_a_runs_params(params: tuple[tuple[str, str], ...], limit: int) -> None:
    assert project_limit(params) == limit
