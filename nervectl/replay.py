"""``workflow replay``: does the workflow's current code decide as its runs' histories say?

The daemon runs the moderator of the code it accepted last over the kept histories (of one
run, or of a workflow's newest runs) in a throwaway process, and answers with each run whose
moderator now decides otherwise at some call: a table of them here, the whole answer with
``--json``. The exit status says it for scripts (a check before rolling a change out): 1
when a history diverges, 0 when none does.
"""

from __future__ import annotations

from nervectl import render
from nervectl.exits import FAILED, OK, USAGE, CliError

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Any, Final

    from nervectl.context import Context

# A check takes at most a minute in the daemon (then it answers with an error); the socket's
# own timeout is only a backstop against a daemon that stopped answering.
REPLAY_TIMEOUT: Final = 90.0


def workflow_replay(ctx: Context) -> int:
    args = ctx.args
    if args.run_id is not None:
        if args.limit is not None:
            raise CliError("--limit goes with --workflow only", USAGE)
        params: dict[str, Any] = {"runId": args.run_id}
    else:
        params = {"workflow": args.workflow, "limit": args.limit}
    result: dict[str, Any] = ctx.call("workflow.replay", params, timeout=REPLAY_TIMEOUT)
    diverged: list[dict[str, Any]] = result.get("diverged") or []
    if ctx.json:
        ctx.print_json(result)
        return FAILED if diverged else OK
    if diverged:
        rows = [
            (d.get("runId", "-"), d.get("step", "-"), decision(d.get("logged")),
             decision(d.get("now")))
            for d in diverged
        ]  # fmt: skip
        ctx.print(render.table(rows, ("RUN", "STEP", "LOGGED", "NOW")))
    for skipped in result.get("skipped") or []:
        ctx.note(f"run {skipped.get('runId')} not checked: {skipped.get('reason')}")
    skipped = len(result.get("skipped") or [])
    ctx.print(summary(result.get("checked", 0), len(diverged), skipped))
    return FAILED if diverged else OK


def decision(value: Any) -> str:
    """A decision in a cell: ``role prompt``, ``(ends the run)``, or ``error: why``."""
    if value is None:
        return "(ends the run)"
    if not isinstance(value, dict):
        return render.cell(value)
    if "error" in value:
        return render.cell(f"error: {value['error']}", 80)
    return render.cell(f"{value.get('role')} {render.compact(value.get('prompt'))}")


def summary(checked: int, diverged: int, skipped: int = 0) -> str:
    """One line: how many runs were checked, and what came of it; the runs not checked
    (their history cannot be read back) are said, so that none passes for agreeing."""
    runs = render.plural(checked, "run")
    said = (
        f"{diverged} diverged"
        if diverged
        else "the code nerved runs now decides as every history says"
    )
    if not checked and not diverged:
        said = "nothing to compare"
    if skipped:
        said += f" ({skipped} not checked: see above)"
    return f"checked {runs}: {said}"
