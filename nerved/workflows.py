"""The WorkflowManager: admission, queues, workers and the durable life of every thread.

Every decision is written to logs.db before anyone hears of it. A trigger is answered, and
a worker told to start a thread, only after the commit that made the run ``started``,
``queued`` or ``dropped``; a worker is told to go on after a step only once that step is
committed. What the master keeps in memory (who is active, the queue in FIFO order) is a
cache of what ``workflow_runs`` says, rebuilt from it at start (:meth:`recover`).

A worker is one process per workflow, started on demand and stopped after ``idleTimeout``
with nothing to do. When one dies, its threads are resumed in a successor from their logged
events (roles are at-least-once), or, for ``overflow: drop`` workflows, marked ``crashed``
and started afresh; a thread whose worker died ``maxAttempts`` times under it is ``crashed``.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerved import workflow_worker
from nerved.channel import Message
from nerved.config import NerveConfig, Overflow, WorkflowConfig, unlined
from nerved.control.rpc import INTERNAL_ERROR, NOT_FOUND, SHUTTING_DOWN, Pending, RpcError
from nerved.loop import Loop, Timer
from nerved.states import RunStatus, Transition
from nerved.store import RunRecord, Store
from nerved.usercode import CodeSnapshot
from nerved.workers import Worker, Workers

log = logging.getLogger(__name__)

RESPAWN_FIRST = 0.1
RESPAWN_MAX = 5.0


@dataclass(eq=False)
class ActiveRun:
    """A started run: which flow it belongs to and which worker (if any) runs it now."""

    run_id: str
    flow: Flow
    payload: Any
    steps: int = 0
    worker: Worker | None = None
    sent: bool = False  # a worker has been told of it before: the next one resumes it


@dataclass(eq=False)
class Flow:
    """One workflow's runtime: its settings, queue, active runs and workers."""

    config: WorkflowConfig
    code: str
    queue: deque[tuple[str, Any]] = field(default_factory=deque)
    active: dict[str, ActiveRun] = field(default_factory=dict)
    worker: Worker | None = None
    idle: Timer | None = None
    respawn: Timer | None = None
    failures: int = 0
    removed: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def has_room(self) -> bool:
        return len(self.active) < self.config.concurrency


