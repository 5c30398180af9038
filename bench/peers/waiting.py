"""What the retry peers measure while every run waits for its retry (imported by the peer
scripts, which run as scripts of this folder in the peers' own venv)."""

from __future__ import annotations

import resource
import time


def cpu_seconds() -> float:
    """User + system CPU time of this whole process (every thread), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def idle_window(first_due: float) -> tuple[float, float | None]:
    """Sleep until 20 ms before ``first_due`` (time.monotonic()), the first retry's time;
    (the seconds slept, the CPU ms the process used meanwhile), or (0.0, None) when the
    retry was due already: there was no window with every run waiting."""
    cpu0, idle_from = cpu_seconds(), time.monotonic()
    window = first_due - idle_from - 0.02
    time.sleep(max(0.0, window))
    if window <= 0:
        return 0.0, None
    return time.monotonic() - idle_from, (cpu_seconds() - cpu0) * 1000
