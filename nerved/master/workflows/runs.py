"""What the workflow manager holds of each workflow and run, and the words it logs them in.

What the master keeps in memory of a run is a cache of ``workflow_runs`` (rebuilt from it at
start, see :meth:`nerved.master.workflows.manager.WorkflowManager.recover`): a started run
(:class:`ActiveRun`), a queued one (:class:`QueuedRun`), and per workflow its settings, queue,
active runs and supervisor (:class:`Flow`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from nerved import logs, wire
from nerved.channel import Message
from nerved.code.packages import Package
from nerved.config import WorkflowConfig
from nerved.master.metrics.tally import FlowTally
from nerved.states import RunStatus, Transition
from nerved.store import RunRecord, StoreError
from nerved.words import plural

if TYPE_CHECKING:
    from nerved.loop import Timer
    from nerved.master.supervisor import Supervisor
    from nerved.master.workers import Worker

log = logging.getLogger("nerved.master.workflows")


@dataclass(frozen=True, slots=True)
class InFlight:
    """The step a run's worker is on: its role when known (a role with a timeout says so as
    it begins), and since when (ms since the epoch: when the previous step was recorded, or
    the run given to its worker)."""

    role: str | None
    since: int


@dataclass(frozen=True, slots=True)
class Wait:
    """What a waiting run waits for (nerved.master.workflows.waits): the signal ``name``
    (None: it sleeps), until ``until`` (ms since the epoch; None: no deadline)."""

    name: str | None
    until: int | None


@dataclass(eq=False)
class ActiveRun:
    """A started or waiting run: which flow it belongs to and which worker (if any) runs it
    now."""

    run_id: str
    flow: Flow
    payload_json: str | None  # as stored: held as text, sent as text (a frame splices it)
    history: int  # bytes of its stored trigger payload, steps and inputs, <= wire.MAX_HISTORY
    steps: int = 0
    worker: Worker | None = None
    sent: bool = False  # a worker has been told of it before: the next one resumes it
    delivered: bool = False  # its worker was sent its start or resume (not only promised it)
    starting: bool = False  # its start goes to its worker at this turn's commit
    tries: int = 0  # failed tries of the step in flight (nerved.master.workflows.tries)
    retry_at: int | None = None  # when its next try is due (ms since the epoch), if waiting
    retry_timer: Timer | None = None  # gives it back to a worker at retry_at
    in_flight: InFlight | None = None
    lost: str | None = None  # why its next worker resumes it (a worker died, nerved restarted)
    attempts: int = 0  # workers lost under it, as its row counts them (maxAttempts)
    waiting: Wait | None = None  # its moderator waits: no worker until the wait ends
    wait_timer: Timer | None = None  # ends the wait at its deadline

    def progress(self) -> dict[str, Any]:
        """Where it stands, for ``inspect`` and ``workflow list``: ``{step, try, since, role,
        retryAt}`` (``since`` and ``retryAt`` in ms since the epoch, or null)."""
        flight = self.in_flight
        return {
            "step": self.steps + 1,
            "try": self.tries + 1,
            "since": None if flight is None else flight.since,
            "role": None if flight is None else flight.role,
            "retryAt": self.retry_at,
        }


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """A run waiting for a slot, with its payload as stored (text: a decoded 1 MiB payload
    can be a hundred times that in Python objects, and a queue holds up to maxQueue).

    ``steps`` and ``history``: a retry of a run (``workflow.retry``) starts with the old
    run's first steps, copied: its worker resumes it rather than starting it."""

    run_id: str
    payload_json: str | None
    steps: int = 0
    history: int = 0


