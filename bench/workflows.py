"""Workflow throughput and latency on workload W, nerve beside DBOS and Huey in one run.

W: N = 1000 runs of 3 sequential steps, each step a trivial
function returning ~100 bytes of JSON, at most C = 10 runs at once, durable in SQLite on
local disk. nerve runs it as a workflow with concurrency 10 and a queue; its durability is
WAL + synchronous=FULL, as Huey's default. Measured from a client on the control socket:

- trigger ack: ``workflow.trigger`` sent -> answer read (the run is durably started or
  queued), one at a time against an idle daemon ("iso ack"), and within the burst;
- burst: N triggers on one connection, up to ``--window`` (10) in flight at once, as
  several clients would send them; wall = first trigger -> last completion (read from the
  runs' ``updatedAt``, ms); e2e = ack -> completion;
- iso: one run at a time: trigger, wait, next; e2e = trigger sent -> completion read;
- tree RSS: the master and all its workers, sampled during the burst.

The peers run their own scripts (``bench/peers/w``: the scripts that measured them on this
machine for the reference figures, kept as they were) in their venv, created from its lock
file on first use: Huey "single" (its fastest shape) and DBOS with a 10-slot queue
(poll 0.01 s), burst and iso, as the anchors ran them. ``--no-peers`` skips them.

``--json`` prints one JSON object, ``{engine: {metric: value}}`` (ms, MiB; the names are
:func:`metrics`'), and nothing else on stdout; progress goes to stderr. Without it, a table
and issue 14's targets, each with whether it holds.

    python -m bench.workflows [--n 1000] [--iso 200] [--no-peers] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Final

from bench.common import Daemon, run_anchor, summary_ms, tree_rss

WORKFLOW = """
    from nerved import WorkflowDefinition

    PAD = "x" * 48

    async def step(prompt, ctx):
        return {"type": "step", "run": ctx.run_id[:10], "step": prompt, "ok": True, "pad": PAD}

    def moderate(thread, event):
        n = len(thread.events)
        return {"role": "step", "prompt": n} if n <= 3 else None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""

CONFIG = """
    workflows:
      w:
        concurrency: {conc}
        overflow: queue
        maxQueue: {queue}
        idleTimeout: 1h
"""


def config_for(names: list[str], conc: int, queue: int) -> str:
    """nerve.yaml for workflows ``names``, each running W's code with its own worker."""
    one = CONFIG.format(conc=conc, queue=queue).splitlines()[3:]  # the settings, indented
    lines = ["workflows:"]
    for name in names:
        lines += [f"  {name}:", *(line[4:] for line in one)]
    return "\n".join(lines) + "\n"


def packages_for(names: list[str]) -> dict[str, str]:
    return {f"workflows/{name}": WORKFLOW for name in names}


def warm(daemon: Daemon, names: list[str]) -> None:
    """One run of each workflow: its worker forks on demand, before anything is timed."""
    rpc = daemon.rpc()
    for name in names:
        run_id = rpc.call("workflow.trigger", {"workflow": name})["runId"]
        rpc.call("workflow.wait", {"runId": run_id})
    rpc.close()


def burst(daemon: Daemon, names: list[str], n: int, window: int) -> dict[str, Any]:
    """N triggers, round robin over ``names``, up to ``window`` in flight on one connection.

    The submitter keeps triggers in flight as several clients (or reflexes) would: that is
    what lets one commit carry many runs. Completion is read from the store afterwards
    (updatedAt, ms), so that measuring adds no request per run to the daemon's work.
    """
    triggers = daemon.rpc()
    peak = [tree_rss(daemon.pid)]
    acked: dict[str, float] = {}
    ack_lat: list[float] = []
    sent_at: dict[int, float] = {}
    t_start = time.time()
    sent = 0
    while len(acked) < n:
        while sent < n and len(sent_at) < window:
            params = {"workflow": names[sent % len(names)]}
            sent_at[triggers.send("workflow.trigger", params)] = time.perf_counter()
            sent += 1
        answer = triggers.read()
        ack_lat.append(time.perf_counter() - sent_at.pop(answer["id"]))
        acked[answer["result"]["runId"]] = time.time()
        if len(acked) % 100 == 0:
            peak.append(tree_rss(daemon.pid))
    while (status := triggers.call("status"))["activeWorkflows"] + status["queuedWorkflows"]:
        peak.append(tree_rss(daemon.pid))
        time.sleep(0.005)
    listed = triggers.call("workflow.list", {"all": True, "limit": min(n + 100, 10_000)})
    runs = {r["runId"]: r for r in listed}
    if len(acked) > len(runs) or any(r not in runs for r in acked):  # more than a page
        runs |= {r: triggers.call("workflow.inspect", {"runId": r, "limit": 1}) for r in acked
                 if r not in runs}  # fmt: skip
    triggers.close()
    failed = [r for r in acked if runs[r]["status"] != "completed"]
    if failed:
        raise SystemExit(f"{len(failed)} runs did not complete: {failed[:3]}")
    wall = max(runs[r]["updatedAt"] for r in acked) / 1000 - t_start
    e2e = [max(0.0, runs[r]["updatedAt"] / 1000 - acked[r]) for r in acked]
    return {"runs_per_s": n / wall, "steps_per_s": 3 * n / wall, "ack": summary_ms(ack_lat),
            "e2e": summary_ms(e2e), "rss_mb": max(peak) / 2**20}  # fmt: skip


