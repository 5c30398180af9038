"""workflow.cancel {runId, reason?}: end an active run ``cancelled``, at once.

``runId`` may be a unique prefix of 8+ characters; ``reason``: free text, kept (cut to
64 KiB) in the ``cancelled`` entry with the uid that asked. A queued run leaves its queue and
never starts; a started one runs no further step (the step in flight is abandoned: an async
role is cancelled, a sync role's worker is replaced) and its slot goes to the next queued
run. Result: the run, now ``cancelled``, once that is durable. -32001: no such run; -32004:
the run is final already (``data.status`` says which).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import INTERNAL_ERROR, Params, Pending, RpcError

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.cancel"
PARAMS = ("runId", "reason")
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    reason = params.string("reason")
    record = find_run(engine.store.committed, params.string("runId", required=True))
    engine.workflows.cancel(record.run_id, reason, params.uid)
    answer = Pending()

    def answered() -> None:
        cancelled = engine.store.committed.get_run(record.run_id)
        answer.resolve(None if cancelled is None else cancelled.to_wire())

    engine.store.after_commit(
        answered,
        lambda exc: answer.reject(RpcError(INTERNAL_ERROR, f"the cancel was not stored: {exc}")),
    )
    return answer