@dataclass(eq=False)
class Flow:
    """One workflow's runtime: its settings, queue, active runs and workers."""

    config: WorkflowConfig
    package: Package  # its accepted code, which every worker imports
    supervisor: Supervisor = field(init=False)  # its workers (nerved.master.supervisor)
    queue: deque[QueuedRun] = field(default_factory=deque)
    active: dict[str, ActiveRun] = field(default_factory=dict)
    removed: bool = False
    tally: FlowTally = field(default_factory=FlowTally)  # its counts, for the metrics
    loaded: bool = False  # a worker of its code has imported it (its "ready")
    load_error: str | None = None  # why a worker of its code could not load it, if so

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def has_room(self) -> bool:
        return len(self.active) < self.config.concurrency

    def take_back(
        self, worker: Worker | None, *, keep_starting: bool = False
    ) -> dict[ActiveRun, str]:
        """The runs given to ``worker`` whose ``start`` or ``resume`` it was not sent yet,
        now given to no worker, each with why its workflow's removal ends it: ``worker`` was
        just told to stop (``keep_starting``: will be, after this turn's commit; a run whose
        start goes then stays with it).

        A start waits for its turn's commit, and a resume's history goes page by page, but
        a stop goes at once: a worker drained in between (a role stuck in it, its code
        reloaded) would hear ``stop`` first, exit with nothing running, and take the run with
        it as a crash. Taken back, the run goes to the next worker instead.
        """
        if worker is None:
            return {}
        taken = [r for r in self.active.values() if r.worker is worker and not r.delivered]
        for run in taken:
            if not (keep_starting and run.starting):  # a start sent at the commit stays
                run.worker, run.in_flight, run.starting = None, None, False
        return {run: "its workflow was removed before it was sent" for run in taken
                if run.worker is None}  # fmt: skip

    def timeouts(self) -> dict[str, float]:
        """The roles' timeouts in seconds, as its workers hold them (``timeouts``)."""
        roles = self.config.roles.items()
        return {role: p.timeout_ms / 1000 for role, p in roles if p.timeout_ms is not None}


def unresumable(exc: wire.Invalid | StoreError) -> str:
    return f"{Transition.UNRESUMABLE.label}: {exc}"


WORKER_DIED: Final = "its worker died"  # how the error of a run crashed so begins


def losses_in_a_row(
    record: RunRecord, get_run: Callable[[str], RunRecord | None], limit: int
) -> int:
    """How many times in a row ``record`` and the runs it restarts afresh (``retryOf``, of an
    ``overflow: drop`` workflow) lost their worker, counting up to ``limit``: a payload that
    ends its worker would otherwise make a new run at every backoff, for ever, so at the
    workflow's ``maxAttempts`` it is not restarted. A restart because nerved itself stopped
    does not count (its run's error says so, not :data:`WORKER_DIED`)."""
    lost, ancestor = 1, record.retry_of
    while ancestor is not None and lost < limit:
        previous = get_run(ancestor)
        if previous is None or not (previous.error or "").startswith(WORKER_DIED):
            break
        lost, ancestor = lost + 1, previous.retry_of
    return lost


def may_restart(
    record: RunRecord, get_run: Callable[[str], RunRecord | None], config: WorkflowConfig
) -> bool:
    """Whether a drop workflow's run lost with its worker starts afresh (losses_in_a_row)."""
    lost = losses_in_a_row(record, get_run, config.max_attempts)
    if lost < config.max_attempts:
        return True
    log.warning("run %s of %s not restarted: runs of its payload lost their worker %s"
                " in a row (maxAttempts)", record.run_id, record.workflow, plural(lost, "time"),
                extra=logs.run(record.run_id, record.workflow))  # fmt: skip
    return False


def step_record(message: Message) -> str:
    """What logs.db keeps of a step a worker sent: ``{role, prompt, event}`` as JSON.

    Raises wire.Invalid (a ValueError: the Worker then ends the worker that sent it) for a
    prompt or event nested deeper than any value may be: a worker breaking the rules.
    """
    step = {"role": str(message.get("role")), "prompt": message.get("prompt"),
            "event": message.get("event")}  # fmt: skip
    return wire.dumps(step, max_depth=wire.MAX_DEPTH + 1)


def too_long(n: int, size: int) -> str:
    """Why step ``n`` (``size`` bytes) fails its run: its history would outgrow a resume."""
    return (
        f"step {n} ({wire.size_text(size)}) would take its history past"
        f" {wire.size_text(wire.MAX_HISTORY)}, more than a resume can carry"
    )


def log_transition(run_id: str, workflow: str, transition: Transition, error: str | None) -> None:
    """Every transition reaches the journal with run id and workflow (SPEC §8)."""
    level = logging.WARNING if transition.target in _BAD_ENDS else logging.INFO
    reason = f": {error}" if error else ""
    if error and error.startswith(f"{transition.target} "):  # "cancelled by uid 0: ..."
        reason = error[len(transition.target) :]
    log.log(level, "run %s of %s %s%s", run_id, workflow, transition.target, reason,
            extra=logs.run(run_id, workflow, transition.target))  # fmt: skip


_BAD_ENDS = frozenset({RunStatus.FAILED, RunStatus.CRASHED, RunStatus.DROPPED})
# A cancel is an operator's decision, logged at INFO: not a failure to look into.
