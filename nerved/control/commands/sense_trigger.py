"""sense.trigger {sense}: compute a sense now (subject to its throttle).

Result: ``{accepted: true, worker}``, ``worker`` the state of its group's worker
(nerved.states.WorkerState: ``fatal`` says no compute comes until its code is fixed and
reloaded); -32001 if there is no such sense.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import NOT_FOUND, Params, RpcError

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "sense.trigger"
PARAMS = ("sense",)
MUTATES = True


def run(engine: Engine, params: Params) -> Any:
    sense = params.string("sense", required=True)
    if not engine.senses.trigger(sense):
        raise RpcError(NOT_FOUND, f"no sense named {sense!r}")
    return {"accepted": True, "worker": engine.senses.worker_state(sense)}
