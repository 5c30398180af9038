"""What nerve.yaml says, as the daemon uses it: frozen dataclasses, and their defaults.

Frozen because a running daemon swaps whole configurations on reload and must never see one
half-changed. Every setting keeps the line it came from (``line``), for messages; what
compares two configurations compares them :func:`unlined`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias, TypeVar, cast

from nerved.config.grammar import DAY_MS, MINUTE_MS, SECOND_MS

CONFIG_FILE = "nerve.yaml"

DEFAULT_GROUP = "default"
DEFAULT_THROTTLE_MS = 0
DEFAULT_TIMEOUT_MS = 30 * SECOND_MS
DEFAULT_GRACE_PERIOD_MS = 5 * SECOND_MS
DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 100
DEFAULT_IDLE_TIMEOUT_MS = 30 * SECOND_MS
DEFAULT_DRAIN_TIMEOUT_MS = 60 * SECOND_MS
DEFAULT_MAX_STEPS = 1000
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RUN_MAX_AGE_MS = 30 * DAY_MS
DEFAULT_RUN_MAX_COUNT = 10_000
DEFAULT_SIGNAL_MAX_AGE_MS = 7 * DAY_MS
DEFAULT_CONTROL_IDLE_TIMEOUT_MS = 60 * SECOND_MS
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_METRICS_INTERVAL_MS = 15 * SECOND_MS
DEFAULT_RETRY_ATTEMPTS = 1
DEFAULT_RETRY_DELAY_MS = SECOND_MS
DEFAULT_RETRY_FACTOR = 2.0
DEFAULT_RETRY_MAX_DELAY_MS = 5 * MINUTE_MS


class ConfigError(Exception):
    """Raised with every problem found, not just the first.

    Operators fix a file faster from the whole list than by rerunning once per mistake.
    """

    errors: tuple[str, ...]

    def __init__(self, errors: Iterable[str] | str) -> None:
        # A bare string would otherwise be split into characters by tuple().
        self.errors = (errors,) if isinstance(errors, str) else tuple(errors)
        super().__init__("\n".join(self.errors))


class Overflow(enum.StrEnum):
    DROP = "drop"
    QUEUE = "queue"


class Placement(enum.StrEnum):
    """Where a workflow's runs execute, on a store several hosts share (SPEC v2 §9): on the
    host that triggered them (``local``), or on whichever host claims them first from the
    shared queue (``any``). With a store one host holds (SQLite) both are ``local``."""

    LOCAL = "local"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class SenseConfig:
    name: str
    group: str
    throttle_ms: int
    timeout_ms: int
    grace_period_ms: int
    line: int
    memory_max: int | None = None  # bytes; its group's worker gets the largest of its senses'


@dataclass(frozen=True, slots=True)
class CronSpec:
    """A reflex on a clock: ``cron:`` (five fields, checked), ``timezone:``, ``catchUp:``.

    ``timezone`` None is the host's zone, resolved when the schedule is armed
    (nerved.config.cron.zone). ``catch_up``: a firing missed while nerved was down runs once
    at start.
    """

    expr: str
    timezone: str | None = None
    catch_up: bool = False


@dataclass(frozen=True, slots=True)
class SenseReflex:
    sense: str
    interval_ms: int | None
    on: tuple[str, ...]
    line: int
    cron: CronSpec | None = None  # instead of interval and on


@dataclass(frozen=True, slots=True)
class WorkflowReflex:
    workflow: str
    on: tuple[str, ...]
    line: int
    cron: CronSpec | None = None  # instead of on
    # An RFC 6901 JSON pointer into the signal's payload: its value is the run's idempotency
    # key (nerved.master.reflexes). None: no key, every signal starts a run.
    key: str | None = None


Reflex: TypeAlias = SenseReflex | WorkflowReflex


class OnError(enum.StrEnum):
    """What becomes of a run when a role fails its last try."""

    FAIL = "fail"  # the run fails
    MODERATE = "moderate"  # the moderator is handed a role_failed event and decides


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failed role is tried again (``retry:`` of a role), and how long between.

    ``attempts`` counts every try, the first included: 1 is no retry. The wait before try
    *n* (2 is the first retry) is ``delay_ms * factor ** (n - 2)``, at most ``max_delay_ms``
    (:meth:`delay_before`).
    """

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    delay_ms: int = DEFAULT_RETRY_DELAY_MS
    factor: float = DEFAULT_RETRY_FACTOR
    max_delay_ms: int = DEFAULT_RETRY_MAX_DELAY_MS

    def delay_before(self, try_number: int) -> int:
        """Milliseconds to wait before try ``try_number`` (1 is the first try, which waits
        for nothing; 2 the first retry): ``min(delay * factor ** (try_number - 2), maxDelay)``.

        Compared in logarithms first, so that no try number, however large, overflows a
        float: ``2.0 ** 1100`` raises OverflowError, and a larger product is inf.
        """
        if try_number < 1:
            raise ValueError(f"tries are counted from 1, got {try_number}")
        if try_number == 1 or self.delay_ms == 0:
            return 0
        if self.delay_ms >= self.max_delay_ms:
            return self.max_delay_ms
        # An int past 10**308 cannot even be multiplied by a float; and 2**64 tries take any
        # factor above 1 past any ceiling (the smallest one reaches 100 years in 2**57).
        exponent = min(try_number - 2, 1 << 64)
        if exponent * math.log(self.factor) >= math.log(self.max_delay_ms / self.delay_ms):
            return self.max_delay_ms
        # Below the ceiling, so below max_delay_ms / delay_ms: a small float, never inf.
        return min(self.max_delay_ms, round(self.delay_ms * self.factor**exponent))


