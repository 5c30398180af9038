"""Tests for nerved.config: nerve.yaml parsing and validation (SPEC section 3)."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from support import deadline

from nerved.config import (
    MAX_ERRORS,
    MAX_FILE_SIZE,
    ConfigError,
    ControlConfig,
    NerveConfig,
    Overflow,
    RetentionConfig,
    SenseConfig,
    SenseReflex,
    WorkflowConfig,
    WorkflowReflex,
    check_packages,
    group_memory_max,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

PATH = Path("/etc/nerve/nerve.yaml")
DAY = 86_400_000

SPEC_EXAMPLE = """\
senses:
  disk-usage:
    group: system        # senses of one group share one worker process
    throttle: 10s        # at most one compute per 10 s; triggers inside the window coalesce
    timeout: 5s          # a compute running longer is abandoned and logged as an error
    gracePeriod: 2s      # on stop/reload, time an in-flight compute gets before its worker is killed
reflexes:
  - kind: sense          # recompute a sense ...
    sense: disk-usage
    interval: 30s        # ... every 30 s
  - kind: sense
    sense: disk-alert
    on: [disk-usage]     # ... or whenever these senses signal
  - kind: workflow       # start a thread of a workflow whenever these senses signal;
    workflow: cleanup    # the signal's payload becomes the thread's trigger payload
    on: [disk-alert]
workflows:
  cleanup:
    concurrency: 1       # max active threads
    overflow: drop       # drop | queue
  code-review:
    concurrency: 3
    overflow: queue
    maxQueue: 20         # queue only; default 100; when full the OLDEST queued request is dropped
    idleTimeout: 30s     # worker exits after this long with no thread; default 30s
    drainTimeout: 60s    # on code change/removal, wait this long for active threads; default 60s
    maxSteps: 1000       # a thread that takes more steps fails; default 1000
