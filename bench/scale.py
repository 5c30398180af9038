"""nerve at scale: a store of 100,000 kept runs and 1,000,000 log entries.

The store is written straight into logs.db (nerve's :class:`~nerved.store.Store` creates
the schema; the rows then go in with ``executemany`` in one transaction, as a nerved that
ran for months would have left them): 100,000 completed runs of workflow ``w`` with nine
entries each (``started``, seven steps, ``completed``), one of them with a long history
(2,000 steps), and sense signals up to one million entries in all. Then, on a nerved
started on a copy of it (retention off, so nothing is pruned meanwhile):

- p50 / p99 of ``workflow.list`` (the newest 100 of every status), ``workflow.inspect`` of
  a run of nine entries and of the long one, as a client asks it (no params but the run:
  the default page, its newest 100 entries of 2,002, with ``earlier`` counted over all of
  them), and ``logs.query`` with ``limit: 100``, without filters and with each kind of
  filter (a type, a run, a sense), one at a time;
- W's runs/s (:mod:`bench.workflows`' burst) on that store against an empty one, in the
  same session;
- start -> READY=1 with 10,000 active runs added to the full store (half started with two
  steps each, half queued: :func:`bench.recovery.seed_store`), and with 10,000 runs waiting
  for a signal with a deadline an hour away instead (:func:`bench.recovery.seed_waiting`):
  each the median of three starts, byte-compiled as an installed nerved starts;
- the master's wake-ups (voluntary context switches, /proc/PID/status) and CPU over 5 s of
  idling with those 10,000 waiting runs, against an empty store: a deadline is one entry
  of the loop's timer heap, and nothing polls, so they should be the same.

Each figure is printed beside issue 14's target and whether it holds. ``--quick`` divides
the sizes by ten (for a first look; the targets are for the full sizes).

    python -m bench.scale [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

from tabulate import tabulate

from bench.common import Daemon, Rpc, idle, scratch_root, summary_ms
from bench.recovery import WORKFLOW as RECOVERING
from bench.recovery import ready_on, seed_store, seed_waiting, warm_start
from bench.workflows import WORKFLOW, burst, warm
from nerved.store import Store

CONFIG: Final = """
    workflows:
      w: {concurrency: 10, overflow: queue, maxQueue: 100000, idleTimeout: 1h}
    retention:
      runs: {maxAge: null, maxCount: null}
      signals: {maxAge: null}
"""
STEPS: Final = 7  # per kept run: with its started and completed entries, nine
LONG: Final = 2000  # steps of the one run inspect reads
QUERIES: Final = 300  # requests timed per kind
IDLE: Final = 5.0  # seconds the master's wake-ups are counted over
RECOVERY_CONFIG: Final = """
    workflows:
      w: {concurrency: 5000, maxQueue: 100000, idleTimeout: 1h}
    retention:
      runs: {maxAge: null, maxCount: null}
      signals: {maxAge: null}
