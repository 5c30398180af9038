"""Workload W on PostgreSQL (issue 15): one host, three hosts on ``any``, and a takeover.

In one run, on one throwaway PostgreSQL cluster (:class:`bench.pgcluster.PgCluster`: the
machine's PostgreSQL, a Unix socket, ``fsync`` on; its processes' memory is not counted):

- ``nerve sqlite``: W as :mod:`bench.workflows` measures it (its functions), for scale;
- ``nerve postgresql``: the same, with ``--store`` a fresh database of the cluster;
- ``dbos postgresql``: DBOS on the same workload with its system database there
  (bench/peers/dbos_pg.py, in the peers' venv; a fresh database for its burst, another for
  its one-at-a-time runs); ``--no-peers`` leaves it out;
- ``nerve postgresql x3 any``: three nerved (their own host id, state directory and
  socket) on one database, W's workflow with ``placement: any`` (its concurrency is over
  all three hosts): N triggers spread round robin over the three sockets, ``--window`` in
  flight on each; runs/s (first trigger ->
  last completion, from the runs' ``updatedAt``), how many runs each host drove (a run's
  ``host``), and the three trees' RSS;
- takeover: three hosts again, a workflow whose one step sleeps :data:`NAP` seconds, runs
  triggered on every socket; once a host drives some of them, its master and its workers'
  process groups are killed (SIGKILL), and a surviving host is polled until each of the
  dead host's runs is ``started`` on another host or has ended: ``takeover_s`` is the kill
  -> the last of them, beside the lease it waits out (``lease_s``, nerved's default:
  ``$NERVE_LEASE_MS`` is unset for the hosts). It can be below the lease: the lease lapses
  its length after the last renewal, which came up to a fifth of it before the kill.

The last two need ``placement: any`` (issue 15, being built): where nerved refuses the key,
or a second host on the database, they are skipped, saying so on stderr.

``--json`` prints one JSON object, ``{engine: {metric: value}}`` (ms, MiB, s), and nothing
else on stdout; progress goes to stderr. ``--quick``: N=100 and 20 runs one at a time, a
smoke run; the takeover still waits out a whole lease (10 s), which ``--no-takeover`` spares.

    python -m bench.pg [--n 1000] [--iso 200] [--quick] [--no-peers] [--no-takeover] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from bench.common import Daemon, DaemonExited, Rpc, run_anchor, tree_rss
from bench.pgcluster import PgCluster, dbname_of, pg_unavailable
from bench.workflows import WORKFLOW, metrics, run_nerve

HOSTS: Final = 3
DBOS_PG = Path(__file__).resolve().parent / "peers" / "dbos_pg.py"
DBOS_POLL: Final = "0.01"
"""DBOS's queue polling interval (s), as bench.workflows runs it on SQLite."""
FINAL: Final = frozenset({"completed", "failed", "crashed", "dropped", "cancelled"})
NAP: Final = 2.0
"""Seconds the takeover's one step sleeps: the dead host's runs are mid-step when it dies."""
UNSUPPORTED: Final = "placement: any not supported by this nerved"

CONFIG_ANY = """
    workflows:
      w:
        placement: any
        concurrency: {conc}
        overflow: queue
        maxQueue: {queue}
        idleTimeout: 1h
"""

NAPPING = f"""
    import time

    from nerved import WorkflowDefinition

    def nap(prompt, ctx):
        time.sleep({NAP})
        return {{"type": "nap", "ok": True}}

    def moderate(thread, event):
        return {{"role": "nap", "prompt": 0}} if len(thread.events) <= 1 else None

    workflow = WorkflowDefinition(roles={{"nap": nap}}, moderate=moderate)
"""


