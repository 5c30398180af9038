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
   from /proc) while every run waits for its retry, i.e. from the moment every first try
   has failed until 20 ms before the earliest retry is due (no such window if the last first
   try fails after that): the master is idle between retries (timers, no polling), so that
   figure should be near zero; its workers' is shown beside it. (/proc counts CPU time in
   clock ticks, 10 ms on most Linux: "0 ms" reads "under a tick".)

   Beside nerve, the same workload on its peers, each by its own script in ``bench/peers``
   run with the peers' Python (``$PEERS_PYTHON``, else ``/tmp/anchors-venv/bin/python``,
   else a venv made at ``/tmp/nerve-peers-venv`` with huey 3.5.4 and dbos 3.4.0): Huey
   (SqliteHuey, 10 worker threads, retries through its schedule, polled once a second) and
   DBOS (SQLite, a thread per workflow sleeping through its step's retry delay). Their CPU
   time is their whole process's, over the same window. ``--no-peers`` leaves them out.

    python -m bench.retries [--n 1000] [--rounds 3] [--failing 1000] [--no-peers]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Daemon, cpu_seconds
from bench.workflows import WORKFLOW as STEP  # workload W: three steps of one role

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


def _childrencpu_seconds(pid: int) -> float:
    """CPU seconds of a process's descendants (alive now), not its own."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            if current != pid:
                total += cpu_seconds(current)
            for task in os.listdir(f"/proc/{current}/task"):
                children = f"/proc/{current}/task/{task}/children"
                with contextlib.suppress(OSError), open(children) as f:
                    todo += [int(c) for c in f.read().split()]
    return total


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
        cpu0, workers0 = cpu_seconds(daemon.pid), _childrencpu_seconds(daemon.pid)
        idle_from = time.time()
        window = first_due - idle_from - 0.02
        time.sleep(max(0.0, window))
        cpu1, workers1 = cpu_seconds(daemon.pid), _childrencpu_seconds(daemon.pid)
        idle_for = time.time() - idle_from
        rpc.close()
        end, _ = _burst_wait(daemon, n + 1)
        return {
            "engine": "nerve",
            "runs": n,
            "runs_per_s": n / (end - t0),
            "wall_s": end - t0,
            "first_tries_s": last_failed - t0,
            "idle_window_s": idle_for if window > 0 else 0.0,
            "cpu_ms_in_window": (cpu1 - cpu0) * 1000 if window > 0 else None,
            "workers_cpu_ms_in_window": (workers1 - workers0) * 1000 if window > 0 else None,
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


PEERS = ("huey", "dbos")
PEERS_PYTHON = "/tmp/anchors-venv/bin/python"
PEERS_VENV = Path("/tmp/nerve-peers-venv")
PEERS_PACKAGES = ("huey==3.5.4", "dbos==3.4.0")


def peers_python() -> str:
    """$PEERS_PYTHON, else the anchors' venv, else our own venv (made on first use)."""
    python = os.environ.get("PEERS_PYTHON", PEERS_PYTHON)
    if os.access(python, os.X_OK):
        return python
    own = PEERS_VENV / "bin" / "python"
    probe = [str(own), "-c", "import huey, dbos"]
    if own.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(own)
    print(
        f"note: no {python}; installing {' '.join(PEERS_PACKAGES)} into {PEERS_VENV}",
        file=sys.stderr,
        flush=True,
    )
    if not own.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(own), "-m", "pip", "install", "-q", *PEERS_PACKAGES], check=True)
    return str(own)


def peer(name: str, python: str, n: int) -> dict[str, Any] | str:
    """Run one peer's script on ``n`` runs: its JSON figures, or why there are none."""
    script = Path(__file__).resolve().parent / "peers" / f"{name}_retries.py"
    try:
        done = subprocess.run(
            [python, str(script), str(n)], capture_output=True, text=True, timeout=120 + n * 0.2
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed (exit {done.returncode}): {said}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _failing_line(name: str, figures: dict[str, Any] | str, whose: str) -> str:
    if isinstance(figures, str):
        return f"  {name + ':':<6} {figures}"
    line = (
        f"  {name + ':':<6} {figures['runs_per_s']:4.0f} runs/s, {figures['wall_s']:.2f} s in all"
        f" (every first try had failed {figures['first_tries_s']:.2f} s in), "
    )
    if figures["cpu_ms_in_window"] is None:
        return line + "no wait with every run waiting (a retry was due before then)"
    line += (
        f"CPU {figures['cpu_ms_in_window']:.0f} ms over {figures['idle_window_s']:.2f} s"
        f" while waiting ({whose}"
    )
    if figures.get("workers_cpu_ms_in_window") is not None:
        line += f"; its workers {figures['workers_cpu_ms_in_window']:.0f} ms"
    return line + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failing", type=int, default=1000)
    parser.add_argument("--no-peers", action="store_true", help="nerve's figures only")
    args = parser.parse_args()
    cost = policy_cost(args.n, args.rounds)
    print(f"W, {args.n} runs x 3 steps, concurrency 10, best of {args.rounds} daemons each:")
    for label, rate in cost.items():
        ratio = rate / cost["no policy"]
        print(f"  {label:<14} {rate:8.0f} runs/s  {(ratio - 1) * 100:+6.1f} %")
    failing = failing_twice(args.failing)
    print(
        f"{args.failing} runs failing twice, then succeeding (delay 1s, factor 1), all at once;"
        " two waits of 1 s included:",
        flush=True,
    )
    print(_failing_line("nerve", failing, "master"), flush=True)
    if args.no_peers:
        return
    python = peers_python()
    for name in PEERS:
        print(_failing_line(name, peer(name, python, args.failing), "whole process"), flush=True)


if __name__ == "__main__":
    main()
