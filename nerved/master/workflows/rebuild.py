"""Recovery applied: the workflow manager's queues and active sets rebuilt from logs.db.

What becomes of each run is :func:`~.recovery.recovery_of`'s rule; this applies it to every
active run the store holds, before READY=1 (nerved.master.daemon), so that the first
trigger, ``inspect`` or ``status`` a client gets answered sees every run where it will stay.
It is what an operator waits for after a crash, so it is kept to one pass over one query,
and handing started runs to their worker waits until after READY=1:

- the store reads every active run in one query (:meth:`Storage.active_runs`, each run's
  history size counted in SQL, not read), as tuples;
- a run's trigger payload stays text (:attr:`ActiveRun.payload_json`, :class:`QueuedRun`);
- every run is where it will stay before READY=1: queued in its order, ended, restarted
  afresh, waiting with its deadline armed, or started, on its flow's active set (what
  admission, ``inspect``, ``status`` and ``cancel`` read);
- a started run is given to its worker after READY=1, :data:`RESUMES_PER_TURN` a turn, as
  a run that waits for a worker is (a backoff): its ``resumed`` entry is written then, and
  its history goes page by page (:mod:`.resume`);
- one log line says what became of them all (a run that ends says so on its own line).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from nerved.loop import Loop
from nerved.master.workflows.losses import Losses
from nerved.master.workflows.recovery import Fate, recovery_of
from nerved.master.workflows.runs import ActiveRun, Flow, QueuedRun, Wait
from nerved.master.workflows.tries import Tries
from nerved.master.workflows.waits import Waits
from nerved.states import Transition
from nerved.store import ActiveRecord, Storage

log = logging.getLogger("nerved.master.workflows")

RESUMES_PER_TURN: Final = 500
"""Recovered started runs given to their worker in one loop turn after READY=1, each with
its ``resumed`` entry (their histories follow page by page, :mod:`.resume`). 5,000 such
entries in one batch took 30 ms to write here, and on a logs.db of a million entries some
110 ms more to commit, each on its own page of the index of refs of uuid4 run ids (20 MB of
WAL; fewer pages with schema 6's time-ordered refs): in turns of 500, a client's request
waits a tenth of that at most."""


class Manager(Protocol):
    """What recovery uses of the workflow manager (nerved.master.workflows.manager)."""

    store: Storage
    flows: dict[str, Flow]
    runs: dict[str, ActiveRun]
    losses: Losses
    tries: Tries
    waits: Waits
    loop: Loop
    stopping: bool

    def _finish(
        self, run_id: str, workflow: str, transition: Transition, error: str | None
    ) -> None: ...

    def _assign(self, run: ActiveRun) -> None: ...

    def _fill(self, flow: Flow) -> None: ...


def recover(manager: Manager, progress: Callable[[], None]) -> str:
    """Rebuild ``manager``'s queues and active sets from its store and resume what was
    running; returns the summary it logs. ``progress`` is called once per run (a long
    recovery asks systemd for more time: Notifier.extend)."""
    records = manager.store.active_runs()
    fates, _ = _place(manager, records, "nerved restarted", "nerved stopped while it ran", progress)
    flows, runs = manager.flows, manager.runs
    manager.waits.recovered(runs.values())  # deadlines passed meanwhile fire first
    resumes: deque[ActiveRun] = deque()  # given to their worker after READY=1 (below)
    for flow in flows.values():
        for run in list(flow.active.values()):
            if run.worker is None and run.lost is not None:
                resumes.append(run)
            elif run.worker is None:  # a run restarted afresh above was assigned already
                manager._assign(run)  # one that waits, or waits for its retry, stays as is
        manager._fill(flow)
    if resumes:
        manager.loop.call_later(0, lambda: _resume_some(manager, resumes))
    summary = (
        f"recovered {fates[Fate.RESUME]} started, {fates[Fate.WAIT]} waiting and"
        f" {fates[Fate.QUEUE]} queued runs, "
        f"restarted {fates[Fate.RESTART]}, ended {fates[Fate.END]} of unconfigured"
        f" workflows and {fates[Fate.FAIL]} that can no longer be resumed"
    )
    if any(fates.values()):
        log.info("%s", summary)
    return summary


def adopt(manager: Manager, records: Iterable[ActiveRecord], lost: str) -> None:
    """Make ``records``, active runs this host has just taken over from another (its lease
    lapsed: nerved.master.workflows.shared), its own by recovery's rule, as if it had
    restarted with them: a started run is resumed from its logged events (``lost`` says
    why, in its ``resumed`` entry), a waiting one waits again with its deadline armed."""
    _, placed = _place(manager, records, lost, lost, lambda: None)
    manager.waits.recovered(placed)
    for run in placed:
        if manager.runs.get(run.run_id) is run and run.worker is None:
            manager._assign(run)


def _place(
    manager: Manager,
    records: Iterable[ActiveRecord],
    lost: str,
    crashed: str,
    progress: Callable[[], None],
) -> tuple[dict[Fate, int], list[ActiveRun]]:
    """Put each active run where :func:`~.recovery.recovery_of` says: ended, queued in its
    order, restarted afresh (``crashed`` says why), or on its flow's active set (its resume
    after ``lost``, or its wait, to come); how many met each fate, and the runs put on an
    active set."""
    fates = dict.fromkeys(Fate, 0)
    placed: list[ActiveRun] = []
    flows, runs = manager.flows, manager.runs
    for record in records:
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
            manager.losses.restart_afresh(record, recovery.payload_json, crashed)
        else:
            run = ActiveRun(record.run_id, flow, recovery.payload_json, record.history,
                            record.steps, sent=True, lost=lost,
                            attempts=record.attempts)  # fmt: skip
            flow.active[run.run_id] = run
            runs[run.run_id] = run
            placed.append(run)
            manager.tries.recovered(run, record)  # a retry it waited for is armed again
            if recovery.fate is Fate.WAIT:
                run.waiting, run.lost = Wait(record.wait_for, record.wake_at), None
    return fates, placed


def _resume_some(manager: Manager, resumes: deque[ActiveRun]) -> None:
    """Give the next :data:`RESUMES_PER_TURN` recovered started runs to their worker, and
    the rest in the next turns: each gets its ``resumed`` entry (in this turn's batch) and
    its history, page by page (:mod:`.resume`). A run that ended meanwhile
    (cancelled), or that a worker holds already, is left as it is; none once nerved stops
    (they stay ``started`` for the next start)."""
    if manager.stopping:
        return
    for _ in range(min(RESUMES_PER_TURN, len(resumes))):
        run = resumes.popleft()
        if manager.runs.get(run.run_id) is run:
            manager._assign(run)  # a run whose steps cannot be read fails then, alone
    if resumes:
        manager.loop.call_later(0, lambda: _resume_some(manager, resumes))