def isolated(daemon: Daemon, name: str, count: int) -> dict[str, Any]:
    """One run at a time: trigger, wait, next; e2e = trigger sent -> completion read."""
    rpc = daemon.rpc()
    e2e: list[float] = []
    ack: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        run_id = rpc.call("workflow.trigger", {"workflow": name})["runId"]
        t1 = time.perf_counter()
        if rpc.call("workflow.wait", {"runId": run_id})["status"] != "completed":
            raise SystemExit(f"run {run_id} did not complete")
        e2e.append(time.perf_counter() - t0)
        ack.append(t1 - t0)
    rpc.close()
    return {"iso_e2e": summary_ms(e2e), "iso_ack": summary_ms(ack)}


def run_nerve(
    n: int, iso: int, conc: int, window: int, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    """W on nerve: the burst, then one run at a time; flat metrics (see :func:`metrics`).
    ``extra``: more of nerved's options (:mod:`bench.pg`: ``--store`` a PostgreSQL DSN)."""
    config = config_for(["w"], conc, max(n, 100))
    with Daemon(config, packages_for(["w"]), extra=extra) as daemon:
        warm(daemon, ["w"])
        b = burst(daemon, ["w"], n, window)
        i = isolated(daemon, "w", iso)
    return metrics(
        b["runs_per_s"], b["steps_per_s"], b["e2e"], b["ack"], i["iso_e2e"], i["iso_ack"],
        b["rss_mb"],
    )  # fmt: skip


def metrics(
    runs_per_s: float,
    steps_per_s: float,
    e2e: dict[str, float],
    ack: dict[str, float],
    iso: dict[str, float],
    ack_alone: dict[str, float],
    rss_mb: float,
) -> dict[str, float]:
    """The figures of one engine under the names ``--json`` gives them (ms, MiB)."""
    return {
        "runs_per_s": runs_per_s,
        "steps_per_s": steps_per_s,
        "e2e_p50_ms": e2e["p50"],
        "e2e_p99_ms": e2e["p99"],
        "iso_p50_ms": iso["p50"],
        "iso_p99_ms": iso["p99"],
        "ack_p50_ms": ack["p50"],
        "ack_p99_ms": ack["p99"],
        "ack_alone_p50_ms": ack_alone["p50"],
        "ack_alone_p99_ms": ack_alone["p99"],
        "rss_mb": rss_mb,
    }


PEERS: Final = (
    ("huey single", ("bench_huey.py", "burst", "single", "thread"),
     ("bench_huey.py", "iso", "single", "thread", "--fast-poll")),
    ("dbos poll 0.01s", ("bench_dbos.py", "burst", "0.01"), ("bench_dbos.py", "iso", "0.01")),
)  # fmt: skip


def run_peer(burst_args: tuple[str, ...], iso_args: tuple[str, ...], n: int, iso: int,
             conc: int) -> dict[str, float]:  # fmt: skip
    """A peer's burst and iso scripts, their figures under nerve's names."""
    b = run_anchor(*burst_args, n=n, iso=iso, conc=conc)
    i = run_anchor(*iso_args, n=n, iso=iso, conc=conc)
    return metrics(
        b["runs_per_s"], b["steps_per_s"], b["e2e_latency_ms"], b["enqueue_latency_ms"],
        i["e2e_latency_ms"], i["enqueue_latency_ms"], b["peak_tree_rss_kb"] / 1024,
    )  # fmt: skip


def table(results: dict[str, dict[str, float]]) -> str:
    from tabulate import tabulate

    keys = list(next(iter(results.values())))
    return tabulate(
        [[key, *(r[key] for r in results.values())] for key in keys],
        headers=["", *results], floatfmt=".2f",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--iso", type=int, default=200)
    parser.add_argument("--conc", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="triggers in flight (burst)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object on stdout, {engine: {metric: value}}")  # fmt: skip
    args = parser.parse_args()
    print(f"nerve: W, N={args.n}, iso {args.iso}...", file=sys.stderr, flush=True)
    results = {"nerve": run_nerve(args.n, args.iso, args.conc, args.window)}
    if not args.no_peers:
        for name, burst_args, iso_args in PEERS:
            print(f"{name}...", file=sys.stderr, flush=True)
            results[name] = run_peer(burst_args, iso_args, args.n, min(args.iso, 30), args.conc)
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"\nWorkload W: N={args.n} runs x 3 steps, concurrency {args.conc}, window"
        f" {args.window}; iso: one at a time ({args.iso} nerve, {min(args.iso, 30)} peers)"
    )
    print(table(results))
    nerve = results["nerve"]
    for name, peer in results.items():
        if name != "nerve":
            print(f"nerve / {name}: {nerve['runs_per_s'] / peer['runs_per_s']:.2f}x runs/s")
    print("\nissue 14's targets:")
    for key, bound, above in TARGETS:
        value = nerve[key]
        holds = value >= bound if above else value <= bound
        sign = ">=" if above else "<="
        print(f"  {key:18} {value:9.2f}  target {sign} {bound:<7} {'holds' if holds else 'MISSED'}")


TARGETS: Final = (
    ("runs_per_s", 4000, True), ("iso_p50_ms", 1.2, False), ("iso_p99_ms", 2.0, False),
    ("ack_p99_ms", 1.5, False), ("ack_alone_p99_ms", 0.6, False), ("rss_mb", 50, False),
)  # fmt: skip
"""Issue 14's targets: (metric, bound, True when the figure must be at least the bound)."""


if __name__ == "__main__":
    main()
