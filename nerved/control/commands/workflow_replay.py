"""workflow.replay {runId?, workflow?, limit?}: would the current code decide as the logs say?

Runs the moderator of the workflow's current accepted code over kept run histories, in a
throwaway process, and reports for each run the first moderator call whose decision differs
from the logged one. Exactly one of ``runId`` (a run, or a unique prefix of 8+ characters)
and ``workflow`` (its newest ``limit`` kept runs, any status: 100 by default, at most 1000).
Result: ``{checked, diverged: [{runId, step, logged, now}], skipped: [{runId, reason}]}``.
``logged`` and ``now`` are ``{role, prompt}`` or null (the run ends); ``now`` is ``{error}``
when the moderator raised, ran past its time bound or returned what a run would refuse. A
prompt over 4 KiB is shown as its JSON text cut, with ``cut: true`` (compared whole). A run
whose history cannot be read back is skipped, with why. A check that takes over 60 s, or
whose process dies, is an error (-32603); a workflow not configured now is not found; while
4 checks asked by clients are under way, another is refused (-32002: not now).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from nerved import wire
from nerved.control.commands._runs import find_run
from nerved.control.rpc import Params, bad_params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "workflow.replay"
PARAMS = ("runId", "workflow", "limit")
MUTATES = False
HEAVY = True

DEFAULT_LIMIT: Final = 100


def run(engine: Engine, params: Params) -> Any:
    ref = params.string("runId")
    workflow = params.string("workflow")
    limit = params.integer("limit", minimum=1)
    if (ref is None) == (workflow is None):
        raise bad_params("give exactly one of 'runId' and 'workflow'")
    if ref is not None:
        if limit is not None:
            raise bad_params("param 'limit' goes with 'workflow' only")
        record = find_run(engine.store.committed, ref)
        return engine.workflows.replay(record.run_id, None, 1)
    limit = min(limit or DEFAULT_LIMIT, wire.MAX_REPLAY_RUNS)
    return engine.workflows.replay(None, workflow, limit)
