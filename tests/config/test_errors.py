"""Tests of nerve.yaml's errors (nerved.config.walker and .schema): one rule, one error, with its
file, line and key path; every error, in file order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from config_support import errors_of

from nerved.config import (
    MAX_ERRORS,
    ConfigError,
    parse_config,
)

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
        "a sense reflex needs interval, on, both, or cron",
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
        "workflows:\n  w: {placement: anywhere}\n",
        2,
        "workflows.w.placement",
        "expected local or any, got 'anywhere'",
    ),
    ("workflows:\n  w: {placement: [any]}\n", 2, "workflows.w.placement", "expected local or any"),
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
        "control, metrics, store",
    )


def test_config_error_from_a_single_message() -> None:
    error = ConfigError("nerve.yaml: broken")
    assert error.errors == ("nerve.yaml: broken",)
    assert str(error) == "nerve.yaml: broken"
