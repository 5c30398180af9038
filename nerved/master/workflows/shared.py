"""``placement: any`` workflows on a store several hosts share: claims and takeovers.

The runs of such a workflow are queued in the store, not in this master's memory: any host
serving the workflow *claims* them (nerved.store.postgres.queue: FIFO, ``concurrency`` held
over every host, each host to its share of the slots), in its batch, and its worker hears of
a claimed run once that batch is committed, as of any run. This host claims

- at the end of a turn that queued a run of the workflow here (a trigger), or freed one of
  its slots here (a run ended), in that turn's batch before its commit (the claim reads the
  batch's own connection: it sees both), so that the runs it claims start with that commit;
- every :data:`CLAIM_EVERY`, for what other hosts queued or freed (a claim that could find
  nothing costs one read of the committed view, and writes nothing);

and never while it stops, nor for a workflow whose worker cannot be had (fatal, or backing
off: claimed runs would wait on this host while another could run them).

Every :data:`TAKEOVER_EVERY` it looks for hosts whose lease lapsed that left started or
waiting runs of the workflows it serves, takes them over (their host's epoch moved on: it is
fenced) and resumes each from its logged events, as after a worker's crash (roles are
at-least-once): :func:`~.rebuild.adopt`, the rule recovery applies.

With a store one host holds (SQLite) nothing here runs: ``any`` is ``local``.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from nerved.config import Overflow, Placement
from nerved.loop import Loop, Timer
from nerved.master.workflows import rebuild
from nerved.master.workflows.admission import Admission
from nerved.master.workflows.runs import Flow
from nerved.states import Transition, WorkerState
from nerved.store import ActiveRecord, Storage
from nerved.store.interface import Leasing

log = logging.getLogger("nerved.master.workflows")

CLAIM_EVERY: Final = 0.25
"""Seconds between two looks at the shared queue of each ``any`` workflow: how long a run
queued by another host, or a slot another host freed, may wait for this one."""
TAKEOVER_EVERY: Final = 2.0
"""Seconds between two looks for lapsed hosts' runs: a host's runs are taken over at most
this long after its lease lapsed (nerved.master.leases.LEASE_MS)."""


class Manager(rebuild.Manager, Protocol):
    """What claims and takeovers use of the workflow manager."""

    def _activate_claimed(self, flow: Flow, record: ActiveRecord) -> None: ...

    def _let_go(self, flow: Flow) -> None: ...


class SharedQueue:
    """This host's claims from the shared queue of its ``any`` workflows, and its takeovers
    of lapsed hosts' runs."""

    def __init__(self, loop: Loop, store: Storage, manager: Manager) -> None:
        self.loop = loop
        self.store = store
        self.manager = manager
        self.leasing: Leasing | None = store.leasing
        self._soon: set[str] = set()  # workflows whose claim is due at the end of this turn
        self._timers: list[Timer] = []

    def shared(self, flow: Flow) -> bool:
        """Whether ``flow``'s runs go to the shared queue (``any`` on a shared store)."""
        return self.leasing is not None and flow.config.placement is Placement.ANY

    def serves(self) -> list[str]:
        """The ``any`` workflows this host runs: its share of their slots, and what it takes
        over. Not one whose code does not load here (a bad deploy): the hosts where it loads
        share all its slots, and take over its runs."""
        return sorted(name for name, flow in self.manager.flows.items()
                      if self.shared(flow) and not flow.removed
                      and flow.load_error is None)  # fmt: skip

    def start(self) -> None:
        """Claim and take over from now on (once recovery is done and nerved is ready)."""
        if self.leasing is None:
            return
        self.loop.at_end_of_turn(self._claim_due, first=True)  # before the commit
        self._timers = [
            self.loop.call_later(CLAIM_EVERY, self._poll),
            self.loop.call_later(0, self._take_over),
        ]

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    # -- claims -------------------------------------------------------------------------

    def claim_soon(self, flow: Flow) -> None:
        """Claim for ``flow`` at the end of this turn, in its batch, before its commit: a
        run was queued here, or a slot freed (the claim's count, on the batch's connection,
        sees both); the triggers and ends of one turn make one claim, and the runs it claims
        start with that commit, not one later."""
        self._soon.add(flow.name)

    def _claim_due(self) -> None:
        """At the end of each turn, before the commit: the claims this turn asked for."""
        while self._soon:
            flow = self.manager.flows.get(self._soon.pop())
            if flow is not None:
                self._claim(flow)

    def admit(self, flow: Flow) -> Admission:
        """Where a new run of ``flow`` goes, weighed against its runs over every host, in
        the batch (which holds the hosts' write lock: the counts are exact, ``overflow`` and
        ``maxQueue`` hold as for a local workflow, :func:`~.admission.admit`).

        A queued run here may be one a host is about to claim, a slot free for it, not only
        one waiting for a slot: ``overflow: drop`` drops a new run when the started and
        queued ones fill every slot. A new run starts here only with no run queued before it
        (FIFO) and this host within its share of the slots (and able to run it: its code
        loads here); else it is queued, for the host whose share has room to claim."""
        assert self.leasing is not None
        config = flow.config
        counts = self.leasing.queue_counts(flow.name, config.concurrency, config.max_queue)
        if config.overflow is Overflow.DROP and counts.live + counts.queued >= config.concurrency:
            return Admission(Transition.REJECT)
        if counts.queued == 0 and counts.live < config.concurrency:
            if counts.mine < counts.share and self.runs_here(flow):
                return Admission(Transition.START)
            return Admission(Transition.ENQUEUE)
        return Admission(Transition.ENQUEUE, evict=counts.queued >= config.max_queue)

    def runs_here(self, flow: Flow) -> bool:
        """Whether this host may take ``flow``'s runs: a worker of its code imported it (a
        host whose code of it does not load, a bad deploy, claims none: the hosts where it
        loads run them, where it would claim its share and fail each)."""
        return flow.loaded and flow.load_error is None

    def _warm(self, flow: Flow) -> None:
        """A worker for ``flow``, forked before any run is claimed for it: its import says
        whether this host may take them (:meth:`runs_here`); it goes after ``idleTimeout``
        if it gets none."""
        if flow.load_error is None and flow.supervisor.current is None:
            flow.supervisor.ensure()
            self.manager._let_go(flow)

    def oldest(self, flow: Flow) -> str | None:
        """The oldest queued run of ``flow`` over every host, locked in the batch (an
        evict's victim); None: none free."""
        assert self.leasing is not None
        return self.leasing.oldest_queued(flow.name)

    def _poll(self) -> None:
        """Claim for each ``any`` workflow that other hosts queued runs of, or freed slots
        of: one read of the committed view for all of them."""
        self._timers[0] = self.loop.call_later(CLAIM_EVERY, self._poll)
        if self.manager.stopping or self.leasing is None:
            return
        flows = {name: flow for name, flow in self.manager.flows.items()
                 if self.shared(flow) and not flow.removed}  # fmt: skip
        wanted = {name: flow.config.concurrency for name, flow in flows.items()}
        for name in self.leasing.claimable(wanted):
            self._claim(flows[name])

    def _claim(self, flow: Flow) -> None:
        """Claim what ``flow`` may, in the batch. Each caller knows there is something to
        claim (this turn queued a run or freed a slot, the poll or the orphans' look read a
        queued run), so the committed view is not read first."""
        if self.manager.stopping or flow.removed or self.leasing is None:
            return
        if flow.supervisor.state in (WorkerState.FATAL, WorkerState.BACKOFF, WorkerState.GONE):
            return
        if not self.runs_here(flow):
            self._warm(flow)
            return
        for record in self.leasing.claim_runs(flow.name, flow.config.concurrency):
            self.manager._activate_claimed(flow, record)

    # -- takeover -----------------------------------------------------------------------

    def _take_over(self) -> None:
        self._timers[1] = self.loop.call_later(TAKEOVER_EVERY, self._take_over)
        if self.manager.stopping or self.leasing is None:
            return
        serves = self.serves()
        for host, records in self.leasing.take_over(serves):
            log.warning(
                "host %s's lease lapsed: took over %d of its runs (%s), resumed here from"
                " their logged events", host, len(records),
                ", ".join(sorted({r.workflow for r in records})) or "none active",
            )  # fmt: skip
            rebuild.adopt(self.manager, records, f"host {host} lost its lease")
        self._orphans()

    def _orphans(self) -> None:
        """Claim the queued ``any`` runs of the workflows this host has as ``local`` that no
        live host serves as ``any`` (a reload made it ``local`` everywhere while runs were
        queued: acknowledged, they would wait forever); they run here, as this host's."""
        assert self.leasing is not None
        local = {name: flow for name, flow in self.manager.flows.items()
                 if not self.shared(flow) and not flow.removed}  # fmt: skip
        for name in self.leasing.orphans(sorted(local)):
            log.warning("workflow %s: no host serves it as placement: any now; its queued"
                        " any runs are claimed here", name)  # fmt: skip
            self._claim(local[name])
