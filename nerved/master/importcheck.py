"""The import check of one reload: each changed unit imported in a probe child, as its
worker would import it, a few at a time, within bounds.

A unit is what one worker imports (a workflow; a sense group, all its members): each is
imported in a process of its own, so that no package's import-time side effects help or
hinder another's. At most ``parallel`` probes run at once (one per CPU by default): forking
every unit at once on a small host would make good code miss its timeout for want of CPU.
Each probe has ``timeout`` seconds from its own start, like the worker it stands for, and
the whole check twice that: so a reload is answered within twice ``timeout`` whatever the
packages do (nerved.master.reloader relies on it). A probe is ended as soon as it has answered:
nothing a package does on its way out lingers.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nerved.channel import Message
from nerved.code.packages import Package, probe_child
from nerved.loop import Loop, Timer
from nerved.master.workers import Worker, Workers

log = logging.getLogger(__name__)

Done = Callable[[list[str]], None]
"""Called once, with every error in unit order (none: every unit imported)."""


@dataclass(eq=False)
class _Probe:
    index: int  # its unit's place: errors are told in unit order
    where: str  # the package it imports now, once it says
    timer: Timer


class ImportCheck:
    def __init__(
        self,
        loop: Loop,
        workers: Workers,
        units: Sequence[tuple[Package, ...]],
        timeout: float,
        parallel: int,
        done: Done,
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.timeout = timeout
        self.parallel = max(1, parallel)
        self._done = done
        self._pending = deque(enumerate(units))
        self._running: dict[Worker, _Probe] = {}
        self._results: dict[int, list[str]] = {}
        self._finished = False
        self._overall = loop.call_later(2 * timeout, self._too_long)
        self._fill()

    def cancel(self) -> None:
        """End every probe; ``done`` is not called."""
        self._finished = True
        self._overall.cancel()
        for worker, probe in self._running.items():
            probe.timer.cancel()
            worker.kill()
        self._running.clear()

    def _fill(self) -> None:
        while self._pending and len(self._running) < self.parallel and not self._finished:
            index, unit = self._pending.popleft()
            try:
                worker = self.workers.spawn(
                    "probe", "reload", probe_child(unit, self.timeout), self._message, self._gone
                )
            except OSError as exc:
                self._results[index] = [
                    f"cannot fork a process to import the changed packages: {exc}"
                ]
                self._finish()
                return
            timer = self.loop.call_later(self.timeout, functools.partial(self._expired, worker))
            self._running[worker] = _Probe(index, unit[0].label, timer)

    def _message(self, worker: Worker, message: Message) -> None:
        probe = self._running.get(worker)
        if probe is None:
            return
        if message.get("t") == "importing":
            probe.where = str(message.get("package"))
        elif message.get("t") == "probed":
            self._answered(worker, [str(e) for e in message.get("errors") or []])

    def _gone(self, worker: Worker, why: str) -> None:
        probe = self._running.get(worker)
        if probe is not None:
            self._answered(worker, [f"importing {probe.where} ended the import check ({why})"])

    def _expired(self, worker: Worker) -> None:
        probe = self._running.get(worker)
        if probe is not None:
            self._answered(worker, [f"importing {probe.where} took longer than {self.timeout:g}s"])

    def _answered(self, worker: Worker, errors: list[str]) -> None:
        probe = self._running.pop(worker)
        probe.timer.cancel()
        worker.kill()  # it answered: nothing it does on its way out may linger
        self._results[probe.index] = errors
        if self._running or self._pending:
            self._fill()
        else:
            self._finish()

    def _too_long(self) -> None:
        whole = f"the import check ran out of time ({2 * self.timeout:g}s in all)"
        for probe in self._running.values():
            self._results[probe.index] = [f"importing {probe.where} was not done when {whole}"]
        if self._pending:
            self._results[self._pending[0][0]] = [
                f"{len(self._pending)} more of the changed packages not checked: {whole}"
            ]
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self.cancel()
        self._done([e for index in sorted(self._results) for e in self._results[index]])