"""

# The SPEC example recomputes and listens to `disk-alert` without declaring it; declared here.
SPEC_EXAMPLE_DECLARED = SPEC_EXAMPLE.replace("reflexes:\n", "  disk-alert:\nreflexes:\n", 1)


def parse(text: str) -> NerveConfig:
    return parse_config(textwrap.dedent(text), PATH)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return list(caught.value.errors)


# --------------------------------------------------------------------------------------------
# Whole files


def test_spec_example_parses_once_disk_alert_is_declared() -> None:
    config = parse_config(SPEC_EXAMPLE_DECLARED, PATH)

    assert config.path == PATH
    assert list(config.senses) == ["disk-usage", "disk-alert"]
    assert config.senses["disk-usage"] == SenseConfig(
        name="disk-usage",
        group="system",
        throttle_ms=10_000,
        timeout_ms=5_000,
        grace_period_ms=2_000,
        line=2,
    )
    assert config.senses["disk-alert"] == SenseConfig(
        name="disk-alert",
        group="default",
        throttle_ms=0,
        timeout_ms=30_000,
        grace_period_ms=5_000,
        line=7,
    )
    assert config.reflexes == (
        SenseReflex(sense="disk-usage", interval_ms=30_000, on=(), line=9),
        SenseReflex(sense="disk-alert", interval_ms=None, on=("disk-usage",), line=12),
        WorkflowReflex(workflow="cleanup", on=("disk-alert",), line=15),
    )
    assert list(config.workflows) == ["cleanup", "code-review"]
    assert config.workflows["cleanup"] == WorkflowConfig(
        name="cleanup",
        concurrency=1,
        overflow=Overflow.DROP,
        max_queue=100,
        idle_timeout_ms=30_000,
        drain_timeout_ms=60_000,
        max_steps=1000,
        max_attempts=3,
        line=19,
    )
    assert config.workflows["code-review"] == WorkflowConfig(
        name="code-review",
        concurrency=3,
        overflow=Overflow.QUEUE,
        max_queue=20,
        idle_timeout_ms=30_000,
        drain_timeout_ms=60_000,
        max_steps=1000,
        max_attempts=3,
        line=22,
    )
    assert config.retention == RetentionConfig(
        run_max_age_ms=30 * DAY, run_max_count=10_000, signal_max_age_ms=7 * DAY
    )


def test_spec_example_as_written_names_the_undeclared_sense() -> None:
    assert errors_of(SPEC_EXAMPLE) == [
        "nerve.yaml:12: reflexes[1].sense: unknown sense 'disk-alert' "
        "(did you mean 'disk-usage'?); declare it under senses:",
        "nerve.yaml:16: reflexes[2].on[0]: unknown sense 'disk-alert' "
        "(did you mean 'disk-usage'?); declare it under senses:",
    ]


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# only a comment\n   # and another\n", "---\n", "~\n"],
    ids=["empty", "blank-lines", "comments", "document-marker", "null"],
)
def test_empty_file_is_an_empty_config(text: str) -> None:
    config = parse_config(text, PATH)
    assert dict(config.senses) == {}
    assert config.reflexes == ()
    assert dict(config.workflows) == {}
    assert config.retention == RetentionConfig(30 * DAY, 10_000, 7 * DAY)
    assert config.control == ControlConfig(idle_timeout_ms=60_000, max_connections=256)


def test_empty_sections_are_empty() -> None:
    config = parse("senses:\nreflexes:\nworkflows: {}\nretention:\ncontrol:\n")
    assert dict(config.senses) == {}
    assert config.reflexes == ()
    assert dict(config.workflows) == {}
    assert config.retention == RetentionConfig()
    assert config.control == ControlConfig()


# --------------------------------------------------------------------------------------------
# Defaults and accepted forms


def test_sense_defaults() -> None:
    config = parse(
        """\
        senses:
          bare:
          empty: {}
        """
    )
    assert config.senses["bare"] == SenseConfig("bare", "default", 0, 30_000, 5_000, line=2)
    assert config.senses["empty"] == SenseConfig("empty", "default", 0, 30_000, 5_000, line=3)


def test_workflow_defaults() -> None:
    config = parse("workflows:\n  w:\n")
    assert config.workflows["w"] == WorkflowConfig(
        name="w",
        concurrency=1,
        overflow=Overflow.QUEUE,
        max_queue=100,
        idle_timeout_ms=30_000,
        drain_timeout_ms=60_000,
        max_steps=1000,
        max_attempts=3,
        line=2,
    )


def test_workflow_all_keys() -> None:
    config = parse(
        """\
        workflows:
          w:
            concurrency: 4
            overflow: queue
            maxQueue: 7
            idleTimeout: 0
            drainTimeout: 2m
            maxSteps: 50
            maxAttempts: 5
        """
    )
    assert config.workflows["w"] == WorkflowConfig("w", 4, Overflow.QUEUE, 7, 0, 120_000, 50, 5, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("retention:\n", RetentionConfig(30 * DAY, 10_000, 7 * DAY)),
        ("retention:\n  runs:\n  signals: {}\n", RetentionConfig(30 * DAY, 10_000, 7 * DAY)),
        (
            "retention:\n  runs: {maxAge: 90d, maxCount: 5}\n  signals: {maxAge: 12h}\n",
            RetentionConfig(90 * DAY, 5, 12 * 3_600_000),
        ),
        (
            "retention:\n  runs: {maxAge: null, maxCount: null}\n  signals: {maxAge: ~}\n",
            RetentionConfig(None, None, None),
        ),
        ("retention:\n  runs: {maxCount: null}\n", RetentionConfig(30 * DAY, None, 7 * DAY)),
    ],
    ids=["null-section", "null-parts", "all-set", "keep-forever", "partial"],
)
def test_retention(text: str, expected: RetentionConfig) -> None:
    assert parse(text).retention == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("control: {}\n", ControlConfig(60_000, 256)),
        ("control:\n  idleTimeout: 5m\n  maxConnections: 1000\n", ControlConfig(300_000, 1000)),
        ("control: {idleTimeout: 1s, maxConnections: 32}\n", ControlConfig(1_000, 32)),
        (
            "control: {idleTimeout: 36500d, maxConnections: 4096}\n",
            ControlConfig(36_500 * DAY, 4096),
        ),
        ("control: {idleTimeout: 1500}\n", ControlConfig(1_500, 256)),
    ],
    ids=["empty", "all-set", "lowest", "highest", "milliseconds"],
)
def test_control(text: str, expected: ControlConfig) -> None:
    assert parse(text).control == expected


def test_sense_reflex_on_accepts_a_single_name_and_drops_repeats() -> None:
    config = parse(
        """\
        senses: {a: , b: , c: }
        reflexes:
          - {kind: sense, sense: a, on: b}
          - {kind: sense, sense: a, on: [b, c, b], interval: 1m}
          - {kind: workflow, workflow: w, on: c}
        workflows: {w: }
        """
    )
    assert config.reflexes == (
        SenseReflex("a", None, ("b",), line=3),
        SenseReflex("a", 60_000, ("b", "c"), line=4),
        WorkflowReflex("w", ("c",), line=5),
    )


def test_names_are_read_as_written() -> None:
    # In YAML 1.1 `on` is a boolean and `404` an integer; here both are plain names.
    config = parse(
        """\
        senses:
          404:
          "on":
        reflexes:
          - kind: sense
            sense: 404
            on: "on"
          - kind: sense
            sense: on
            interval: 1s
        """
    )
    assert list(config.senses) == ["404", "on"]
    assert config.reflexes == (
        SenseReflex("404", None, ("on",), line=5),
        SenseReflex("on", 1000, (), line=8),
    )


def test_yaml_merge_keys_are_honoured() -> None:
    config = parse(
        """\
        workflows:
          base: &base
            concurrency: 4
            overflow: drop
          other:
            <<: *base
            concurrency: 2
        """
    )
    other = config.workflows["other"]
    assert (other.concurrency, other.overflow) == (2, Overflow.DROP)


def test_integers_are_decimal_and_base_60_is_refused() -> None:
    config = parse("workflows:\n  w: {maxQueue: 010, concurrency: 1_000}\n")
    assert (config.workflows["w"].max_queue, config.workflows["w"].concurrency) == (10, 1000)
    # Python refuses int() of more than 4,300 digits: leading zeros are not digits here.
    config = parse(f"workflows:\n  w: {{maxSteps: {'0' * 5000}7}}\n")
    assert config.workflows["w"].max_steps == 7
    [error] = errors_of("senses:\n  a: {timeout: 1:30}\n")
    assert error.startswith("nerve.yaml:2: senses.a.timeout: expected a duration")
    assert error.endswith("got '1:30'")


def test_config_objects_are_frozen() -> None:
    config = parse_config(SPEC_EXAMPLE_DECLARED, PATH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.senses["disk-usage"].timeout_ms = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.senses["x"] = config.senses["disk-usage"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.workflows["x"] = config.workflows["cleanup"]  # type: ignore[index]


def test_groups_keep_file_order() -> None:
    config = parse(
        """\
        senses:
          z1: {group: zeta}
          a1:
          z2: {group: zeta}
          m1: {group: mid}
          a2:
        """
    )
    groups = config.groups()
    assert list(groups) == ["zeta", "default", "mid"]
    assert [s.name for s in groups["zeta"]] == ["z1", "z2"]
    assert [s.name for s in groups["default"]] == ["a1", "a2"]
    assert [s.name for s in groups["mid"]] == ["m1"]


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


@pytest.mark.parametrize(("value", "shown"), [(-1, "-1"), (-0.5, "-0.5"), ("-5s", "'-5s'")])
def test_parse_duration_rejects_negative(value: object, shown: str) -> None:
    with pytest.raises(ValueError, match=f"^a duration cannot be negative; got {shown}$"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["36501d", 10**30, "9" * 5000])
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


def test_memory_max_of_workflows_senses_and_sense_groups() -> None:
    config = parse(
        """\
        senses:
          a: {group: g, memoryMax: 256M}
          b: {group: g, memoryMax: 1G}
          c: {group: g}
          d: {memoryMax: null}
        workflows:
          w: {memoryMax: 1.5G}
          v: {}
        """
    )
    assert [s.memory_max for s in config.senses.values()] == [256 * MiB, 1 << 30, None, None]
    assert config.workflows["w"].memory_max == 3 << 29
    assert config.workflows["v"].memory_max is None
    groups = config.groups()
    assert group_memory_max(groups["g"]) == 1 << 30  # the largest of its senses'
    assert group_memory_max(groups["default"]) is None


# --------------------------------------------------------------------------------------------
# One rule, one error: (file, line, key path, part of the message)

RULES = [
    # memoryMax
    (
        "workflows:\n  w:\n    memoryMax: 100\n",
        3,
        "workflows.w.memoryMax",
        "must be at least 1M, got 100",
    ),
    (
        "workflows:\n  w:\n\n    memoryMax: 1GB\n",
        4,
        "workflows.w.memoryMax",
        "expected a size such as 256M or 1G (K, M, G, T: powers of 1024), or a number of bytes;"
        " got '1GB'; or null",
    ),
    (
        "senses:\n  s: {memoryMax: -5M}\n",
        2,
        "senses.s.memoryMax",
        "a size cannot be negative; got '-5M'",
    ),
    ("senses:\n  s: {memoryMax: [1G]}\n", 2, "senses.s.memoryMax", "got a list; or null"),
    ("senses:\n  s: {memoryMax: 0}\n", 2, "senses.s.memoryMax", "must be at least 1M, got 0"),
    ("workflows:\n  w: {memory: 1G}\n", 2, "workflows.w.memory", "did you mean 'memoryMax'?"),
    # top level
    ("- a\n", 1, "", "expected a mapping at the top level, got a list"),
    ("sensors: {}\n", 1, "sensors", "unknown key (did you mean 'senses'?); allowed keys: "),
    ("extra: 1\n", 1, "extra", "allowed keys: senses, reflexes, workflows, retention"),
    # senses
    ("senses: [a]\n", 1, "senses", "expected a mapping of sense names, got a list"),
    ("senses:\n  a: 5s\n", 2, "senses.a", "expected a mapping of sense settings, got a string"),
    ("senses:\n  a:\n    interval: 5s\n", 3, "senses.a.interval", "unknown key; allowed keys: "),
    ("senses:\n  a:\n    grace: 1s\n", 3, "senses.a.grace", "did you mean 'gracePeriod'?"),
    ("senses:\n  ../etc:\n", 2, "senses.../etc", "'../etc' is not a valid sense name"),
    ("senses:\n  my sense:\n", 2, "senses.my sense", "is not a valid sense name: use letters"),
    (f"senses:\n  {'a' * 65}:\n", 2, f"senses.{'a' * 65}", "at most 64 characters"),
    ("senses:\n  a: {group: ''}\n", 2, "senses.a.group", "'' is not a valid group name"),
    ("senses:\n  a: {group: x/y}\n", 2, "senses.a.group", "'x/y' is not a valid group name"),
    ("senses:\n  a:\n    group:\n", 3, "senses.a.group", "expected a group name, got null"),
    ("senses:\n  a: {group: [x]}\n", 2, "senses.a.group", "expected a group name, got a list"),
    ("senses:\n  a: {throttle: ten}\n", 2, "senses.a.throttle", "expected a duration such as"),
    ("senses:\n  a: {throttle: -5}\n", 2, "senses.a.throttle", "cannot be negative; got -5"),
    ("senses:\n  a: {throttle: true}\n", 2, "senses.a.throttle", "; got true"),
    ("senses:\n  a: {timeout: 0}\n", 2, "senses.a.timeout", "must be longer than 0, got 0"),
    ("senses:\n  a: {timeout: 0s}\n", 2, "senses.a.timeout", "must be longer than 0, got '0s'"),
    ("senses:\n  a: {gracePeriod: -1s}\n", 2, "senses.a.gracePeriod", "cannot be negative"),
    # reflexes: shape
    ("reflexes: {a: 1}\n", 1, "reflexes", "expected a list, got a mapping"),
    ("reflexes:\n  - sense\n", 2, "reflexes[0]", "expected a mapping, got a string ('sense')"),
    ("reflexes:\n  - {}\n", 2, "reflexes[0].kind", "required key is missing"),
    ("reflexes:\n  -\n", 2, "reflexes[0].kind", "required key is missing"),
    ("reflexes:\n  - sense: a\n", 2, "reflexes[0].kind", "use sense or workflow"),
    ("reflexes:\n  - kind: sensor\n", 2, "reflexes[0].kind", "expected sense or workflow"),
    # reflexes: kind sense
    (
        "senses: {a: }\nreflexes:\n  - kind: sense\n    interval: 1s\n",
        3,
        "reflexes[0].sense",
        "required key is missing",
    ),
    (
        "senses: {a: }\nreflexes:\n  - kind: sense\n    sense: b\n    interval: 1s\n",
        4,
        "reflexes[0].sense",
        "unknown sense 'b'; declare it under senses:",
    ),
    (
        "senses: {alpha: }\nreflexes:\n  - {kind: sense, sense: alpah, interval: 1s}\n",
        3,
        "reflexes[0].sense",
        "unknown sense 'alpah' (did you mean 'alpha'?)",
    ),
    (
        "senses: {a: }\nreflexes:\n  - kind: sense\n    sense: a\n",
        3,
        "reflexes[0]",
        "a sense reflex needs interval, on, or both",
    ),
    (
        "senses: {a: }\nreflexes:\n  - kind: sense\n    sense: a\n    interval: 0\n",
        5,
        "reflexes[0].interval",
        "must be longer than 0",
    ),
    (
        "senses: {a: }\nreflexes:\n  - kind: sense\n    sense: a\n    interval: soon\n",
        5,
        "reflexes[0].interval",
        "got 'soon'",
    ),
    (
        "senses: {a: , b: }\nreflexes:\n  - {kind: sense, sense: a, on: []}\n",
        3,
        "reflexes[0].on",
        "must list at least one sense",
    ),
    (
        "senses: {a: , b: }\nreflexes:\n  - kind: sense\n    sense: a\n    on:\n",
        5,
        "reflexes[0].on",
        "expected a list of sense names, got null",
    ),
    (
        "senses: {a: , b: }\nreflexes:\n  - kind: sense\n    sense: a\n"
        "    on:\n      - b\n      - c\n",
        7,
        "reflexes[0].on[1]",
        "unknown sense 'c'",
    ),
    (
        "senses: {a: , b: }\nreflexes:\n  - {kind: sense, sense: a, on: 'b, c'}\n",
        3,
        "reflexes[0].on",
        "(for several, use a list: [b, c])",
    ),
    (
        "senses: {a: , b: }\nreflexes:\n  - kind: sense\n    sense: a\n    on: [{b: 1}]\n",
        5,
        "reflexes[0].on[0]",
        "expected a sense name, got a mapping",
    ),
    (
        "senses: {a: , b: }\nreflexes:\n  - kind: sense\n    sense: a\n    on: [b, a]\n",
        5,
        "reflexes[0].on",
        "a sense cannot recompute on its own signal: 'a' would loop forever",
    ),
    (
        "senses: {a: }\nworkflows: {w: }\nreflexes:\n"
        "  - {kind: sense, sense: a, interval: 1s,\n     workflow: w}\n",
        5,
        "reflexes[0].workflow",
        "unknown key here: 'workflow' belongs to a reflex of kind: workflow",
    ),
    (
        "senses: {a: }\nreflexes:\n  - {kind: sense, sense: a, interval: 1s, every: 2s}\n",
        3,
        "reflexes[0].every",
        "unknown key; allowed keys: kind, sense, interval, on",
    ),
    # reflexes: kind workflow
    (
        "senses: {a: }\nreflexes:\n  - kind: workflow\n    on: a\n",
        3,
        "reflexes[0].workflow",
        "required key is missing",
    ),
    (
        "senses: {a: }\nworkflows: {w: }\nreflexes:\n  - kind: workflow\n    workflow: v\n"
        "    on: a\n",
        5,
        "reflexes[0].workflow",
        "unknown workflow 'v'; declare it under workflows:",
    ),
    (
        "workflows: {w: }\nreflexes:\n  - kind: workflow\n    workflow: w\n",
        3,
        "reflexes[0].on",
        "required key is missing",
    ),
    (
        "senses: {a: }\nworkflows: {w: }\nreflexes:\n  - {kind: workflow, workflow: w, on: []}\n",
        4,
        "reflexes[0].on",
        "must list at least one sense",
    ),
    (
        "senses: {a: }\nworkflows: {w: }\nreflexes:\n  - {kind: workflow, workflow: w, on: b}\n",
        4,
        "reflexes[0].on",
        "unknown sense 'b'",
    ),
    (
        "senses: {a: }\nworkflows: {w: }\nreflexes:\n  - kind: workflow\n    workflow: w\n"
        "    on: a\n    interval: 5s\n",
        7,
        "reflexes[0].interval",
        "unknown key here: interval belongs to a reflex of kind: sense",
    ),
    # workflows
    ("workflows: [w]\n", 1, "workflows", "expected a mapping of workflow names, got a list"),
    ("workflows:\n  w: 3\n", 2, "workflows.w", "expected a mapping of workflow settings"),
    ("workflows:\n  w/x:\n", 2, "workflows.w/x", "'w/x' is not a valid workflow name"),
    ("workflows:\n  w:\n    max_queue: 5\n", 3, "workflows.w.max_queue", "did you mean 'maxQueue'"),
    ("workflows:\n  w: {concurrency: true}\n", 2, "workflows.w.concurrency", "got a boolean"),
    ("workflows:\n  w: {concurrency: 0}\n", 2, "workflows.w.concurrency", "at least 1, got 0"),
    ("workflows:\n  w: {concurrency: -2}\n", 2, "workflows.w.concurrency", "at least 1, got -2"),
    ("workflows:\n  w: {concurrency: 1.5}\n", 2, "workflows.w.concurrency", "got a number (1.5)"),
    ("workflows:\n  w: {concurrency: '3'}\n", 2, "workflows.w.concurrency", "a string ('3')"),
    ("workflows:\n  w: {concurrency: 10000000000}\n", 2, "workflows.w.concurrency", "at most"),
    ("workflows:\n  w: {overflow: fifo}\n", 2, "workflows.w.overflow", "expected drop or queue"),
    ("workflows:\n  w: {overflow: DROP}\n", 2, "workflows.w.overflow", "got 'DROP'"),
    (
        "workflows:\n  w:\n    overflow: drop\n    maxQueue: 5\n",
        4,
        "workflows.w.maxQueue",
        "only applies with overflow: queue (overflow is drop on line 3)",
    ),
    ("workflows:\n  w: {maxQueue: 0}\n", 2, "workflows.w.maxQueue", "must be at least 1"),
    ("workflows:\n  w: {idleTimeout: -1}\n", 2, "workflows.w.idleTimeout", "cannot be negative"),
    ("workflows:\n  w: {drainTimeout: x}\n", 2, "workflows.w.drainTimeout", "got 'x'"),
    ("workflows:\n  w: {maxSteps: 0}\n", 2, "workflows.w.maxSteps", "must be at least 1"),
    ("workflows:\n  w: {maxAttempts: 0}\n", 2, "workflows.w.maxAttempts", "must be at least 1"),
    ("workflows:\n  w: {maxAttempts: no}\n", 2, "workflows.w.maxAttempts", "(false)"),
    # retention
    ("retention: [1]\n", 1, "retention", "expected a mapping, got a list"),
    ("retention:\n  logs: {}\n", 2, "retention.logs", "allowed keys: runs, signals"),
    ("retention:\n  runs: 5\n", 2, "retention.runs", "expected a mapping, got an integer (5)"),
    ("retention:\n  runs: {maxAge: 0}\n", 2, "retention.runs.maxAge", "must be longer than 0"),
    ("retention:\n  runs: {maxAge: -1d}\n", 2, "retention.runs.maxAge", "cannot be negative"),
    ("retention:\n  runs: {maxAge: old}\n", 2, "retention.runs.maxAge", "got 'old'; or null"),
    ("retention:\n  runs: {maxCount: 0}\n", 2, "retention.runs.maxCount", "at least 1, got 0"),
    ("retention:\n  runs: {maxCount: -3}\n", 2, "retention.runs.maxCount", "at least 1, got -3"),
    ("retention:\n  runs: {maxCount: lots}\n", 2, "retention.runs.maxCount", "integer or null"),
    ("retention:\n  signals: {maxAge: 0}\n", 2, "retention.signals.maxAge", "longer than 0"),
    ("retention:\n  signals: {maxCount: 5}\n", 2, "retention.signals.maxCount", "allowed keys: "),
    # control
    ("control: [1]\n", 1, "control", "expected a mapping, got a list"),
    ("control: 5\n", 1, "control", "expected a mapping, got an integer (5)"),
    ("control:\n  idle: 5s\n", 2, "control.idle", "allowed keys: idleTimeout, maxConnections"),
    (
        "control:\n  maxConnection: 64\n",
        2,
        "control.maxConnection",
        "did you mean 'maxConnections'",
    ),
    (
        "control:\n  idleTimeout: 999ms\n",
        2,
        "control.idleTimeout",
        "must be at least 1s, got '999ms'",
    ),
    ("control:\n  idleTimeout: 0\n", 2, "control.idleTimeout", "must be at least 1s, got 0"),
    ("control:\n  idleTimeout: -1s\n", 2, "control.idleTimeout", "cannot be negative"),
    ("control:\n  idleTimeout: 36501d\n", 2, "control.idleTimeout", "cannot exceed 36500d"),
    ("control:\n  idleTimeout:\n", 2, "control.idleTimeout", "expected a duration such as"),
    ("control:\n  idleTimeout: .nan\n", 2, "control.idleTimeout", "; got nan"),
    (
        "control:\n  maxConnections: 31\n",
        2,
        "control.maxConnections",
        "must be at least 32, got 31",
    ),
    ("control:\n  maxConnections: 4097\n", 2, "control.maxConnections", "at most 4096, got 4097"),
    ("control:\n  maxConnections: 64.0\n", 2, "control.maxConnections", "expected an integer"),
    ("control:\n  maxConnections: lots\n", 2, "control.maxConnections", "got a string ('lots')"),
    ("control:\n  maxConnections: .inf\n", 2, "control.maxConnections", "got a number (inf)"),
    # numbers no setting can hold, and that Python will not even print
    (
        "workflows:\n  w: {concurrency: 1.0e+400}\n",
        2,
        "workflows.w.concurrency",
        "got a number (inf)",
    ),
    ("workflows:\n  w: {maxSteps: .nan}\n", 2, "workflows.w.maxSteps", "got a number (nan)"),
    ("senses:\n  a: {timeout: 1.0e+400}\n", 2, "senses.a.timeout", "; got inf"),
    ("senses:\n  a: {timeout: -.inf}\n", 2, "senses.a.timeout", "; got -inf"),
    ("senses:\n  a: {timeout: 1e400}\n", 2, "senses.a.timeout", "; got '1e400'"),
    (
        f"workflows:\n  w: {{concurrency: {'9' * 5000}}}\n",
        2,
        "workflows.w.concurrency",
        "must be at most 1000000000, got an integer of more than 30 digits",
    ),
    (
        f"workflows:\n  w: {{maxQueue: -{'9' * 5000}}}\n",
        2,
        "workflows.w.maxQueue",
        "must be at least 1, got an integer of more than 30 digits",
    ),
    (
        f"senses:\n  a: {{timeout: {'9' * 5000}}}\n",
        2,
        "senses.a.timeout",
        "cannot exceed 36500d (100 years); got an integer of more than 30 digits",
    ),
    (
        f"senses:\n  a: {{throttle: 0x{'f' * 5000}}}\n",
        2,
        "senses.a.throttle",
        "cannot exceed 36500d (100 years); got an integer of more than 30 digits",
    ),
    (
        f"senses: 0b{'1' * 20000}\n",
        1,
        "senses",
        "expected a mapping of sense names, got an integer of more than 30 digits",
    ),
    # YAML itself
    ("senses:\n  a:\n  a:\n", 3, "senses.a", "duplicate key (first on line 2)"),
    ("senses: {}\nsenses: {}\n", 2, "senses", "duplicate key (first on line 1)"),
    (
        "workflows:\n  w:\n    concurrency: 1\n    concurrency: 2\n",
        4,
        "workflows.w.concurrency",
        "duplicate key (first on line 3)",
    ),
    (
        "senses: {a: }\nreflexes:\n  - kind: sense\n    sense: a\n    kind: sense\n"
        "    interval: 1s\n",
        5,
        "reflexes[0].kind",
        "duplicate key (first on line 3)",
    ),
    ("senses:\n  a: !secret 1\n", 2, "senses.a", "unsupported tag !secret"),
    ("senses:\n  a: {timeout: !!int x}\n", 2, "senses.a.timeout", "cannot read 'x' as !!int"),
    ("senses: !!set {a}\n", 1, "senses", "got a value tagged !!set"),
    ("senses:\n  ? [a, b]\n  : 1\n", 2, "senses", "expected a name as key, got a list"),
]


@pytest.mark.parametrize(
    ("text", "line", "path", "message"), RULES, ids=[f"{rule[2] or 'top'}" for rule in RULES]
)
def test_rule(text: str, line: int, path: str, message: str) -> None:
    [error] = errors_of(text)
    prefix = f"nerve.yaml:{line}: {path}: " if path else f"nerve.yaml:{line}: "
    assert error.startswith(prefix), error
    assert message in error.removeprefix(prefix), error


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("senses:\n  a: {\n  b: 1\n", 4, "expected ',' or '}', but got '<stream end>'"),
        ("senses:\n  a: 1\n b: 2\n", 3, "expected <block end>, but found '<block mapping start>'"),
        ("senses:\n  a: *nothing\n", 2, "found undefined alias 'nothing'"),
        ("senses:\n\tfoo: 1\n", 2, "found character '\\t' that cannot start any token"),
        ("a: 1\n---\nb: 2\n", 2, "expected a single document in the stream"),
        ("senses:\n  a: {timeout: '\x01'}\n", 2, "control character U+0001 is not allowed"),
    ],
    ids=["unclosed-flow", "bad-indent", "undefined-alias", "tab", "two-documents", "control"],
)
def test_yaml_syntax_error_has_its_line(text: str, line: int, message: str) -> None:
    [error] = errors_of(text)
    assert error.startswith(f"nerve.yaml:{line}: invalid YAML: "), error
    assert message in error


def _laughs(levels: int, width: int, merge: bool) -> str:
    """A "billion laughs" document: each anchor repeats the one before ``width`` times."""
    lines = ["l0: &l0 {a: lol}" if merge else "l0: &l0 lol"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(
            f"l{level}: &l{level} {{<<: [{refs}]}}" if merge else f"l{level}: &l{level} [{refs}]"
        )
    lines.append(f"senses: {{a: *l{levels}}}" if merge else f"reflexes: *l{levels}")
    return "\n".join(lines) + "\n"


def _merge_chain(length: int) -> str:
    lines = ["m0: &m0 {timeout: 1s}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, length + 1)]
    return "\n".join(lines) + f"\nsenses:\n  a: *m{length}\n"


HOSTILE_SHAPES = [
    ("senses: " + "[" * 100_000 + "]" * 100_000, 1, "nested more than 32 levels deep"),
    ("senses: " + "{a: " * 5000 + "1" + "}" * 5000, 1, "nested more than 32 levels deep"),
    ("".join("  " * i + f"k{i}:\n" for i in range(2000)), 32, "nested more than 32 levels deep"),
    (_merge_chain(2000), 32, "nested more than 32 levels deep through aliases"),
    (
        _laughs(9, 10, merge=False),
        6,
        "more than 100,000 values (an alias counts as all it repeats)",
    ),
    (
        _laughs(17, 2, merge=True),
        15,
        "more than 100,000 values (an alias counts as all it repeats)",
    ),
    ("a: &a [1, *a]\n", 1, "alias *a is inside its own anchor"),
    ("senses: &s {a: {<<: *s}}\n", 1, "alias *s is inside its own anchor"),
    (f"senses:\n  a: *{'x' * 100_000}\n", 2, "found undefined alias '" + "x" * 150),
    (bytes(range(256)).decode("latin-1"), 1, "control character U+0000 is not allowed"),
    ("senses:\n\ta: 1\n", 2, "found character '\\t' that cannot start any token"),
]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    HOSTILE_SHAPES,
    ids=[
        "deep-flow-lists", "deep-flow-mappings", "deep-block-mappings", "long-merge-chain",
        "billion-laughs", "merge-bomb", "recursive-alias", "recursive-merge",
        "long-undefined-alias", "binary", "tab",
    ],
)  # fmt: skip
def test_hostile_shape_is_one_error_with_its_line(text: str, line: int, message: str) -> None:
    [error] = errors_of(text)
    assert error.startswith(f"nerve.yaml:{line}: invalid YAML: {message}"), error[:300]
    assert len(error) < 400, "a message quotes at most a clipped part of the file"


def test_long_keys_and_values_are_clipped_in_messages() -> None:
    key, value = "k" * 100_000, "v" * 100_000
    errors = errors_of(f"senses:\n  ? {key}\n  : {{group: {value}}}\n  b: {{group: '{value},x'}}\n")
    assert errors == [
        f"nerve.yaml:2: senses.{'k' * 97}...: '{'k' * 57}...' is not a valid sense name: "
        "use letters, digits, '_', '.' and '-', starting with a letter or digit, "
        "at most 64 characters",
        f"nerve.yaml:3: senses.{'k' * 97}....group: '{'v' * 57}...' is not a valid group name: "
        "use letters, digits, '_', '.' and '-', starting with a letter or digit, "
        "at most 64 characters",
        f"nerve.yaml:4: senses.b.group: '{'v' * 57}...' is not a valid group name: "
        "use letters, digits, '_', '.' and '-', starting with a letter or digit, "
        "at most 64 characters",
    ]


def test_reports_stop_after_max_errors() -> None:
    text = "senses:\n" + "".join(f"  s{i}: {{timeout: 0}}\n" for i in range(3 * MAX_ERRORS))
    errors = errors_of(text)
    assert len(errors) == MAX_ERRORS + 1
    assert errors[0] == "nerve.yaml:2: senses.s0.timeout: must be longer than 0, got 0"
    assert errors[-1] == f"nerve.yaml: stopped after {MAX_ERRORS} errors"


def test_no_spelling_hint_among_thousands_of_names() -> None:
    # Comparing every misspelling with every name would stall the master: past 1,000 names,
    # an unknown one gets no "did you mean".
    def error(count: int) -> str:
        senses = "".join(f"  sense{i}:\n" for i in range(count))
        [error] = errors_of(
            f"senses:\n{senses}reflexes:\n  - {{kind: sense, sense: sense1, on: sensex1}}\n"
        )
        return error

    assert "(did you mean 'sense1'?)" in error(1000)
    assert error(1001).endswith(": unknown sense 'sensex1'; declare it under senses:")


def test_every_error_is_reported_in_file_order() -> None:
    text = """\
        workflows:
          w:
            concurrency: 0
            overflow: sometimes
        senses:
          a:
            throttle: -1
            colour: red
        reflexes:
          - kind: sense
            sense: nope
            interval: 1s
        retention:
          runs: {maxCount: 0}
        """
    assert errors_of(text) == [
        "nerve.yaml:3: workflows.w.concurrency: must be at least 1, got 0",
        "nerve.yaml:4: workflows.w.overflow: expected drop or queue, got 'sometimes'",
        "nerve.yaml:7: senses.a.throttle: a duration cannot be negative; got -1",
        "nerve.yaml:8: senses.a.colour: unknown key; "
        "allowed keys: group, throttle, timeout, gracePeriod, memoryMax",
        "nerve.yaml:11: reflexes[0].sense: unknown sense 'nope'; declare it under senses:",
        "nerve.yaml:14: retention.runs.maxCount: must be at least 1, got 0",
    ]


def test_a_bad_definition_does_not_cascade_into_references() -> None:
    # `a` is declared, if badly: the reflex naming it gets no "unknown sense" on top.
    text = "senses:\n  a: {timeout: 0}\nreflexes:\n  - {kind: sense, sense: a, on: [a2]}\n"
    assert errors_of(text) == [
        "nerve.yaml:2: senses.a.timeout: must be longer than 0, got 0",
        "nerve.yaml:4: reflexes[0].on[0]: unknown sense 'a2' (did you mean 'a'?); "
        "declare it under senses:",
    ]
    # An unusable senses section is one error, not one more per reflex.
    text = "senses: [a]\nreflexes:\n  - {kind: sense, sense: a, interval: 1s}\n"
    assert errors_of(text) == [
        "nerve.yaml:1: senses: expected a mapping of sense names, got a list"
    ]


def test_errors_name_the_file_they_came_from() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("extra: 1\n", Path("/srv/other.yaml"))
    assert caught.value.errors == (
        "other.yaml:1: extra: unknown key; allowed keys: senses, reflexes, workflows, retention, "
        "control",
    )


def test_config_error_from_a_single_message() -> None:
    error = ConfigError("nerve.yaml: broken")
    assert error.errors == ("nerve.yaml: broken",)
    assert str(error) == "nerve.yaml: broken"


# --------------------------------------------------------------------------------------------
# load_config


def test_load_config_reads_root_nerve_yaml(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_text(SPEC_EXAMPLE_DECLARED, encoding="utf-8")
    config = load_config(tmp_path)
    assert config.path == tmp_path / "nerve.yaml"
    assert list(config.senses) == ["disk-usage", "disk-alert"]


def test_load_config_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_bytes(b"\xef\xbb\xbfsenses:\n  a:\n")
    assert list(load_config(tmp_path).senses) == ["a"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == (
        f"nerve.yaml: cannot read {tmp_path / 'nerve.yaml'}: No such file or directory",
    )


def _make_directory(path: Path) -> None:
    path.mkdir()


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_make_directory, "a directory"),
        (_make_fifo, "a FIFO"),
        (_link_to_dev_zero, "a character device"),
    ],
    ids=["directory", "fifo", "dev-zero"],
)
def test_load_config_reads_only_a_regular_file(
    tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    make(tmp_path / "nerve.yaml")
    with deadline(5), pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == (
        f"nerve.yaml: cannot read {tmp_path / 'nerve.yaml'}: {kind}, not a regular file",
    )


def test_load_config_reads_at_most_max_file_size(tmp_path: Path) -> None:
    path = tmp_path / "nerve.yaml"
    path.write_bytes(b"#" * (MAX_FILE_SIZE - 1) + b"\n")
    assert dict(load_config(tmp_path).senses) == {}
    with path.open("ab") as file:
        file.truncate(8 << 30)  # sparse: 8 GiB that cost nothing to write, and must not be read
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == (
        f"nerve.yaml: {path} is larger than 256.0 KiB, the most it may hold",
    )


def test_load_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_bytes(b"senses:\n  caf\xe9:\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == ("nerve.yaml:2: not UTF-8 text (byte 0xe9)",)


def test_load_config_reports_validation_errors(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_text("senses:\n  a: {timeout: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^nerve.yaml:2: senses.a.timeout: "):
        load_config(tmp_path)


# --------------------------------------------------------------------------------------------
# check_packages

PACKAGES_YAML = """\
senses:
  present:
  missing:
  no-init:
