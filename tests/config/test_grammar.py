"""Tests of nerved.config.grammar: durations, sizes and names, as nerve.yaml and nervectl read them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from config_support import DAY, errors_of, parse

from nervectl import scaffold, times
from nervectl.exits import CliError
from nerved.config import (
    NAME_RE,
    parse_duration,
    parse_size,
)
from nerved.wire import MAX_INTEGER

# --------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (250, 250),
        (1.4, 1),
        (1.5, 2),
        ("250", 250),
        ("0", 0),
        ("500ms", 500),
        ("10s", 10_000),
        ("1.5s", 1_500),
        (".5s", 500),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("2d", 2 * DAY),
        ("10 s", 10_000),
        (" 3s ", 3_000),
        ("0.1h", 360_000),
        ("36500d", 36_500 * DAY),
        ("1.", 1),
        ("2w", 14 * DAY),
        # compound, as nervectl has always taken them
        ("1h30m", 5_400_000),
        ("1m30s", 90_000),
        ("1h 30m", 5_400_000),
        ("2d12h", 2 * DAY + 43_200_000),
        ("1w 2d 3h 4m 5s 6ms", 7 * DAY + 2 * DAY + 3 * 3_600_000 + 4 * 60_000 + 5_000 + 6),
        ("1.5h30m", 7_200_000),
        ("30m1h", 5_400_000),
        (" 1 h 30 m ", 5_400_000),
        ("0.0005s", 1),  # exact, then half up: 0.5 ms is 1 ms
        ("0.1h0.2h", 1_080_000),  # exactly, where floats make 0.30000000000000004
        ("36499d24h", 36_500 * DAY),
    ],
)
def test_parse_duration(value: object, expected: int) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("ten", "'ten'"),
        ("", "''"),
        ("   ", "'   '"),
        ("10x", "'10x'"),
        ("5 minutes", "'5 minutes'"),
        ("10S", "'10S'"),
        ("1e3", "'1e3'"),
        ("s", "'s'"),
        ("1h30", "'1h30'"),  # a bare number is milliseconds alone, never a part
        ("30 1h", "'30 1h'"),
        ("1h-30m", "'1h-30m'"),
        ("1h,30m", "'1h,30m'"),
        ("- 5s", "'- 5s'"),
        ("1W", "'1W'"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ([], "a list"),
        ({}, "a mapping"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
    ],
)
def test_parse_duration_rejects(value: object, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == (
        "expected a duration such as 500ms, 10s, 5m or 1h, or a number of milliseconds; "
        f"got {shown}"
    )


@pytest.mark.parametrize(
    ("value", "shown"), [(-1, "-1"), (-0.5, "-0.5"), ("-5s", "'-5s'"), ("-1h30m", "'-1h30m'")]
)
def test_parse_duration_rejects_negative(value: object, shown: str) -> None:
    with pytest.raises(ValueError, match=f"^a duration cannot be negative; got {shown}$"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value", ["36501d", 10**30, "9" * 5000, "36500d1ms", "5215w", "9" * 5000 + "w1s"]
)
def test_parse_duration_rejects_absurdly_long(value: object) -> None:
    with pytest.raises(ValueError, match=r"cannot exceed 36500d \(100 years\)"):
        parse_duration(value)


# --------------------------------------------------------------------------------------------
# memoryMax (SPEC §3, v2): sizes

MiB = 1 << 20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1048576, MiB),
        ("4096", 4096),
        ("512K", 512 << 10),
        ("256M", 256 * MiB),
        ("1G", 1 << 30),
        ("1.5G", 3 << 29),
        (".5M", MiB // 2),
        ("2T", 2 << 40),
        (" 10 M ", 10 * MiB),
        (1.5e6, 1_500_000),
        ("1024T", 1 << 50),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "shown"),
    [("lots", "'lots'"), ("1GB", "'1GB'"), ("256m", "'256m'"), ("1MiB", "'1MiB'"), ("5P", "'5P'"), ("", "''"),
     ("1e9", "'1e9'"), (True, "true"), (None, "null"), ([], "a list"), (float("nan"), "nan")],
)  # fmt: skip
def test_parse_size_rejects(value: object, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == (
        "expected a size such as 256M or 1G (K, M, G, T: powers of 1024), or a number of bytes; "
        f"got {shown}"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "a size cannot be negative; got -1"), ("-5M", "a size cannot be negative; got '-5M'"),
     ("1025T", "a size cannot exceed 1024T; got '1025T'"),
     (10**30, "a size cannot exceed 1024T; got an integer of more than 30 digits")],
)  # fmt: skip
def test_parse_size_rejects_out_of_range(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == message


# --------------------------------------------------------------------------------------------
# One grammar: nervectl reads each duration with units as nerve.yaml does


@pytest.mark.parametrize(
    "text",
    ["500ms", "10s", "1.5s", ".5s", "5m", "1h", "2d", "2w", "10 s", "1.s", "0.1h",
     "1h30m", "1m30s", "1h 30m", "2d12h", "1w 2d 3h 4m 5s 6ms", "1.5h30m", "30m1h", "0.0005s"],
)  # fmt: skip
def test_nervectl_reads_durations_as_nerve_yaml_does(text: str) -> None:
    assert times.parse_duration_ms(text) == parse_duration(text)


@pytest.mark.parametrize("text", ["10", "1h30", "-5m", "-1h30m", "ten", "", "1h-30m"])
def test_nervectl_takes_no_bare_number_nor_a_negative_as_a_duration(text: str) -> None:
    """A bare number is milliseconds in nerve.yaml only: on the command line it is likelier a
    unit left out (or, with 10 digits or more, epoch milliseconds for --since)."""
    assert times.parse_duration_ms(text) is None


def test_nervectl_takes_a_duration_past_its_integers_as_the_longest() -> None:
    assert times.parse_duration_ms("9" * 5000 + "w") == MAX_INTEGER
    assert times.parse_duration_ms("9" * 400 + "w 1ms") == MAX_INTEGER


def test_compound_durations_in_nerve_yaml() -> None:
    config = parse(
        """\
        senses:
          s: {timeout: 1h30m, throttle: 1m 30s, gracePeriod: 2s500ms}
        reflexes:
          - {kind: sense, sense: s, interval: 1d12h}
        workflows:
          w: {idleTimeout: 1m30s, drainTimeout: 2h}
        retention:
          runs: {maxAge: 2w}
          signals: {maxAge: 1w3d12h}
        control:
          idleTimeout: 1m1s
        """
    )
    sense = config.senses["s"]
    assert (sense.timeout_ms, sense.throttle_ms, sense.grace_period_ms) == (
        5_400_000,
        90_000,
        2_500,
    )
    assert config.reflexes[0].interval_ms == DAY + 43_200_000  # type: ignore[union-attr]
    assert config.workflows["w"].idle_timeout_ms == 90_000
    assert config.retention.run_max_age_ms == 14 * DAY
    assert config.retention.signal_max_age_ms == 10 * DAY + 43_200_000
    assert config.control.idle_timeout_ms == 61_000


def test_a_bad_compound_duration_in_nerve_yaml_is_one_error_with_its_line() -> None:
    assert errors_of("senses:\n  s:\n    timeout: 1h30\n") == [
        "nerve.yaml:3: senses.s.timeout: expected a duration such as 500ms, 10s, 5m or 1h, or a "
        "number of milliseconds; got '1h30'"
    ]
    assert errors_of("control:\n  idleTimeout: 0.5s0.4s\n") == [
        "nerve.yaml:2: control.idleTimeout: must be at least 1s, got '0.5s0.4s'"
    ]


def test_a_long_duration_costs_a_pass_over_it() -> None:
    """The master reads nerve.yaml in its only thread: a value of 256 KiB that nearly matches
    must not backtrack for ever."""
    for text in ("1h" * 120_000 + "x", "1" * 250_000 + "x", "1 " * 120_000 + "h", "1." * 120_000):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration(text)
        assert times.parse_duration_ms(text) is None


# --------------------------------------------------------------------------------------------
# One name rule: nervectl init refuses what nerve.yaml refuses


NAMES_TAKEN = ["a", "404", "disk-usage", "a.b_c-d", "A" * 64]
NAMES_REFUSED = ["", "-a", ".hidden", "_a", "a b", "a/b", "../etc", "é", "A" * 65, "a\n"]


def test_nervectl_uses_the_name_rule_of_nerve_yaml() -> None:
    assert scaffold.NAME_RE is NAME_RE


@pytest.mark.parametrize("name", NAMES_TAKEN + NAMES_REFUSED)
def test_a_name_is_taken_by_both_or_by_neither(name: str) -> None:
    text = f"senses:\n  {json.dumps(name)}:\n"  # a JSON string is a YAML one
    if name in NAMES_TAKEN:
        scaffold.check_name(name, "sense")
        assert list(parse(text).senses) == [name]
    else:
        with pytest.raises(CliError, match="is not a valid sense name: use letters"):
            scaffold.check_name(name, "sense")
        (error,) = errors_of(text)
        assert "is not a valid sense name: use letters" in error


# --------------------------------------------------------------------------------------------
# A leaf that nervectl imports on every command


def test_the_grammar_imports_neither_yaml_nor_the_daemon() -> None:
    code = (
        "import sys; import nerved.config.grammar, nervectl.cli; "
        "print(sorted(m for m in sys.modules if m == 'yaml' or m.startswith(('nerved.master', "
        "'nerved.config.')) and m not in ('nerved.config.grammar', 'nerved.config.messages')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
