"""workflow.inspect {runId}: one run and its whole history.

``runId`` may be a unique prefix of 8+ characters. Result: the run plus
``events: [{id, type, ts, payload}]``, oldest first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.daemon import Daemon

NAME = "workflow.inspect"
PARAMS = ("runId",)
MUTATES = False
HEAVY = True


def run(daemon: Daemon, params: Params) -> Any:
    record = find_run(daemon.store, params.string("runId", required=True))
    history = daemon.store.run_history(record.run_id)
    return {
        **record.to_wire(),
        "triggerPayload": record.trigger_payload,
        "events": [{"id": e.id, "type": e.type, "ts": e.ts, "payload": e.payload} for e in history],
    }
