"""Where W's time goes: the master and its worker under cProfile, and what a run costs.

Two passes of W's burst (:mod:`bench.workflows`, N runs, concurrency 10), each on a fresh
nerved with its worker warm:

1. unprofiled, with ``strace -c`` attached to the master (fsync and fdatasync only): CPU
   seconds of the master and of the worker (/proc), commits (the ``metrics`` histogram's
   count), fsyncs and the bytes the master wrote (/proc/PID/io), per run, per step message
   and per commit;
2. profiled (:mod:`bench.profiled`: cProfile switched on by signal once the worker is warm,
   off after the last run): the top functions of the master and of the worker, by
   cumulative and by own time, in ms per 1,000 runs, and the calls of JSON's encoder and
   decoder per step message.

The profiler slows what it measures (every Python call is counted), so the tables say
where the time goes, not what it is; pass 1 says what it is. Their times are wall clock
(cProfile's default): a C call's own time includes what it waits for, so SQLite's
``execute`` holds the COMMIT's fsync and epoll's ``poll`` the idle waits.

    python -m bench.profile [--n 3000] [--top 25]
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Daemon, cpu_seconds
from bench.profiled import START, STOP
from bench.workflows import burst, config_for, packages_for, warm

STEPS = 3  # of each run of W: step messages from the worker, each acknowledged


def worker_pid(daemon: Daemon) -> int:
    rpc = daemon.rpc()
    workers = rpc.call("status")["workers"]
    rpc.close()
    return next(w["pid"] for w in workers if w["kind"] == "workflow")


def commits(daemon: Daemon) -> tuple[int, float]:
    """Commits so far and their seconds in all (the commit-duration histogram)."""
    rpc = daemon.rpc()
    text = rpc.call("metrics")["text"]
    rpc.close()
    count = re.search(r"^nerve_store_commit_duration_seconds_count (\S+)$", text, re.M)
    total = re.search(r"^nerve_store_commit_duration_seconds_sum (\S+)$", text, re.M)
    assert count and total, "no commit histogram in the metrics"
    return int(float(count[1])), float(total[1])


def costs(n: int, strace: bool) -> dict[str, Any]:
    """Pass 1: what W costs the master, unprofiled; with ``strace``, the fsyncs too (then
    every syscall of the master stops for strace: its time and CPU are not W's)."""
    with Daemon(config_for(["w"], 10, n), packages_for(["w"])) as daemon:
        warm(daemon, ["w"])
        worker = worker_pid(daemon)
        commits0, seconds0 = commits(daemon)
        trace = daemon.dir / "strace.txt"
        tracer = None
        if strace:
            tracer = subprocess.Popen(
                ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace),
                 "-p", str(daemon.pid)],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # attached
        master0, worker0 = cpu_seconds(daemon.pid), cpu_seconds(worker)
        wrote0 = written(daemon.pid)
        result = burst(daemon, ["w"], n, 10)
        master1, worker1 = cpu_seconds(daemon.pid), cpu_seconds(worker)
        wrote1 = written(daemon.pid)
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        commits1, seconds1 = commits(daemon)
        calls = re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$",
                           trace.read_text() if strace else "", re.M)  # fmt: skip
    return {
        "runs_per_s": result["runs_per_s"],
        "master_cpu_s": master1 - master0,
        "worker_cpu_s": worker1 - worker0,
        "commits": max(commits1 - commits0, 1),
        "commit_s": seconds1 - seconds0,
        "fsyncs": sum(int(c) for c, _name in calls),
        "written": (wrote1[0] - wrote0[0], wrote1[1] - wrote0[1]),
    }


