"""workflow.signal {runId, name, payload?}: send a signal to an active run.

``runId`` may be a unique prefix of 8+ characters; ``name``: 1 to 256 characters, no control
characters (what ``nerved.wait_for`` accepts); ``payload``: any JSON value (default null).
The signal is logged (a ``signal`` entry) before the answer. If the run's moderator waits
for that name, it is delivered now: the moderator is called with ``{"type": "signal",
"name", "payload"}`` (an ``input`` entry) and the run goes on. Otherwise it stays pending,
listed by ``workflow.inspect``, and is delivered, oldest first, to the next wait for its
name. Result: ``{accepted: true, delivered: bool}`` once the signal is durable. -32001: no
such run; -32004: the run is final (``data.status`` says which); -32602: a bad name or
payload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import INTERNAL_ERROR, Params, Pending, RpcError

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.signal"
PARAMS = ("runId", "name", "payload")
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    name = params.string("name", required=True)
    payload, _ = params.json("payload")  # checked before anything changes
    record = find_run(engine.store.committed, params.string("runId", required=True))
    delivered = engine.workflows.signal(record.run_id, name, payload)
    answer = Pending()
    engine.store.after_commit(
        lambda: answer.resolve({"accepted": True, "delivered": delivered}),
        lambda exc: answer.reject(RpcError(INTERNAL_ERROR, f"the signal was not stored: {exc}")),
    )
    return answer
