"""Runs that lost their worker: resumed in a successor, crashed, or restarted afresh.

When a workflow worker is reaped, each run it held (SPEC §5, crash recovery):

- is resumed in a successor from its logged events (roles are at-least-once; the step that
  was running runs again), with a ``resumed`` entry saying why, once the supervisor lets a
  worker be forked;
- ends ``crashed`` when its worker died ``maxAttempts`` times under it, or its workflow was
  removed meanwhile;
- under ``overflow: drop``, ends ``crashed`` and a new run takes its payload (``retryOf``),
  unless runs of that payload lost their worker ``maxAttempts`` times in a row;
- fails with the reason when its worker hung in its import (a new one would hang too).

A run nerved itself stopped under (at recovery) is restarted afresh by the same rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nerved import logs
from nerved.config import Overflow
from nerved.master.supervisor import Exit
from nerved.master.workers import Worker
from nerved.master.workflows.runs import WORKER_DIED, ActiveRun, Flow, may_restart
from nerved.master.workflows.steering import Trigger
from nerved.outcome import Refused
from nerved.states import Transition
from nerved.store import Storage, StoredRun
from nerved.words import plural
from nerved.worker.timebox import KILLED, MODERATOR_KILL

log = logging.getLogger("nerved.master.workflows")


class Losses:
    """What becomes of the runs of a worker that died (see the module's docstring).

    ``end(run, transition, error)`` ends a started run; ``finish(run_id, workflow,
    transition, error)`` moves one no worker holds; ``forget(run)`` drops what the master
    held for the run's step in flight; ``wake(flow)`` gives every run waiting for a worker
    one; ``stopping()`` is true once nerved stops (halted runs stay started).
    """

    def __init__(
        self,
        store: Storage,
        trigger: Trigger,
        end: Callable[[ActiveRun, Transition, str | None], None],
        finish: Callable[[str, str, Transition, str | None], None],
        forget: Callable[[ActiveRun], None],
        wake: Callable[[Flow], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.store = store
        self.trigger = trigger
        self.end = end
        self.finish = finish
        self.forget = forget
        self.wake = wake
        self.stopping = stopping

    def lost(self, flow: Flow, worker: Worker, exit: Exit) -> None:
        """A worker of ``flow`` was reaped: the runs it held resume in a successor (once the
        supervisor lets one be forked), or end."""
        orphans = [r for r in flow.active.values() if r.worker is worker]
        if not orphans or self.stopping():
            return  # halted threads stay started; the next start resumes them
        why = exit.why
        if exit.hung:  # as a failed import fails them: a new worker would hang too
            for run in orphans:
                self.end(run, Transition.FAIL, why)
            return
        if why == KILLED:  # the hard bound on a moderator call (nerved.worker.timebox)
            why = f"a moderator ran past {MODERATOR_KILL:g}s and could not be interrupted: {why}"
        log.warning("workflow %s: its worker pid %d died under %s (%s)",
                    flow.name, worker.pid, plural(len(orphans), "run"), why)  # fmt: skip
        survivors = 0
        for run in orphans:
            run.worker = None
            run.lost = f"{WORKER_DIED} ({why})"
            self.forget(run)
            attempts = run.attempts = self.store.count_attempt(run.run_id)
            if flow.removed:
                self.end(
                    run, Transition.CRASH, f"its workflow was removed and its worker died ({why})"
                )
            elif flow.config.overflow is Overflow.DROP:
                record = self.store.get_run(run.run_id)
                self.end(run, Transition.CRASH, f"{WORKER_DIED} ({why})")
                if record is not None and may_restart(record, self.store.get_run, flow.config):
                    self.restart_afresh(record, None, f"{WORKER_DIED} ({why})", already_ended=True)
            elif attempts >= flow.config.max_attempts:
                self.end(
                    run,
                    Transition.CRASH,
                    f"its worker died {plural(attempts, 'time')} under it (last: {why})",
                )
            else:
                survivors += 1
        if survivors and not exit.current:
            self.wake(flow)  # a drained worker died: the current one (or a new) takes them
        # Otherwise the supervisor wakes the flow once its backoff is over.

    def removed(self, flow: Flow, setting: str) -> None:
        """A reload removed ``flow`` (its queue withdrawn already): its waiting runs are
        withdrawn, the runs no worker holds crash, and its workers are told to stop; those
        they hold get ``drainTimeout`` (``setting``) to finish.

        A run started in this very turn is held: its ``start`` goes at the commit, and the
        ``stop`` after it (``stop`` first, the worker would exit with nothing running and
        the run would crash). A resume under way (its history goes page by page, over later
        turns) is taken back (:meth:`Flow.take_back`), and crashes.
        """
        unsent = flow.take_back(flow.supervisor.current, keep_starting=True)
        waited = f" ({flow.supervisor.reason})" if flow.supervisor.reason else ""
        why = f"its workflow was removed while it waited for a worker{waited}"
        for run in [run for run in flow.active.values() if run.worker is None]:
            if run.waiting is not None:  # it held no thread: it is withdrawn, as a queued one
                self.end(run, Transition.WITHDRAW, f"workflow {flow.name} was removed")
            else:  # one taken back: the unit's reason is none of its
                self.end(run, Transition.CRASH, unsent.get(run, why))

        def retire() -> None:
            flow.supervisor.retire(deadline=flow.config.drain_timeout_ms / 1000, setting=setting)

        if any(run.starting for run in flow.active.values()):
            self.store.after_commit(retire)  # registered after the starts: sent after them
        else:
            retire()

    def restart_afresh(
        self,
        record: StoredRun,
        payload_json: str | None,
        why: str,
        *,
        already_ended: bool = False,
    ) -> None:
        """overflow: drop: the lost thread ends crashed; a new run takes its payload.

        ``payload_json``: the payload's encoding if known, else it is checked again.
        """
        if not already_ended:
            self.finish(record.run_id, record.workflow, Transition.CRASH, why)
        try:
            new = self.trigger(
                record.workflow, record.trigger_payload, payload_json, retry_of=record.run_id
            )
        except Refused as exc:
            log.warning("run %s could not be restarted: %s", record.run_id, exc.message,
                        extra=logs.run(record.run_id, record.workflow))  # fmt: skip
            return
        log.info("run %s (%s) restarted afresh as run %s", record.run_id, why, new.run_id,
                 extra=logs.run(record.run_id, record.workflow))  # fmt: skip
