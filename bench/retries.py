"""What retries cost: W with a retry policy and no failure, and runs that fail twice.

1. **Policy, no failure.** Workload W (N runs of 3 steps, concurrency 10, as
   ``bench.workflows``) with no role policy, with ``retry: {attempts: 3}`` on its role, and
   with that and ``timeout: 1m``: a retry policy costs nothing until a try fails; a role
   with a timeout sends one more message per step (``begin``, for the master's backstop)
   and its try is awaited under a timer. Alternated over ``--rounds`` daemons each, best of
   each reported, with the difference to no policy.
2. **Failing twice.** ``--failing`` runs (default 1000), each of one step whose role fails
   its first two tries and succeeds on the third, under ``retry: {attempts: 3, delay: 1s,
   factor: 1}``, all admitted at once (concurrency = the number of runs). Reported: runs/s
   from the first trigger to the last completion, and the master's CPU time (utime + stime
   from /proc) while every run waits for its retry: the master is idle between retries
   (timers, no polling), so that figure should be near zero.

    python -m bench.retries [--n 1000] [--rounds 3] [--failing 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.common import Daemon

STEP = """
    from nerved import WorkflowDefinition

    PAD = "x" * 48

    async def step(prompt, ctx):
        return {"type": "step", "run": ctx.run_id[:10], "step": prompt, "ok": True, "pad": PAD}

    def moderate(thread, event):
        n = len(thread.events)
        return {"role": "step", "prompt": n} if n <= 3 else None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""

FLAKY = """
    from nerved import WorkflowDefinition

    async def flaky(prompt, ctx):
        if ctx.attempt <= 2:
            raise RuntimeError("transient")
        return {"type": "done", "attempt": ctx.attempt}

    def moderate(thread, event):
        return {"role": "flaky", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"flaky": flaky}, moderate=moderate)
"""

W = """
    workflows:
      w:
        concurrency: 10
        maxQueue: {queue}
        idleTimeout: 1h
{roles}"""

RETRY = """\
        roles:
          step:
            retry: {attempts: 3, delay: 1s}
"""

TIMEOUT = """\
        roles:
          step:
            timeout: 1m
            retry: {attempts: 3, delay: 1s}
"""


def _burst(daemon: Daemon, workflow: str, n: int, window: int) -> tuple[float, dict[str, Any]]:
    """Trigger ``n`` runs (``window`` in flight), wait until none is active; (wall seconds
    from the first trigger to the last completion, the runs by id)."""
    rpc = daemon.rpc()
    sent = 0
    acked: list[str] = []
    waiting: set[int] = set()
    t0 = time.time()
    while len(acked) < n:
        while sent < n and len(waiting) < window:
            waiting.add(rpc.send("workflow.trigger", {"workflow": workflow}))
            sent += 1
        answer = rpc.read()
        waiting.discard(answer["id"])
        acked.append(answer["result"]["runId"])
    while (status := rpc.call("status"))["activeWorkflows"] + status["queuedWorkflows"]:
        time.sleep(0.01)
    runs = {r["runId"]: r for r in rpc.call("workflow.list", {"all": True, "limit": n + 10})}
    bad = [r for r in acked if runs[r]["status"] != "completed"]
    if bad:
        raise SystemExit(f"{len(bad)} runs did not complete: {runs[bad[0]]}")
    wall = max(runs[r]["updatedAt"] for r in acked) / 1000 - t0
    rpc.close()
    return wall, runs


CONFIGS = (("no policy", ""), ("retry", RETRY), ("retry+timeout", TIMEOUT))


def policy_cost(n: int, rounds: int) -> dict[str, float]:
    best = dict.fromkeys((label for label, _ in CONFIGS), 0.0)
    for _ in range(rounds):
        for label, roles in CONFIGS:
            with Daemon(W.format(queue=n + 10, roles=roles), {"workflows/w": STEP}) as daemon:
                _burst(daemon, "w", 20, 10)  # warm up: the worker forks on demand
                wall, _ = _burst(daemon, "w", n, 10)
            best[label] = max(best[label], n / wall)
    return best


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def failing_twice(n: int) -> dict[str, float]:
    config = f"""
    workflows:
      f:
        concurrency: {n}
        idleTimeout: 1h
        roles:
          flaky:
            retry: {{attempts: 3, delay: 1s, factor: 1}}
    """
    with Daemon(config, {"workflows/f": FLAKY}) as daemon:
        rpc = daemon.rpc()
        warm = rpc.call("workflow.trigger", {"workflow": "f"})["runId"]
        rpc.call("workflow.wait", {"runId": warm})
        after = rpc.call("logs.query", {"limit": 1})[-1]["id"]  # this burst's entries follow
        t0 = time.time()
        for _ in range(n):
            rpc.send("workflow.trigger", {"workflow": "f"})
        for _ in range(n):
            rpc.read()

        def first_tries() -> list[dict[str, Any]]:
            query = {"type": "step_failed", "afterId": after, "limit": 10000}
            return [e for e in rpc.call("logs.query", query) if e["payload"]["try"] == 1]

        # Once every run has failed its first try, and until the first retry is due (1 s
        # after the earliest failure), nothing is left to do: the master should sleep.
        while len(failed := first_tries()) < n:
            time.sleep(0.005)
        first_due = min(e["payload"]["retryAt"] for e in failed) / 1000
        last_failed = max(e["ts"] for e in failed) / 1000
        cpu0, idle_from = _cpu_seconds(daemon.pid), time.time()
        time.sleep(max(0.0, first_due - time.time() - 0.02))
        cpu1, idle_for = _cpu_seconds(daemon.pid), time.time() - idle_from
        rpc.close()
        end, _ = _burst_wait(daemon, n + 1)
        return {
            "runs": n,
            "runs_per_s": n / (end - t0),
            "wall_s": end - t0,
            "first_tries_s": last_failed - t0,
            "idle_window_s": idle_for,
            "master_cpu_ms_in_window": (cpu1 - cpu0) * 1000,
        }


def _burst_wait(daemon: Daemon, total: int) -> tuple[float, int]:
    rpc = daemon.rpc()
    while (status := rpc.call("status"))["activeWorkflows"] + status["queuedWorkflows"]:
        time.sleep(0.01)
    runs = rpc.call("workflow.list", {"all": True, "limit": total + 10})
    bad = [r for r in runs if r["status"] != "completed"]
    if bad:
        raise SystemExit(f"{len(bad)} runs did not complete: {bad[0]}")
    rpc.close()
    return max(r["updatedAt"] for r in runs) / 1000, len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failing", type=int, default=1000)
    args = parser.parse_args()
    cost = policy_cost(args.n, args.rounds)
    print(f"W, {args.n} runs x 3 steps, concurrency 10, best of {args.rounds} daemons each:")
    for label, rate in cost.items():
        ratio = rate / cost["no policy"]
        print(f"  {label:<14} {rate:8.0f} runs/s  {(ratio - 1) * 100:+6.1f} %")
    failing = failing_twice(args.failing)
    print(f"{failing['runs']} runs failing twice, then succeeding (delay 1s, factor 1):")
    print(
        f"  {failing['runs_per_s']:.0f} runs/s: {failing['wall_s']:.2f} s in all, two waits of"
        f" 1 s included (every first try had failed {failing['first_tries_s']:.2f} s in)"
    )
    print(
        f"  master CPU while every run waited for its retry: "
        f"{failing['master_cpu_ms_in_window']:.0f} ms over {failing['idle_window_s']:.2f} s"
    )


if __name__ == "__main__":
    main()
