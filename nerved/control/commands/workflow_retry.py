"""workflow.retry {runId, fromStep?}: run a final run again, keeping its first steps.

``runId`` may be a unique prefix of 8+ characters. The new run (``retryOf`` = the old one)
takes the old run's trigger payload, and its history starts with a copy of the old run's
first ``fromStep`` steps (with the inputs its moderator got among them): those roles are not
run again, and its moderator continues from there. ``fromStep`` defaults to every step the
old run completed, so a run that failed at step 9 continues at step 9; 0 runs it all again.
The new run is admitted like a trigger (started, queued or dropped). Result:
``{runId, status, worker}`` of the new run, once durable. -32001: no such run, or its
workflow is gone; -32004: the run is still active; -32602: ``fromStep`` past its steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import INTERNAL_ERROR, Params, Pending, RpcError

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.retry"
PARAMS = ("runId", "fromStep")
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    from_step = params.integer("fromStep", minimum=0)
    old = find_run(engine.store.committed, params.string("runId", required=True))
    record = engine.workflows.retry(old.run_id, from_step)
    result = {
        "runId": record.run_id,
        "status": str(record.status),
        "retryOf": old.run_id,
        "worker": engine.workflows.worker_state(record.workflow),
    }
    answer = Pending()
    engine.store.after_commit(
        lambda: answer.resolve(result),
        lambda exc: answer.reject(RpcError(INTERNAL_ERROR, f"the run was not stored: {exc}")),
    )
    return answer
