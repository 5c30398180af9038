"""``workflow inspect``: one run and a page of its history.

A run's history is the source of truth of a thread (SPEC §5), so ``inspect`` shows its
entries, each summarised on one line (the complete payloads are in ``--json``). A long run's
history is shown a page at a time, as ``workflow.inspect`` answers it: the newest 100 entries
by default (a run of up to 100 is shown whole, as it always was), and a line after the table
says how to see the rest (``--before``, ``--after``, ``--all``).
"""

from __future__ import annotations

from nervectl import render
from nervectl.arguments import INSPECT_DEFAULT_LIMIT
from nervectl.exits import OK, USAGE, CliError
from nervectl.limits import MAX_QUERY_LIMIT
from nervectl.times import format_local, now_ms
from nervectl.workflows import run_fields, summarise

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Any

    from nervectl.context import Context


def workflow_inspect(ctx: Context) -> int:
    args = ctx.args
    if args.all and (args.limit or args.after is not None or args.before is not None):
        raise CliError("--all shows every event: not with --limit, --after or --before", USAGE)
    run = inspect_run(ctx, args.run_id, args.limit, args.after, args.before, whole=args.all)
    if ctx.json:  # one document; earlier and more only when events were left out
        if not run.get("earlier"):
            run.pop("earlier", None)
        if not run.get("more"):
            run.pop("more", None)
        ctx.print_json(run)
        return OK
    ctx.print(run_fields({k: v for k, v in run.items() if k not in ("earlier", "more")}))
    events = run["events"]
    ctx.print()
    if not events:
        ctx.print("no events")
    else:
        from nervectl import timeline

        bars = timeline.lines(run, now_ms(), timeline.blocks_ok(ctx.out))
        if bars:
            ctx.print("\n".join(["TIMELINE", *bars, ""]))
        rows = [
            (
                event.get("id", "-"),
                format_local(event.get("ts"), millis=True),
                event.get("type", "-"),
                summarise(event),
            )
            for event in events
        ]
        ctx.print(render.table(rows, ("ID", "TIME", "TYPE", "SUMMARY")))
    for line in hints(run):
        ctx.print(line)
    return OK


def hints(run: dict[str, Any]) -> list[str]:
    """What the page left out, and the options that show it."""
    events, earlier = run["events"], int(run.get("earlier") or 0)
    out = []
    if earlier:
        back = f"--before {events[0]['id']} shows the ones before, " if events else ""
        out.append(f"{earlier:,} earlier events not shown ({back}--all every event)")
    if run.get("more") and events:
        last = events[-1]["id"]
        out.append(f"more events after {last} not shown (--after {last} shows them)")
    return out


def inspect_run(
    ctx: Context,
    ref: str,
    limit: int | None = None,
    after: int | None = None,
    before: int | None = None,
    *,
    whole: bool = False,
) -> dict[str, Any]:
    """The run with a page of its events, as ``workflow.inspect`` pages them: the newest
    ``limit`` (default 100; before ``before``), or the first ``limit`` after ``after``, or
    with ``whole`` every one. Pages cut short by the 4 MiB budget of an answer are read on
    until ``limit`` events are in hand, however many answers that takes.

    The run's fields are those of the answer holding its newest event shown, the freshest;
    ``earlier`` (entries left out before the first event) and ``more`` (whether one follows
    the last) say what the events leave out."""
    params: dict[str, Any] = {"runId": ref}
    if whole:
        after = 0
    want = None if whole else limit or INSPECT_DEFAULT_LIMIT
    if limit is not None or whole:  # the default page: what an older daemon answers too
        params["limit"] = min(want or MAX_QUERY_LIMIT, MAX_QUERY_LIMIT)
    for name, value in (("afterId", after), ("beforeId", before)):
        if value is not None:
            params[name] = value
    page: dict[str, Any] = ctx.call("workflow.inspect", params)
    run_id = page["runId"]
    events: list[dict[str, Any]] = page.pop("events", None) or []
    newest = forward(ctx, run_id, page, events, before, want)
    earlier = int(page.get("earlier") or 0)
    while after is None and earlier and want is not None and len(events) < want:
        # More than one answer holds (over 10,000, or cut by the budget): page back.
        older: dict[str, Any] = ctx.call(
            "workflow.inspect",
            {"runId": run_id, "beforeId": events[0]["id"],
             "limit": min(want - len(events), MAX_QUERY_LIMIT)},
        )  # fmt: skip
        batch: list[dict[str, Any]] = older.pop("events", None) or []
        if not batch:
            break
        asked = min(want - len(events), MAX_QUERY_LIMIT)
        if len(batch) < asked and older.get("more"):  # cut short: read on to events[0]
            forward(ctx, run_id, older, batch, events[0]["id"], asked, bounded=True)
        events[:0] = batch
        earlier = int(older.get("earlier") or 0)
    return {**newest, "events": events, "earlier": earlier, "more": bool(newest.get("more"))}


def forward(
    ctx: Context,
    run_id: str,
    page: dict[str, Any],
    events: list[dict[str, Any]],
    before: int | None,
    want: int | None,
    bounded: bool = False,
) -> dict[str, Any]:
    """Read on after ``events`` (those of ``page``), appending, while the answers say
    ``more`` and fewer than ``want`` are in hand (None: no bound); with ``bounded`` (or a
    ``before``) an empty answer ends it (``more`` then counts the entries past the bound).
    Returns the last answer read, without its events."""
    while page.get("more") and events and (want is None or len(events) < want):
        params: dict[str, Any] = {"runId": run_id, "afterId": events[-1]["id"]}
        params["limit"] = min(MAX_QUERY_LIMIT if want is None else want - len(events),
                              MAX_QUERY_LIMIT)  # fmt: skip
        if before is not None:
            params["beforeId"] = before
        following: dict[str, Any] = ctx.call("workflow.inspect", params)
        batch = following.pop("events", None) or []
        if not batch:
            if bounded or before is not None:
                break
            return following
        events += batch
        page = following
    return page
