"""The master's bound on roles' timeouts, for a worker that cannot hold them itself.

A worker times its roles out itself (nerved.worker.workflow); but a role that blocks its
worker's event loop (``time.sleep`` in an ``async def``, C code holding the GIL) silences
the worker, timer and all. So when a role with a timeout begins, its worker says so
(``begin``) and the master holds the same bound :data:`BACKSTOP` seconds later.

Every step of such a role arms one, thousands a second, and almost every one is over long
before it would fire. A loop timer each would pile up in the loop's heap (a minute's worth
of cancelled timers at a 1 m timeout), so the bounds wait in one FIFO queue per timeout
(deadlines in a queue come in order: same timeout, later begin), a single loop timer is
armed for the earliest, and a bound whose step moved on is dropped when it reaches the head
of its queue. A bound is *live* while its run's step in flight is still the one it was
armed for (the same :class:`~nerved.master.workflows.runs.InFlight` object, the same worker).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nerved.loop import Loop, Timer
from nerved.master.workers import Worker
from nerved.master.workflows.runs import ActiveRun, InFlight

BACKSTOP: Final = 0.5
"""Seconds past a role's timeout after which the master ends the try itself: its worker had
the timeout first, and said nothing."""


@dataclass(frozen=True, slots=True)
class Bound:
    deadline: float  # time.monotonic()
    run: ActiveRun
    worker: Worker
    flight: InFlight  # the step it bounds: live while the run's in_flight is this one
    timeout_ms: int

    @property
    def live(self) -> bool:
        return self.run.in_flight is self.flight and self.run.worker is self.worker


class Backstops:
    """``expire(bound)`` is called for a bound whose step is still in flight at its deadline."""

    def __init__(self, loop: Loop, expire: Callable[[Bound], None]) -> None:
        self.loop = loop
        self.expire = expire
        self._queues: dict[int, deque[Bound]] = {}
        self._timer: Timer | None = None

    def arm(self, run: ActiveRun, worker: Worker, flight: InFlight, timeout_ms: int) -> None:
        deadline = time.monotonic() + timeout_ms / 1000 + BACKSTOP
        queue = self._queues.setdefault(timeout_ms, deque())
        while queue and not queue[0].live:  # the steps before it are over, most likely
            queue.popleft()
        queue.append(Bound(deadline, run, worker, flight, timeout_ms))
        if self._timer is None or deadline < self._timer.deadline:
            self._rearm()

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heads = []
        for timeout_ms, queue in list(self._queues.items()):
            while queue and not queue[0].live:
                queue.popleft()
            if queue:
                heads.append(queue[0].deadline)
            else:
                del self._queues[timeout_ms]
        if heads:
            self._timer = self.loop.call_at(min(heads), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        due: list[Bound] = []
        for queue in self._queues.values():
            while queue and queue[0].deadline <= now:
                bound = queue.popleft()
                if bound.live:
                    due.append(bound)
        for bound in due:
            if bound.live:  # an expiry before it may have ended it (the same worker)
                self.expire(bound)
        self._rearm()
