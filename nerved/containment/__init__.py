"""Containment: a worker and everything it starts is one unit, ended as one, held to memoryMax.

**The unit.** Every worker leads a process group of its own (:func:`nerved.process.spawn`);
what it forks stays in that group unless it leaves on purpose (``setsid``, ``setpgid``: a
group of its own, or another of the session). Under systemd with ``Delegate=yes``
(:mod:`nerved.containment.cgroups`), each worker also gets a cgroup of its own, entered
before any user code runs, which sessions and process groups do not change.
:meth:`Containment.start` finds out which applies, once, and says so in the log.

**Ending a unit.** Whenever a worker ends, however it ends (it exited after ``stop`` or
``idleTimeout``; it crashed; the master killed it on a timeout, a drain, a protocol error,
memoryMax, a stop, a storage failure), the whole unit is killed: while the worker is alive
by :meth:`Unit.kill`, and once it has ended by :meth:`Containment.ended`, which the reaper
calls while the worker is still an unreaped zombie. That timing is what makes signalling
the group safe: the kernel does not hand out a pid that is still in use as a process
group's id, and the zombie keeps its own (its pid and its group's id) until it is reaped.
So the group id names the worker's leftovers and only them (a forked copy of the worker
that returned into its code, a daemonised child still in the group), and SIGKILL to it
ends them. A cgroup is killed with ``cgroup.kill`` (forks in flight included) and removed
once empty.

**What is not covered.** Without systemd, a process that left its worker's group is out of
reach (the cgroup catches it), and a ``kill -9`` of the master ends the workers
(``PR_SET_PDEATHSIG``) but not what they started: no process is left to kill those. A
worker is never made a child subreaper to catch them: it would take the exit statuses of
user code's grandchildren, which ``subprocess`` and ``os.wait`` must see.

Containment bounds careless code, not code that means harm: user code runs as nerved's user,
which owns the delegated cgroup files, so it can move a process into the master's cgroup or
into one it makes, or raise its own ``memory.max``; nothing unprivileged can stop that. What
it can be seen doing is undone cheaply: at start every cgroup below ours but the master's is
swept, and each time a worker ends, cgroups nerved did not make and processes in the master's
cgroup but the master are killed (:meth:`Containment._sweep_strays`). A cgroup's name is
never reused (:meth:`Containment._new_cgroup`).

**memoryMax.** Where the delegated cgroups have the ``memory`` controller, the kernel holds
each unit to ``memory.max`` (``memory.oom.group=1``: its OOM killer ends the unit as a whole)
and ``memory.events`` tells, once the worker is reaped, that it did. Elsewhere
:class:`nerved.containment.memwatch.MemoryWatch` samples the units and kills one past its
limit. Both say so in the same words (:func:`exceeded`), in the log and as the reason the
worker ended, which the crash rules then apply to.

A unit itself (:class:`Unit`) is a leaf module, :mod:`nerved.containment.unit`, which this
module and the sampler both import: the sampler need not import this package, which imports it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from nerved.containment import cgroups, memwatch
from nerved.containment.unit import Unit
from nerved.loop import Loop, Timer
from nerved.process import spawn
from nerved.wire import size_text

__all__ = ["MAX_NAME_TRIES", "SWEEP_EVERY", "SWEEP_WARN", "Containment", "Unit", "exceeded"]

log = logging.getLogger(__name__)

SWEEP_EVERY: Final = 0.1  # seconds between two tries to remove the cgroups of ended units
SWEEP_WARN: Final = 10.0  # a cgroup not empty after this long is worth a warning
MAX_NAME_TRIES: Final = 100  # names tried for a worker's cgroup (all taken: not contained)


def exceeded(limit: int, used: int) -> str:
    """Why a unit was killed for memory; the same words whoever noticed (kernel or sampler)."""
    over = used - limit
    by = f" by {size_text(over)}" if over > 0 else ""
    return f"memoryMax {size_text(limit)} exceeded{by}: {size_text(used)} in use, killed"


class Containment:
    """The master's side: how units are made, watched and ended."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.delegated: cgroups.Delegated | None = None
        self.kernel_memory = False
        self.units: dict[int, Unit] = {}
        self._graveyard: dict[Path, float] = {}  # cgroups of ended units, and since when
        self._warned: set[Path] = set()
        self._sweeper: Timer | None = None
        self.watch = memwatch.MemoryWatch(loop, self._sampled, self._exceeded)

    @property
    def mode(self) -> str:
        return "process group" if self.delegated is None else "cgroup"

    # -- start ---------------------------------------------------------------------------

    def start(self) -> str:
        """Find out which containment applies, set it up, log it once; returns that line."""
        found = cgroups.find_delegated()
        why = found if isinstance(found, str) else None
        if isinstance(found, cgroups.Delegated):
            try:
                self._set_up(found)
            except OSError as exc:
                why = f"cannot use the delegated cgroup {found.name}: {exc}"
        sampled = f"memoryMax sampled every {memwatch.SAMPLE_EVERY:g}s"
        if self.delegated is None:
            line = f"containment: a process group per worker; {sampled}; no cgroups: {why}"
        elif self.kernel_memory:
            line = (
                f"containment: a cgroup per worker under {self.delegated.name};"
                " memoryMax enforced by the kernel (memory.max)"
            )
        else:
            line = (
                f"containment: a cgroup per worker under {self.delegated.name}; {sampled}"
                " (no memory controller delegated)"
            )
        log.info("%s", line)
        return line

    def _set_up(self, delegated: cgroups.Delegated) -> None:
        """Move the master into a leaf, enable the memory controller, sweep leftovers."""
        master = delegated.child(cgroups.MASTER)
        with contextlib.suppress(FileExistsError):
            os.mkdir(master)
        cgroups.move(master, os.getpid())
        self.kernel_memory = "memory" in delegated.controllers() and delegated.enable("memory")
        self._sweep_strays(delegated, at_start=True)
        self.delegated = delegated

    def _sweep_strays(self, delegated: cgroups.Delegated, *, at_start: bool = False) -> None:
        """Kill and remove every cgroup below ours that is not a live unit's, the master's
        or systemd's, and any process in the master's cgroup but the master.

        At start that is what an earlier nerved left. After, it is what user code did: it
        runs as nerved's user, so it may make cgroups there and move processes into them, or
        into the master's (nothing unprivileged can stop it, README "Containment"); what
        moved into another unit's cgroup ends with that unit. Looked for each time a worker
        ends (:meth:`ended`): a listing of two directories and one read of
        ``master/cgroup.procs``, so that such a process lives at most until the next end.
        """
        master = delegated.child(cgroups.MASTER)
        known = {unit.cgroup for unit in self.units.values()} | set(self._graveyard)
        strays = [path for path in delegated.children() if path not in known]
        strays += cgroups.children(master)  # nothing of nerved's is ever below the master
        for path in strays:
            why = "left by an earlier nerved" if at_start else "not made by nerved (user code?)"
            log.warning("killing and removing cgroup %s, %s", path, why)
            with contextlib.suppress(OSError):
                cgroups.kill(path)
            self._bury(path)
        me = os.getpid()
        try:
            found = [pid for pid in cgroups.procs(master, below=False) if pid != me]
        except OSError:
            return
        for pid in found:
            if cgroups.kill_if_in(master, pid):
                why = "left by an earlier nerved" if at_start else "user code moved it there"
                log.warning(
                    "killed process %d found in the master's cgroup %s: %s", pid, master, why
                )

    # -- units ---------------------------------------------------------------------------

    def spawn(
        self,
        kind: str,
        name: str,
        title: str,
        child_main: Callable[[socket.socket], int],
        memory_max: int | None,
    ) -> tuple[Unit, socket.socket]:
        """Fork a worker in a unit of its own; OSError when it cannot be made (no fork, no
        cgroup), with nothing left behind."""
        delegated = self.delegated
        kernel_memory = self.kernel_memory
        made: list[Path] = []

        def contain(pid: int) -> None:
            assert delegated is not None
            path = self._new_cgroup(delegated, f"{kind}-{name}-{pid}")
            try:
                if kernel_memory:
                    cgroups.set_memory_max(path, memory_max)
                cgroups.move(path, pid)
            except OSError:
                with contextlib.suppress(OSError):
                    cgroups.remove(path)
                raise
            made.append(path)

        pid, sock = spawn(title, child_main, contain=None if delegated is None else contain)
        cgroup = made[0] if made else None
        unit = Unit(kind, name, pid, cgroup, memory_max, kernel_memory and cgroup is not None)
        self.units[pid] = unit
        self.watch.update()
        return unit, sock

    def _new_cgroup(self, delegated: cgroups.Delegated, name: str) -> Path:
        """Make a new cgroup, never one that is still there or still to be removed.

        ``<kind>-<name>-<pid>``, or if that is taken, ``.2``, ``.3``... after it: a pid is
        reused in time, and a unit's cgroup may outlive its worker (in the graveyard, while
        its killed processes are not gone yet: a process stuck in the kernel stays). Reusing
        it would put the new worker where the sweeper kills every 0.1 s, with whatever is
        left of the old unit.
        """
        for n in range(1, MAX_NAME_TRIES + 1):
            path = delegated.child(name if n == 1 else f"{name}.{n}")
            if path in self._graveyard:
                continue
            try:
                cgroups.create(path)
            except FileExistsError:
                continue
            return path
        raise FileExistsError(errno.EEXIST, "no free cgroup name", str(delegated.child(name)))

    def set_memory_max(self, unit: Unit, limit: int | None) -> None:
        """A reload changed the unit's limit: it applies from now on."""
        if unit.memory_max == limit or unit.ended:
            return
        unit.memory_max = limit
        if unit.kernel_memory and unit.cgroup is not None:
            try:
                cgroups.set_memory_max(unit.cgroup, limit)
            except OSError as exc:
                log.warning("%s: cannot set memory.max: %s", unit, exc)
        self.watch.update()

    def ended(self, pid: int) -> None:
        """The worker ``pid`` ended and is not reaped yet: kill what is left of its unit.

        Called by the reaper while the worker is a zombie (see the module docstring); also
        tells from ``memory.events`` whether the kernel killed it for memoryMax.
        """
        unit = self.units.pop(pid, None)
        if unit is None:
            return
        unit.kill()
        unit.ended = True
        if unit.cgroup is not None:
            if unit.kernel_memory and unit.exceeded is None and unit.memory_max is not None:
                events = cgroups.memory_events(unit.cgroup)
                if events.get("oom_kill", 0) or events.get("oom_group_kill", 0):
                    peak = cgroups.memory_peak(unit.cgroup) or unit.memory_max
                    unit.exceeded = exceeded(unit.memory_max, peak)
                    log.error("%s: %s", unit, unit.exceeded)
            self._bury(unit.cgroup)
            if self.delegated is not None:
                self._sweep_strays(self.delegated)

    # -- memoryMax by sampling -----------------------------------------------------------

    def _sampled(self) -> list[Unit]:
        """The units the sampler watches: a limit the kernel does not hold them to."""
        return [
            unit for unit in self.units.values()
            if unit.memory_max is not None and not unit.kernel_memory and unit.exceeded is None
        ]  # fmt: skip

    def _exceeded(self, unit: Unit, used: int) -> None:
        assert unit.memory_max is not None
        unit.exceeded = exceeded(unit.memory_max, used)
        log.error("%s: %s", unit, unit.exceeded)
        unit.kill()

    # -- cgroups of ended units ----------------------------------------------------------

    def _bury(self, path: Path) -> None:
        """Remove an ended unit's cgroup now, or once its killed processes are gone."""
        try:
            if cgroups.remove(path):
                return
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", path, exc)
            return
        self._graveyard.setdefault(path, time.monotonic())
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_EVERY, self._sweep, gated=False)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for path, since in list(self._graveyard.items()):
            try:
                cgroups.kill(path)  # a process in the middle of a fork when it was killed
                gone = cgroups.remove(path)
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", path, exc)
                gone = True
            if gone:
                del self._graveyard[path]
                self._warned.discard(path)
            elif now - since > SWEEP_WARN and path not in self._warned:
                self._warned.add(path)
                log.warning("cgroup %s still has processes %gs after SIGKILL", path, SWEEP_WARN)
        if self._graveyard:
            self._sweeper = self.loop.call_later(SWEEP_EVERY, self._sweep, gated=False)

    def close(self, timeout: float = 1.0) -> None:
        """At exit: stop sampling, and give the last ended units' cgroups ``timeout`` seconds
        to empty (what remains, systemd removes with the service's cgroup)."""
        self.watch.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        deadline = time.monotonic() + timeout
        while self._graveyard and time.monotonic() < deadline:
            for path in list(self._graveyard):
                with contextlib.suppress(OSError):
                    if cgroups.remove(path):
                        del self._graveyard[path]
            if self._graveyard:
                time.sleep(0.01)
