"""Recovery: start-up with 10,000 unfinished runs in the store, and a worker's sudden death.

- start -> READY=1 with N active runs in logs.db (half started with two logged steps each,
  half queued), for a workflow whose worker then resumes them: recovery is everything
  nerved does before READY=1 (rebuild queues, reload each started run's events, hand them
  to a worker), so this is the time an operator waits after a crash;
- worker kill -9 -> threads running again: 10 threads inside a step, the worker is killed,
  and the time until each re-run step has started in the successor is read from the events.

    python -m bench.recovery [--runs 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from bench.common import REPO, Daemon, pct, scratch_root
from nerved import wire
from nerved.states import Transition
from nerved.store import Store
from nerved.store.records import now_ms
from nerved.store.refs import new_run_id

WORKFLOW = """
    import asyncio, os, time
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        started = time.time()
        gate = (prompt or {}).get("gate")
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.001)
        return {"type": "step", "started": started, "pid": os.getpid()}

    def moderate(thread, event):
        if len(thread.events) > 3:
            return None
        return {"role": "step", "prompt": thread.events[0]["payload"]}

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def seed_store(path: Path, runs: int) -> None:
    """Write ``runs`` active runs straight into a fresh logs.db, as a dead nerved left them."""
    store = Store(path)
    for i in range(runs):
        run_id = new_run_id()  # as nerve makes them (nerved.store.refs)
        if i % 2:
            store.create_run(run_id, "w", Transition.ENQUEUE, {"i": i})
        else:
            store.create_run(run_id, "w", Transition.START, {"i": i})
            for n in range(2):
                record = {"role": "step", "prompt": None, "event": {"type": "step", "n": n}}
                store.record_step(run_id, wire.dumps(record))
        if i % 1000 == 999:
            store.commit()
    store.commit()
    store.close()


def seed_waiting(path: Path, runs: int, timeout_ms: int = 3_600_000) -> None:
    """Add ``runs`` runs of ``w`` to logs.db, each waiting for signal ``go`` with a deadline
    ``timeout_ms`` from now, as nerved parks them (Storage.record_wait)."""
    store = Store(path)
    for i in range(runs):
        run_id = new_run_id()  # as nerve makes them (nerved.store.refs)
        store.create_run(run_id, "w", Transition.START, {"i": i})
        until = now_ms() + timeout_ms
        wait = {"wait": "go", "timeout": timeout_ms, "until": until}
        store.record_wait(run_id, wire.dumps(wait), "go", until)
        if i % 1000 == 999:
            store.commit()
    store.commit()
    store.close()


def time_to_ready(root: Path, state: Path) -> float:
    """Seconds from nerved's exec to its READY=1, on the state directory ``state``.

    nerved runs byte-compiled, as an installed package does (its byte-code caches are
    written by a first start, :func:`warm_start`): a ``PYTHONDONTWRITEBYTECODE`` in the
    environment would have every start compile nerved's modules again (about 100 ms here).
    """
    sock = state.parent / f"{state.name}.sock"
    notify_path = state.parent / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(300)
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nerved", "--root", str(root), "--state-dir", str(state),
         "--socket", str(sock), "--log-level", "warning", "--no-watch"],
        env={**env, "NOTIFY_SOCKET": str(notify_path)}, cwd=REPO,
    )  # fmt: skip
    while b"READY=1" not in notify.recv(4096):
        pass
    elapsed = time.perf_counter() - t0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    notify.close()
    return elapsed


def warm_start(root: Path, base: Path) -> None:
    """Start nerved once on an empty state directory under ``base``, untimed: the byte-code
    caches of its modules are written, as an installed package has them."""
    time_to_ready(root, base / "warm-state")
    shutil.rmtree(base / "warm-state", ignore_errors=True)


def ready_on(root: Path, db: Path, base: Path, n: int = 3) -> list[float]:
    """:func:`time_to_ready` ``n`` times, each on a fresh copy of ``db`` (a start writes)."""
    times = []
    for i in range(n):
        state = base / f"ready-state-{i}"
        state.mkdir(mode=0o700)
        shutil.copyfile(db, state / "logs.db")
        (state / "logs.db").chmod(0o600)
        times.append(time_to_ready(root, state))
        shutil.rmtree(state, ignore_errors=True)
    return times


def bench_start(runs: int) -> list[tuple[str, float]]:
    config = "workflows:\n  w: {concurrency: 5000, maxQueue: 100000, idleTimeout: 1h}\n"
    base = Path(tempfile.mkdtemp(prefix="nerve-bench-"))
    try:
        root = scratch_root(base, config, {"workflows/w": WORKFLOW})
        warm_start(root, base)
        rows = [("start -> READY=1, empty store", time_to_ready(root, base / "empty"))]
        seed_store(base / "seed" / "logs.db", runs)
        ready = sorted(ready_on(root, base / "seed" / "logs.db", base))
        rows.append((f"start -> READY=1, {runs} active runs (median of 3)", ready[1]))
        return rows
    finally:
        shutil.rmtree(base, ignore_errors=True)


def bench_worker_kill(threads: int) -> dict[str, float]:
    config = f"workflows:\n  w: {{concurrency: {threads}, idleTimeout: 1h, maxAttempts: 5}}\n"
    with Daemon(config, {"workflows/w": WORKFLOW}) as daemon:
        gate = daemon.dir / "gate"
        rpc = daemon.rpc()
        payload = {"workflow": "w", "payload": {"gate": str(gate)}}
        runs = [rpc.call("workflow.trigger", payload)["runId"] for _ in range(threads)]
        pid = next(w["pid"] for w in rpc.call("status")["workers"] if w["kind"] == "workflow")
        time.sleep(0.3)  # every thread is inside its step (they wait for the gate)
        gate.touch()  # the re-run steps finish at once
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        restarted = []
        for run_id in runs:
            rpc.call("workflow.wait", {"runId": run_id})
            events = rpc.call("workflow.inspect", {"runId": run_id})["events"]
            first = next(e["payload"]["event"] for e in events if e["type"] == "step_complete")
            assert first["pid"] != pid
            restarted.append(first["started"] - t_kill)
    return {"first": min(restarted) * 1000, "p50": pct(restarted, 50) * 1000,
            "last": max(restarted) * 1000}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=10)
    args = parser.parse_args()
    rows = bench_start(args.runs)
    print(tabulate([(name, f"{s * 1000:.0f}") for name, s in rows], headers=["measure", "ms"]))
    kill = bench_worker_kill(args.threads)
    print(
        f"\nworker kill -9 -> its {args.threads} threads' steps running again in a new worker: "
        f"first {kill['first']:.1f} ms, median {kill['p50']:.1f} ms, last {kill['last']:.1f} ms"
    )


if __name__ == "__main__":
    main()
