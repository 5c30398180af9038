"""``status``, ``sense list``, ``sense trigger`` and ``reload``: one daemon call each.

Every handler prints the method's result unchanged with ``--json`` (scripts get the
protocol's own fields, SPEC §6) and a table otherwise. Fields a newer daemon adds (a
worker's ``state``, ``restarts`` and ``reason``; a sense's ``worker``) are shown when it
sends them: an older daemon's answer, without them, is shown as before.
"""

from __future__ import annotations

from nervectl import render
from nervectl.exits import OK
from nervectl.times import format_ago, format_duration, format_local, now_ms

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

    from nervectl.context import Context

FATAL: Final = "fatal"
"""The worker state that needs the operator: its code fails at start, so nerve stopped
restarting it until a reload brings new code."""


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
        ("active runs", result.get("activeWorkflows", "-")),
        ("queued runs", result.get("queuedWorkflows", "-")),
        ("rss", render.mib(result.get("rss"))),
    ]
    if "containment" in result:  # a process group, or a cgroup, per worker
        pairs.append(("containment", result["containment"]))
    pairs += [(label, result[key]) for key, label in _PLACES if result.get(key)]
    store = result.get("store")
    if isinstance(store, dict) and store.get("reachable") is False:
        pairs.append(("store", unreachable_store(store)))
    ctx.print(render.fields(pairs))
    ctx.print()
    hosts = result.get("hosts") or []
    if hosts:  # a store several hosts use (PostgreSQL): each with its lease
        ctx.print(hosts_table(hosts))
        ctx.print()
    workers = result.get("workers") or []
    if not workers:
        ctx.print("no workers")
        return OK
    ctx.print(workers_table(workers))
    fatal = [worker for worker in workers if worker.get("state") == FATAL]
    if fatal:
        ctx.print()
    for worker in fatal:
        ctx.print(fatal_line(worker))
    return OK


def unreachable_store(store: Mapping[str, Any]) -> str:
    """What a daemon waiting for its store (PostgreSQL down) says of it, in one line:
    ``postgresql://nerve@db/nerve unreachable since 2024-05-01 12:00:01 (5 tries, the next
    in 4.0s): <why>; only status is answered, every other command is refused (-32002)``."""
    tries, error = store.get("tries", "?"), render.one_line(str(store.get("error") or "?"))
    since = format_local(store.get("since"))
    next_try = store.get("nextTry")
    wait = "?" if next_try is None else format_duration(max(0, next_try - now_ms()) / 1000)
    return (
        f"{store.get('where', '?')} unreachable since {since} ({tries} tries, the next in"
        f" {wait}): {error}; only status is answered, every other command is refused (-32002)"
    )


def hosts_table(hosts: list[dict[str, Any]]) -> str:
    """The store's hosts: id (this one marked ``*``), whether its lease is live, its age."""
    rows = [
        [f"{h.get('host')}{' *' if h.get('self') else ''}",
         "live" if h.get("live") else "lapsed",
         format_duration(float(h.get("leaseAgeMs") or 0) / 1000), h.get("pid"),
         h.get("version")]
        for h in hosts
    ]  # fmt: skip
    return render.table(rows, ["HOST", "LEASE", "RENEWED AGO", "PID", "VERSION"])


# (field, header) of the columns a newer daemon adds to each worker; a column is shown when
# any worker has its field.
_WORKER_EXTRAS: Final = (("state", "STATE"), ("restarts", "RESTARTS"))


def workers_table(workers: list[dict[str, Any]]) -> str:
    """KIND, NAME, PID, then STATE and RESTARTS if the daemon sends them. A worker with no
    process now (``pid`` null: spawning, in backoff, fatal) shows ``-``."""
    extras = [(key, title) for key, title in _WORKER_EXTRAS if any(key in w for w in workers)]
    rows = [
        (
            w.get("kind", "-"),
            w.get("name", "-"),
            _or_dash(w.get("pid")),
            *(_or_dash(w.get(key)) for key, _ in extras),
        )
        for w in workers
    ]
    return render.table(rows, ("KIND", "NAME", "PID", *(title for _, title in extras)))


def fatal_line(worker: Mapping[str, Any]) -> str:
    """``sense group default: fatal (ImportError: ...); fix its code and reload``."""
    kind, name = worker.get("kind"), worker.get("name", "?")
    what = f"sense group {name}" if kind == "sense" else f"{kind or 'worker'} {name}"
    reason = worker.get("reason")
    why = f" ({render.one_line(str(reason))})" if reason else ""
    return f"{what}: {FATAL}{why}; fix its code and reload"


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


_PLACES = (("root", "root"), ("stateDir", "state dir"), ("host", "host"))


def sense_list(ctx: Context) -> int:
    senses: list[dict[str, Any]] = ctx.call("sense.list")
    if ctx.json:
        ctx.print_json(senses)
        return OK
    if not senses:
        ctx.print("no senses configured")
        return OK
    # A newer daemon says how each sense's group worker is (idle, ready, backoff, fatal...),
    # and when a cron reflex fires it next and fired it last (columns only when one does).
    with_worker = any("worker" in s for s in senses)
    with_cron = any(s.get("nextFiring") or s.get("lastFiring") for s in senses)
    rows = [
        (
            s.get("name", "-"),
            s.get("group", "-"),
            *((_or_dash(s.get("worker")),) if with_worker else ()),
            s.get("computes", 0),
            s.get("errors", 0),
            format_ago(s.get("lastComputeAt")) + (" (running)" if s.get("running") else ""),
            format_ago(s.get("lastSignalAt")),
            *(
                (format_local(s.get("nextFiring")), format_local(s.get("lastFiring")))
                if with_cron
                else ()
            ),
            render.cell(s.get("lastError"), 50),
        )
        for s in senses
    ]
    headers = (
        "NAME",
        "GROUP",
        *(("WORKER",) if with_worker else ()),
        *("COMPUTES", "ERRORS", "LAST COMPUTE", "LAST SIGNAL"),
        *(("NEXT FIRING", "LAST FIRING") if with_cron else ()),
        "LAST ERROR",
    )
    ctx.print(render.table(rows, headers))
    return OK


def sense_trigger(ctx: Context) -> int:
    name: str = ctx.args.name
    result = ctx.call("sense.trigger", {"sense": name})
    if ctx.json:
        ctx.print_json(result)
    else:
        ctx.print(f"sense {name}: compute requested")
    if result.get("worker") == "fatal":
        ctx.note(f"sense {name}: its group's worker is fatal (see nervectl status); no compute"
                 " comes until its code is fixed and reloaded")  # fmt: skip
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
