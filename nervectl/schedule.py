"""``workflow schedule``: every cron reflex with its next and last firing, as
``systemctl list-timers`` shows timers.

One call (``schedule.list``); ``--json`` prints its result unchanged. Sense reflexes are
listed too: a schedule is read whole, whatever each firing starts.
"""

from __future__ import annotations

from nervectl import render
from nervectl.exits import OK
from nervectl.times import format_duration, format_local, now_ms

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Any

    from nervectl.context import Context


def _left(ms: int | None, now: int) -> str:
    if ms is None:
        return "-"
    return format_duration(max(ms - now, 0) / 1000)


def _passed(ms: int | None, now: int) -> str:
    if ms is None:
        return "-"
    return f"{format_duration(max(now - ms, 0) / 1000)} ago"


def workflow_schedule(ctx: Context) -> int:
    reflexes: list[dict[str, Any]] = ctx.call("schedule.list")
    if ctx.json:
        ctx.print_json(reflexes)
        return OK
    if not reflexes:
        ctx.print("no cron reflexes configured")
        return OK
    now = now_ms()
    rows = [
        (
            format_local(r.get("next")),
            _left(r.get("next"), now),
            format_local(r.get("last")),
            _passed(r.get("last"), now),
            f"{r.get('kind', '-')} {r.get('target', '-')}",
            f"{r.get('cron', '-')} ({r.get('timezone', '-')})",
            render.cell(r.get("lastStatus") or "-", 40),
        )
        for r in reflexes
    ]
    headers = ("NEXT", "LEFT", "LAST", "PASSED", "REFLEX", "CRON", "OUTCOME")
    ctx.print(render.table(rows, headers))
    ctx.print()
    ctx.print(f"{render.plural(len(reflexes), 'cron reflex', 'cron reflexes')} listed.")
    return OK
