"""memoryMax where the kernel cannot hold it: the master samples what each limited unit uses.

The kernel enforces ``memoryMax`` only where a delegated cgroup has the ``memory`` controller
(``memory.max``; see :mod:`nerved.containment`). Elsewhere (no systemd; or a host whose memory
controller is bound to cgroup v1, so that a delegated cgroup v2 has no controller) the master
measures each unit that has a limit, every :data:`SAMPLE_EVERY` seconds, and kills a unit
past its limit. There is no timer at all while no live worker has a limit.

What is measured: the sum of the *proportional set size* (``Pss`` in
``/proc/<pid>/smaps_rollup``) of the unit's processes, the members of its cgroup, or of its
process group without one. PSS splits each shared page among the processes that map it, so
a worker that forks is not counted twice for the pages parent and child still share, nor for
those it shares with the master it was forked from. Its precision, against the kernel's
``memory.max``:

- a unit can go past its limit by what it allocates within one sampling interval (0.5 s,
  plus the time a pass takes) before it is killed;
- the page cache a unit's file I/O fills, kernel memory (socket buffers, page tables), and
  shared memory no process of the unit maps (a ``memfd_create`` kept as a descriptor, files
  in ``/dev/shm``, which outlive the unit too) are not counted; ``memory.max`` counts them;
- without a cgroup, a process that left the worker's process group (``setsid``, ``setpgid``)
  is neither counted nor killed.

Each pass is bounded work per loop turn: it reads ``/proc`` (one ``stat`` per process, to
find a process group's members, only when some unit has no cgroup) and one ``smaps_rollup``
per member, in slices of at most :data:`SLICE` seconds, the rest in the next turns. A host
with many processes is sampled less often, never with a stalled loop.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from nerved.containment import cgroups
from nerved.containment.unit import Unit
from nerved.loop import Loop, Timer

SAMPLE_EVERY: Final = 0.5  # seconds from the start of one pass to the start of the next
SLICE: Final = 0.005  # seconds of sampling work per loop turn at most

_PSS = re.compile(rb"^Pss:\s+([0-9]+) kB", re.MULTILINE)
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_HAS_ROLLUP: Final = os.path.exists("/proc/self/smaps_rollup")  # Linux 4.14

Exceeded = Callable[[Unit, int], None]


class MemoryWatch:
    """Samples the units ``units()`` returns; calls ``on_exceeded(unit, bytes_used)``."""

    def __init__(self, loop: Loop, units: Callable[[], list[Unit]], on_exceeded: Exceeded) -> None:
        self.loop = loop
        self._units = units
        self._on_exceeded = on_exceeded
        self._timer: Timer | None = None
        self._pass: Iterator[None] | None = None
        self._started = 0.0
        self.passes = 0

    def update(self) -> None:
        """A unit with a limit started, or a limit changed: make sure a sample is due."""
        if self._timer is None and self._pass is None and self._units():
            # Ungated: measuring and killing write nothing, and a unit must stay bounded
            # while another process holds logs.db's write lock.
            self._timer = self.loop.call_later(SAMPLE_EVERY, self._start, gated=False)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pass = None

    def _start(self) -> None:
        self._timer = None
        units = self._units()
        if not units:
            return  # the last limited unit ended: no timer until another starts
        self._started = time.monotonic()
        self._pass = self._measure(units)
        self._work()

    def _work(self) -> None:
        self._timer = None
        if self._pass is None:
            return
        until = time.monotonic() + SLICE
        for _ in self._pass:
            if time.monotonic() >= until:
                self._timer = self.loop.call_later(0, self._work, gated=False)
                return
        self._pass = None
        self.passes += 1
        if self._units():
            self._timer = self.loop.call_at(self._started + SAMPLE_EVERY, self._start, gated=False)

    def _measure(self, units: list[Unit]) -> Iterator[None]:
        """One pass over ``units``; yields after each file it reads (the loop's slices)."""
        members: dict[Unit, set[int]] = {unit: {unit.pid} for unit in units}
        by_group: dict[int, Unit] = {}
        for unit in units:
            if unit.cgroup is None:
                by_group[unit.pid] = unit
                continue
            with contextlib.suppress(OSError):
                members[unit].update(cgroups.procs(unit.cgroup))
            yield
        if by_group:
            for pid in _all_pids():
                owner = by_group.get(_process_group(pid) or 0)
                if owner is not None:
                    members[owner].add(pid)
                yield
        for unit, pids in members.items():
            used = 0
            for pid in pids:
                used += resident(pid)
                yield
            limit = unit.memory_max
            if not unit.ended and unit.exceeded is None and limit is not None and used > limit:
                self._on_exceeded(unit, used)


def _all_pids() -> Iterable[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def _process_group(pid: int) -> int | None:
    """The process group of ``pid`` (``/proc/<pid>/stat``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        return int(data.rsplit(b")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def resident(pid: int) -> int:
    """Bytes of memory ``pid`` uses: its PSS, or its RSS where PSS cannot be read (a process
    that made itself non-dumpable; Linux before 4.14); 0 once it is gone."""
    if _HAS_ROLLUP:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
                match = _PSS.search(file.read())
            return int(match.group(1)) * 1024 if match else 0
        except PermissionError:
            pass
        except OSError:
            return 0
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0
