"""The one JSON codec at nerve's boundaries: what it refuses, and that it says where."""

from __future__ import annotations

import pytest

from nerved import wire


def nest(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("text", "reason", "path"),
    [
        (b'{"a": NaN}', "NaN is not JSON", ("a",)),
        (b'{"p": {"x": [1, Infinity]}}', "Infinity is not JSON", ("p", "x", 1)),
        (b"-Infinity", "-Infinity is not JSON", ()),
        (b'{"x": "\\ud800"}', "lone UTF-16 surrogate", ("x",)),
        (b'{"x": ["\\udfff"]}', "lone UTF-16 surrogate", ("x", 0)),
        (b"[" * 990 + b"]" * 990, "nested deeper than 100 levels", ()),
        (b"[" * 101 + b"]" * 101, "nested deeper than 100 levels", (0,) * 100),
        (b"\xff", "not UTF-8", ()),
        (b'"\xed\xa0\x80"', "not UTF-8", ()),  # a surrogate encoded as UTF-8 bytes
        (b'{"a": 1} x', "not JSON", ()),
        (b"1" * 5000, "4300 digits", ()),
    ],
)
def test_loads_refuses_what_json_cannot_carry(text: bytes, reason: str, path: tuple) -> None:
    with pytest.raises(wire.Invalid) as caught:
        wire.loads(text)
    assert reason in str(caught.value)
    assert caught.value.path == path


@pytest.mark.parametrize(
    "text",
    [b"[" * 100 + b"]" * 100, b'"\\ud83d\\ude00"', b'"\\\\ud800"', b"1e300", b'{"a": [1, 2.5]}'],
)
def test_loads_accepts_json_within_the_limits(text: bytes) -> None:
    wire.loads(text)


@pytest.mark.parametrize(
    ("value", "reason", "path"),
    [
        (float("nan"), "NaN is not JSON", ()),
        ({"a": [1, {"b": float("inf")}]}, "too large for JSON", ("a", 1, "b")),
        ({"a": "\ud800"}, "lone UTF-16 surrogate", ("a",)),
        ({"s": {1, 2}}, "a set is not a JSON value", ("s",)),
        (nest(101), "nested deeper than 100 levels", (0,) * 100),
        (nest(5000), "nested deeper than 100 levels", (0,) * 100),
    ],
)
def test_dumps_refuses_what_loads_would(value: object, reason: str, path: tuple) -> None:
    with pytest.raises(wire.Invalid) as caught:
        wire.dumps(value)
    assert reason in caught.value.reason
    assert caught.value.path == path


def test_every_encoded_value_decodes_again() -> None:
    value = {"text": "héllo 😀", "n": [1, 2.5, None, True], "deep": nest(99)}
    assert wire.loads(wire.encode(value)) == value


def test_check_value_names_what_and_measures_bytes() -> None:
    with pytest.raises(wire.Invalid, match=r"^the event is 2\.0 MiB; at most 1\.0 MiB"):
        wire.check_value({"d": "x" * (2 << 20)}, "the event")
    assert wire.check_value({"d": "é"}, "the event") == '{"d":"é"}'


def test_text_never_refuses_it_shortens() -> None:
    assert wire.text("a\ud800b") == "a\ufffdb"
    long = wire.text("x" * 100_000, limit=1000)
    assert len(long.encode()) <= 1000 and long.endswith("[truncated: 97.7 KiB in all]")


def test_loads_stored_maps_every_failure_to_invalid() -> None:
    with pytest.raises(wire.Invalid, match="too deeply"):
        wire.loads_stored("[" * 100_000 + "]" * 100_000)
    with pytest.raises(wire.Invalid, match="not readable"):
        wire.loads_stored("{broken")


def test_long_paths_keep_their_ends() -> None:
    assert wire.where(("a", "b", "c", "d", "e", "f", 0, "g", "h")) == "a.b.c.d….g.h"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("k", None),
        ("k" * wire.MAX_KEY, None),
        ("é" * wire.MAX_KEY, None),  # characters, not bytes
        ("", "must not be empty"),
        ("k" * (wire.MAX_KEY + 1), "is 257 characters; at most 256"),
        (None, "must be a string"),
        (b"k", "must be a string"),
    ],
)
def test_an_idempotency_key_is_a_short_non_empty_string(key: object, problem: str | None) -> None:
    assert wire.key_problem(key) == problem
