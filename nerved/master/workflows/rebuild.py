"""Recovery applied: the workflow manager's queues and active sets rebuilt from logs.db.

What becomes of each run is :func:`~.recovery.recovery_of`'s rule; this applies it to every
active run the store holds, before READY=1 (nerved.master.daemon), so that the first
trigger, ``inspect`` or ``status`` a client gets answered sees every run where it will stay.
It is what an operator waits for after a crash, so it is kept to one pass over one query:

- the store reads every active run in one query (:meth:`Storage.active_runs`, each run's
  history size counted in SQL, not read);
- a run's trigger payload stays text (:attr:`ActiveRun.payload_json`, :class:`QueuedRun`);
- each resumed run's ``resumed`` entry is written with the others in one statement
  (:meth:`Storage.append_logs`), and its history goes to its worker after READY=1, page by
  page across loop turns (:mod:`.resume`);
- one log line says what became of them all (a run that ends says so on its own line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from nerved.master.workflows.losses import Losses
from nerved.master.workflows.recovery import Fate, recovery_of
from nerved.master.workflows.runs import ActiveRun, Flow, QueuedRun, Wait
from nerved.master.workflows.tries import Tries
from nerved.master.workflows.waits import Waits
from nerved.states import Transition
from nerved.store import Storage
from nerved.store.records import now_ms

log = logging.getLogger("nerved.master.workflows")


class Manager(Protocol):
    """What recovery uses of the workflow manager (nerved.master.workflows.manager)."""

    store: Storage
    flows: dict[str, Flow]
    runs: dict[str, ActiveRun]
    losses: Losses
    tries: Tries
    waits: Waits
    noting: list[tuple[str, Any]] | None

    def _finish(
        self, run_id: str, workflow: str, transition: Transition, error: str | None
    ) -> None: ...

    def _assign(self, run: ActiveRun) -> None: ...

    def _fill(self, flow: Flow) -> None: ...


def recover(manager: Manager, progress: Callable[[], None]) -> str:
    """Rebuild ``manager``'s queues and active sets from its store and resume what was
    running; returns the summary it logs. ``progress`` is called once per run (a long
    recovery asks systemd for more time: Notifier.extend)."""
    fates = dict.fromkeys(Fate, 0)
    flows, runs = manager.flows, manager.runs
    for record in manager.store.active_runs():
        progress()
        flow = flows.get(record.workflow)
        recovery = recovery_of(record, None if flow is None else flow.config)
        fates[recovery.fate] += 1
        if recovery.transition is not None:
            manager._finish(record.run_id, record.workflow, recovery.transition, recovery.reason)
        elif flow is None:
            continue
        elif recovery.fate is Fate.QUEUE:
            payload = len((recovery.payload_json or "").encode())
            queued = QueuedRun(record.run_id, recovery.payload_json, record.steps,
                               max(0, record.history - payload))  # fmt: skip
            flow.queue.append(queued)
        elif recovery.fate is Fate.RESTART:
            manager.losses.restart_afresh(record, recovery.payload_json,
                                          "nerved stopped while it ran")  # fmt: skip
        else:
            run = ActiveRun(record.run_id, flow, recovery.payload_json, record.history,
                            record.steps, sent=True, lost="nerved restarted",
                            attempts=record.attempts)  # fmt: skip
            flow.active[run.run_id] = run
            runs[run.run_id] = run
            manager.tries.recovered(run, record)  # a retry it waited for is armed again
            if recovery.fate is Fate.WAIT:
                run.waiting, run.lost = Wait(record.wait_for, record.wake_at), None
    manager.waits.recovered(runs.values())  # deadlines passed meanwhile fire first
    manager.noting = []  # each resume's entry, written below with the others
    try:
        for flow in flows.values():
            for run in list(flow.active.values()):
                if run.worker is None:  # a run restarted afresh above was assigned already
                    manager._assign(run)  # a run whose steps cannot be read fails then, alone
            manager._fill(flow)
        manager.store.append_logs("workflow", "resumed", manager.noting, now_ms())
    finally:
        manager.noting = None
    summary = (
        f"recovered {fates[Fate.RESUME]} started, {fates[Fate.WAIT]} waiting and"
        f" {fates[Fate.QUEUE]} queued runs, "
        f"restarted {fates[Fate.RESTART]}, ended {fates[Fate.END]} of unconfigured"
        f" workflows and {fates[Fate.FAIL]} that can no longer be resumed"
    )
    if any(fates.values()):
        log.info("%s", summary)
    return summary
