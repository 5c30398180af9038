"""workflow.count {status?, workflow?, all?, host?}: how many runs ``workflow.list`` would list
with the same filters and no limit.

Result: ``{count}``. A list holds at most ``limit`` runs (10000 at most), so a client that
got a full page asks this to say how many it did not show ("250 more"), rather than leave
a list cut at its limit looking whole. The filters are ``workflow.list``'s, read by the
same code: a ``workflow`` neither configured nor with kept runs is not found (-32001); a
``host`` no run carries counts 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.commands._filters import PARAMS as FILTERS
from nerved.control.commands._filters import run_filter
from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.count"
PARAMS = FILTERS
MUTATES = False
HEAVY = True


def run(engine: Engine, params: Params) -> Any:
    selected = run_filter(engine, params)
    counts = engine.store.committed.count_runs(host=selected.host)
    return {"count": sum(n for (w, s), n in counts.items() if selected.matches(w, s))}
