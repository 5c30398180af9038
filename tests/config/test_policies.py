"""Tests of a workflow's role policies in nerve.yaml (nerved.config.policies and .model):
the accepted forms and their defaults, every bad input with its file, line and key path, and
the waits between tries (RetryPolicy.delay_before).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from config_support import PATH, errors_of, parse

from nerved.config import (
    OnError,
    Overflow,
    RetryPolicy,
    RolePolicy,
    WorkflowConfig,
    parse_config,
    unlined,
)

MINUTE = 60_000

FULL = """\
workflows:
  code-review:
    roles:
      writer:
        timeout: 2m
        retry:
          attempts: 5
          delay: 1s
          factor: 1.5
          maxDelay: 5m
        onError: moderate
      reader:
        retry: {attempts: 2, factor: 3}
      merger:
"""

# --------------------------------------------------------------------------------------------
# Accepted forms and defaults


def test_every_key_of_a_role_policy() -> None:
    flow = parse(FULL).workflows["code-review"]
    assert list(flow.roles) == ["writer", "reader", "merger"]
    assert flow.roles["writer"] == RolePolicy(
        timeout_ms=2 * MINUTE,
        retry=RetryPolicy(attempts=5, delay_ms=1000, factor=1.5, max_delay_ms=5 * MINUTE),
        on_error=OnError.MODERATE,
    )
    assert flow.roles["writer"].line == 4
    assert flow.roles["reader"] == RolePolicy(retry=RetryPolicy(attempts=2, factor=3.0))
    assert isinstance(flow.roles["reader"].retry.factor, float)
    # Listed with nothing set: the defaults, and still a role named (the import check's).
    assert flow.roles["merger"] == RolePolicy()
    assert flow.roles["merger"].line == 14


def test_defaults() -> None:
    assert RolePolicy() == RolePolicy(
        timeout_ms=None,
        retry=RetryPolicy(attempts=1, delay_ms=1000, factor=2.0, max_delay_ms=300_000),
        on_error=OnError.FAIL,
        line=0,
    )
    for text in ("w:", "w: {roles: }", "w:\n    roles: {}"):
        flow = parse(f"workflows:\n  {text}\n").workflows["w"]
        assert dict(flow.roles) == {}
        assert flow.policy("anyone") == RolePolicy()
    assert dict(WorkflowConfig("w", 1, Overflow.QUEUE, 1, 0, 0, 1, 1, 1).roles) == {}


def test_policy_of_a_role_listed_and_not() -> None:
    flow = parse(FULL).workflows["code-review"]
    assert flow.policy("writer") is flow.roles["writer"]
    assert flow.policy("author") == RolePolicy()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("{timeout: null}", RolePolicy(timeout_ms=None)),
        ("{timeout: 1500}", RolePolicy(timeout_ms=1500)),
        ("{onError: fail}", RolePolicy()),
        ("{retry: }", RolePolicy()),
        ("{retry: {}}", RolePolicy()),
        ("{retry: {attempts: 1}}", RolePolicy()),
        ("{retry: {attempts: 1000}}", RolePolicy(retry=RetryPolicy(attempts=1000))),
        ("{retry: {attempts: 3, delay: 0}}", RolePolicy(retry=RetryPolicy(3, delay_ms=0))),
        ("{retry: {attempts: 3, factor: 1}}", RolePolicy(retry=RetryPolicy(3, factor=1.0))),
        (
            "{retry: {attempts: 3, delay: 5m, maxDelay: 5m}}",
            RolePolicy(retry=RetryPolicy(3, delay_ms=5 * MINUTE)),
        ),
        # The default delay (1s) above an explicit maxDelay: every wait is maxDelay.
        ("{retry: {attempts: 3, maxDelay: 0}}", RolePolicy(retry=RetryPolicy(3, max_delay_ms=0))),
        (
            f"{{retry: {{attempts: 2, factor: 0x{'f' * 300}}}}}",
            RolePolicy(retry=RetryPolicy(2, factor=1e30)),
        ),
    ],
    ids=[
        "no-timeout", "timeout-ms", "fail", "retry-null", "retry-empty", "one-attempt",
        "most-attempts", "no-delay", "constant-delay", "delay-equals-max", "max-below-default",
        "huge-factor",
    ],
)  # fmt: skip
def test_accepted(settings: str, expected: RolePolicy) -> None:
    assert (
        parse(f"workflows:\n  w:\n    roles:\n      r: {settings}\n").workflows["w"].roles["r"]
        == expected
    )


def test_moving_a_role_block_is_no_change() -> None:
    """Lines are not compared (RolePolicy.line), as unlined() leaves them out elsewhere."""
    first = parse(FULL).workflows["code-review"]
    moved = parse(
        FULL.replace("  code-review:\n", "  code-review:\n    concurrency: 1\n\n\n")
    ).workflows["code-review"]
    assert moved.roles["writer"].line == first.roles["writer"].line + 3
    assert unlined(moved) == unlined(first)
    changed = parse(FULL.replace("timeout: 2m", "timeout: 3m")).workflows["code-review"]
    assert unlined(changed) != unlined(first)


def test_policies_are_frozen() -> None:
    flow = parse(FULL).workflows["code-review"]
    with pytest.raises(TypeError):
        flow.roles["x"] = RolePolicy()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        flow.roles["writer"].retry.attempts = 2  # type: ignore[misc]


def test_merge_keys_share_a_policy() -> None:
    text = """\
        workflows:
          w:
            roles:
              a: &patient
                retry: {attempts: 3}
              b:
                <<: *patient
                onError: moderate
        """
    roles = parse(text).workflows["w"].roles
    assert roles["b"] == RolePolicy(retry=RetryPolicy(3), on_error=OnError.MODERATE)


# --------------------------------------------------------------------------------------------
# One rule, one error: (what follows `roles:`, line, key path under workflows.w.roles, message)

R = "\n      "  # a role of w

RULES = [
    # roles
    (" [r]", 3, "", "expected a mapping of role names, got a list"),
    (" 5", 3, "", "expected a mapping of role names, got an integer (5)"),
    # a role
    (R + "w/x: {}", 4, "w/x", "'w/x' is not a valid role name: use letters, digits"),
    (R + "'-r': {}", 4, "-r", "'-r' is not a valid role name"),
    (f"{R}{'a' * 65}: {{}}", 4, "a" * 65, "at most 64 characters"),
    (R + "r: 5", 4, "r", "expected a mapping of role settings, got an integer (5)"),
    (R + "r: [timeout]", 4, "r", "expected a mapping of role settings, got a list"),
    (
        R + "r: {timout: 1s}",
        4,
        "r.timout",
        "unknown key (did you mean 'timeout'?); allowed keys: timeout, retry, onError",
    ),
    (R + "r: {on_error: fail}", 4, "r.on_error", "did you mean 'onError'?"),
    (R + "r: {retries: {}}", 4, "r.retries", "did you mean 'retry'?"),
    (R + "r: {}\n      r: {}", 5, "r", "duplicate key (first on line 4)"),
    # timeout
    (R + "r: {timeout: 0}", 4, "r.timeout", "must be longer than 0, got 0"),
    (R + "r: {timeout: 0s}", 4, "r.timeout", "must be longer than 0, got '0s'"),
    (R + "r: {timeout: -1s}", 4, "r.timeout", "a duration cannot be negative; got '-1s'"),
    (
        R + "r: {timeout: soon}",
        4,
        "r.timeout",
        "expected a duration such as 500ms, 10s, 5m or 1h, "
        "or a number of milliseconds; got 'soon'; or null",
    ),
    (R + "r: {timeout: true}", 4, "r.timeout", "; got true; or null"),
    (R + "r: {timeout: 36501d}", 4, "r.timeout", "cannot exceed 36500d (100 years)"),
    # retry
    (R + "r: {retry: 5}", 4, "r.retry", "expected a mapping, got an integer (5)"),
    (R + "r: {retry: [1]}", 4, "r.retry", "expected a mapping, got a list"),
    (R + "r: {retry: 3x}", 4, "r.retry", "expected a mapping, got a string ('3x')"),
    (
        R + "r: {retry: {attempt: 3}}",
        4,
        "r.retry.attempt",
        "unknown key (did you mean 'attempts'?); allowed keys: attempts, delay, factor, maxDelay",
    ),
    (R + "r: {retry: {attempts: 2, max_delay: 1s}}", 4, "r.retry.max_delay", "'maxDelay'"),
    (
        R + "r: {retry: {delay: 5s}}",
        4,
        "r.retry.attempts",
        "required key is missing: the tries in "
        "all, the first included (without it there is one try, no retry)",
    ),
    # attempts
    (R + "r: {retry: {attempts: 0}}", 4, "r.retry.attempts", "must be at least 1, got 0"),
    (R + "r: {retry: {attempts: -3}}", 4, "r.retry.attempts", "must be at least 1, got -3"),
    (R + "r: {retry: {attempts: 1001}}", 4, "r.retry.attempts", "must be at most 1000, got 1001"),
    (
        R + "r: {retry: {attempts: 2.5}}",
        4,
        "r.retry.attempts",
        "expected an integer, got a number (2.5)",
    ),
    (R + "r: {retry: {attempts: '3'}}", 4, "r.retry.attempts", "got a string ('3')"),
    (R + "r: {retry: {attempts: yes}}", 4, "r.retry.attempts", "got a boolean (true)"),
    (R + "r: {retry: {attempts: }}", 4, "r.retry.attempts", "expected an integer, got null"),
    # delay
    (R + "r: {retry: {attempts: 2, delay: -1s}}", 4, "r.retry.delay", "cannot be negative"),
    (R + "r: {retry: {attempts: 2, delay: x}}", 4, "r.retry.delay", "got 'x'"),
    (R + "r: {retry: {attempts: 2, delay: [1s]}}", 4, "r.retry.delay", "got a list"),
    (
        R + "r: {retry: {attempts: 2, delay: 10m}}",
        4,
        "r.retry.delay",
        "must be at most maxDelay (5m by default; set a longer one), got '10m'",
    ),
    # factor
    (
        R + "r: {retry: {attempts: 2, factor: 0.5}}",
        4,
        "r.retry.factor",
        "must be at least 1, got 0.5",
    ),
    (R + "r: {retry: {attempts: 2, factor: 0}}", 4, "r.retry.factor", "must be at least 1, got 0"),
    (
        R + "r: {retry: {attempts: 2, factor: -2}}",
        4,
        "r.retry.factor",
        "must be at least 1, got -2",
    ),
    (
        R + "r: {retry: {attempts: 2, factor: fast}}",
        4,
        "r.retry.factor",
        "expected a number, got a string ('fast')",
    ),
    (R + "r: {retry: {attempts: 2, factor: '2'}}", 4, "r.retry.factor", "got a string ('2')"),
    (R + "r: {retry: {attempts: 2, factor: true}}", 4, "r.retry.factor", "got a boolean (true)"),
    (R + "r: {retry: {attempts: 2, factor: }}", 4, "r.retry.factor", "expected a number, got null"),
    (
        R + "r: {retry: {attempts: 2, factor: .inf}}",
        4,
        "r.retry.factor",
        "expected a finite number, got inf",
    ),
    (R + "r: {retry: {attempts: 2, factor: .nan}}", 4, "r.retry.factor", "got nan"),
    (
        R + "r: {retry: {attempts: 2, factor: !!float x}}",
        4,
        "r.retry.factor",
        "cannot read 'x' as !!float",
    ),
    # maxDelay
    (R + "r: {retry: {attempts: 2, maxDelay: -5m}}", 4, "r.retry.maxDelay", "cannot be negative"),
    (R + "r: {retry: {attempts: 2, maxDelay: never}}", 4, "r.retry.maxDelay", "got 'never'"),
    (
        R
        + "r:\n        retry:\n          attempts: 2\n          delay: 10s\n          maxDelay: 5s",
        8,
        "r.retry.maxDelay",
        "must be at least delay (delay is '10s' on line 7), got '5s'",
    ),
    (
        R + "r: {retry: {attempts: 2, delay: 1001, maxDelay: 1s}}",
        4,
        "r.retry.maxDelay",
        "must be at least delay (delay is 1001 on line 4), got '1s'",
    ),
    # onError
    (R + "r: {onError: retry}", 4, "r.onError", "expected fail or moderate, got 'retry'"),
    (R + "r: {onError: FAIL}", 4, "r.onError", "expected fail or moderate, got 'FAIL'"),
    (R + "r: {onError: }", 4, "r.onError", "expected fail or moderate, got null"),
    (R + "r: {onError: [fail]}", 4, "r.onError", "expected fail or moderate, got a list"),
    (R + "r: {onError: false}", 4, "r.onError", "expected fail or moderate, got false"),
]


@pytest.mark.parametrize(
    ("roles", "line", "path", "message"),
    RULES,
    ids=[f"{rule[2] or 'roles'}:{rule[3][:30]}" for rule in RULES],
)
def test_rule(roles: str, line: int, path: str, message: str) -> None:
    [error] = errors_of(f"workflows:\n  w:\n    roles:{roles}\n")
    key = f"workflows.w.roles.{path}" if path else "workflows.w.roles"
    prefix = f"nerve.yaml:{line}: {key}: "
    assert error.startswith(prefix), error
    assert message in error.removeprefix(prefix), error


def test_roles_is_a_key_of_a_workflow_only() -> None:
    [error] = errors_of("senses:\n  s:\n    roles: {}\n")
    assert error.startswith("nerve.yaml:3: senses.s.roles: unknown key")
    [error] = errors_of("workflows:\n  w:\n    role: {}\n")
    assert error.startswith("nerve.yaml:3: workflows.w.role: unknown key (did you mean 'roles'?)")


def test_every_error_of_the_policies_in_file_order() -> None:
    text = """\
        workflows:
          w:
            maxSteps: 0
            roles:
              writer:
                timeout: 0
                retry:
                  attempts: 0
                  delay: -1s
                  factor: 0.5
                  colour: red
                onError: sometimes
              bad/name:
              reader:
                retry: 3
          v:
            roles:
              r:
                retry: {delay: 2s, maxDelay: 1s}
        """
    assert errors_of(text) == [
        "nerve.yaml:3: workflows.w.maxSteps: must be at least 1, got 0",
        "nerve.yaml:6: workflows.w.roles.writer.timeout: must be longer than 0, got 0",
        "nerve.yaml:8: workflows.w.roles.writer.retry.attempts: must be at least 1, got 0",
        "nerve.yaml:9: workflows.w.roles.writer.retry.delay: a duration cannot be negative;"
        " got '-1s'",
        "nerve.yaml:10: workflows.w.roles.writer.retry.factor: must be at least 1, got 0.5",
        "nerve.yaml:11: workflows.w.roles.writer.retry.colour: unknown key; "
        "allowed keys: attempts, delay, factor, maxDelay",
        "nerve.yaml:12: workflows.w.roles.writer.onError: expected fail or moderate, "
        "got 'sometimes'",
        "nerve.yaml:13: workflows.w.roles.bad/name: 'bad/name' is not a valid role name: "
        "use letters, digits, '_', '.' and '-', starting with a letter or digit, "
        "at most 64 characters",
        "nerve.yaml:15: workflows.w.roles.reader.retry: expected a mapping, got an integer (3)",
        "nerve.yaml:19: workflows.v.roles.r.retry.attempts: required key is missing: the tries"
        " in all, the first included (without it there is one try, no retry)",
        "nerve.yaml:19: workflows.v.roles.r.retry.maxDelay: must be at least delay "
        "(delay is '2s' on line 19), got '1s'",
    ]


# --------------------------------------------------------------------------------------------
# The waits between tries


@pytest.mark.parametrize(
    ("policy", "waits"),
    [
        (RetryPolicy(), [0, 1000, 2000, 4000, 8000]),
        (RetryPolicy(delay_ms=1000, factor=2.0, max_delay_ms=5000), [0, 1000, 2000, 4000, 5000, 5000]),
        (RetryPolicy(delay_ms=100, factor=1.5, max_delay_ms=10**6), [0, 100, 150, 225, 338]),
        (RetryPolicy(delay_ms=700, factor=1.0), [0, 700, 700, 700]),
        (RetryPolicy(delay_ms=0, factor=10.0), [0, 0, 0]),
        (RetryPolicy(delay_ms=10_000, max_delay_ms=3000), [0, 3000, 3000]),
        (RetryPolicy(delay_ms=1000, factor=2.0, max_delay_ms=0), [0, 0, 0]),
        (RetryPolicy(delay_ms=1000, factor=2.0, max_delay_ms=4000), [0, 1000, 2000, 4000, 4000]),
    ],
    ids=["defaults", "capped", "fractional", "constant", "no-delay", "delay-past-max", "max-zero",
         "reaches-max-exactly"],
)  # fmt: skip
def test_delay_before(policy: RetryPolicy, waits: list[int]) -> None:
    assert [policy.delay_before(n) for n in range(1, len(waits) + 1)] == waits


@pytest.mark.parametrize("try_number", [12, 1100, 10**6, 10**30, 10**400])
@pytest.mark.parametrize("factor", [1.0000000000000002, 1.5, 2.0, 1e300])
def test_delay_before_never_overflows(try_number: int, factor: float) -> None:
    policy = RetryPolicy(attempts=1000, delay_ms=1000, factor=factor, max_delay_ms=300_000)
    wait = policy.delay_before(try_number)
    assert 1000 <= wait <= 300_000
    if factor >= 1.5 and try_number >= 1100:
        assert wait == 300_000
    assert RetryPolicy(delay_ms=1000, factor=1.0).delay_before(try_number) == 1000


def test_delay_before_the_first_try_is_none_and_tries_count_from_one() -> None:
    assert RetryPolicy().delay_before(1) == 0
    with pytest.raises(ValueError, match="tries are counted from 1, got 0"):
        RetryPolicy().delay_before(0)


def test_the_example_of_the_configuration_reference() -> None:
    """docs/configuration.md's roles block parses, and waits as its comment says."""
    readme = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "roles:" in b]
    author = parse_config(block, PATH).workflows["code-review"].policy("author")
    assert author == RolePolicy(2 * MINUTE, RetryPolicy(5, 1000, 2.0, 5 * MINUTE), OnError.MODERATE)
    assert "# waits 1s, 2s, 4s, 8s" in block
    assert [author.retry.delay_before(n) for n in range(2, 6)] == [1000, 2000, 4000, 8000]
