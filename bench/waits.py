"""Runs that wait: signal -> next role started, and what 10,000 waiting runs cost the master.

1. **Latency.** A workflow whose moderator waits for the signal ``go`` at once, then runs
   the role ``stamp``, which returns ``time.time()`` as it starts. ``--n`` runs (default
   200), one at a time so that it is latency, not queueing: trigger, poll until the run is
   ``waiting``, then ``workflow.signal`` over the socket; measured from just before the
   send to the role's start (the clock is the same wall clock in both processes), and to
   the signal's answer (durable). The worker stays (``idleTimeout: 1h``): a warm worker.
2. **10,000 waiting runs.** A workflow of concurrency ``--parked`` whose moderator waits
   for ``go`` with a 1 h timeout. First the master with no runs (its baseline), then
   ``--parked`` triggers (pipelined, 200 in flight), the time until every run is
   ``waiting``, the worker's idle exit (``idleTimeout: 2s``), and then the master's CPU
   time (utime + stime, /proc/PID/stat, in clock ticks: "0 ms" reads "under a tick") and
   voluntary context switches (its wake-ups, /proc/PID/status) over ``--window`` seconds,
   and its RSS. Then nerved is stopped (SIGTERM) and started again on the same store: the
   time to READY=1 with every run waiting (each run's deadline armed again).

Beside nerve, DBOS (``bench/peers/dbos_waits.py``, its own venv as in ``bench.retries``):
``DBOS.recv(topic, timeout_seconds)`` in a workflow, ``DBOS.send`` from outside, on its
SQLite system database: the same latency (at its default notification polling of 1 s, on
at most 30 runs, and at 0.01 s) and the same idle window with ``--parked`` workflows
blocked in ``recv``. Huey has no signal a task can wait for: it is said so, not measured.
``--no-peers`` leaves them out.

    python -m bench.waits [--n 200] [--parked 10000] [--window 10] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import Daemon, Rpc, idle, summary_ms
from bench.recovery import time_to_ready, warm_start
from bench.retries import peers_python

WORKFLOW = """
    import time
    from nerved import WorkflowDefinition, wait_for

    async def stamp(prompt, ctx):
        return {"type": "stamped", "at": time.time()}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return wait_for("go", timeout="1h")
        if event["type"] == "signal":
            return {"role": "stamp", "prompt": None}
        return None

    workflow = WorkflowDefinition(roles={"stamp": stamp}, moderate=moderate)