class WorkflowManager:
    def __init__(self, loop: Loop, workers: Workers, store: Store, root: Path) -> None:
        self.loop = loop
        self.workers = workers
        self.store = store
        self.root = root
        self.flows: dict[str, Flow] = {}
        self.runs: dict[str, ActiveRun] = {}
        self.waiters: dict[str, list[Pending]] = {}
        self.stopping = False

    # -- configuration ------------------------------------------------------------------

    def apply(self, config: NerveConfig, code: CodeSnapshot) -> list[str]:
        changed: list[str] = []
        for name in [n for n in self.flows if n not in config.workflows]:
            self._remove(self.flows.pop(name))
            changed.append(f"workflow {name} removed")
        for name, wf_config in config.workflows.items():
            digest = code.workflows[name]
            if name not in self.flows:
                self.flows[name] = Flow(wf_config, digest)
                changed.append(f"workflow {name} added")
                continue
            flow = self.flows[name]
            if unlined(flow.config) != unlined(wf_config):
                flow.config = wf_config
                changed.append(f"workflow {name} settings")
                self._fill(flow)
            if flow.code != digest:
                flow.code = digest
                self._drain_worker(flow)
                changed.append(f"workflow {name} code")
        return changed

    def _remove(self, flow: Flow) -> None:
        flow.removed = True
        while flow.queue:
            run_id, _ = flow.queue.popleft()
            self._finish(
                run_id, flow.name, Transition.WITHDRAW, f"workflow {flow.name} was removed"
            )
        self._drain_worker(flow)

    def _drain_worker(self, flow: Flow) -> None:
        """Send no new threads to the current worker; let it finish its own, up to drainTimeout."""
        worker = flow.worker
        if worker is None:
            return
        flow.worker = None
        if not worker.send({"t": "stop"}):
            return
        drain = flow.config.drain_timeout_ms / 1000

        def expire() -> None:
            if worker.alive:
                log.warning(
                    "workflow %s: worker pid %d still busy after drainTimeout %gs; killing it",
                    flow.name, worker.pid, drain,
                )  # fmt: skip
                worker.kill()

        self.loop.call_later(drain, expire)

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> str:
        """Rebuild the queues and active sets from logs.db and resume what was running."""
        queued = resumed = restarted = dropped = 0
        for record in self.store.active_runs():
            flow = self.flows.get(record.workflow)
            if flow is None:
                transition = (
                    Transition.WITHDRAW if record.status is RunStatus.QUEUED else Transition.CRASH
                )
                self._finish(
                    record.run_id,
                    record.workflow,
                    transition,
                    f"workflow {record.workflow} is not configured",
                )
                dropped += 1
            elif record.status is RunStatus.QUEUED:
                flow.queue.append((record.run_id, record.trigger_payload))
                queued += 1
            elif flow.config.overflow is Overflow.DROP:
                self._restart_afresh(record, "nerved stopped while it ran")
                restarted += 1
            else:
                run = ActiveRun(
                    record.run_id, flow, record.trigger_payload, record.steps, sent=True
                )
                flow.active[run.run_id] = run
                self.runs[run.run_id] = run
                resumed += 1
        for flow in self.flows.values():
            for run in list(flow.active.values()):
                self._assign(run)
            self._fill(flow)
        summary = (
            f"recovered {resumed} started and {queued} queued runs, "
            f"restarted {restarted}, ended {dropped} of unconfigured workflows"
        )
        if resumed or queued or restarted or dropped:
            log.info("%s", summary)
        return summary

    # -- admission ----------------------------------------------------------------------

    def trigger(self, workflow: str, payload: Any, *, retry_of: str | None = None) -> RunRecord:
        """Admit a new run: started, queued or dropped, written in the current batch.

        The caller acknowledges it with ``store.after_commit``; the worker hears of a started
        run only after that same commit.
        """
        flow = self.flows.get(workflow)
        if flow is None or flow.removed:
            raise RpcError(NOT_FOUND, f"no workflow named {workflow!r}")
        if self.stopping:
            raise RpcError(SHUTTING_DOWN, "nerved is shutting down")
        run_id = uuid.uuid4().hex
        if flow.has_room and not flow.queue:
            record = self.store.create_run(
                run_id, workflow, Transition.START, payload, retry_of=retry_of
            )
            self._activate(flow, run_id, payload)
        elif flow.config.overflow is Overflow.DROP:
            limit = flow.config.concurrency
            record = self.store.create_run(
                run_id, workflow, Transition.REJECT, payload, retry_of=retry_of,
                reason=f"{workflow} is at its concurrency limit ({limit}) with overflow: drop",
            )  # fmt: skip
            _log_transition(run_id, workflow, Transition.REJECT, record.error)
        else:
            if len(flow.queue) >= flow.config.max_queue:
                oldest, _ = flow.queue.popleft()
                self._finish(
                    oldest,
                    workflow,
                    Transition.EVICT,
                    f"the queue of {workflow} was full (maxQueue {flow.config.max_queue})"
                    " and this was its oldest run",
                )
            record = self.store.create_run(
                run_id, workflow, Transition.ENQUEUE, payload, retry_of=retry_of
            )
            flow.queue.append((run_id, payload))
            _log_transition(run_id, workflow, Transition.ENQUEUE, None)
        if record.status is RunStatus.STARTED:
            _log_transition(run_id, workflow, Transition.START, None)
        return record

    def _activate(self, flow: Flow, run_id: str, payload: Any) -> None:
        run = ActiveRun(run_id, flow, payload)
        flow.active[run_id] = run
        self.runs[run_id] = run
        if flow.idle is not None:
            flow.idle.cancel()
            flow.idle = None
        self._assign(run)

    def _fill(self, flow: Flow) -> None:
        """Start queued runs, oldest first, while the workflow has free slots."""
        while flow.queue and flow.has_room and not self.stopping and not flow.removed:
            run_id, payload = flow.queue.popleft()
            if self.store.transition_run(run_id, Transition.DISPATCH, payload=payload):
                _log_transition(run_id, flow.name, Transition.DISPATCH, None)
                self._activate(flow, run_id, payload)

    # -- workers ------------------------------------------------------------------------

    def _assign(self, run: ActiveRun) -> None:
        """Give a run to its flow's worker (spawned if needed), once the batch commits.

        A run that some worker had before is *resumed*: the new worker gets its logged
        events and replays the moderator over them.
        """
        flow = run.flow
        worker = flow.worker
        if worker is None or not worker.connected:
            if flow.respawn is not None:
                return  # the pending respawn assigns every run that waits for a worker
            worker = self._spawn(flow)
        run.worker = worker
        message: Message = {
            "t": "resume" if run.sent else "start",
            "run": run.run_id,
            "payload": run.payload,
            "maxSteps": flow.config.max_steps,
        }
        if run.sent:
            message["events"] = self._logged_events(run.run_id)
        run.sent = True

        def send() -> None:
            if run.worker is worker and self.runs.get(run.run_id) is run:
                worker.send(message)

        self.store.after_commit(send)

    def _logged_events(self, run_id: str) -> list[Any]:
        return [
            entry.payload["event"]
            for entry in self.store.run_history(run_id)
            if entry.type == "step_complete"
        ]

    def _spawn(self, flow: Flow) -> Worker:
        flow.respawn = None
        root, name = self.root, flow.name

        def child_main(sock: socket.socket) -> int:
            return workflow_worker.run(sock, root, name)

        def on_message(worker: Worker, message: Message) -> None:
            self._on_message(flow, worker, message)

        def on_gone(worker: Worker, why: str) -> None:
            self._on_gone(flow, worker, why)

        worker = self.workers.spawn("workflow", name, child_main, on_message, on_gone)
        flow.worker = worker
        return worker

    def _on_message(self, flow: Flow, worker: Worker, message: Message) -> None:
        kind = message.get("t")
        if kind == "ready":
            log.debug("workflow %s worker pid %d ready", flow.name, worker.pid)
            return
        if kind == "load_error":
            log.error("workflow %s: %s", flow.name, message.get("error"))
            return
        run = self.runs.get(str(message.get("run")))
        if run is None or run.worker is not worker:
            log.debug(
                "workflow %s: ignoring %s for a run this worker does not hold", flow.name, kind
            )
            return
        if kind == "step":
            self._on_step(run, worker, message)
        elif kind == "log":
            self.store.append_log("workflow", "log", run.run_id, str(message.get("message")))
        elif kind == "completed":
            self._end(run, Transition.COMPLETE, None)
        elif kind == "failed":
            self._end(run, Transition.FAIL, str(message.get("error")))
        else:
            log.warning("workflow %s worker sent an unknown message %r", flow.name, kind)

    def _on_step(self, run: ActiveRun, worker: Worker, message: Message) -> None:
        n = int(message.get("n", 0))
        if n != run.steps + 1:
            log.error(
                "run %s: step %d arrived after step %d; ignoring it", run.run_id, n, run.steps
            )
            return
        if not self.store.record_step(
            run.run_id, str(message.get("role")), message.get("prompt"), message.get("event")
        ):
            log.error("run %s is no longer started; ignoring its step %d", run.run_id, n)
            return
        run.steps = n
        ack = {"t": "ack", "run": run.run_id, "n": n}

        def send() -> None:
            if run.worker is worker:
                worker.send(ack)

        self.store.after_commit(send)

    def _on_gone(self, flow: Flow, worker: Worker, why: str) -> None:
        orphans = [r for r in flow.active.values() if r.worker is worker]
        if flow.worker is worker:
            flow.worker = None
        if not orphans:
            log.debug("workflow %s worker pid %d exited (%s)", flow.name, worker.pid, why)
            return
        if self.stopping:
            return  # halted threads stay started; the next start resumes them
        log.warning(
            "workflow %s worker pid %d died (%s) with %d threads",
            flow.name, worker.pid, why, len(orphans),
        )  # fmt: skip
        lived = time.monotonic() - worker.started
        flow.failures = 1 if lived > 30 else flow.failures + 1
        survivors = 0
        for run in orphans:
            run.worker = None
            attempts = self.store.count_attempt(run.run_id)
            if flow.removed:
                self._end(
                    run, Transition.CRASH, f"its workflow was removed and its worker died ({why})"
                )
            elif flow.config.overflow is Overflow.DROP:
                record = self.store.get_run(run.run_id)
                self._end(run, Transition.CRASH, f"its worker died ({why})")
                if record is not None and not flow.removed:
                    self._restart_afresh(record, f"its worker died ({why})", already_ended=True)
            elif attempts >= flow.config.max_attempts:
                self._end(
                    run,
                    Transition.CRASH,
                    f"its worker died {attempts} times under it (last: {why})",
                )
            else:
                survivors += 1
        if not survivors:
            self._fill(flow)
            return
        # The first loss is answered at once; a worker that keeps dying backs off.
        delay = (
            0.0
            if flow.failures <= 1
            else min(RESPAWN_MAX, RESPAWN_FIRST * 2 ** (flow.failures - 2))
        )

        def respawn() -> None:
            flow.respawn = None
            for run in list(flow.active.values()):
                if run.worker is None:
                    self._assign(run)

        flow.respawn = self.loop.call_later(delay, respawn)

    def _restart_afresh(self, record: RunRecord, why: str, *, already_ended: bool = False) -> None:
        """overflow: drop: the lost thread ends crashed; a new run takes its payload."""
        if not already_ended:
            self._finish(record.run_id, record.workflow, Transition.CRASH, why)
        try:
            new = self.trigger(record.workflow, record.trigger_payload, retry_of=record.run_id)
        except RpcError as exc:
            log.warning("run %s could not be restarted: %s", record.run_id, exc.message)
            return
        log.info("run %s (%s) restarted afresh as run %s", record.run_id, why, new.run_id)

    # -- ends ---------------------------------------------------------------------------

    def _end(self, run: ActiveRun, transition: Transition, error: str | None) -> None:
        """A started run reaches a final status; its slot goes to the next queued run."""
        flow = run.flow
        flow.active.pop(run.run_id, None)
        self.runs.pop(run.run_id, None)
        run.worker = None
        self._finish(run.run_id, flow.name, transition, error)
        self._fill(flow)
        if not flow.active and not flow.queue:
            self._arm_idle(flow)

    def _finish(
        self, run_id: str, workflow: str, transition: Transition, error: str | None
    ) -> None:
        if not self.store.transition_run(run_id, transition, error=error):
            log.error(
                "run %s could not move to %s (it moved on already)", run_id, transition.target
            )
            return
        _log_transition(run_id, workflow, transition, error)
        waiters = self.waiters.pop(run_id, None)
        if waiters:
            self.store.after_commit(lambda: self._answer(run_id, waiters))

    def _answer(self, run_id: str, waiters: list[Pending]) -> None:
        record = self.store.committed.get_run(run_id)
        for pending in waiters:
            if record is None:
                pending.reject(RpcError(NOT_FOUND, f"run {run_id} vanished"))
            else:
                pending.resolve(record.to_wire())

    def _arm_idle(self, flow: Flow) -> None:
        if flow.idle is not None or flow.worker is None:
            return

        def idle() -> None:
            flow.idle = None
            if not flow.active and flow.worker is not None:
                log.debug("workflow %s idle for %gs: stopping its worker", flow.name,
                          flow.config.idle_timeout_ms / 1000)  # fmt: skip
                worker = flow.worker
                flow.worker = None
                if not worker.send({"t": "stop"}):
                    worker.kill()

        flow.idle = self.loop.call_later(flow.config.idle_timeout_ms / 1000, idle)

    # -- waiting ------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None) -> Any:
        # The engine's own view, this turn's batch included: a run that ended in it has no
        # waiters left to answer, so the end must be seen here (the answer still goes out
        # only after the commit, with every other answer of the turn).
        record = self.store.get_run(run_id)
        if record is None:
            raise RpcError(NOT_FOUND, f"no run {run_id}")
        if record.status.is_final:
            return record.to_wire()
        if self.stopping:
            raise RpcError(SHUTTING_DOWN, "nerved is shutting down")
        pending = Pending()
        self.waiters.setdefault(run_id, []).append(pending)
        if timeout is not None:

            def expire() -> None:
                waiting = self.waiters.get(run_id, [])
                if pending in waiting:
                    waiting.remove(pending)
                    current = self.store.committed.get_run(run_id)
                    status = current.status if current else "unknown"
                    pending.reject(
                        RpcError(
                            INTERNAL_ERROR,
                            f"timed out after {timeout:g}s waiting for run {run_id} "
                            f"(still {status})",
                            {"timeout": True, "status": str(status)},
                        )
                    )

            # Reads only the committed view: due even while another process holds logs.db.
            self.loop.call_later(timeout, expire, gated=False)
        return pending

    # -- stopping and views -------------------------------------------------------------

    def stop(self) -> float:
        """Halt every worker after its running steps; returns the longest grace (seconds)."""
        self.stopping = True
        longest = 0.0
        for flow in self.flows.values():
            for timer in (flow.idle, flow.respawn):
                if timer is not None:
                    timer.cancel()
            if flow.active:
                longest = max(longest, flow.config.drain_timeout_ms / 1000)
        for worker in self.workers:
            if worker.kind == "workflow" and not worker.send({"t": "halt"}):
                worker.kill()
        for run_id, waiters in list(self.waiters.items()):
            for pending in waiters:
                pending.reject(
                    RpcError(SHUTTING_DOWN, f"nerved is shutting down; run {run_id} will resume")
                )
        self.waiters.clear()
        return longest

    def counts(self) -> tuple[int, int]:
        """(active, queued) threads over every workflow."""
        active = sum(len(f.active) for f in self.flows.values())
        queued = sum(len(f.queue) for f in self.flows.values())
        return active, queued


def _log_transition(run_id: str, workflow: str, transition: Transition, error: str | None) -> None:
    """Every transition reaches the journal with run id and workflow (SPEC §8)."""
    level = logging.WARNING if transition.target in _BAD_ENDS else logging.INFO
    reason = f": {error}" if error else ""
    log.log(level, "run %s of %s %s%s", run_id, workflow, transition.target, reason)


_BAD_ENDS = frozenset({RunStatus.FAILED, RunStatus.CRASHED, RunStatus.DROPPED})
