"""One supervisor per sense group and per workflow: the whole life of its workers.

A *unit* (a sense group, a workflow) has at most one *current* worker, the one new work goes
to, and any number of *draining* ones, told to stop and finishing what they hold. The
supervisor owns what every unit does alike, so that the sense and workflow managers keep only
their policy (when a worker is needed, what its messages mean, what a death costs the work it
held):

- **spawn**, each worker in a unit of its own (:mod:`nerved.containment`), held to the unit's
  ``memoryMax``;
- **the import bound**: a worker that has not said ``ready`` within ``import_timeout`` is
  killed, and its death says why;
- **backoff**: after a death, or a fork that failed, no successor is forked before
  :func:`backoff` says (the first at once, then 0.25 s doubling to :data:`BACKOFF_MAX`; only
  a worker up :data:`STABLE_AFTER` ends the series, work done does not);
- **giving up** (supervisor's FATAL): a unit whose workers died :data:`GIVE_UP_AFTER` times in
  a row, each before it did any work (a result, a step: :meth:`Supervisor.progressed`) and,
  if it had imported its code, within :data:`STABLE_AFTER` of its fork, is *fatal*: no
  worker is forked for it until a reload changes its code (:meth:`Supervisor.code_changed`)
  or its ``memoryMax``, or nerved restarts. A fork that fails is the host's doing, not the
  code's: it backs off but never counts towards giving up;
- **drain**: a worker told to stop has until its deadline to exit, then it is killed; an
  idle stop is a drain too, so whatever user code does on its way out, it is gone in time;
- **grace kills**: a worker that does not come back from work its manager abandoned is
  killed once the grace period is over (:meth:`Supervisor.kill_later`);
- **retire**: a unit removed by a reload, or nerved stopping: nothing is forked again.

Every state and every move between them is named, with its label, in :mod:`nerved.states`
(:class:`~nerved.states.WorkerState`, :class:`~nerved.states.WorkerMove`); a move from a state
it does not start from is a bug of nerve's, and raises :class:`IllegalMove`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nerved.channel import Message
from nerved.loop import Timer
from nerved.master import memory
from nerved.master.workers import MessageHandler, Worker, Workers
from nerved.states import WorkerMove, WorkerState
from nerved.words import plural

log = logging.getLogger(__name__)

GIVE_UP_AFTER: Final = 5  # deaths in a row, each before any work, that make a unit fatal
STABLE_AFTER: Final = 30.0  # seconds: a worker up this long counts as having worked
BACKOFF_FIRST: Final = 0.25  # seconds before the second successor in a row
BACKOFF_MAX: Final = 5.0  # seconds: the longest wait for a successor

STOP: Final[Message] = {"t": "stop"}


def backoff(failures: int) -> float:
    """Seconds before the next fork after ``failures`` deaths (or failed forks) in a row:
    the first is answered at once, then 0.25 s doubling to :data:`BACKOFF_MAX`."""
    return 0.0 if failures <= 1 else min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 2))


class IllegalMove(RuntimeError):
    """A move from a state the transition table does not allow: a bug of nerve's."""


@dataclass(frozen=True, slots=True)
class Exit:
    """How a worker ended, as its unit's manager hears it."""

    why: str  # how it exited (nerved.process.describe_exit), or why the master killed it
    current: bool  # it was the unit's current worker, not one draining
    ready: bool  # it had said ready (imported its code)
    hung: bool  # the master killed it because its import outlasted the import timeout
    retired: bool  # its unit is gone (removed, or nerved stopping): no successor


ExitHandler = Callable[[Worker, Exit], None]