"""


def _status_of(rpc: Rpc, run_id: str) -> str:
    return str(rpc.call("workflow.inspect", {"runId": run_id})["status"])


def _until_waiting(rpc: Rpc, run_id: str) -> None:
    while _status_of(rpc, run_id) != "waiting":
        time.sleep(0.001)


def latency(n: int) -> dict[str, dict[str, float]]:
    """Signal -> role started, and signal -> answer, over ``n`` runs one at a time."""
    config = "workflows:\n  w: {concurrency: 1, idleTimeout: 1h}\n"
    to_role: list[float] = []
    to_answer: list[float] = []
    with Daemon(config, {"workflows/w": WORKFLOW}) as daemon:
        rpc = daemon.rpc()
        for i in range(n + 5):  # the first 5 warm up (the worker forks on the first)
            run_id = rpc.call("workflow.trigger", {"workflow": "w"})["runId"]
            _until_waiting(rpc, run_id)
            t0 = time.time()
            rpc.call("workflow.signal", {"runId": run_id, "name": "go"})
            answered = time.time()
            rpc.call("workflow.wait", {"runId": run_id})
            events = rpc.call("workflow.inspect", {"runId": run_id})["events"]
            stamped = next(e for e in events if e["type"] == "step_complete")
            if i >= 5:
                to_role.append(stamped["payload"]["event"]["at"] - t0)
                to_answer.append(answered - t0)
        rpc.close()
    return {"role": summary_ms(to_role), "answer": summary_ms(to_answer)}


def _workflow_worker_gone(rpc: Rpc) -> bool:
    workers = rpc.call("status")["workers"]
    return not any(w["kind"] == "workflow" and w["pid"] for w in workers)


def parked(runs: int, window: float) -> dict[str, Any]:
    config = f"workflows:\n  w: {{concurrency: {runs}, idleTimeout: 2s}}\n"
    with Daemon(config, {"workflows/w": WORKFLOW}) as daemon:
        rpc = daemon.rpc()
        baseline = idle(daemon.pid, window)
        t0 = time.perf_counter()
        sent, in_flight = 0, 0
        while sent < runs or in_flight:
            while sent < runs and in_flight < 200:
                rpc.send("workflow.trigger", {"workflow": "w"})
                sent, in_flight = sent + 1, in_flight + 1
            rpc.read()
            in_flight -= 1
        busy = {"status": ["queued", "started"], "limit": 1}
        while rpc.call("workflow.list", busy):
            time.sleep(0.05)
        park_s = time.perf_counter() - t0
        waiting = len(rpc.call("workflow.list", {"status": "waiting", "limit": 10000}))
        if waiting != runs:
            raise SystemExit(f"{waiting} of {runs} runs are waiting")
        while not _workflow_worker_gone(rpc):
            time.sleep(0.1)
        loaded = idle(daemon.pid, window)
        rpc.close()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(60)
        warm_start(daemon.root, daemon.dir)  # byte-compiled, as an installed nerved starts
        ready_s = time_to_ready(daemon.root, daemon.state)
    return {"baseline": baseline, "loaded": loaded, "park_s": park_s, "ready_s": ready_s}


def peer(args: list[str], timeout: float) -> dict[str, Any] | str:
    """Run the DBOS script with ``args``: its JSON figures, or why there are none."""
    script = Path(__file__).resolve().parent / "peers" / "dbos_waits.py"
    try:
        done = subprocess.run(
            [peers_python(), str(script), *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"not measured: timed out after {timeout:.0f} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"not measured: exit {done.returncode}: {said}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _latency_line(name: str, figures: dict[str, Any] | str) -> str:
    if isinstance(figures, str):
        return f"  {name:<26} {figures}"
    role = figures["role"]
    return (
        f"  {name:<26} p50 {role['p50']:7.2f}  p99 {role['p99']:7.2f}  max {role['max']:7.2f} ms"
        f"  (n={role['n']})"
    )


def _idle_line(name: str, figures: dict[str, Any], window: float) -> str:
    return (
        f"  {name:<34} CPU {figures['cpu_ms']:5.0f} ms over {window:.0f} s,"
        f" {figures['wakeups']:6d} voluntary switches, RSS {figures['rss_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--no-peers", action="store_true", help="nerve's figures only")
    args = parser.parse_args()

    nerve = latency(args.n)
    answer = nerve["answer"]
    print("signal -> next role started, one run at a time:", flush=True)
    print(_latency_line("nerve (worker warm)", nerve), flush=True)
    print(
        f"  {'':<26} (signal answered, durable: p50 {answer['p50']:.2f}, p99 {answer['p99']:.2f}"
        " ms)",
        flush=True,
    )
    if not args.no_peers:
        for poll, n in (("1.0", min(args.n, 30)), ("0.01", args.n)):  # 1 s: 1.5 s a sample
            figures = peer(["latency", str(n), poll], timeout=300)
            print(_latency_line(f"dbos (recv, poll {poll} s)", figures), flush=True)
        print(f"  {'huey':<26} not measured: Huey has no signal a task can wait for", flush=True)

    loaded = parked(args.parked, args.window)
    print(f"{args.parked} waiting runs (1 h timeouts), the master alone:", flush=True)
    print(_idle_line("nerve master, no runs", loaded["baseline"], args.window), flush=True)
    print(_idle_line(f"nerve master, {args.parked} waiting", loaded["loaded"], args.window))
    print(
        f"  parked in {loaded['park_s']:.2f} s (first trigger -> every run waiting);"
        f" restart -> READY=1 with them in {loaded['ready_s'] * 1000:.0f} ms",
        flush=True,
    )
    if args.no_peers:
        return
    dbos = peer(["idle", str(args.parked), str(args.window)], timeout=600 + args.parked * 0.1)
    if isinstance(dbos, str):
        print(f"  {'dbos':<34} {dbos}", flush=True)
        return
    print(_idle_line("dbos process, no workflows", dbos["baseline"], args.window))
    print(_idle_line(f"dbos process, {args.parked} in recv", dbos["loaded"], args.window))
    print(
        f"  parked in {dbos['park_s']:.2f} s ({dbos['threads']} threads while waiting;"
        f" {dbos['note']})",
        flush=True,
    )
    print(f"  {'huey':<34} not measured: Huey has no signal a task can wait for", flush=True)


if __name__ == "__main__":
    main()
