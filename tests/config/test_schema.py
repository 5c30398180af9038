"""Tests of nerve.yaml's schema (nerved.config.schema and .model): whole files, defaults, the
accepted forms (SPEC section 3).
"""

from __future__ import annotations

import dataclasses

import pytest
from config_support import DAY, PATH, SPEC_EXAMPLE, SPEC_EXAMPLE_DECLARED, errors_of, parse

from nerved.config import (
    ControlConfig,
    Overflow,
    RetentionConfig,
    SenseConfig,
    SenseReflex,
    WorkflowConfig,
    WorkflowReflex,
    group_memory_max,
    parse_config,
)

MiB = 1 << 20


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
