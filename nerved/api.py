"""The names user code imports from ``nerved`` (SPEC §4), typed for editors and mypy.

Nothing here touches the daemon's internals: workers build these objects and hand them to
user functions. Events and prompts are plain JSON values so that they can be stored in
logs.db exactly as the role returned them and replayed after a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypedDict

from nerved import credentials, waits
from nerved.store.records import LogEntry

JsonValue = Any
"""A value ``json.dumps`` accepts: dict, list, str, int, float, bool or None."""

CommandEvent = dict[str, Any]
"""An event in a thread: a JSON object with a string ``type``.

The first event of every thread is ``{"type": "thread_start", "payload": <trigger payload>}``.
"""


class ModerateResult(TypedDict):
    """The moderator's answer: which role speaks next, and what it is told."""

    role: str
    prompt: JsonValue


class WaitFor(TypedDict):
    """The moderator's answer :func:`wait_for` makes: park until a signal, or a deadline."""

    wait: str
    timeout: int | None  # milliseconds; None: no deadline


class Sleep(TypedDict):
    """The moderator's answer :func:`sleep` makes: park for a time."""

    sleep: int  # milliseconds


Duration = str | float | timedelta
"""``"90s"``, ``"1h30m"`` (units, as nerve.yaml writes them), a number of seconds, or a
:class:`~datetime.timedelta`."""


def wait_for(name: str, timeout: Duration | None = None) -> WaitFor:
    """What a moderator returns to wait for the signal ``name`` (SPEC §4 v2).

    The run parks: status ``waiting``; it keeps its concurrency slot but holds no worker,
    and survives restarts (its deadline is fixed, and logged, when it parks). The moderator
    is called again with ``{"type": "signal", "name": name, "payload": P}`` when the signal
    comes (``nervectl workflow signal RUN NAME``; one sent before this wait is delivered at
    once, oldest first), or ``{"type": "wait_timeout", "name": name}`` once ``timeout`` has
    passed (None: no deadline). Raises ValueError for a name that is empty, longer than 256
    characters or holds control characters, or a timeout that is negative, over 100 years,
    or text without a unit.
    """
    if (problem := waits.name_problem(name)) is not None:
        raise ValueError(f"wait_for(): the name {problem}")
    ms = None if timeout is None else waits.milliseconds(timeout, "wait_for(timeout=)")
    return {"wait": name, "timeout": ms}


def sleep(duration: Duration) -> Sleep:
    """What a moderator returns to park its run for ``duration`` (SPEC §4 v2); then it is
    called again with ``{"type": "wake"}``. Durable as :func:`wait_for` is: a sleep that ends
    while nerved is down wakes at its next start. Raises ValueError as :func:`wait_for`."""
    return {"sleep": waits.milliseconds(duration, "sleep()")}


@dataclass(frozen=True, slots=True)
class ThreadState:
    """What the moderator sees: the run and every event so far, oldest first."""

    run_id: str
    workflow: str
    events: Sequence[CommandEvent]


