"""``workflow cancel``, ``workflow retry`` and ``workflow signal``: what an operator does to
runs.

``cancel`` takes several runs: each is asked for in turn, each failure is one line on
stderr, and the others are still cancelled; the exit status is the worst one met (4 when a
run was not found, else 1 when one could not be cancelled, such as a run that is final).
"""

from __future__ import annotations

import sys

from nervectl.client import RemoteError
from nervectl.context import visible
from nervectl.exits import FAILED, NOT_FOUND, OK, USAGE, CliError
from nervectl.workflows import NO_PAYLOAD, payload_of, wait_and_show

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Any, Final

    from nervectl.context import Context

_NOT_FOUND: Final = -32001


def workflow_cancel(ctx: Context) -> int:
    args = ctx.args
    params: dict[str, Any] = {}
    if args.reason is not None:
        params["reason"] = args.reason
    code = OK
    answers: list[dict[str, Any]] = []
    for ref in args.run_ids:
        try:
            run: dict[str, Any] = ctx.call("workflow.cancel", {"runId": ref, **params})
        except RemoteError as exc:
            failed = NOT_FOUND if exc.code == _NOT_FOUND else FAILED
            code = max(code, failed)  # NOT_FOUND (4) outweighs FAILED (1)
            answers.append({"runId": ref, "error": {"code": exc.code, "message": exc.message}})
            if not ctx.json:
                print(f"nervectl: {visible(exc.message)}", file=sys.stderr)
            continue
        answers.append(run)
        if not ctx.json:
            ctx.print(f"run {run.get('runId')}: {run.get('status')}")
    if ctx.json:
        ctx.print_json(answers)
    return code


def workflow_retry(ctx: Context) -> int:
    args = ctx.args
    if args.timeout is not None and not args.wait:
        raise CliError("--timeout only applies with --wait", USAGE)
    params: dict[str, Any] = {"runId": args.run_id}
    if args.from_step is not None:
        params["fromStep"] = args.from_step
    new: dict[str, Any] = ctx.call("workflow.retry", params)
    run_id = str(new.get("runId"))
    said = f"run {run_id}: {new.get('status')} (a retry of run {new.get('retryOf')})"
    if not args.wait:
        if ctx.json:
            ctx.print_json({"runId": run_id, "status": new.get("status")})
        else:
            ctx.print(said)
        return OK
    if not ctx.json:
        ctx.print(f"{said}; waiting for it to finish")
        ctx.out.flush()
    return wait_and_show(ctx, run_id, args.timeout)


def workflow_signal(ctx: Context) -> int:
    """Send the signal; say whether a wait took it at once, or it is pending."""
    args = ctx.args
    payload = payload_of(args)
    params: dict[str, Any] = {"runId": args.run_id, "name": args.name}
    if payload is not NO_PAYLOAD:
        params["payload"] = payload
    answer: dict[str, Any] = ctx.call("workflow.signal", params)
    if ctx.json:
        ctx.print_json(answer)
    elif answer.get("delivered"):
        ctx.print(f"run {args.run_id}: signal {args.name!r} delivered; the run goes on")
    else:
        ctx.print(f"run {args.run_id}: signal {args.name!r} pending until the run waits for it")
    return OK
