"""What bounding a moderator call costs (nerved.worker.timebox), per call, beside the alternatives.

The moderator is on the hot path: four calls a run of workload W, about 8,000 a second at
the benchmark's throughput. Timed in this process, over the benchmark's own moderator:

- bare: the call alone;
- timebox: :meth:`Timebox.call` (soft ``setitimer`` and hard POSIX timer, armed and
  disarmed around the call), the bound as the worker applies it;
- soft only: the two ``setitimer`` calls alone;
- faulthandler: ``dump_traceback_later`` and its cancel around the call, the alternative
  for the hard bound (an OS thread started and joined per call).

    python -m bench.timebox [--n 200000]
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import time
from collections.abc import Callable
from typing import Any

from nerved.api import ThreadState
from nerved.worker.timebox import MODERATOR_KILL, MODERATOR_TIMEOUT, REFIRE, Timebox


def moderate(thread: ThreadState, event: Any) -> Any:
    """bench.workflows' moderator."""
    n = len(thread.events)
    return {"role": "step", "prompt": n} if n <= 3 else None


def per_call_us(label: str, call: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 10_000)):  # warm up
        call()
    best = float("inf")
    for _ in range(5):  # the best of five: the machine is noisy
        started = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    print(f"  {label:<14} {best:7.2f} µs a call")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    state = ThreadState("r" * 32, "w", ({"type": "thread_start", "payload": None},))
    event = state.events[-1]
    box = Timebox()

    def soft_only() -> object:
        signal.setitimer(signal.ITIMER_REAL, MODERATOR_TIMEOUT, REFIRE)
        try:
            return moderate(state, event)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def with_faulthandler() -> object:
        faulthandler.dump_traceback_later(MODERATOR_KILL, exit=True)
        try:
            return moderate(state, event)
        finally:
            faulthandler.cancel_dump_traceback_later()

    print(f"moderator call, best of 5 x {args.n:,}:")
    bare = per_call_us("bare", lambda: moderate(state, event), args.n)
    boxed = per_call_us("timebox", lambda: box.call(moderate, state, event), args.n)
    per_call_us("soft only", soft_only, args.n)
    per_call_us("faulthandler", with_faulthandler, max(1, args.n // 20))
    added = boxed - bare
    print(
        f"bound added: {added:.2f} µs a call; at 8,000 calls/s (W at ~2,000 runs/s)"
        f" {added * 8000 / 1e4:.1f} % of one core"
    )


if __name__ == "__main__":
    main()