class Unsupported(Exception):
    """What nerved refused, for a part that needs ``placement: any``."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def nerve_on(cluster: PgCluster, n: int, iso: int, conc: int, window: int) -> dict[str, float]:
    """W on one nerved whose store is a fresh database of ``cluster``."""
    dsn = cluster.create_database()
    try:
        return run_nerve(n, iso, conc, window, extra=("--store", dsn, "--host-id", "bench"))
    finally:
        cluster.drop_database(dbname_of(dsn))


def dbos_on(cluster: PgCluster, n: int, iso: int, conc: int) -> dict[str, float]:
    """DBOS's burst and one-at-a-time runs, each on a fresh database (its run ids repeat)."""
    results = []
    for mode in ("burst", "iso"):
        name = dbname_of(cluster.create_database())
        try:
            env = {"DBOS_PG_URL": cluster.url(name)}
            results.append(run_anchor(DBOS_PG, mode, DBOS_POLL, n=n, iso=iso, conc=conc, env=env))
        finally:
            cluster.drop_database(name)
    b, i = results
    return metrics(
        b["runs_per_s"], b["steps_per_s"], b["e2e_latency_ms"], b["enqueue_latency_ms"],
        i["e2e_latency_ms"], i["enqueue_latency_ms"], b["peak_tree_rss_kb"] / 1024,
    )  # fmt: skip


@contextlib.contextmanager
def hosts(cluster: PgCluster, config: str, code: str) -> Iterator[list[Daemon]]:
    """:data:`HOSTS` nerved on one fresh database, each its own host id, state directory
    and socket; :class:`Unsupported` if nerved refuses ``placement`` or a second host."""
    dsn = cluster.create_database()
    try:
        with contextlib.ExitStack() as stack:
            daemons = []
            for number in range(1, HOSTS + 1):
                daemon = Daemon(config, {"workflows/w": code},
                                extra=("--store", dsn, "--host-id", f"h{number}"))  # fmt: skip
                daemon.env.pop("NERVE_LEASE_MS", None)  # nerved's default lease, always
                try:
                    daemons.append(stack.enter_context(daemon))
                except DaemonExited as exited:
                    said = [line for line in exited.log.splitlines() if "placement" in line]
                    if said:
                        raise Unsupported(f"{UNSUPPORTED} ({said[-1].strip()})") from None
                    if number > 1 and exited.code == 75:
                        raise Unsupported(
                            f"{UNSUPPORTED} (a second host on the database is refused: exit 75)"
                        ) from None
                    raise
            yield daemons
    finally:
        cluster.drop_database(dbname_of(dsn))