class WorkflowContext:
    """Handed to each role call: who is running, which try of the step this is, and a way to
    write to the run's log.

    ``attempt`` is 1 for a step's first try and counts up with each retry (the role's
    ``retry`` policy in nerve.yaml): a role with side effects can use it, with ``run_id``
    and the step's prompt, to make an idempotency key.
    """

    __slots__ = ("_log", "attempt", "run_id", "workflow")

    def __init__(
        self, run_id: str, workflow: str, log: Callable[[str], None], attempt: int = 1
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.attempt = attempt
        self._log = log

    def log(self, message: str) -> None:
        """Append a ``log`` entry to this run (``nervectl workflow inspect`` shows it)."""
        self._log(str(message))

    def credential(self, name: str) -> str:
        """The text of the systemd credential ``name`` (``LoadCredential=name:/path`` in the
        unit: read from ``$CREDENTIALS_DIRECTORY``). KeyError naming it when there is none."""
        return credentials.read(name)


class Retry(Exception):
    """Raised by a role: this try failed, try again under the role's ``retry`` policy.

    ``after``: seconds before the next try, instead of the policy's delay (a rate limit's
    ``Retry-After``); None: the policy's. Past the policy's ``attempts`` the step fails as
    after any other exception. The try's error in the run's log (and a ``role_failed``
    event's ``error``) is ``asked to retry: <message>``; any other exception's is
    ``raised <Type>: <message> (at <file>:<line>)``.
    """

    def __init__(self, message: str = "", *, after: float | None = None) -> None:
        super().__init__(message)
        if after is not None and (
            isinstance(after, bool)
            or not isinstance(after, (int, float))
            or not 0 <= after < 1e9  # NaN is neither
        ):
            raise ValueError(f"Retry(after=) takes seconds >= 0, not {after!r}")
        self.after = None if after is None else float(after)


class Fatal(Exception):
    """Raised by a role: this step failed and must not be tried again, whatever the role's
    ``retry`` policy says (a bad request, a missing resource). ``onError`` then applies. The
    try's error (and a ``role_failed`` event's) is ``gave up: <message>``."""


class LogsReader(Protocol):
    """``ctx.logs``: read-only logs.db, answered by the master."""

    def query(
        self,
        *,
        source: str | None = None,
        type: str | None = None,
        ref_id: str | None = None,
        since: int | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int | None = 100,
    ) -> list[LogEntry]:
        """Entries of logs.db, oldest first: what the socket's ``logs.query`` answers to the
        same fields (``ref_id`` is its ``refId``, ``after_id`` its ``afterId``, ``before_id``
        its ``beforeId``), checked by the same rules (:mod:`nerved.store.query`).

        ``limit`` is at least 1 (None: 100); above 10000 it asks for 10000; an answer holds
        at most 4 MiB of payloads, so page on with ``after_id``. A query the socket would
        refuse raises ``ValueError`` (:class:`nerved.store.query.BadQuery`) with the message
        it would answer, such as ``param 'limit' must be at least 1`` for ``limit=0``.
        """
        ...


class SenseContext:
    """Handed to each compute: the sense's name, a log line, and read-only logs.db."""

    __slots__ = ("_log", "logs", "sense")

    def __init__(self, sense: str, log: Callable[[str], None], logs: LogsReader) -> None:
        self.sense = sense
        self.logs = logs
        self._log = log

    def log(self, message: str) -> None:
        """Append a ``log`` entry for this sense (``nervectl logs --source sense``)."""
        self._log(str(message))

    def credential(self, name: str) -> str:
        """The text of the systemd credential ``name``, as :meth:`WorkflowContext.credential`."""
        return credentials.read(name)


RoleFn = Callable[[JsonValue, WorkflowContext], CommandEvent | Awaitable[CommandEvent]]
"""A role: sync or async, side effects allowed; returns the next event."""

ModerateFn = Callable[[ThreadState, CommandEvent], ModerateResult | WaitFor | Sleep | None]
"""The moderator: pure, no I/O. Returns the next role and prompt, a wait (:func:`wait_for`,
:func:`sleep`), or None when done."""

ComputeFn = Callable[[SenseContext], JsonValue | Awaitable[JsonValue]]
"""A sense: sync or async; returns the signal's payload, or None for no signal."""


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """What a workflow package exports as ``workflow``."""

    roles: Mapping[str, RoleFn]
    moderate: ModerateFn
    description: str = field(default="")

    def __post_init__(self) -> None:
        if not isinstance(self.roles, Mapping) or not self.roles:
            raise TypeError(
                "WorkflowDefinition.roles must be a non-empty mapping of name -> function"
            )
        for name, role in self.roles.items():
            if not isinstance(name, str) or not callable(role):
                raise TypeError(f"role {name!r} must be a function (prompt, ctx) -> event")
        if not callable(self.moderate):
            raise TypeError(
                "WorkflowDefinition.moderate must be a function (thread, event) -> next"
            )