"""  # retention off: its first prune of the 100,000 kept runs would be counted as idling


def fill(path: Path, runs: int, entries: int) -> tuple[str, str]:
    """Write ``runs`` completed runs, and sense signals up to ``entries`` entries in all,
    into a new logs.db at ``path``; returns the ids of a run with the long history and of
    a short one."""
    Store(path).close()  # the schema, as nerved makes it
    path.chmod(0o600)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    t0 = int(time.time() * 1000) - 86_400_000  # a day ago, one ms per run from there
    step = json.dumps({"role": "step", "prompt": 1, "event": {"type": "step", "ok": True,
                       "pad": "x" * 48}}, separators=(",", ":"))  # fmt: skip
    long_run, short_run = uuid.uuid4().hex, uuid.uuid4().hex
    signals = max(0, entries - runs * (STEPS + 2) - (LONG - STEPS))
    every = max(1, runs // signals) if signals else 0
    run_rows: list[tuple[Any, ...]] = []
    log_rows: list[tuple[Any, ...]] = []
    for i in range(runs):
        ts = t0 + i
        run_id = {runs // 2: long_run, runs // 3: short_run}.get(i) or uuid.uuid4().hex
        steps = LONG if run_id == long_run else STEPS
        payload = json.dumps({"i": i})
        run_rows.append((run_id, "w", "completed", ts, ts + steps + 1, payload, steps))
        log_rows.append(("workflow", "started", run_id, payload, ts))
        log_rows += [("workflow", "step_complete", run_id, step, ts + n) for n in range(steps)]
        log_rows.append(("workflow", "completed", run_id, None, ts + steps + 1))
        for _ in range(min(signals, 1 if i % every == 0 else 0) if every else 0):
            log_rows.append(("sense", "signal", "disk", '{"used":0.5}', ts))
            signals -= 1
        if len(log_rows) > 200_000:
            flush(db, run_rows, log_rows)
    log_rows += [("sense", "signal", "disk", '{"used":0.5}', t0 + runs)] * signals
    flush(db, run_rows, log_rows)
    db.close()
    return long_run, short_run


def flush(db: sqlite3.Connection, runs: list[tuple[Any, ...]], logs: list[tuple[Any, ...]]):
    with db:
        db.executemany(
            "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at,"
            " trigger_payload, steps) VALUES (?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        db.executemany(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES (?, ?, ?, ?, ?)", logs
        )
    runs.clear()
    logs.clear()


def timed_calls(rpc: Rpc, method: str, params: dict[str, Any]) -> dict[str, float]:
    rpc.call(method, params)  # once untimed: the pages it reads come into the cache
    times = []
    for _ in range(QUERIES):
        t0 = time.perf_counter()
        rpc.call(method, params)
        times.append(time.perf_counter() - t0)
    return summary_ms(times)


def daemon_on(db: Path | None) -> Daemon:
    """A nerved for W whose state directory starts with a copy of ``db`` (None: empty)."""
    daemon = Daemon(CONFIG, {"workflows/w": WORKFLOW})
    if db is not None:
        daemon.state.mkdir(mode=0o700)
        shutil.copyfile(db, daemon.state / "logs.db")
        (daemon.state / "logs.db").chmod(0o600)
    return daemon


def measure(runs: int, entries: int, n: int, active: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="nerve-scale-"))
    try:
        db = base / "logs.db"
        started = time.perf_counter()
        long_run, short_run = fill(db, runs, entries)
        count = sqlite3.connect(db).execute("SELECT COUNT(*) FROM logs").fetchone()[0]
        print(f"  filled: {runs} runs, {count} entries, {db.stat().st_size / 2**20:.0f} MiB"
              f" in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)  # fmt: skip
        out: dict[str, Any] = {"runs": runs, "entries": count}
        with daemon_on(db) as daemon:
            rpc = daemon.rpc()
            queries = {
                "workflow.list": ("workflow.list", {"all": True, "limit": 100}),
                "workflow.inspect (9 entries)": ("workflow.inspect", {"runId": short_run}),
                f"workflow.inspect ({LONG:,} steps, default page)": (
                    "workflow.inspect",
                    {"runId": long_run},
                ),
                "logs.query": ("logs.query", {"limit": 100}),
                "logs.query type": ("logs.query", {"type": "step_complete", "limit": 100}),
                "logs.query runId": ("logs.query", {"runId": long_run, "limit": 100}),
                "logs.query sense": ("logs.query", {"sense": "disk", "limit": 100}),
            }
            out["queries"] = {k: timed_calls(rpc, *v) for k, v in queries.items()}
            rpc.close()
            warm(daemon, ["w"])
            out["w_full"] = burst(daemon, ["w"], n, 10)["runs_per_s"]
        with daemon_on(None) as daemon:
            warm(daemon, ["w"])
            out["w_empty"] = burst(daemon, ["w"], n, 10)["runs_per_s"]
        root = scratch_root(base / "recovering", RECOVERY_CONFIG, {"workflows/w": RECOVERING})
        warm_start(root, base)
        waiting = base / "waiting.db"
        shutil.copyfile(db, waiting)
        seed_store(db, active)
        out["ready_s"] = sorted(ready_on(root, db, base))[1]  # the median of three
        seed_waiting(waiting, active)
        out["ready_waiting_s"] = sorted(ready_on(root, waiting, base))[1]
        out["idle"] = {"empty": idle_master(None), "waiting": idle_master(waiting)}
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def idle_master(db: Path | None) -> dict[str, float]:
    """The master's wake-ups and CPU over :data:`IDLE` seconds of idling on a copy of
    ``db`` (None: an empty store), from 1 s after READY=1 (the first metrics and upkeep
    turns are over by then). Its runs wait with deadlines an hour away: nothing may poll."""
    daemon = Daemon(RECOVERY_CONFIG, {"workflows/w": RECOVERING})
    if db is not None:
        daemon.state.mkdir(mode=0o700)
        shutil.copyfile(db, daemon.state / "logs.db")
        (daemon.state / "logs.db").chmod(0o600)
    with daemon:
        time.sleep(1)
        return idle(daemon.pid, IDLE)


def report(out: dict[str, Any], active: int) -> None:
    rows = []
    for name, s in out["queries"].items():
        rows.append((f"{name} p50 / p99 ms", f"{s['p50']:.2f} / {s['p99']:.2f}", "p99 <= 5",
                     s["p99"] <= 5.0))  # fmt: skip
    change = out["w_full"] / out["w_empty"] - 1
    rows.append(("W runs/s, full store / empty", f"{out['w_full']:.0f} / {out['w_empty']:.0f}"
                 f" ({change:+.1%})", "within 10 %", change >= -0.10))  # fmt: skip
    rows.append((f"start -> READY=1, {active} active runs", f"{out['ready_s'] * 1000:.0f} ms",
                 "<= 300 ms", out["ready_s"] <= 0.3))  # fmt: skip
    rows.append((f"start -> READY=1, {active} waiting runs",
                 f"{out['ready_waiting_s'] * 1000:.0f} ms", "<= 300 ms",
                 out["ready_waiting_s"] <= 0.3))  # fmt: skip
    empty, waiting = out["idle"]["empty"], out["idle"]["waiting"]
    rows.append((f"master wake-ups / CPU over {IDLE:g} s idle, {active} waiting runs",
                 f"{waiting['wakeups']:.0f} / {waiting['cpu_ms']:.0f} ms (empty store:"
                 f" {empty['wakeups']:.0f} / {empty['cpu_ms']:.0f} ms)",
                 "as with none", waiting["wakeups"] <= empty["wakeups"] * 1.2 + 5))  # fmt: skip
    print(f"A store of {out['runs']:,} kept runs and {out['entries']:,} log entries")
    print(tabulate([(m, v, t, "holds" if ok else "MISSED") for m, v, t, ok in rows],
                   headers=["measure", "value", "target", ""]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    parser.add_argument("--n", type=int, default=1000, help="runs of W on each store")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    runs, entries, active = 100_000 // scale, 1_000_000 // scale, 10_000 // scale
    out = measure(runs, entries, args.n, active)
    if args.json:
        print(json.dumps(out))
    else:
        report(out, active)


if __name__ == "__main__":
    main()