def written(pid: int) -> tuple[int, int]:
    """Bytes a process passed to write(2) and its kin, and those calls (/proc/PID/io
    ``wchar``, ``syscw``): for the master, the WAL's pages (its log lines are off in W)."""
    with open(f"/proc/{pid}/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return int(fields["wchar"]), int(fields["syscw"])


def profiles(n: int, out: Path) -> None:
    """Pass 2: the master and its worker under cProfile, for the burst only."""
    launcher = ("-m", "bench.profiled", str(out))
    with Daemon(config_for(["w"], 10, n), packages_for(["w"]), launcher=launcher) as daemon:
        warm(daemon, ["w"])
        worker = worker_pid(daemon)
        for pid in (daemon.pid, worker):
            os.kill(pid, START)
        time.sleep(0.2)
        burst(daemon, ["w"], n, 10)
        for pid in (daemon.pid, worker):
            os.kill(pid, STOP)
        while not ((out / "master.prof").exists() and (out / f"worker-{worker}.prof").exists()):
            time.sleep(0.05)
        (out / f"worker-{worker}.prof").rename(out / "worker.prof")


def top(path: Path, n: int, key: str, count: int) -> list[tuple[str, float, float, float]]:
    """(function, calls, own ms, cumulative ms) per 1,000 runs, ``count`` largest by ``key``."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    per = 1000 / n
    rows = []
    for (file, line, name), (_cc, calls, tt, ct, _callers) in stats.items():
        where = f"{Path(file).name}:{line}({name})" if line else name
        rows.append((where, calls * per, tt * 1000 * per, ct * 1000 * per))
    rows.sort(key=lambda r: r[2] if key == "tottime" else r[3], reverse=True)
    return rows[:count]


JSON_CALLS = ("(dumps)", "(loads)", "(encode)", "(decode)", "(raw_decode)", "(iterencode)")


def json_calls(path: Path, n: int) -> list[tuple[str, float]]:
    """Calls of json's and wire's encoders and decoders per step message."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_cc, calls, *_rest) in stats.items():
        where = f"{Path(file).name}:{line}({name})"
        if Path(file).name in ("__init__.py", "encoder.py", "decoder.py", "wire.py") and any(
            where.endswith(j) for j in JSON_CALLS
        ):
            rows.append((where, calls / (n * STEPS)))
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", type=Path, help="keep the .prof files in this directory")
    args = parser.parse_args()
    from tabulate import tabulate

    n = args.n
    c = costs(n, strace=False)
    traced = costs(n, strace=True)
    per_commit = traced["fsyncs"] / traced["commits"]
    print(f"W, N={n}, unprofiled: {c['runs_per_s']:.0f} runs/s")
    rows = [
        ("master CPU per run (µs)", c["master_cpu_s"] / n * 1e6),
        ("master CPU per step message (µs; CPU / 3N)", c["master_cpu_s"] / (n * STEPS) * 1e6),
        ("master CPU per commit (µs)", c["master_cpu_s"] / c["commits"] * 1e6),
        ("worker CPU per run (µs)", c["worker_cpu_s"] / n * 1e6),
        ("commits per run", c["commits"] / n),
        ("runs per commit", n / c["commits"]),
        ("commit (COMMIT statement, fsync in it) mean (µs)", c["commit_s"] / c["commits"] * 1e6),
        ("fsyncs per commit (a second pass, under strace)", per_commit),
        ("fsyncs per run (commits per run x fsyncs per commit)", c["commits"] / n * per_commit),
        ("master KB written per run (write(2): the WAL)", c["written"][0] / n / 1024),
        ("master writes per run (write(2) calls)", c["written"][1] / n),
    ]
    print(tabulate(rows, floatfmt=".3f"))
    out = Path(tempfile.mkdtemp(prefix="nerve-profile-"))
    try:
        profiles(n, out)
        for who in ("master", "worker"):
            for key in ("cumtime", "tottime"):
                print(f"\n{who}, top {args.top} by {key}, per 1,000 runs (profiled)")
                print(tabulate(top(out / f"{who}.prof", n, key, args.top),
                               headers=["function", "calls", "own ms", "cum ms"],
                               floatfmt=".1f"))  # fmt: skip
        print("\nmaster: JSON encodes and decodes per step message (all of a run's calls / 3N)")
        print(tabulate(json_calls(out / "master.prof", n), headers=["function", "calls"],
                       floatfmt=".2f"))  # fmt: skip
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for prof in out.glob("*.prof"):
                shutil.copy(prof, args.keep / prof.name)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