workflows:
  flow:
  lost:
"""


def test_check_packages(tmp_path: Path) -> None:
    config = parse_config(PACKAGES_YAML, tmp_path / "nerve.yaml")
    # Importing this would end the test run: check_packages must only look at the files.
    for package in ("senses/present", "workflows/flow"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("raise SystemExit('imported!')\n")
    (tmp_path / "senses/no-init").mkdir()
    (tmp_path / "senses/no-init/compute.py").write_text("")

    assert check_packages(tmp_path, config) == [
        f"nerve.yaml:3: senses.missing: no package: senses/missing/__init__.py is missing "
        f"in {tmp_path}",
        f"nerve.yaml:4: senses.no-init: no package: senses/no-init/__init__.py is missing "
        f"in {tmp_path}",
        f"nerve.yaml:7: workflows.lost: no package: workflows/lost/__init__.py is missing "
        f"in {tmp_path}",
    ]
    assert not any(name in sys.modules for name in ("present", "flow"))


def test_check_packages_all_present(tmp_path: Path) -> None:
    config = parse_config(PACKAGES_YAML, tmp_path / "nerve.yaml")
    for package in ("senses/present", "senses/missing", "senses/no-init"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").touch()
    for package in ("workflows/flow", "workflows/lost"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").touch()
    assert check_packages(tmp_path, config) == []


def test_check_packages_init_that_is_not_a_file(tmp_path: Path) -> None:
    config = parse_config("senses:\n  odd:\n", tmp_path / "nerve.yaml")
    (tmp_path / "senses/odd/__init__.py").mkdir(parents=True)
    assert check_packages(tmp_path, config) == [
        f"nerve.yaml:2: senses.odd: no package: {tmp_path}/senses/odd/__init__.py "
        "is not a regular file"
    ]


def test_check_packages_when_senses_is_a_file(tmp_path: Path) -> None:
    config = parse_config("senses:\n  a:\n", tmp_path / "nerve.yaml")
    (tmp_path / "senses").write_text("")
    assert check_packages(tmp_path, config) == [
        f"nerve.yaml:2: senses.a: no package: senses/a/__init__.py is missing in {tmp_path}"
    ]


def test_check_packages_refuses_a_package_too_large_to_fingerprint(tmp_path: Path) -> None:
    config = parse_config("senses:\n  small:\nworkflows:\n  big:\n", tmp_path / "nerve.yaml")
    for package in ("senses/small", "workflows/big"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").touch()
    with (tmp_path / "workflows/big/model.bin").open("wb") as file:
        file.truncate(8 << 30)  # sparse: check_packages must size it, not read it
    assert check_packages(tmp_path, config) == [
        "nerve.yaml:4: workflows.big: package too large: more than 256.0 MiB in its files "
        "(a package may hold at most 10,000 files and 256.0 MiB)"
    ]
