"""What the control commands may use of the daemon: a narrow interface, not the daemon.

Each command (nerved.control.commands) is written against :class:`Engine`; the daemon is one
(structurally: nerved.master.daemon.Daemon satisfies it, which mypy checks where the
dispatcher is made). So a command cannot reach into the loop, the workers or the
configuration, and nothing in nerved.control imports the daemon (which imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from nerved.outcome import Pending
from nerved.store import Reader, RunRecord


class SenseControl(Protocol):
    def list(self) -> list[dict[str, Any]]:
        """Every sense, as ``sense.list`` shows it."""

    def trigger(self, name: str) -> bool:
        """Ask for a compute of ``name`` soon; False if there is no such sense."""

    def worker_state(self, name: str) -> str | None:
        """The state of the worker of sense ``name``'s group (nerved.states.WorkerState);
        None: no such sense."""


class WorkflowControl(Protocol):
    def trigger(
        self,
        workflow: str,
        payload: Any,
        payload_json: str | None = None,
        *,
        retry_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> RunRecord:
        """Admit a run (nerved.master.workflows); raises nerved.outcome's refusals. With
        ``idempotency_key``: the kept run of ``workflow`` that has it, if one does (whatever
        its status, in this turn's batch too), and nothing changes."""

    def run_by_key(self, workflow: str, key: str) -> RunRecord | None:
        """The kept run of ``workflow`` with idempotency key ``key``, as this turn's batch
        has it (not only what is committed: a trigger earlier in the turn counts)."""

    def wait(self, run_id: str, timeout: float | None) -> Any:
        """The run once final, or a Pending that answers then."""

    def worker_state(self, workflow: str) -> str | None:
        """The state of the workflow's worker (nerved.states.WorkerState); None: no such
        workflow."""

    def cancel(self, run_id: str, reason: str | None, uid: int | None) -> RunRecord:
        """Cancel an active run in this turn's batch; raises NotFound, or Conflict for a
        final run."""

    def retry(self, run_id: str, from_step: int | None) -> RunRecord:
        """Admit a new run retrying a final one, keeping its first ``from_step`` steps (None:
        all it completed); raises NotFound, Conflict (still active), BadInput."""

    def signal(self, run_id: str, name: str, payload: Any) -> bool:
        """Log a signal for an active run in this turn's batch; True if a wait took it now.
        Raises NotFound, Conflict (a final run), BadInput (a bad name or payload)."""

    def progress(self, run_id: str) -> dict[str, Any] | None:
        """Where a started run stands: ``{step, try, since, role, retryAt}``; None if the
        master holds no started run of that id."""

    def replay(self, run_id: str | None, workflow: str | None, limit: int) -> Pending:
        """``workflow.replay`` of one run, or of ``workflow``'s newest ``limit`` kept runs:
        a Pending answered with the check's result; raises nerved.outcome's refusals."""


class StoreControl(Protocol):
    @property
    def committed(self) -> Reader:
        """What is committed: every read a command makes."""

    @property
    def host_id(self) -> str | None:
        """This host, on a store several hosts share; None for one it holds alone."""

    def after_commit(
        self,
        on_commit: Callable[[], None],
        on_abort: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run ``on_commit`` once this turn's writes are durable (``on_abort`` if they are
        not)."""


class CronControl(Protocol):
    def listing(self) -> list[dict[str, Any]]:
        """Every cron reflex, as ``schedule.list`` shows it."""


class MetricsControl(Protocol):
    def exposition(self) -> str:
        """The OpenMetrics text, as ``metrics`` answers it."""


class Engine(Protocol):
    @property
    def senses(self) -> SenseControl: ...

    @property
    def workflows(self) -> WorkflowControl: ...

    @property
    def store(self) -> StoreControl: ...

    @property
    def cron(self) -> CronControl: ...

    @property
    def metrics(self) -> MetricsControl: ...

    def status(self) -> dict[str, Any]:
        """What ``status`` answers."""

    def request_reload(self, source: str) -> Pending:
        """Reload; the Pending answers ``{changed: [...]}`` or is rejected with the reason."""

    def refuses_writes(self) -> str | None:
        """Why nothing may be changed now (stopping; logs.db held by another process), if so."""
