"""nerved.containment.memwatch in-process: no timer without a limit, bounded slices, what a pass measures.

The daemon-level behaviour (a unit past memoryMax is killed, its runs follow the crash rules)
is in test_containment.py; here the sampler runs against this very process's group, with a
loop that only records timers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nerved.containment import Unit, memwatch
from nerved.loop import Timer


class RecordingLoop:
    """Records timers instead of running them; ``run_due`` runs those due by then."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Timer, bool]] = []

    def call_later(
        self, delay: float, callback: Callable[[], None], *, gated: bool = True
    ) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        self.timers.append((delay, timer, gated))
        return timer

    def call_at(
        self, deadline: float, callback: Callable[[], None], *, gated: bool = True
    ) -> Timer:
        return self.call_later(deadline - time.monotonic(), callback, gated=gated)

    def pending(self) -> list[tuple[float, Timer, bool]]:
        return [entry for entry in self.timers if not entry[1].cancelled]

    def run_next(self) -> None:
        _, timer, _ = self.pending()[0]
        timer.cancelled = True
        timer.callback()


def unit(pid: int, limit: int | None) -> Unit:
    return Unit("workflow", "w", pid, None, limit, kernel_memory=False)


def watch(units: list[Unit]) -> tuple[memwatch.MemoryWatch, RecordingLoop, list[tuple[Unit, int]]]:
    loop = RecordingLoop()
    exceeded: list[tuple[Unit, int]] = []

    def limited() -> list[Unit]:
        return [u for u in units if u.memory_max is not None and not u.ended]

    sampler = memwatch.MemoryWatch(loop, limited, lambda u, used: exceeded.append((u, used)))
    return sampler, loop, exceeded


def test_no_timer_at_all_while_no_unit_has_a_limit() -> None:
    sampler, loop, _ = watch([unit(os.getpid(), None)])
    sampler.update()
    assert loop.timers == []


def test_a_pass_sums_a_process_groups_memory_and_reports_a_unit_past_its_limit(
    tmp_path: Path,
) -> None:
    # A child in a process group of its own holding 64 MiB, as a worker's unit would.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; b = b'x' * (64 << 20); print(1, flush=True);"
         " time.sleep(60)"],
        stdout=subprocess.PIPE, process_group=0,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline()
        small, large = unit(child.pid, 32 << 20), unit(child.pid, 1 << 30)
        sampler, loop, exceeded = watch([small, large])
        sampler.update()
        [(delay, _, gated)] = loop.pending()
        assert (delay, gated) == (memwatch.SAMPLE_EVERY, False)  # memory is held, lock or not
        while sampler.passes == 0:
            loop.run_next()
        assert [(u, used >= 64 << 20) for u, used in exceeded] == [(small, True)]
        [(delay, _, _)] = loop.pending()  # the next pass, half a second after this one began
        assert 0 < delay <= memwatch.SAMPLE_EVERY
        small.memory_max = large.memory_max = None
        loop.run_next()
        assert loop.pending() == []  # the last limit is gone: so is the timer
    finally:
        child.kill()
        child.wait()


def test_a_pass_works_in_slices_of_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memwatch, "SLICE", 0.0)  # one file read per turn at most
    sampler, loop, _ = watch([unit(os.getpid(), 1 << 40)])
    sampler.update()
    turns = 0
    while sampler.passes == 0:
        loop.run_next()
        turns += 1
    assert turns > 10  # /proc has that many processes: each read was a turn of its own


def test_resident_is_pss_and_zero_once_gone() -> None:
    assert memwatch.resident(os.getpid()) > 1 << 20
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert memwatch.resident(child.pid) == 0
