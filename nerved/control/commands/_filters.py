"""The runs a listing selects (``status``, ``workflow``, ``all``, ``host``), read one way
for ``workflow.list`` and ``workflow.count``, so that a count is of exactly the runs the list
pages through.

A workflow name is a name like any other (SPEC §7: a name that does not exist is not found,
never an empty answer). A workflow exists while the configuration has it, and after a reload
removed it for as long as kept runs of it remain: those runs are still listed, so its name
still means something. Neither: -32001.

A host is not such a name: it is a value of a run's ``host`` field, as a status is, and
``host`` selects the runs that carry it. A host no run carries selects none (an empty list,
a count of 0), never -32001: no configuration names the hosts, ``status``'s ``hosts`` are
only the hosts with a lease row in a shared store (none at all on SQLite, whose runs have
no host), and a host's kept runs outlive whatever says it exists. So ``host`` on SQLite
lists nothing, and a script may ask for a host's runs before its first one is triggered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nerved.control.rpc import NOT_FOUND, Params, RpcError, bad_params
from nerved.states import ACTIVE, RunStatus

if TYPE_CHECKING:
    from nerved.control.engine import Engine

PARAMS = ("status", "workflow", "all", "host")


@dataclass(frozen=True, slots=True)
class RunFilter:
    statuses: frozenset[RunStatus] | None  # None: any
    workflow: str | None  # None: any
    host: str | None  # None: any (runs of every host, and those of none)

    def matches(self, workflow: str, status: RunStatus) -> bool:
        """Whether a run of ``workflow`` in ``status`` is selected, among the runs the store
        read with :attr:`host` (``count_runs(host=...)``): the host is the store's to match."""
        return (self.workflow is None or workflow == self.workflow) and (
            self.statuses is None or status in self.statuses
        )


def run_filter(engine: Engine, params: Params) -> RunFilter:
    """The filter ``params`` ask for; -32602 for a bad status, -32001 for a workflow that
    is neither configured nor has kept runs."""
    raw_status = params.raw("status")
    if raw_status is not None:
        statuses: frozenset[RunStatus] | None = _statuses(raw_status)
    else:
        statuses = None if params.flag("all") else frozenset(ACTIVE)
    workflow = params.string("workflow")
    if workflow is not None and not known_workflow(engine, workflow):
        raise RpcError(NOT_FOUND, f"no workflow named {workflow!r} (none configured, no runs kept)")
    return RunFilter(statuses, workflow, params.string("host"))


def known_workflow(engine: Engine, name: str) -> bool:
    """Configured now, or with kept runs (one a reload removed, whose runs are still kept)."""
    if engine.workflows.worker_state(name) is not None:
        return True
    return bool(engine.store.committed.list_runs(workflow=name, limit=1))


def _statuses(raw: Any) -> frozenset[RunStatus]:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names:
        raise bad_params("param 'status' must be a status or a list of statuses")
    try:
        return frozenset(RunStatus(name) for name in names)
    except (ValueError, TypeError):
        allowed = ", ".join(s.value for s in RunStatus)
        raise bad_params(f"param 'status' must be among: {allowed}") from None
