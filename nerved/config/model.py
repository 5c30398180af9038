"""What nerve.yaml says, as the daemon uses it: frozen dataclasses, and their defaults.

Frozen because a running daemon swaps whole configurations on reload and must never see one
half-changed. Every setting keeps the line it came from (``line``), for messages; what
compares two configurations compares them :func:`unlined`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

from nerved.config.grammar import DAY_MS, SECOND_MS

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
class SenseReflex:
    sense: str
    interval_ms: int | None
    on: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class WorkflowReflex:
    workflow: str
    on: tuple[str, ...]
    line: int


Reflex: TypeAlias = SenseReflex | WorkflowReflex


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
class NerveConfig:
    path: Path
    senses: Mapping[str, SenseConfig]
    reflexes: tuple[Reflex, ...]
    workflows: Mapping[str, WorkflowConfig]
    retention: RetentionConfig
    control: ControlConfig = ControlConfig()

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
