"""What the master counts as things happen, for the metrics: plain numbers, no library.

A hook on a hot path (a step recorded, a commit) costs a dict lookup and an increment; the
metric families are built from these counts only when someone asks
(nerved.master.metrics.families). Counters start at zero with the process, as Prometheus
counters do (``rate()`` and ``increase()`` take a restart as a reset).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Final

from nerved.states import RunStatus, Transition

# Upper bounds (seconds) of a step's duration: from a role that only returns a value (a
# millisecond) to one that runs for an hour; a longer step falls in +Inf.
STEP_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
# A commit of logs.db: tens of microseconds on an idle disk, seconds on a saturated one.
COMMIT_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
MAX_ROLES: Final = 256  # roles one workflow's series name; the code defines them, not a run
OTHER_ROLE: Final = "_other"  # where a role past MAX_ROLES is counted (a label never unbounded)


class Histogram:
    """Observations counted by bucket (not cumulative: the exposition sums them), with their
    sum: what a Prometheus histogram exposes, kept without its library."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        value = max(value, 0.0)
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value on a bound is in it
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count)]`` as the exposition writes them, ``+Inf`` last."""
        buckets, total = [], 0
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        return buckets


def _le(bound: float) -> str:
    return repr(bound)  # 0.001, 1.0, 3600.0: as prometheus_client's own histograms write them


@dataclass(eq=False)
class FlowTally:
    """What one workflow counted since the process started: its runs by final status, its
    steps' durations and failed tries by role. Held by its Flow, so a workflow that a reload
    removes takes its series with it."""

    ended: dict[RunStatus, int] = field(default_factory=dict)
    steps: dict[str, Histogram] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def moved(self, transition: Transition) -> None:
        """A run of it moved: counted once it reaches a final status."""
        status = transition.target
        if status.is_final:
            self.ended[status] = self.ended.get(status, 0) + 1

    def stepped(self, role: str, seconds: float) -> None:
        """A step of ``role`` was recorded, ``seconds`` after its try was handed out."""
        histogram = self.steps.get(role)
        if histogram is None:
            if len(self.steps) >= MAX_ROLES:
                role = OTHER_ROLE
            histogram = self.steps.setdefault(role, Histogram(STEP_BUCKETS))
            if role not in self.failures and len(self.failures) < MAX_ROLES:
                self.failures[role] = 0  # its failures' series, there at 0 before the first
        histogram.observe(seconds)

    def failed(self, role: str) -> None:
        """A try of ``role`` failed (whatever follows: a retry, the moderator, the end)."""
        if role not in self.failures and len(self.failures) >= MAX_ROLES:
            role = OTHER_ROLE
        self.failures[role] = self.failures.get(role, 0) + 1
