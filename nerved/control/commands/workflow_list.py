"""workflow.list {status?, workflow?, all?, host?, limit?}: runs, newest first.

Active runs (queued, started, waiting) only, unless ``all`` is true or ``status`` names the
statuses wanted (a string or a list). Every host's runs, unless ``host`` names the one whose
runs are wanted (a run's ``host``: the host that last drove it; a host no run carries gives
``[]``, not -32001: see nerved.control.commands._filters; on SQLite no run has a host).
``limit`` defaults to 100 (at most 10000); when the
answer holds ``limit`` runs, ``workflow.count`` with the same filters says how many there
are in all. A ``workflow`` neither configured nor with kept runs is not found (-32001).
Result: ``[run]``, without trigger payloads; each ``error`` is cut, with a marker, to its
share of 4 MiB. An active run carries ``worker``, the state of its workflow's worker
(nerved.states.WorkerState; ``fatal``: its runs wait until its code is fixed and reloaded;
null: no such workflow now) and ``progress``: for a started run, the step in flight ``{step,
try, since, role, retryAt}`` (``since``: when it began, ms; ``role`` when known;
``retryAt``: when its next try is due, if it waits for one), null otherwise.
``workflow.inspect`` has both whole (the error as the payload of the run's last event).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved import wire
from nerved.control.commands._filters import PARAMS as FILTERS
from nerved.control.commands._filters import run_filter
from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.list"
PARAMS = (*FILTERS, "limit")
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    selected = run_filter(engine, params)
    records = engine.store.committed.list_runs(
        statuses=selected.statuses,
        workflow=selected.workflow,
        host=selected.host,
        limit=params.integer("limit", minimum=1) or 100,
    )
    share = wire.RESULT_BUDGET // max(len(records), 1)
    rows = []
    for record in records:
        row = record.to_wire(error_limit=share)
        if record.status.is_active:  # why an active run may not move: its worker's state
            row["worker"] = engine.workflows.worker_state(record.workflow)
            row["progress"] = engine.workflows.progress(record.run_id)
        rows.append(row)
    return rows