class Supervisor:
    """The workers of one unit; see the module's docstring.

    ``child_main`` runs in the forked child (nerved.process). ``on_message`` hears every
    message of the unit's workers, current or draining (``ready`` included: the manager
    says :meth:`ready` when it means it). ``on_exit`` hears of every worker reaped, after
    the unit's state moved. ``on_wake`` is called when the unit may fork again (its backoff
    ended, or a fix ended its fatal state), for the manager to ask for a worker if it needs
    one. ``importing`` names what the current worker imports now (``senses/disk``), for the
    message of an import that hung.
    """

    def __init__(
        self,
        workers: Workers,
        kind: str,
        name: str,
        *,
        child_main: Callable[[socket.socket], int],
        on_message: MessageHandler,
        on_exit: ExitHandler,
        on_wake: Callable[[], None],
        importing: Callable[[], str],
        import_timeout: float,
        memory_max: int | None = None,
    ) -> None:
        self.workers = workers
        self.loop = workers.loop
        self.kind = kind
        self.name = name
        self.label = f"sense group {name}" if kind == "sense" else f"{kind} {name}"
        self.child_main = child_main
        self.on_message = on_message
        self.on_exit = on_exit
        self.on_wake = on_wake
        self.importing = importing
        self.import_timeout = import_timeout  # seconds
        self.memory_max = memory_max  # bytes, or None: no limit
        self.state = WorkerState.IDLE
        self.current: Worker | None = None
        self.draining: set[Worker] = set()
        self.failures = 0  # deaths (or failed forks) since a stable worker: the backoff's
        self.deaths = 0  # deaths in a row without work, failed forks not counted: giving up's
        self.restarts = 0  # workers that died, over the unit's life
        self.reason: str | None = None  # why it is in backoff or fatal
        self._fork_failing = False  # the last fork failed: its recovery is worth a log line
        self._import_bound: Timer | None = None
        self._respawn: Timer | None = None
        self._idle: Timer | None = None
        self._hung: dict[Worker, str] = {}
        self._worked: set[Worker] = set()

    def __repr__(self) -> str:
        return f"<Supervisor {self.label} {self.state}>"

    # -- the state machine --------------------------------------------------------------

    def _move(self, move: WorkerMove) -> None:
        if self.state not in move.sources:
            raise IllegalMove(f"{self.label}: cannot {move.name} from {self.state}")
        log.debug("%s: %s -> %s (%s)", self.label, self.state, move.target, move.label)
        self.state = move.target

    # -- spawning -----------------------------------------------------------------------

    def ensure(self) -> Worker | None:
        """The worker new work goes to, forked if the unit has none and may have one.

        None while the unit backs off, is fatal or retired, when the fork failed (it then
        backs off), or while the current worker's channel is closed and its reap is due (the
        reap moves the unit on, and :attr:`on_wake` asks again).
        """
        worker = self.current
        if worker is not None:
            return worker if worker.connected else None
        if self.state is not WorkerState.IDLE:
            return None
        try:
            worker = self.workers.spawn(
                self.kind, self.name, self.child_main, self.on_message, self._reaped,
                memory_max=self.memory_max,
            )  # fmt: skip
        except OSError as exc:
            self._move(WorkerMove.FORK_FAILED)
            self.failures += 1
            self.reason = f"cannot fork: {exc}"
            if not self._fork_failing:  # one line per episode, not per try
                log.warning("%s: cannot fork its worker (%s); retrying with backoff",
                            self.label, exc)  # fmt: skip
                self._fork_failing = True
            self._respawn_in(backoff(self.failures))
            return None
        if self._fork_failing:
            log.info("%s: forked its worker again (pid %d)", self.label, worker.pid)
            self._fork_failing = False
        self._move(WorkerMove.SPAWN)
        worker.state = WorkerState.SPAWNING
        self.current = worker
        self.loading(worker)
        return worker

    def loading(self, worker: Worker) -> None:
        """(Re)start the import bound of ``worker``: ``import_timeout`` from now, it is
        killed unless it said ready. A sense group's worker imports one member after the
        other, and each member has the whole bound."""
        if worker is not self.current or self.state is not WorkerState.SPAWNING:
            return
        self._cancel_import_bound()

        def expire() -> None:
            self._import_bound = None
            if worker is self.current and self.state is WorkerState.SPAWNING:
                why = f"importing {self.importing()} took longer than {self.import_timeout:g}s"
                log.error("%s: %s; killing its worker", self.label, why)
                self._hung[worker] = why
                worker.kill()

        self._import_bound = self.loop.call_later(self.import_timeout, expire)

    def ready(self, worker: Worker) -> None:
        """``worker`` imported its code (with or without errors its manager reports)."""
        if worker is not self.current or self.state is not WorkerState.SPAWNING:
            return
        self._cancel_import_bound()
        self._move(WorkerMove.READY)
        worker.state = WorkerState.READY

    def progressed(self, worker: Worker) -> None:
        """``worker`` did a piece of work (a compute's result, a run's step): its unit is not
        crash-looping, whatever happens to it next."""
        if worker not in self._worked:
            self._worked.add(worker)
            if worker is self.current:
                self.deaths = 0  # not the backoff: a worker that works then dies at once
                # would be forked again at once, for ever (a drop workflow's runs with it)

    def live(self) -> list[Worker]:
        """Its workers not yet reaped: the current one and those draining."""
        current = [] if self.current is None else [self.current]
        return current + [w for w in self.draining if w is not self.current]

    # -- stopping -----------------------------------------------------------------------

    def drain(self, deadline: float, setting: str, message: Message = STOP) -> Worker | None:
        """Tell the current worker to stop, and kill it ``deadline`` seconds later if it has
        not exited (``setting`` names where the deadline comes from, for the log). New work
        goes to a new worker; the drained one keeps sending what it finishes. Returns it."""
        worker = self.current
        if worker is None:
            return None
        self._cancel_import_bound()
        self._move(WorkerMove.DRAIN)
        self.busy()
        self.current = None
        self._stop(worker, message, deadline, setting)
        return worker

    def retire(
        self, message: Message = STOP, deadline: float | None = None, setting: str = "gracePeriod"
    ) -> None:
        """The unit is removed, or nerved stops: tell every worker of it ``message`` (those
        draining too: nerved stopping halts them); none is forked again. ``deadline`` and
        ``setting`` as in :meth:`drain`; None leaves the kill to the caller (nerved's stop
        deadline)."""
        if self.state is not WorkerState.GONE:
            self._move(WorkerMove.RETIRE)
        self._cancel_import_bound()
        self.busy()
        if self._respawn is not None:
            self._respawn.cancel()
            self._respawn = None
        if self.current is not None:
            self.draining.add(self.current)
            self.current = None
        for worker in list(self.draining):
            self._stop(worker, message, deadline, setting)

    def _stop(self, worker: Worker, message: Message, deadline: float | None, setting: str) -> None:
        self.draining.add(worker)
        worker.state = WorkerState.DRAINING
        if not worker.send(message):
            worker.kill()
            return
        if deadline is None:
            return

        def expire() -> None:
            if worker.alive:
                log.warning(
                    "%s: worker pid %d has not exited %gs (%s) after it was told to stop;"
                    " killing it", self.label, worker.pid, deadline, setting,
                )  # fmt: skip
                worker.kill()

        self.loop.call_later(deadline, expire)

    def kill_later(
        self, worker: Worker, delay: float, why: str, unless: Callable[[], bool]
    ) -> Timer:
        """A grace kill: ``delay`` seconds from now, kill ``worker`` (saying ``why``) if it is
        still the current one and ``unless()`` does not hold then (a sense's abandoned
        compute came back). The caller may cancel the timer it gets."""

        def expire() -> None:
            if worker is self.current and not unless():
                log.warning("%s: worker pid %d %s; killing it", self.label, worker.pid, why)
                worker.kill()

        return self.loop.call_later(delay, expire)

    def stop_when_idle(self, after: float, deadline: float, setting: str) -> None:
        """The current worker has nothing to do: drain it (:meth:`drain`, with ``deadline``
        and ``setting``) ``after`` seconds from now, unless :meth:`busy` is said first."""
        if self._idle is not None or self.current is None:
            return

        def idle() -> None:
            self._idle = None
            if self.current is not None:
                log.debug("%s: idle for %gs, stopping its worker", self.label, after)
                self.drain(deadline, setting)  # bounded: its exit may never return

        self._idle = self.loop.call_later(after, idle)

    def busy(self) -> None:
        """Work came for the current worker: it is not stopped for being idle."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def code_changed(self, what: str = "code") -> None:
        """A reload changed the unit's code (or ``what`` else its workers die of): a fatal
        unit may be tried again."""
        self.failures = 0
        self.deaths = 0
        if self.state is WorkerState.FATAL:
            self._move(WorkerMove.CODE_CHANGED)
            self.reason = None
            log.info("%s: its %s changed; forking its worker again", self.label, what)
            self.on_wake()

    def set_memory_max(self, limit: int | None) -> None:
        """memoryMax changed by a reload (bytes, None: no limit): held from now on. A unit
        whose workers all died of the old limit is fixed by this, not by its code."""
        changed, self.memory_max = limit != self.memory_max, limit
        if self.current is not None:
            self.current.set_memory_max(limit)
        if changed:
            self.code_changed("memoryMax")

    # -- deaths -------------------------------------------------------------------------

    def _reaped(self, worker: Worker, why: str) -> None:
        hung = worker in self._hung
        why = self._hung.pop(worker, why)
        ready = worker.state is not WorkerState.SPAWNING
        # Only a worker that imported its code is stable by time: the import bound may be
        # as long as STABLE_AFTER, and a hung import is no work however long it hung.
        stable = ready and time.monotonic() - worker.started >= STABLE_AFTER
        worked = worker in self._worked or stable
        self._worked.discard(worker)
        worker.state = WorkerState.GONE
        if worker in self.draining:
            self.draining.discard(worker)
            log.debug("%s: worker pid %d exited (%s)", self.label, worker.pid, why)
            retired = self.state is WorkerState.GONE
            self.on_exit(worker, Exit(why, current=False, ready=ready, hung=hung, retired=retired))
            return
        if worker is not self.current:
            return
        self.current = None
        self._cancel_import_bound()
        self.busy()
        self.restarts += 1
        self.reason = why
        self.failures = 1 if stable else self.failures + 1
        self.deaths = 1 if worked else self.deaths + 1  # a failed fork is no death
        if not worked and self.deaths >= GIVE_UP_AFTER:
            self._move(WorkerMove.GIVE_UP)
            log.error(
                "%s: worker pid %d died (%s); gave up: its workers died %s in a row"
                " before doing any work. Fix its code and reload; nothing is forked for it"
                " until then", self.label, worker.pid, why, plural(self.deaths, "time"),
            )  # fmt: skip
        else:
            self._move(WorkerMove.DIED)
            delay = backoff(self.failures)
            log.warning("%s: worker pid %d died (%s); respawning in %.2fs",
                        self.label, worker.pid, why, delay)  # fmt: skip
            self._respawn_in(delay)
        self.on_exit(worker, Exit(why, current=True, ready=ready, hung=hung, retired=False))

    def _respawn_in(self, delay: float) -> None:
        def over() -> None:
            self._respawn = None
            if self.state is WorkerState.BACKOFF:
                self._move(WorkerMove.BACKOFF_OVER)
                self.on_wake()

        self._respawn = self.loop.call_later(delay, over)

    def _cancel_import_bound(self) -> None:
        if self._import_bound is not None:
            self._import_bound.cancel()
            self._import_bound = None

    # -- views --------------------------------------------------------------------------

    def to_wire(self) -> list[dict[str, Any]]:
        """The unit as ``status`` shows it: one entry per draining worker, then one for the
        unit (``pid`` of its current worker, or None)."""
        entries = [
            worker_entry(self.kind, self.name, worker.pid, WorkerState.DRAINING, self.restarts)
            for worker in self.draining
        ]
        if self.state is not WorkerState.GONE:
            pid = None if self.current is None else self.current.pid
            reason = self.reason if self.state in _TROUBLED else None
            entries.append(
                worker_entry(self.kind, self.name, pid, self.state, self.restarts, reason)
            )
        return entries


def worker_entry(
    kind: str,
    name: str,
    pid: int | None,
    state: WorkerState,
    restarts: int = 0,
    reason: str | None = None,
) -> dict[str, Any]:
    """One entry of ``status``'s ``workers`` (nerved.control.commands.status)."""
    return {"kind": kind, "name": name, "pid": pid, "state": str(state),
            "restarts": restarts, "reason": reason}  # fmt: skip


_TROUBLED: Final = frozenset({WorkerState.BACKOFF, WorkerState.FATAL})


def workers_view(
    supervisors: Sequence[Supervisor], workers: Sequence[Worker]
) -> list[dict[str, Any]]:
    """``status``'s ``workers``: each sense group and workflow with the state of its worker
    (nerved.states.WorkerState; ``pid`` None when it has none now), and every other live
    process (one draining for a unit a reload removed, an import check's), each with its
    resident memory (``nervectl top``)."""
    entries = [entry for supervisor in supervisors for entry in supervisor.to_wire()]
    shown = {entry["pid"] for entry in entries}
    entries += [worker_entry(w.kind, w.name, w.pid, w.state) for w in workers if w.pid not in shown]
    for entry in entries:
        entry["rss"] = None if entry["pid"] is None else memory.rss(entry["pid"])
    return entries
