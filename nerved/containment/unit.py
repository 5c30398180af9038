"""A worker's unit: its process group and cgroup, what it is held to, and how it is killed.

A leaf of the containment package: the manager (:class:`nerved.containment.Containment`)
makes units, and the sampler (:mod:`nerved.containment.memwatch`) measures them; both import
it from here, so that neither has to import the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from nerved.containment import cgroups

log = logging.getLogger("nerved.containment")


@dataclass(eq=False)
class Unit:
    """A worker's unit: its process group (id = the worker's pid) and cgroup, if any."""

    kind: str
    name: str
    pid: int
    cgroup: Path | None
    memory_max: int | None
    kernel_memory: bool  # memory.max is set in its cgroup: the kernel holds it to the limit
    ended: bool = False
    exceeded: str | None = None  # why it was killed for memory, in exceeded()'s words

    def __str__(self) -> str:
        return f"{self.kind} {self.name} worker pid {self.pid}"

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the whole unit: only while its worker is unreaped (alive or a zombie).

        The worker itself is signalled by pid too, in case user code moved it to another
        process group; SIGKILL also goes to its cgroup.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signum)
        if signum == signal.SIGKILL and self.cgroup is not None:
            try:
                cgroups.kill(self.cgroup)
            except OSError as exc:
                log.warning("%s: cannot kill its cgroup %s: %s", self, self.cgroup, exc)