@dataclass(frozen=True, slots=True)
class RolePolicy:
    """The policy of one role of a workflow (``roles: <role>:``): its timeout, its retries,
    and what a failure that is past its retries does to the run.

    ``line`` is left out of comparisons, so that moving a role's block in the file is no
    change: :func:`unlined`, through which workflows' settings are compared, leaves out the
    workflow's own line but does not reach into its ``roles``.
    """

    timeout_ms: int | None = None  # None: the role may take as long as it takes
    retry: RetryPolicy = RetryPolicy()
    on_error: OnError = OnError.FAIL
    line: int = field(default=0, compare=False)


DEFAULT_ROLE_POLICY = RolePolicy()


def _no_roles() -> Mapping[str, RolePolicy]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class WorkflowConfig:
    name: str
    concurrency: int
    overflow: Overflow
    max_queue: int
    idle_timeout_ms: int
    drain_timeout_ms: int
    max_steps: int
    max_attempts: int
    line: int
    memory_max: int | None = None  # bytes, for the worker and everything it starts
    placement: Placement = Placement.LOCAL
    # Policies by role name; a role not named here has the defaults (:meth:`policy`).
    roles: Mapping[str, RolePolicy] = field(default_factory=_no_roles)

    def policy(self, role: str) -> RolePolicy:
        """The policy of ``role``: as nerve.yaml sets it, else the default one."""
        return self.roles.get(role, DEFAULT_ROLE_POLICY)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Pruning of old rows in logs.db. Key ``retention:`` at top level, all optional.

    ``None`` means "keep forever" and only comes from an explicit ``null`` in the file, so that
    forgetting the section cannot make logs.db grow without bound.
    """

    run_max_age_ms: int | None = DEFAULT_RUN_MAX_AGE_MS
    run_max_count: int | None = DEFAULT_RUN_MAX_COUNT
    signal_max_age_ms: int | None = DEFAULT_SIGNAL_MAX_AGE_MS


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control socket's limits. Key ``control:`` at top level, all optional.

    ``idle_timeout_ms``: a connection that sends nothing for this long is closed (1 s to
    MAX_DURATION_MS). ``max_connections``: connections served at once (32 to 4096).
    """

    idle_timeout_ms: int = DEFAULT_CONTROL_IDLE_TIMEOUT_MS
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The metrics' textfile. Key ``metrics:`` at top level, all optional.

    ``textfile``: where the Prometheus text is written for node_exporter's textfile
    collector (an absolute path ending in ``.prom``), None: nowhere (the ``metrics`` method
    answers all the same). ``interval_ms``: how often it is written (1 s to 1 h).
    """

    textfile: Path | None = None
    interval_ms: int = DEFAULT_METRICS_INTERVAL_MS


@dataclass(frozen=True, slots=True)
class NerveConfig:
    path: Path
    senses: Mapping[str, SenseConfig]
    reflexes: tuple[Reflex, ...]
    workflows: Mapping[str, WorkflowConfig]
    retention: RetentionConfig
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    store: str | None = None
    """``store:``: a PostgreSQL URL (nerved.store.postgres), or None for logs.db (SQLite)."""

    def groups(self) -> dict[str, tuple[SenseConfig, ...]]:
        """Senses by worker group; file order is kept so workers start predictably."""
        grouped: dict[str, list[SenseConfig]] = {}
        for sense in self.senses.values():
            grouped.setdefault(sense.group, []).append(sense)
        return {group: tuple(senses) for group, senses in grouped.items()}

    def group_members(self) -> dict[str, tuple[str, ...]]:
        """:meth:`groups` by name: each group's senses, in file order."""
        return {group: tuple(s.name for s in senses) for group, senses in self.groups().items()}


def group_memory_max(senses: Iterable[SenseConfig]) -> int | None:
    """A sense group's memoryMax: the largest its senses set (None: none sets one).

    A group is one worker, so it gets one limit; the largest, because a sense that asks for
    more must be able to compute beside the others.
    """
    return max((s.memory_max for s in senses if s.memory_max is not None), default=None)


_Lined = TypeVar("_Lined")


def unlined(item: _Lined) -> _Lined:
    """The same setting without its line number: moving a block in the file is no change."""
    return cast(_Lined, dataclasses.replace(cast(Any, item), line=0))