def read_runs(rpc: Rpc, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The runs ``ids`` as one host reads them from the shared store (a list, and an
    inspect of any the list's page left out)."""
    listed = rpc.call("workflow.list", {"all": True, "limit": min(len(ids) + 100, 10_000)})
    runs = {r["runId"]: r for r in listed}
    for run_id in ids:
        if run_id not in runs:
            runs[run_id] = rpc.call("workflow.inspect", {"runId": run_id, "limit": 1})
    return {run_id: runs[run_id] for run_id in ids}


def spread(daemons: list[Daemon], n: int, window: int) -> tuple[float, list[str], float]:
    """N triggers round robin over the hosts' sockets (the i-th to socket i mod 3), up to
    ``window`` in flight on each; returns when every answer is read: (the first trigger's
    time, the run ids, the peak of the three trees' RSS, sampled every 100 answers)."""
    conns = [daemon.rpc() for daemon in daemons]
    quota = [len(range(index, n, len(conns))) for index in range(len(conns))]
    sent = [0] * len(conns)
    in_flight = [0] * len(conns)
    ids: list[str] = []
    peak = 0
    started = time.time()
    while len(ids) < n:
        for index, conn in enumerate(conns):
            while sent[index] < quota[index] and in_flight[index] < window:
                conn.send("workflow.trigger", {"workflow": "w"})
                in_flight[index] += 1
                sent[index] += 1
            if in_flight[index]:
                ids.append(conn.read()["result"]["runId"])
                in_flight[index] -= 1
                if len(ids) % 100 == 0:
                    peak = max(peak, sum(tree_rss(d.pid) for d in daemons))
    for conn in conns:
        conn.close()
    return started, ids, float(peak)


def wait_final(rpc: Rpc, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll one host until every run of ``ids`` has ended; the runs as it read them last."""
    deadline = time.monotonic() + timeout
    while True:
        runs = read_runs(rpc, ids)
        if all(r["status"] in FINAL for r in runs.values()):
            return runs
        if time.monotonic() > deadline:
            left = sum(r["status"] not in FINAL for r in runs.values())
            raise SystemExit(f"{left} of {len(ids)} runs not ended after {timeout} s")
        time.sleep(0.2)


def three_hosts(cluster: PgCluster, n: int, conc: int, window: int) -> dict[str, float]:
    """W on three hosts sharing one database, ``placement: any``: runs/s, runs per host."""
    config = CONFIG_ANY.format(conc=conc, queue=max(n, 100))
    with hosts(cluster, config, WORKFLOW) as daemons:
        observer = daemons[0].rpc()
        # A few runs first, so that the hosts' workers have forked before anything is timed
        # (polled: under ``any`` the host a run is triggered on need not be the one that
        # drives it, nor answer its workflow.wait).
        wait_final(observer, spread(daemons, 3 * conc, window)[1], timeout=60)
        started, ids, peak = spread(daemons, n, window)
        runs = wait_final(observer, ids, timeout=60 + n * 0.2)
        peak = max(peak, sum(tree_rss(d.pid) for d in daemons))
        observer.close()
    failed = [r for r in ids if runs[r]["status"] != "completed"]
    if failed:
        raise SystemExit(f"{len(failed)} runs did not complete: {failed[:3]}")
    if any("host" not in run for run in runs.values()):
        raise Unsupported(f"{UNSUPPORTED} (its runs carry no host)")
    wall = max(r["updatedAt"] for r in runs.values()) / 1000 - started
    drove = Counter(str(r["host"]) for r in runs.values())
    return {
        "runs_per_s": n / wall,
        "steps_per_s": 3 * n / wall,
        **{f"runs_host_{host}": float(drove[host]) for host in sorted(drove)},
        "rss_mb": peak / 2**20,
    }


def kill_host(daemon: Daemon) -> None:
    """SIGKILL a nerved's master and its workers' process groups (each worker leads one)."""
    groups = set()
    for child in children(daemon.pid):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(child))
    os.kill(daemon.pid, signal.SIGKILL)
    for group in groups - {os.getpgid(0)}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait()


def children(pid: int) -> list[int]:
    """A process's children (/proc)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def takeover(cluster: PgCluster, conc: int) -> dict[str, float]:
    """Kill -9 a host while it drives runs; the time until a survivor drives them all."""
    from nerved.master.leases import LEASE_MS  # nerved's default: $NERVE_LEASE_MS is unset

    config = CONFIG_ANY.format(conc=conc, queue=100)
    with hosts(cluster, config, NAPPING) as daemons:
        ids = []
        for daemon in daemons:
            rpc = daemon.rpc()
            ids += [rpc.call("workflow.trigger", {"workflow": "w"})["runId"] for _ in range(conc)]
            rpc.close()
        probe = daemons[0].rpc()
        deadline = time.monotonic() + 30
        while True:  # until some host drives runs: the one that drives most is killed
            runs = read_runs(probe, ids)
            if any("host" not in run for run in runs.values()):
                raise Unsupported(f"{UNSUPPORTED} (its runs carry no host)")
            driving = Counter(r["host"] for r in runs.values() if r["status"] == "started")
            if driving or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        probe.close()
        if not driving:
            raise SystemExit("no host started a run in 30 s")
        victim_id = driving.most_common(1)[0][0]
        victim = {f"h{number}": d for number, d in enumerate(daemons, 1)}[victim_id]
        observer = next(d for d in daemons if d is not victim).rpc()
        orphans = [
            r for r in ids if runs[r]["host"] == victim_id and runs[r]["status"] not in FINAL
        ]
        say(f"  killing host {victim_id} (driving {len(orphans)} runs)...")
        killed = time.monotonic()
        kill_host(victim)
        taken: dict[str, float] = {}
        while len(taken) < len(orphans) and time.monotonic() - killed < 10 * LEASE_MS / 1000:
            for run_id, run in read_runs(observer, orphans).items():
                moved = run["status"] == "started" and run["host"] not in (victim_id, None)
                if run_id not in taken and (moved or run["status"] in FINAL):
                    taken[run_id] = time.monotonic() - killed
            time.sleep(0.05)
        observer.close()
        victim.proc = None  # dead already: nothing to stop
    if len(taken) < len(orphans):
        raise SystemExit(f"{len(orphans) - len(taken)} of host {victim_id}'s runs not taken over")
    return {
        "takeover_s": max(taken.values()),
        "takeover_first_s": min(taken.values()),
        "takeover_runs": float(len(orphans)),
        "lease_s": LEASE_MS / 1000,
    }


def table(results: dict[str, dict[str, float]]) -> str:
    """Engines as columns, metrics as rows (a metric an engine has not: blank)."""
    from tabulate import tabulate

    keys = list(dict.fromkeys(key for figures in results.values() for key in figures))
    return tabulate(
        [[key, *(r.get(key, "") for r in results.values())] for key in keys],
        headers=["", *results], floatfmt=".2f",
    )  # fmt: skip


def measure(cluster: PgCluster, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every part in turn; a part that needs ``placement: any`` is skipped where nerved
    has it not, saying so."""
    n, iso, conc, window = args.n, args.iso, args.conc, args.window
    say(f"nerve sqlite: W, N={n}, iso {iso}...")
    results = {"nerve sqlite": run_nerve(n, iso, conc, window)}
    say("nerve postgresql, one host...")
    results["nerve postgresql"] = nerve_on(cluster, n, iso, conc, window)
    if not args.no_peers:
        say("dbos postgresql...")
        results["dbos postgresql"] = dbos_on(cluster, n, min(iso, 30), conc)
    say(f"nerve postgresql, {HOSTS} hosts on any...")
    try:
        results[f"nerve postgresql x{HOSTS} any"] = three_hosts(cluster, n, conc, window)
        if not args.no_takeover:
            say(f"takeover: kill -9 of a host driving runs ({NAP:g} s steps)...")
            results[f"nerve postgresql x{HOSTS} any"].update(takeover(cluster, conc))
    except Unsupported as refused:
        say(f"  skipped: {refused}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--iso", type=int, default=200)
    parser.add_argument("--conc", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="triggers in flight per socket")
    parser.add_argument("--quick", action="store_true", help="N=100, iso 20: a smoke run")
    parser.add_argument("--no-peers", action="store_true", help="leave DBOS out")
    parser.add_argument("--no-takeover", action="store_true",
                        help="leave the takeover out (it waits out a lease)")  # fmt: skip
    parser.add_argument("--json", action="store_true",
                        help="one JSON object on stdout, {engine: {metric: value}}")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.n, args.iso = min(args.n, 100), min(args.iso, 20)
    if (reason := pg_unavailable()) is not None:
        raise SystemExit(f"PostgreSQL: {reason}")
    cluster = PgCluster()
    try:
        results = measure(cluster, args)
    finally:
        cluster.destroy()
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"\nWorkload W on PostgreSQL (fsync on, Unix socket): N={args.n} runs x 3 steps,"
        f" concurrency {args.conc}, window {args.window} (per socket: {HOSTS} hosts' triggers"
        f" spread round robin); iso: one at a time ({args.iso} nerve"
        + ("" if args.no_peers else f", {min(args.iso, 30)} DBOS")
        + ")"
    )
    print(table(results))
    many = results.get(f"nerve postgresql x{HOSTS} any", {})
    if "takeover_s" in many:
        print(
            f"takeover after kill -9: {many['takeover_s']:.1f} s (lease {many['lease_s']:g} s,"
            f" nerved's default; {many['takeover_runs']:.0f} runs of the killed host)"
        )


if __name__ == "__main__":
    main()
