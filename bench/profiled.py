"""nerved under cProfile, for :mod:`bench.profile`; nothing of the daemon's code changes.

``python -m bench.profiled OUT nerved-args...`` runs nerved as ``python -m nerved`` would,
with a profiler that is off until asked: :data:`START` (SIGRTMIN+1) starts a fresh one
(and zeroes the counts), :data:`STOP` (SIGRTMIN+2) stops it and writes ``OUT/master.prof``
and ``OUT/master.json`` (commits that wrote something, as :meth:`Store.commit` makes
them). A workflow worker forked from it does the same for itself (``OUT/worker-PID.prof``)
when sent the same signals: cProfile follows one thread, and the master's loop and a
worker's (its roles are async) each run on their process's main thread. Real-time signals,
because nerved gives SIGUSR1 and SIGUSR2 handlers of its own (it logs that it ignores
them); it leaves these alone.
"""

from __future__ import annotations

import cProfile
import json
import os
import runpy
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Final

from nerved.store import sqlite as store_sqlite
from nerved.worker import workflow as workflow_worker

START: Final = signal.SIGRTMIN + 1
STOP: Final = signal.SIGRTMIN + 2


class Toggle:
    """A profiler of this process, switched by :data:`START` and :data:`STOP`; ``name``:
    its files."""

    def __init__(self, out: Path, name: str) -> None:
        self.out, self.name = out, name
        self.profile: cProfile.Profile | None = None
        self.counts = {"commits": 0}
        signal.signal(START, self.start)
        signal.signal(STOP, self.stop)

    def start(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        self.counts = dict.fromkeys(self.counts, 0)
        self.profile = cProfile.Profile()
        self.profile.enable()

    def stop(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        if self.profile is None:
            return
        self.profile.disable()
        self.profile.dump_stats(self.out / f"{self.name}.prof")
        (self.out / f"{self.name}.json").write_text(json.dumps(self.counts))
        self.profile = None


def main() -> None:
    out = Path(sys.argv[1])
    master = Toggle(out, "master")
    real_commit = store_sqlite.Store.commit

    def commit(store: store_sqlite.Store) -> None:
        if store._wrote:  # a commit that reaches the disk
            master.counts["commits"] += 1
        real_commit(store)

    store_sqlite.Store.commit = commit  # type: ignore[method-assign]
    real_run = workflow_worker.run

    def worker_run(*args: Any, **kwargs: Any) -> int:
        Toggle(out, f"worker-{os.getpid()}")  # the master's, inherited, is off in here
        return real_run(*args, **kwargs)

    workflow_worker.run = worker_run
    os.register_at_fork(after_in_child=lambda: master.profile and master.profile.disable())
    sys.argv = ["nerved", *sys.argv[2:]]
    runpy.run_module("nerved", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
