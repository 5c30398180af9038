"""Tests for nerved.config: nerve.yaml parsing and validation (SPEC section 3)."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from nerved.config import (
    ConfigError,
    NerveConfig,
    Overflow,
    RetentionConfig,
    SenseConfig,
    SenseReflex,
    WorkflowConfig,
    WorkflowReflex,
    check_packages,
    load_config,
    parse_config,
    parse_duration,
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


def test_empty_sections_are_empty() -> None:
    config = parse("senses:\nreflexes:\nworkflows: {}\nretention:\n")
    assert dict(config.senses) == {}
    assert config.reflexes == ()
    assert dict(config.workflows) == {}
    assert config.retention == RetentionConfig()


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
        ("1m30s", "'1m30s'"),
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
# One rule, one error: (file, line, key path, part of the message)

RULES = [
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


def test_absurd_nesting_is_an_error_not_a_crash() -> None:
    assert errors_of("senses: " + "[" * 5000 + "]" * 5000) == [
        "nerve.yaml: invalid YAML: nested too deeply"
    ]


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
        "allowed keys: group, throttle, timeout, gracePeriod",
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
        "other.yaml:1: extra: unknown key; allowed keys: senses, reflexes, workflows, retention",
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


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"^nerve.yaml: cannot read .*: Is a directory$"):
        load_config(tmp_path)


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
