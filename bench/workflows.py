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

    python -m bench.workflows [--n 1000] [--iso 200] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Daemon, summary_ms, tree_rss

ANCHORS = REPO / "bench" / "peers" / "w"
ANCHORS_VENV = Path(os.environ.get("ANCHORS_VENV", "/tmp/anchors-venv"))

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


def run_nerve(n: int, iso: int, conc: int, window: int) -> dict[str, Any]:
    config = CONFIG.format(conc=conc, queue=max(n, 100))
    with Daemon(config, {"workflows/w": WORKFLOW}) as daemon:
        triggers, _waits = daemon.rpc(), daemon.rpc()
        # Warm up: the worker forks on demand; one run brings it up.
        run_id = triggers.call("workflow.trigger", {"workflow": "w"})["runId"]
        triggers.call("workflow.wait", {"runId": run_id})

        # -- burst. The submitter keeps up to ``window`` triggers in flight on its
        # connection, as several clients (or reflexes) would: that is what lets one commit
        # carry many runs. Completion is read from the store afterwards (updatedAt, ms), so
        # that measuring adds no request per run to the daemon's work.
        peak = [tree_rss(daemon.pid)]
        acked: dict[str, float] = {}
        ack_lat: list[float] = []
        sent_at: dict[int, float] = {}
        t_start = time.time()
        sent = 0
        while len(acked) < n:
            while sent < n and len(sent_at) < window:
                sent_at[triggers.send("workflow.trigger", {"workflow": "w"})] = time.perf_counter()
                sent += 1
            answer = triggers.read()
            ack_lat.append(time.perf_counter() - sent_at.pop(answer["id"]))
            acked[answer["result"]["runId"]] = time.time()
            if len(acked) % 100 == 0:
                peak.append(tree_rss(daemon.pid))
        while (status := triggers.call("status"))["activeWorkflows"] + status["queuedWorkflows"]:
            peak.append(tree_rss(daemon.pid))
            time.sleep(0.005)
        runs = {
            r["runId"]: r for r in triggers.call("workflow.list", {"all": True, "limit": n + 10})
        }
        wall = max(runs[r]["updatedAt"] for r in acked) / 1000 - t_start
        e2e = [max(0.0, runs[r]["updatedAt"] / 1000 - acked[r]) for r in acked]

        # -- iso
        iso_e2e: list[float] = []
        iso_ack: list[float] = []
        for _ in range(iso):
            t0 = time.perf_counter()
            run_id = triggers.call("workflow.trigger", {"workflow": "w"})["runId"]
            t1 = time.perf_counter()
            triggers.call("workflow.wait", {"runId": run_id})
            t2 = time.perf_counter()
            iso_ack.append(t1 - t0)
            iso_e2e.append(t2 - t0)
        failed = [
            r for r in triggers.call("workflow.list", {"all": True, "limit": 10000})
            if r["status"] != "completed"
        ]  # fmt: skip
        if failed:
            raise SystemExit(f"{len(failed)} runs did not complete: {failed[:3]}")
        return {
            "engine": "nerve",
            "runs_per_s": n / wall,
            "steps_per_s": 3 * n / wall,
            "ack": summary_ms(ack_lat),
            "e2e": summary_ms(e2e),
            "iso_e2e": summary_ms(iso_e2e),
            "iso_ack": summary_ms(iso_ack),
            "tree_rss_mb": max(peak) / 2**20,
        }


def _anchors_python() -> Path:
    python = ANCHORS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {ANCHORS_VENV} for the peers (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(ANCHORS_VENV)], check=True)
        subprocess.run(
            [str(ANCHORS_VENV / "bin" / "pip"), "install", "-q", "-r",
             str(ANCHORS / "requirements.lock.txt")],
            check=True,
        )  # fmt: skip
    return python


def run_anchor(script: str, *args: str, n: int, iso: int, conc: int) -> dict[str, Any]:
    env = {**os.environ, "ANCHORS_N": str(n), "ANCHORS_ISO": str(iso), "ANCHORS_CONC": str(conc)}
    done = subprocess.run(
        [str(_anchors_python()), str(ANCHORS / script), *args],
        capture_output=True, text=True, env=env, cwd=ANCHORS, timeout=1800,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{script} {' '.join(args)} gave no result:\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--iso", type=int, default=200)
    parser.add_argument("--conc", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="triggers in flight (burst)")
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    nerve = run_nerve(args.n, args.iso, args.conc, args.window)
    rows = [
        ("nerve", nerve["runs_per_s"], nerve["steps_per_s"], nerve["e2e"]["p50"],
         nerve["e2e"]["p99"], nerve["iso_e2e"]["p50"], nerve["iso_e2e"]["p99"],
         nerve["ack"]["p50"], nerve["ack"]["p99"], nerve["tree_rss_mb"]),
    ]  # fmt: skip
    peers: dict[str, float] = {}
    if not args.no_peers:
        kw = {"n": args.n, "iso": min(args.iso, 30), "conc": args.conc}
        for name, burst, iso in (
            ("huey single", ("bench_huey.py", "burst", "single", "thread"),
             ("bench_huey.py", "iso", "single", "thread", "--fast-poll")),
            ("dbos poll 0.01s", ("bench_dbos.py", "burst", "0.01"),
             ("bench_dbos.py", "iso", "0.01")),
        ):  # fmt: skip
            b = run_anchor(*burst, **kw)
            i = run_anchor(*iso, **kw)
            peers[name] = b["runs_per_s"]
            rows.append(
                (name, b["runs_per_s"], b["steps_per_s"], b["e2e_latency_ms"]["p50"],
                 b["e2e_latency_ms"]["p99"], i["e2e_latency_ms"]["p50"],
                 i["e2e_latency_ms"]["p99"], b["enqueue_latency_ms"]["p50"],
                 b["enqueue_latency_ms"]["p99"], b["peak_tree_rss_kb"] / 1024),
            )  # fmt: skip
    from tabulate import tabulate

    print(f"\nWorkload W: N={args.n} runs x 3 steps, concurrency {args.conc}; iso: one at a time")
    print(
        tabulate(
            rows,
            headers=[
                "engine",
                "runs/s",
                "steps/s",
                "e2e p50 ms",
                "e2e p99 ms",
                "iso e2e p50 ms",
                "iso e2e p99 ms",
                "ack p50 ms",
                "ack p99 ms",
                "tree RSS MB",
            ],
            floatfmt=".2f",
        )
    )
    for name, rate in peers.items():
        print(f"nerve / {name}: {nerve['runs_per_s'] / rate:.2f}x runs/s")
    print(
        f"nerve iso trigger ack p50 {nerve['iso_ack']['p50']:.3f} ms, "
        f"p99 {nerve['iso_ack']['p99']:.3f} ms ({args.iso} runs)"
    )


if __name__ == "__main__":
    main()
