"""What a workflow worker says, and what the master does with it.

The master trusts nothing a worker sends about a run it does not hold (a message for a run
that ended, or went to another worker, is ignored), and a step is acknowledged only once it
is committed (nerved.master.workflows.manager): no decision on an event a crash could take
back takes effect. A last step comes with the run's end (``then``): both are written in
the same turn, so in the same commit, and a crash leaves the run before the step (resumed:
the role runs again) or completed with it, never between. The messages are listed in
:mod:`nerved.worker.workflow`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

from nerved import wire
from nerved.channel import Message, ack_frame
from nerved.master.workers import Worker
from nerved.master.workflows.runs import ActiveRun, Flow, step_record, too_long
from nerved.master.workflows.tries import Tries
from nerved.master.workflows.waits import Waits
from nerved.states import Transition
from nerved.store import Storage
from nerved.store.records import now_ms

log = logging.getLogger("nerved.master.workflows")

_WORK: Final = frozenset({"step", "step_failed", "wait", "completed", "failed"})  # work done


class WorkerMessages:
    """Handles the messages of every workflow worker.

    ``runs``: the started runs, by id; ``end(run, transition, error)`` ends one;
    ``replace(flow, worker)`` drains a worker that has a role stuck in it; ``ended(worker,
    run_id)`` hears that a worker let go of a run it was told to drop.
    """

    def __init__(
        self,
        store: Storage,
        runs: Mapping[str, ActiveRun],
        tries: Tries,
        waits: Waits,
        end: Callable[[ActiveRun, Transition, str | None], None],
        replace: Callable[[Flow, Worker], None],
        ended: Callable[[Worker, str], None],
    ) -> None:
        self.ended = ended
        self.store = store
        self.runs = runs
        self.tries = tries
        self.waits = waits
        self.end = end
        self.replace = replace

    def on_message(self, flow: Flow, worker: Worker, message: Message) -> None:
        kind = message.get("t")
        if kind == "ready":
            log.debug("workflow %s worker pid %d ready", flow.name, worker.pid)
            flow.supervisor.ready(worker)
            flow.loaded, flow.load_error = True, None
            return
        if kind == "load_error":  # it stays, and fails the runs it is given with the reason
            log.error("workflow %s: %s", flow.name, message.get("error"))
            flow.supervisor.ready(worker)
            flow.load_error = str(message.get("error"))
            return
        if kind == "stuck":
            log.warning("workflow %s: role %r could not be stopped in worker pid %d; it takes"
                        " no new runs and is replaced", flow.name, message.get("role"),
                        worker.pid)  # fmt: skip
            self.replace(flow, worker)
            return
        if kind == "ended":  # of a run the master ended already: it holds it no more
            self.ended(worker, str(message.get("run")))
            return
        run = self.runs.get(str(message.get("run")))
        if run is None or run.worker is not worker:
            log.debug(
                "workflow %s: ignoring %s for a run this worker does not hold", flow.name, kind
            )
            return
        if kind in _WORK:
            flow.supervisor.progressed(worker)
        if kind == "step":
            self._on_step(run, worker, message)
        elif kind == "begin":
            self.tries.began(run, worker, message)
        elif kind == "step_failed":
            self.tries.reported(run, message)
        elif kind == "wait":
            self.waits.parked(run, message)
        elif kind == "log":
            self.store.append_log("workflow", "log", run.run_id, str(message.get("message")))
        elif kind == "completed":
            self.end(run, Transition.COMPLETE, None)
        elif kind == "failed":
            self.end(run, Transition.FAIL, str(message.get("error")))
        else:
            log.warning("workflow %s worker sent an unknown message %r", flow.name, kind)

    def _on_step(self, run: ActiveRun, worker: Worker, message: Message) -> None:
        n = int(message.get("n", 0))
        if n != run.steps + 1:
            log.error(
                "run %s: step %d arrived after step %d; ignoring it", run.run_id, n, run.steps
            )
            return
        record = step_record(message)
        size = len(record.encode())
        if run.history + size > wire.MAX_HISTORY:
            self.end(run, Transition.FAIL, too_long(n, size))
            worker.send({"t": "end", "run": run.run_id})
            return
        if not self.store.record_step(run.run_id, record):
            log.error("run %s is no longer started; ignoring its step %d", run.run_id, n)
            return
        if run.in_flight is not None:  # since its try was handed out: the role and moderator
            seconds = (now_ms() - run.in_flight.since) / 1000
            run.flow.tally.stepped(str(message.get("role")), seconds)
        run.steps = n
        run.history += size
        self.tries.stepped(run)
        if message.get("then") == "completed":  # the last step: it and the end, one commit
            self.end(run, Transition.COMPLETE, None)
            return
        ack = ack_frame(run.run_id, n)

        def send() -> None:
            if run.worker is worker:
                worker.send_frame(ack)

        self.store.after_commit(send)
