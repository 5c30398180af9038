"""What an operator does to runs: cancel one, retry a final one from a step (SPEC §5, §6).

- **Cancel** (``workflow.cancel``): a queued run leaves its queue and never starts; a
  started one runs no further step: its worker is told to drop the thread (an async role in
  flight is cancelled; a sync role's thread cannot be, so its worker is replaced, as on a
  timeout: nerved.master.workflows.tries), and its slot goes to the next queued run in the
  same batch. The ``cancelled`` entry holds the reason and the uid that asked. A final run
  is refused (:class:`~nerved.outcome.Conflict`, -32004): final means it never changes.
- **Retry from a step** (``workflow.retry``): a final run's payload starts a new run
  (``retryOf`` = the old one) whose history begins with a copy of the old run's first K
  steps (and the inputs among them), not executed again; its moderator, which is pure,
  continues from there. Default K: every step the old run completed, so a run that failed
  at step 9 continues at step 9.
- **Signal** (``workflow.signal``): logged for an active run as it arrives, and delivered
  when its moderator waits for that name (:mod:`.waits`). A final run takes none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from nerved import logs, waits, wire
from nerved.loop import Loop, Timer
from nerved.master.workers import Worker
from nerved.master.workflows.runs import ActiveRun, Flow
from nerved.outcome import BadInput, Conflict, NotFound
from nerved.states import RunStatus, Transition
from nerved.store import RunRecord, Storage, Unreadable
from nerved.store.records import cancelled_error
from nerved.words import plural

log = logging.getLogger("nerved.master.workflows")

LET_GO: Final = 1.0
"""Seconds a worker has to answer ``ended`` to the ``end`` of a cancelled run: a role that
honours its cancel is gone at once; one that ignores it is *stuck* after a second
(nerved.worker.workflow.CANCEL_GRACE) and its worker says so."""


class Trigger(Protocol):
    def __call__(
        self,
        workflow: str,
        payload: Any,
        payload_json: str | None = None,
        *,
        retry_of: str | None = None,
        keep_steps: int = 0,
    ) -> RunRecord: ...


class Steering:
    """Cancel and retry, over the workflow manager's runs.

    ``end(run, transition, error, payload_json)`` ends a started run (its slot freed);
    ``finish(run_id, workflow, transition, error, payload_json)`` moves any other run;
    ``replace(flow, worker)`` drains a worker that will not let go of a cancelled run.
    """

    def __init__(
        self,
        loop: Loop,
        store: Storage,
        flows: Mapping[str, Flow],
        runs: Mapping[str, ActiveRun],
        trigger: Trigger,
        end: Callable[[ActiveRun, Transition, str | None, str | None], None],
        finish: Callable[[str, str, Transition, str | None, str | None], None],
        replace: Callable[[Flow, Worker], None],
    ) -> None:
        self.loop = loop
        self.replace = replace
        self._letting_go: dict[tuple[str, Worker], Timer] = {}
        self.store = store
        self.flows = flows
        self.runs = runs
        self.trigger = trigger
        self.end = end
        self.finish = finish

    def _run(self, run_id: str) -> RunRecord:
        """The run as it is now. On a store several hosts share, read under the hosts' write
        lock, held to this batch's commit: a cancel or signal decided from it cannot race
        another host's claim or takeover of the run (read before them, it was answered
        ``cancelled`` for a run another host had just started, whose role ran on)."""
        if self.store.leasing is not None:
            self.store.leasing.hold_writes()
        record = self.store.get_run(run_id)
        if record is None:
            raise NotFound(f"no run {run_id}")
        return record

    def _here(self, record: RunRecord, what: str) -> None:
        """Conflict (data: ``{status, host}``) for an active run another host drives, on a
        store several hosts share: only that host may change it (its worker holds it, its
        queue or its waits), so ``what`` is done there (``nervectl`` on that host). A queued
        ``any`` run, which no host drives yet, may be changed from any; so may the run of a
        host whose lease has lapsed (it is dead, or stalled: it is fenced first, and should
        it come back it writes nothing more, restarts, and finds the run as changed here)."""
        if record.host is None or record.host == self.store.host_id or record.status.is_final:
            return
        leasing = self.store.leasing
        if leasing is not None and leasing.fence_lapsed(record.host):
            log.warning("run %s of %s: its host %s's lease has lapsed; %s here, on host %s"
                        " (host %s is fenced: it writes nothing more)", record.run_id,
                        record.workflow, record.host, what, self.store.host_id,
                        record.host)  # fmt: skip
            return
        raise Conflict(
            f"run {record.run_id} is {record.status} on host {record.host}: {what} it there"
            f" (this is host {self.store.host_id})",
            {"status": str(record.status), "host": record.host},
        )

    def signal(
        self,
        run_id: str,
        name: str,
        payload: Any,
        deliver: Callable[[ActiveRun | None, str, int], bool],
    ) -> bool:
        """Log the signal ``name`` with ``payload`` (a JSON value) for an active run, in this
        turn's batch, and ``deliver(run, name, entry_id)`` it (True: a wait took it now; the
        run is None while it is queued). Raises NotFound; Conflict for a final run (data:
        ``{status}``); BadInput for a name a wait could not have (:func:`waits.name_problem`)
        or a payload nerve does not keep."""
        record = self._run(run_id)
        if record.status.is_final:
            raise Conflict(
                f"run {run_id} is {record.status} already: a final run takes no signal",
                {"status": str(record.status)},
            )
        if (problem := waits.name_problem(name)) is not None:
            raise BadInput(f"the signal's name {problem}")
        self._here(record, "signal")
        try:  # the socket's params checked it already: encoded once here, as it is stored
            entry = self.store.append_log("workflow", "signal", run_id,
                                          {"name": name, "payload": payload})  # fmt: skip
        except wire.Invalid as exc:  # append_log writes nothing it cannot encode
            raise BadInput(str(exc)) from None
        log.info("run %s of %s: signal %r", run_id, record.workflow, name,
                 extra=logs.run(run_id, record.workflow))  # fmt: skip
        return deliver(self.runs.get(run_id), name, entry)

    def cancel(self, run_id: str, reason: str | None, uid: int | None) -> RunRecord:
        """Cancel an active run; it is ``cancelled`` in this turn's batch. Raises NotFound,
        or Conflict for a run that is final already (data: ``{status}``)."""
        record = self._run(run_id)
        if record.status.is_final:
            raise Conflict(
                f"run {run_id} is {record.status} already: a final run never changes",
                {"status": str(record.status)},
            )
        self._here(record, "cancel")
        reason = None if reason is None else wire.text(reason, wire.MAX_LOG_LINE)
        error = cancelled_error(reason, uid)
        entry = wire.dumps({"reason": reason, "uid": uid})
        run = self.runs.get(run_id)
        if run is not None:
            worker, held_by = run.worker, run.flow
            self.end(run, Transition.CANCEL, error, entry)
            if worker is not None:  # told once the cancel is durable; it drops the thread
                self.store.after_commit(lambda: self._let_go(held_by, worker, run_id))
        else:
            queued_in = self.flows.get(record.workflow)
            if queued_in is not None and record.status is RunStatus.QUEUED:
                kept = [queued for queued in queued_in.queue if queued.run_id != run_id]
                queued_in.queue.clear()
                queued_in.queue.extend(kept)
            self.finish(run_id, record.workflow, Transition.CANCEL, error, entry)
        return self._run(run_id)

    def _let_go(self, flow: Flow, worker: Worker, run_id: str) -> None:
        """Tell ``worker`` to drop ``run_id``'s thread; replace it if it has not answered
        ``ended`` within :data:`LET_GO`: its event loop is blocked (a role that sleeps in an
        ``async def``), or a role ignores its cancel, and it would hold the next run too."""
        worker.send({"t": "end", "run": run_id})

        def overdue() -> None:
            if self._letting_go.pop((run_id, worker), None) is not None:
                log.warning("workflow %s: worker pid %d did not let go of cancelled run %s"
                            " within %gs; it takes no new runs and is replaced", flow.name,
                            worker.pid, run_id, LET_GO)  # fmt: skip
                self.replace(flow, worker)

        self._letting_go[(run_id, worker)] = self.loop.call_later(LET_GO, overdue)

    def ended(self, worker: Worker, run_id: str) -> None:
        """``worker`` let go of ``run_id`` (``ended``), as it was told."""
        timer = self._letting_go.pop((run_id, worker), None)
        if timer is not None:
            timer.cancel()

    def retry(self, run_id: str, from_step: int | None) -> RunRecord:
        """A new run of a final run's payload, from its step ``from_step`` + 1 (None: after
        every step it completed). Raises NotFound (no run, or its workflow is gone),
        Conflict (the run is still active) or BadInput (no such step; a payload that can no
        longer be read)."""
        record = self._run(run_id)
        if record.status.is_active:
            raise Conflict(
                f"run {run_id} is still {record.status}: only a final run can be retried"
                " (cancel it first)",
                {"status": str(record.status)},
            )
        flow = self.flows.get(record.workflow)
        if flow is None or flow.removed:
            raise NotFound(f"no workflow named {record.workflow!r} to retry run {run_id} in")
        keep = record.steps if from_step is None else from_step
        if not 0 <= keep <= record.steps:
            steps = plural(record.steps, "step")
            raise BadInput(
                f"fromStep (--from-step) must be 0 to {record.steps}, the steps kept: run"
                f" {run_id} recorded {steps} before it ended {record.status}"
            )
        payload = record.trigger_payload
        if isinstance(payload, Unreadable):
            raise BadInput(f"run {run_id}'s trigger payload cannot be read back: {payload.reason}")
        return self.trigger(record.workflow, payload, retry_of=run_id, keep_steps=keep)
