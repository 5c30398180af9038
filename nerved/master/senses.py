"""The master's side of the signal loop: sense groups, their workers, and when to compute.

Each group of senses has one long-lived worker. A sense is computed when something
triggers it (an interval, a signal of another sense, ``nervectl sense trigger``); triggers
coalesce: while a compute runs, or inside the sense's ``throttle`` window, any number of
triggers make one trailing compute. The master owns each compute's timeout: past it, the
compute is abandoned and logged as an error, and a worker that does not come back from it
within the sense's ``gracePeriod`` is killed and respawned, with backoff if it keeps dying
or cannot be forked at all (a pids limit, no memory).

The signal loop is lossy on purpose: a compute lost to a dying worker is logged, not retried.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nerved import logs, wire
from nerved.channel import TO_WORKER, Message, frame
from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot, Package
from nerved.config import NerveConfig, SenseConfig, group_memory_max, unlined
from nerved.loop import Loop, Timer
from nerved.master.supervisor import Exit, Supervisor
from nerved.master.workers import Worker, Workers
from nerved.states import WorkerState
from nerved.store import BadQuery, LogQuery, Storage, StoreError, now_ms
from nerved.store.refs import sense_ref
from nerved.worker import sense_main

log = logging.getLogger(__name__)

SignalHandler = Callable[[str, Any], None]


@dataclass(eq=False)
class SenseState:
    config: SenseConfig
    computes: int = 0
    errors: int = 0
    last_compute_at: int | None = None
    last_signal_at: int | None = None
    last_error: str | None = None
    running: int | None = None  # id of the compute in flight
    pending: bool = False  # triggered since the last compute started
    last_start: float = float("-inf")
    timer: Timer | None = None  # the throttle's trailing compute
    deadline: Timer | None = None  # the running compute's timeout

    @property
    def name(self) -> str:
        return self.config.name

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.config.group,
            "computes": self.computes,
            "errors": self.errors,
            "lastComputeAt": self.last_compute_at,
            "lastSignalAt": self.last_signal_at,
            "lastError": self.last_error,
            "running": self.running is not None,
        }


@dataclass(eq=False)
class Group:
    name: str
    senses: tuple[str, ...]
    code: str  # fingerprint of the member packages, to tell a reload what changed
    packages: tuple[Package, ...]  # their accepted code, which every worker imports
    supervisor: Supervisor = field(init=False)
    loaded: int = 0  # members the current worker has imported (in order)
    inflight: dict[int, str] = field(default_factory=dict)  # compute id -> sense
    abandoned: set[int] = field(default_factory=set)
    grace: Timer | None = None

    @property
    def worker(self) -> Worker | None:
        """The worker computes go to, once it is ready."""
        worker = self.supervisor.current
        return worker if self.supervisor.state is WorkerState.READY else None

    @property
    def importing(self) -> str:
        """The member the current worker imports now."""
        return self.senses[min(self.loaded, len(self.senses) - 1)]


class SenseManager:
    def __init__(
        self,
        loop: Loop,
        workers: Workers,
        store: Storage,
        on_signal: SignalHandler,
        import_timeout: float = IMPORT_TIMEOUT,
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.store = store
        self.import_timeout = import_timeout  # seconds a member's import may take
        self.on_signal = on_signal
        self.senses: dict[str, SenseState] = {}
        self.groups: dict[str, Group] = {}
        self._ids = itertools.count(1)
        self.stopping = False

    # -- configuration ------------------------------------------------------------------

    def apply(self, config: NerveConfig, code: CodeSnapshot) -> list[str]:
        """Start, keep, replace or stop groups to match ``config``; returns what changed.

        A group whose members or code changed is a new unit: the old one is retired (its
        worker finishes its computes) and a new one forked, so a fatal group (see
        nerved.master.supervisor) is tried again once its code changes.
        """
        changed: list[str] = []
        wanted = {name: tuple(s.name for s in members) for name, members in config.groups().items()}
        restarts: dict[str, int] = {}  # a group replaced under its name keeps its count
        for name, group in list(self.groups.items()):
            members = wanted.get(name)
            if members is None or members != group.senses or code.of_senses(members) != group.code:
                restarts[name] = group.supervisor.restarts
                self._retire(group)
                del self.groups[name]
                changed.append(f"group {name}")
        for name in [n for n in self.senses if n not in config.senses]:
            self._cancel_timers(self.senses.pop(name))
            changed.append(f"sense {name} removed")
        for name, sense_config in config.senses.items():
            state = self.senses.get(name)
            if state is None:
                self.senses[name] = SenseState(sense_config)
                changed.append(f"sense {name} added")
            else:
                if unlined(state.config) != unlined(sense_config):
                    changed.append(f"sense {name}")
                state.config = sense_config
        for name, members in wanted.items():
            kept = self.groups.get(name)
            if kept is not None:
                kept.supervisor.set_memory_max(self._memory_max_of(kept))
                continue
            packages = tuple(code.senses[member] for member in members)
            group = Group(name, members, code.of_senses(members), packages)
            group.supervisor = self._supervise(group)
            group.supervisor.restarts = restarts.get(name, 0)  # a counter never falls (metrics)
            self.groups[name] = group
            self._spawn(group)
        return changed

    # -- workers ------------------------------------------------------------------------

    def _supervise(self, group: Group) -> Supervisor:
        name, packages = group.name, list(group.packages)

        def child_main(sock: socket.socket) -> int:
            return sense_main(sock, name, packages)

        def on_message(worker: Worker, message: Message) -> None:
            self._on_message(group, worker, message)

        def on_exit(worker: Worker, exit: Exit) -> None:
            self._on_exit(group, worker, exit)

        return Supervisor(
            self.workers, "sense", name,
            child_main=child_main, on_message=on_message, on_exit=on_exit,
            on_wake=lambda: self._spawn(group),
            importing=lambda: f"senses/{group.importing}",
            import_timeout=self.import_timeout, memory_max=self._memory_max_of(group),
        )  # fmt: skip

    def _spawn(self, group: Group) -> None:
        """A sense group always has a worker, once its supervisor lets it fork one."""
        if self.groups.get(group.name) is not group or self.stopping:
            return
        group.loaded = 0
        group.supervisor.ensure()

    def _memory_max_of(self, group: Group) -> int | None:
        """The group's memoryMax: the largest among its senses (see config.group_memory_max)."""
        return group_memory_max(self.senses[s].config for s in group.senses if s in self.senses)

    def _grace_of(self, group: Group) -> float:
        """The longest grace period among the group's senses, in seconds."""
        periods = [self.senses[s].config.grace_period_ms for s in group.senses if s in self.senses]
        return max(periods, default=0) / 1000

    def _retire(self, group: Group) -> None:
        """Stop a group's worker gracefully: it finishes running computes, then exits."""
        group.supervisor.retire(deadline=self._grace_of(group))

    def _on_message(self, group: Group, worker: Worker, message: Message) -> None:
        """A message of the group's worker; one retired by a reload still finishes (and
        reports) the computes it runs."""
        kind = message.get("t")
        if kind == "result" or kind == "error":
            group.supervisor.progressed(worker)
            self._on_result(group, int(message["id"]), message)
        elif kind == "cancelled":
            self._forget(group, int(message["id"]))
        elif kind == "loaded" and worker is group.supervisor.current:
            sense, error = str(message.get("sense")), message.get("error")
            group.loaded += 1
            group.supervisor.loading(worker)
            if error:
                log.error("sense %s: %s", sense, error, extra=logs.sense(sense))
                self._record_error(sense, str(error), journal=False)
        elif kind == "ready":
            if worker is not group.supervisor.current:
                return
            group.supervisor.ready(worker)
            log.info("sense group %s ready (pid %d)", group.name, worker.pid)
            for name in group.senses:
                state = self.senses.get(name)
                if state is not None:
                    self._schedule(state)
        elif kind == "query":
            reply = self._answer_query(message)
            try:
                data = frame(reply, TO_WORKER)
            except wire.Invalid as exc:  # an entry that cannot be read back, or too many
                error = {"t": "reply", "call": reply["call"], "error": f"cannot answer: {exc}"}
                data = frame(error, TO_WORKER)
            worker.send_frame(data)
        elif kind == "log":
            sense = sense_ref(str(message.get("sense")), self.store.host_id)
            self.store.append_log("sense", "log", sense, str(message.get("message")))
        else:
            log.warning("sense group %s sent an unknown message %r", group.name, kind)

    def _answer_query(self, message: Message) -> Message:
        """Serve ``ctx.logs.query`` for a worker: reads are the master's too.

        The query (``message["query"]``, wire names) is read by
        :meth:`nerved.store.query.LogQuery.parse`, as the socket's ``logs.query`` is: the
        worker checked it already with the same code, and the master checks again (it never
        trusts a frame). A refusal is answered ``{"error": why, "refused": true}``.
        """
        reply: Message = {"t": "reply", "call": message.get("call")}
        try:
            query = LogQuery.parse(message.get("query", {}))
        except BadQuery as exc:
            reply["error"], reply["refused"] = exc.message, True
            return reply
        if query.source == "sense" and query.ref_id is not None:  # this host's sense
            query = dataclasses.replace(query, ref_id=sense_ref(query.ref_id, self.store.host_id))
        # The committed view (nerved.store): user code may ask for any page of logs.db, and
        # a damaged one must fail that query alone, not the master's open batch.
        try:
            entries = query.read(self.store.committed)
        except StoreError as exc:
            log.error("a query of sense group %s: %s", message.get("sense", "?"), exc)
            reply["error"] = f"cannot read logs.db: {exc}"
            return reply
        reply["entries"] = [entry.to_wire() for entry in entries]
        return reply

    def _on_exit(self, group: Group, worker: Worker, exit: Exit) -> None:
        if not exit.current and not exit.retired:
            return  # a worker drained earlier: it had nothing of the group's any more
        if not exit.ready and not (exit.retired or self.stopping):
            sense = group.importing  # it died importing (a hung import says so itself)
            why = (
                exit.why
                if exit.hung
                else (f"importing senses/{sense} ended its group's worker ({exit.why})")
            )
            self._record_error(sense, why, journal=not exit.hung)
        if group.grace is not None:
            group.grace.cancel()
            group.grace = None
        lost = dict(group.inflight)
        group.inflight.clear()
        group.abandoned.clear()
        for compute_id, sense in lost.items():
            state = self.senses.get(sense)
            if state is not None and state.running == compute_id:
                self._end_compute(state)
                self._record_error(sense, f"its worker died during the compute ({exit.why})")
        if exit.retired:
            log.info("sense group %s stopped (%s)", group.name, exit.why)

    # -- scheduling ---------------------------------------------------------------------

    def trigger(self, name: str) -> bool:
        state = self.senses.get(name)
        if state is None or self.stopping:
            return False
        state.pending = True
        self._schedule(state)
        return True

    def _schedule(self, state: SenseState) -> None:
        if state.running is not None or not state.pending or state.timer is not None:
            return
        wait = state.last_start + state.config.throttle_ms / 1000 - time.monotonic()
        if wait > 0:
            state.timer = self.loop.call_later(wait, lambda: self._throttle_over(state))
            return
        group = self.groups.get(state.config.group)
        if group is None or group.worker is None:
            return  # the group's "ready" reschedules it
        compute_id = next(self._ids)
        if not group.worker.send({"t": "compute", "id": compute_id, "sense": state.name}):
            return
        state.pending = False
        state.running = compute_id
        state.last_start = time.monotonic()
        group.inflight[compute_id] = state.name
        timeout = state.config.timeout_ms / 1000
        state.deadline = self.loop.call_later(
            timeout, lambda: self._timed_out(state, group, compute_id)
        )

    def _throttle_over(self, state: SenseState) -> None:
        state.timer = None
        if self.senses.get(state.name) is state:
            self._schedule(state)

    def _end_compute(self, state: SenseState) -> None:
        state.running = None
        state.computes += 1
        state.last_compute_at = now_ms()
        if state.deadline is not None:
            state.deadline.cancel()
            state.deadline = None

    def _on_result(self, group: Group, compute_id: int, message: Message) -> None:
        sense = group.inflight.pop(compute_id, None)
        if compute_id in group.abandoned:
            self._forget(group, compute_id)
            return
        state = self.senses.get(sense) if sense else None
        if state is None or state.running != compute_id:
            return
        self._end_compute(state)
        if message["t"] == "error":
            self._record_error(state.name, str(message.get("error")))
        else:
            state.last_error = None
            payload = message.get("payload")
            if payload is not None:
                state.last_signal_at = now_ms()
                ref = sense_ref(state.name, self.store.host_id)
                self.store.append_log("sense", "signal", ref, payload)
                self.on_signal(state.name, payload)
        self._schedule(state)

    def _timed_out(self, state: SenseState, group: Group, compute_id: int) -> None:
        if state.running != compute_id:
            return
        state.deadline = None
        self._end_compute(state)
        limit = state.config.timeout_ms / 1000
        self._record_error(state.name, f"compute timed out after {limit:g}s and was abandoned")
        group.abandoned.add(compute_id)
        if group.worker is not None:
            # A compute that ends in its timeout's error is work done, as any other error: a
            # sense that hangs on the network is killed and respawned, never made fatal.
            group.supervisor.progressed(group.worker)
            group.worker.send({"t": "cancel", "id": compute_id})
            if group.grace is None:
                group.grace = group.supervisor.kill_later(
                    group.worker, state.config.grace_period_ms / 1000,
                    "did not come back from an abandoned compute",
                    unless=lambda: not group.abandoned,
                )  # fmt: skip
        self._schedule(state)

    def _forget(self, group: Group, compute_id: int) -> None:
        group.abandoned.discard(compute_id)
        group.inflight.pop(compute_id, None)
        if not group.abandoned and group.grace is not None:
            group.grace.cancel()
            group.grace = None

    def _record_error(self, sense: str, error: str, *, journal: bool = True) -> None:
        state = self.senses.get(sense)
        if state is not None:
            state.errors += 1
            repeated = state.last_error == error
            state.last_error = error
            if journal and not repeated:
                log.error("sense %s: %s", sense, error, extra=logs.sense(sense))
        self.store.append_log("sense", "error", sense_ref(sense, self.store.host_id), error)

    @staticmethod
    def _cancel_timers(state: SenseState) -> None:
        for timer in (state.timer, state.deadline):
            if timer is not None:
                timer.cancel()

    # -- stopping -----------------------------------------------------------------------

    def stop(self) -> float:
        """Ask every group to finish and exit; returns the longest grace period (seconds)."""
        self.stopping = True
        for state in self.senses.values():
            self._cancel_timers(state)
        longest = max((self._grace_of(g) for g in self.groups.values()), default=0.0)
        for group in self.groups.values():
            self._retire(group)
        return longest

    # -- views --------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every sense, with ``worker``: the state of its group's worker."""
        return [state.to_wire() | {"worker": self.worker_state(state.name)}
                for state in self.senses.values()]  # fmt: skip

    def worker_state(self, name: str) -> str | None:
        """The state of the worker of sense ``name``'s group; None: no such sense."""
        state = self.senses.get(name)
        group = None if state is None else self.groups.get(state.config.group)
        return None if group is None else str(group.supervisor.state)

    def supervisors(self) -> tuple[Supervisor, ...]:
        return tuple(group.supervisor for group in self.groups.values())
