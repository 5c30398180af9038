"""workflow.trigger {workflow, payload?, idempotencyKey?}: start a thread, or queue or drop
it per the workflow.

Answered only once the run is durably ``started``, ``queued`` or ``dropped`` with its
payload stored. Result: ``{runId, status, worker, deduplicated}``, ``worker`` the state of the
workflow's worker (nerved.states.WorkerState: ``fatal`` says the run waits until the
workflow's code is fixed and reloaded); -32001 if there is no such workflow.

``idempotencyKey``: a string of 1 to 256 characters (-32602 otherwise). When a kept run of
the workflow was triggered with the same key, whatever its status (even one triggered
earlier in the same instant over another connection), no run is started: the answer is that
run, its status now, with ``deduplicated: true`` (its payload is not compared). A new run
keeps the key (``deduplicated: false``) until retention deletes it, which frees the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved import wire
from nerved.control.rpc import INTERNAL_ERROR, Params, Pending, RpcError, bad_params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.trigger"
PARAMS = ("workflow", "payload", "idempotencyKey")
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    workflow = params.string("workflow", required=True)
    payload, encoded = params.json("payload")  # checked before anything changes
    key = params.string("idempotencyKey")
    if key is not None and (problem := wire.key_problem(key)) is not None:
        raise bad_params(f"param 'idempotencyKey' {problem}")
    # This turn's view (not what is committed): a trigger earlier in the turn, over another
    # connection, has its run there already; the trigger returns that run.
    held = None if key is None else engine.workflows.run_by_key(workflow, key)
    record = engine.workflows.trigger(workflow, payload, encoded, idempotency_key=key)
    result = {
        "runId": record.run_id,
        "status": str(record.status),
        "worker": engine.workflows.worker_state(workflow),
        "deduplicated": held is not None,
    }
    answer = Pending()
    engine.store.after_commit(
        lambda: answer.resolve(result),
        lambda exc: answer.reject(RpcError(INTERNAL_ERROR, f"the run was not stored: {exc}")),
    )
    return answer
