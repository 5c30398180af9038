"""workflow.wait {runId, timeout?}: answer with the run once it is final.

``runId`` may be a unique prefix of 8+ characters; ``timeout`` is in seconds (none: wait as
long as it takes). A timeout is an error (-32603, ``data.timeout`` true).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._runs import find_run
from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.wait"
PARAMS = ("runId", "timeout")
MUTATES = False


def run(engine: Engine, params: Params) -> Any:
    timeout = params.number("timeout")  # every param is checked before the run is looked up
    record = find_run(engine.store.committed, params.string("runId", required=True))
    return engine.workflows.wait(record.run_id, timeout)
