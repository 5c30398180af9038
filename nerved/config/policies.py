"""A workflow's ``roles:`` in nerve.yaml: the policy of each role it names (its timeout, its
retries, what its last failure does to the run), checked as every other key is.

Its own module because a role's policy is a section of its own, two levels below a
workflow's settings, which are ``schema``'s. Whether the workflow's code defines the roles
named here cannot be known without importing that code, which nothing here does: the
import check says so (``nerved.code.packages``), in ``nerved check`` and at a reload.
"""

from __future__ import annotations

import math

from nerved.config.messages import HUGE, UNREADABLE, describe, show
from nerved.config.model import (
    DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_DELAY_MS,
    DEFAULT_RETRY_FACTOR,
    DEFAULT_RETRY_MAX_DELAY_MS,
    OnError,
    RetryPolicy,
    RolePolicy,
)
from nerved.config.walker import Entry, Walker, join_key

# Tries of one step, the first included. Each failed try is a `step_failed` entry in
# logs.db and a write of the run's row, so more only lets a broken role fill the log: 1000
# tries already keep at it for about three and a half days at the default maxDelay (5m).
MAX_RETRY_ATTEMPTS = 1000

_ROLE_KEYS = ("timeout", "retry", "onError")
_RETRY_KEYS = ("attempts", "delay", "factor", "maxDelay")


def role_policies(walker: Walker, section: Entry, path: str) -> dict[str, RolePolicy]:
    """The policies of a workflow's ``roles:`` (at ``path``), by role name, in file order.

    A role listed with nothing set (``writer:``) gets the defaults, and is still a role named:
    the import check refuses it if the code defines no such role.
    """
    entries = walker.mapping(section.value, section.line, path, "a mapping of role names")
    result: dict[str, RolePolicy] = {}
    for entry in entries or []:
        role_path = join_key(path, entry.key)
        walker.check_name(entry.key, entry.line, role_path, "role")
        settings = walker.mapping(entry.value, entry.line, role_path, "a mapping of role settings")
        fields = walker.known(settings or [], _ROLE_KEYS, role_path)
        timeout: int | None = None
        if "timeout" in fields:
            timeout = walker.duration(
                fields["timeout"], f"{role_path}.timeout", positive=True, nullable=True
            )
        result[entry.key] = RolePolicy(
            timeout_ms=timeout,
            retry=_retry(walker, fields.get("retry"), f"{role_path}.retry"),
            on_error=_on_error(walker, fields.get("onError"), f"{role_path}.onError"),
            line=entry.line,
        )
    return result


def _retry(walker: Walker, section: Entry | None, path: str) -> RetryPolicy:
    if section is None:
        return RetryPolicy()
    entries = walker.mapping(section.value, section.line, path, "a mapping")
    fields = walker.known(entries or [], _RETRY_KEYS, path)
    if "attempts" not in fields and fields:
        # delay, factor or maxDelay alone would say how to retry a step that is never retried.
        walker.error(
            section.line,
            f"{path}.attempts",
            "required key is missing: the tries in all, the first included "
            "(without it there is one try, no retry)",
        )
    attempts = DEFAULT_RETRY_ATTEMPTS
    if "attempts" in fields:
        found = walker.integer(fields["attempts"], f"{path}.attempts", maximum=MAX_RETRY_ATTEMPTS)
        attempts = DEFAULT_RETRY_ATTEMPTS if found is None else found
    delay = _duration(walker, fields, "delay", path)
    max_delay = _duration(walker, fields, "maxDelay", path)
    if delay is not None and max_delay is not None and max_delay < delay:
        _below_delay(walker, fields, path)
    return RetryPolicy(
        attempts=attempts,
        delay_ms=DEFAULT_RETRY_DELAY_MS if delay is None else delay,
        factor=_factor(walker, fields.get("factor"), f"{path}.factor"),
        max_delay_ms=DEFAULT_RETRY_MAX_DELAY_MS if max_delay is None else max_delay,
    )


def _duration(walker: Walker, fields: dict[str, Entry], key: str, path: str) -> int | None:
    """A duration of 0 or more; its default when absent (delay, maxDelay), None when bad."""
    if key not in fields:
        return DEFAULT_RETRY_DELAY_MS if key == "delay" else DEFAULT_RETRY_MAX_DELAY_MS
    return walker.duration(fields[key], f"{path}.{key}", positive=False)


def _below_delay(walker: Walker, fields: dict[str, Entry], path: str) -> None:
    """maxDelay is below delay: said at maxDelay, or at delay when maxDelay is the default."""
    if "delay" not in fields:  # the default delay (1s) above an explicit maxDelay: allowed
        return
    delay = fields["delay"]
    written = show(walker.value(delay.value, f"{path}.delay"))
    if "maxDelay" not in fields:
        walker.error(
            delay.line,
            f"{path}.delay",
            f"must be at most maxDelay (5m by default; set a longer one), got {written}",
        )
        return
    field = fields["maxDelay"]
    value = show(walker.value(field.value, f"{path}.maxDelay"))
    walker.error(
        field.line,
        f"{path}.maxDelay",
        f"must be at least delay (delay is {written} on line {delay.line}), got {value}",
    )


def _factor(walker: Walker, entry: Entry | None, path: str) -> float:
    """What each delay after the first is multiplied by: a number, at least 1."""
    if entry is None:
        return DEFAULT_RETRY_FACTOR
    value = walker.value(entry.value, path)
    if value is UNREADABLE:
        return DEFAULT_RETRY_FACTOR
    if isinstance(value, bool) or not isinstance(value, int | float):
        walker.error(entry.line, path, f"expected a number, got {describe(value)}")
    elif isinstance(value, float) and not math.isfinite(value):
        walker.error(entry.line, path, f"expected a finite number, got {show(value)}")
    elif value < 1:
        walker.error(entry.line, path, f"must be at least 1, got {show(value)}")
    else:
        # A larger factor makes every retry but the first wait maxDelay, as HUGE does; and
        # float() refuses an integer past 10**308, which !!int 0x... can be.
        return float(min(value, HUGE))
    return DEFAULT_RETRY_FACTOR


def _on_error(walker: Walker, entry: Entry | None, path: str) -> OnError:
    if entry is None:
        return OnError.FAIL
    value = walker.value(entry.value, path)
    if isinstance(value, str) and value in tuple(OnError):
        return OnError(value)
    if value is not UNREADABLE:
        choices = " or ".join(tuple(OnError))
        walker.error(entry.line, path, f"expected {choices}, got {show(value)}")
    return OnError.FAIL
