"""The control socket and the signal loop: round trips and sense -> signal latency.

- ``status`` round trip on one open connection (the daemon's cost per request);
- ``python -c pass``, ``nervectl --json status`` and ``nervectl status`` as whole commands
  (what an operator or a script pays: interpreter start, imports, connect, answer, output),
  interleaved in one run, each with its ratio to ``python -c pass`` (the project's targets: at
  most 2.5x and 3.5x). They run as an operator runs them: the ``nervectl`` console script
  beside this interpreter, byte-compiled (``PYTHONDONTWRITEBYTECODE`` is dropped from their
  environment and a first, untimed run writes the caches); then again as an installed
  package starts, without the editable install's path finder (see ``whole_commands``);
- sense -> signal: ``sense.trigger`` sent -> the signal visible in ``logs.query`` (polled
  with ``afterId`` on a second connection, so the figure includes up to one poll round trip).

    python -m bench.control [--n 2000] [--commands 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tabulate import tabulate

from bench.common import REPO, Daemon, pct, summary_ms, tree_rss

CONFIG = """
    senses:
      probe: {}
"""
SENSE = """
    def compute(ctx):
        return {"ok": True}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--signals", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with Daemon(CONFIG, {"senses/probe": SENSE}) as daemon:
        rpc = daemon.rpc()
        rpc.call("status")
        lat = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            rpc.call("status")
            lat.append(time.perf_counter() - t0)
        rows.append(("status round trip (open connection)", summary_ms(lat)))

        commands = whole_commands(daemon.socket, args.commands)
        rows += [(f"{name} (whole command)", summary_ms(lat)) for name, lat in commands.items()]
        installed = whole_commands(daemon.socket, args.commands, installed=True)

        poll = daemon.rpc()
        last = max([e["id"] for e in poll.call("logs.query", {"limit": 1})] or [0])
        lat = []
        for _ in range(args.signals):
            t0 = time.perf_counter()
            rpc.call("sense.trigger", {"sense": "probe"})
            while True:
                found = poll.call("logs.query", {"type": "signal", "afterId": last})
                if found:
                    lat.append(time.perf_counter() - t0)
                    last = found[-1]["id"]
                    break
        rows.append(("sense.trigger -> signal logged", summary_ms(lat)))
        rss = tree_rss(daemon.pid) / 2**20
    print(
        tabulate(
            [(name, s["n"], s["p50"], s["p99"], s["max"]) for name, s in rows],
            headers=["measure", "n", "p50 ms", "p99 ms", "max ms"],
            floatfmt=".3f",
        )
    )
    print(f"process tree RSS: {rss:.1f} MB (master + one sense worker)")
    print()
    print_ratios(commands)
    print()
    print(
        "Without the editable install's finder, as an installed package (python -S, the checkout"
        " and site-packages on PYTHONPATH; a venv's site adds about 1 ms to python -c pass):"
    )
    print_ratios(installed)


def nervectl() -> list[str]:
    """The console script an operator runs, beside this interpreter (``python -m nervectl``
    where there is none, as in a checkout run without installing)."""
    script = Path(sys.executable).with_name("nervectl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nervectl"]


def whole_commands(socket: Path, n: int, *, installed: bool = False) -> dict[str, list[float]]:
    """Seconds each of ``n`` runs took, start to exit, for the baseline and each command.

    Interleaved (one of each, n times), so that a busy machine weighs on all of them alike;
    from a directory outside the checkout, so that nothing is imported from it by accident.

    ``installed``: as a package installed without ``-e`` starts. This checkout's editable
    install has a ``.pth`` file that imports its path finder (and pathlib) at every start of
    the interpreter, ``python -c pass`` included: about 12 ms here, which an installed
    package does not pay. ``python -S`` skips it, with the checkout and site-packages on
    PYTHONPATH in its place.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["NERVE_SOCKET"] = str(socket)
    cwd = socket.parent
    python, ctl = [sys.executable], nervectl()
    if installed:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])
        python = [sys.executable, "-S"]
        ctl = [*python, "-m", "nervectl"]
    runs = {
        "python -c pass": [*python, "-c", "pass"],
        "nervectl --json status": [*ctl, "--json", "status"],
        "nervectl status": [*ctl, "status"],
    }
    for command in runs.values():  # writes the byte-code caches; checks that each works
        subprocess.run(command, check=True, capture_output=True, cwd=cwd, env=env)
    took: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(n):
        for name, command in runs.items():
            t0 = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=cwd, env=env)
            took[name].append(time.perf_counter() - t0)
    return took


TARGETS = {"nervectl --json status": 2.5, "nervectl status": 3.5}  # x python -c pass, p50


def print_ratios(commands: dict[str, list[float]]) -> None:
    """Median and p95 of each whole command, and its ratio to ``python -c pass`` (medians,
    and p95s), beside the target where there is one."""
    base = commands["python -c pass"]
    base50, base95 = pct(base, 50), pct(base, 95)
    table = []
    for name, lat in commands.items():
        p50, p95 = pct(lat, 50), pct(lat, 95)
        target = TARGETS.get(name)
        verdict = (
            "-" if target is None else f"{target}x: {'ok' if p50 / base50 <= target else 'MISSED'}"
        )
        table.append(
            (name, len(lat), f"{p50 * 1000:.1f}", f"{p95 * 1000:.1f}", f"{p50 / base50:.2f}x",
             f"{p95 / base95:.2f}x", verdict)
        )  # fmt: skip
    headers = ["whole command", "n", "p50 ms", "p95 ms", "p50 ratio", "p95 ratio", "target (p50)"]
    print(tabulate(table, headers=headers, disable_numparse=True))


if __name__ == "__main__":
    main()
