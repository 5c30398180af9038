"""workflow.trigger {workflow, payload?}: start a thread, or queue or drop it per the workflow.

Answered only once the run is durably ``started``, ``queued`` or ``dropped`` with its
payload stored. Result: ``{runId, status, worker}``, ``worker`` the state of the workflow's
worker (nerved.states.WorkerState: ``fatal`` says the run waits until the workflow's code is
fixed and reloaded); -32001 if there is no such workflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import INTERNAL_ERROR, Params, Pending, RpcError

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.trigger"
PARAMS = ("workflow", "payload")
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    workflow = params.string("workflow", required=True)
    payload, encoded = params.json("payload")  # checked before anything changes
    record = engine.workflows.trigger(workflow, payload, encoded)
    result = {
        "runId": record.run_id,
        "status": str(record.status),
        "worker": engine.workflows.worker_state(workflow),
    }
    answer = Pending()
    engine.store.after_commit(
        lambda: answer.resolve(result),
        lambda exc: answer.reject(RpcError(INTERNAL_ERROR, f"the run was not stored: {exc}")),
    )
    return answer
