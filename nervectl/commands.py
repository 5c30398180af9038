"""``status``, ``sense list``, ``sense trigger`` and ``reload``: one daemon call each.

Every handler prints the method's result unchanged with ``--json`` (scripts get the
protocol's own fields, SPEC §6) and a table otherwise.
"""

from __future__ import annotations

from typing import Any, Final

from nervectl import render
from nervectl.context import Context
from nervectl.exits import OK
from nervectl.times import format_ago, format_duration


def status(ctx: Context) -> int:
    result: dict[str, Any] = ctx.call("status")
    if ctx.json:
        ctx.print_json(result)
        return OK
    uptime = result.get("uptime")
    pairs: list[tuple[str, Any]] = [
        ("version", result.get("version", "-")),
        ("pid", result.get("pid", "-")),
    ]
    if "state" in result:
        pairs.append(("state", result["state"]))
    pairs += [
        ("uptime", "-" if uptime is None else format_duration(float(uptime))),
        ("senses", result.get("senses", "-")),
        ("groups", result.get("groups", "-")),
        ("active workflows", result.get("activeWorkflows", "-")),
        ("queued workflows", result.get("queuedWorkflows", "-")),
        ("rss", render.mib(result.get("rss"))),
    ]
    if "containment" in result:  # a process group, or a cgroup, per worker
        pairs.append(("containment", result["containment"]))
    pairs += [(label, result[key]) for key, label in _PLACES if result.get(key)]
    ctx.print(render.fields(pairs))
    ctx.print()
    workers = result.get("workers") or []
    if workers:
        rows = [(w.get("kind", "-"), w.get("name", "-"), w.get("pid", "-")) for w in workers]
        ctx.print(render.table(rows, ("KIND", "NAME", "PID")))
    else:
        ctx.print("no workers")
    return OK


_PLACES = (("root", "root"), ("stateDir", "state dir"))


def sense_list(ctx: Context) -> int:
    senses: list[dict[str, Any]] = ctx.call("sense.list")
    if ctx.json:
        ctx.print_json(senses)
        return OK
    if not senses:
        ctx.print("no senses configured")
        return OK
    rows = [
        (
            s.get("name", "-"),
            s.get("group", "-"),
            s.get("computes", 0),
            s.get("errors", 0),
            format_ago(s.get("lastComputeAt")) + (" (running)" if s.get("running") else ""),
            format_ago(s.get("lastSignalAt")),
            render.cell(s.get("lastError"), 50),
        )
        for s in senses
    ]
    headers = ("NAME", "GROUP", "COMPUTES", "ERRORS", "LAST COMPUTE", "LAST SIGNAL", "LAST ERROR")
    ctx.print(render.table(rows, headers))
    return OK


def sense_trigger(ctx: Context) -> int:
    name: str = ctx.args.name
    result = ctx.call("sense.trigger", {"sense": name})
    if ctx.json:
        ctx.print_json(result)
    else:
        ctx.print(f"sense {name}: compute requested")
    return OK


RELOAD_TIMEOUT: Final = 130.0
"""Seconds ``reload`` waits for its answer. nerved answers within two reloads' time (one in
progress, then the one that serves this request), each with an import check of at most twice
``nerved --import-timeout`` (20 s by default, 30 s at most), so the answer always comes
before this client gives up."""


def reload(ctx: Context) -> int:
    result: dict[str, Any] = ctx.call("reload", timeout=RELOAD_TIMEOUT)
    if ctx.json:
        ctx.print_json(result)
        return OK
    changed = result.get("changed") or []
    if not changed:
        ctx.print("nothing changed")
        return OK
    ctx.print("reloaded; changed:")
    for change in changed:
        ctx.print(f"  {change}")
    return OK
