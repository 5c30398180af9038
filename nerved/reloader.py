"""Reloads, one at a time: validate, import the changed packages in a throwaway fork, apply.

A reload changes nothing until it is known to be good: the configuration is validated first,
then every package whose files changed is imported in a probe child, as its worker would
import it. Only if all of that succeeds are the new configuration and code applied (by
diff, in the managers); otherwise the error is reported and everything running stays as it
is. The probe is an ordinary child of the master's loop, so a package whose import hangs
costs a timeout, never a stalled daemon.

What the probe imports is the snapshot the master read (:class:`CodeSnapshot`), not the
files: the code accepted is byte for byte the code that passed, and every worker forked
after imports that same snapshot.

Requests that arrive during a reload are served by one more reload after it, so that none
of them is answered with a stale state. The probe has ``--import-timeout`` (20 s by default,
60 s at most) in all, so a request is answered within two import checks' time: before
``nervectl reload`` gives up (130 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from nerved.channel import Message
from nerved.config import ConfigError, NerveConfig, check_packages, load_config
from nerved.control.rpc import INTERNAL_ERROR, SHUTTING_DOWN, Pending, RpcError
from nerved.loop import Loop, Timer
from nerved.usercode import IMPORT_TIMEOUT, CodeSnapshot, Package, probe_child
from nerved.workers import Worker, Workers

log = logging.getLogger(__name__)

Apply = Callable[[NerveConfig, CodeSnapshot, str], list[str]]


class Reloader:
    def __init__(
        self,
        loop: Loop,
        workers: Workers,
        root: Path,
        current_code: Callable[[], CodeSnapshot],
        apply: Apply,
        on_failure: Callable[[str], None],
        import_timeout: float = IMPORT_TIMEOUT,
        checks: Callable[[str], list[str]] = lambda source: [],
    ) -> None:
        """``checks(source)``: the daemon's own reasons to refuse a reload from ``source``,
        asked once the configuration and packages passed, before any code is read."""
        self.loop = loop
        self.workers = workers
        self.root = root  # as given: resolved at each reload
        self.import_timeout = import_timeout  # seconds the whole import check may take
        self.current_code = current_code
        self.apply = apply
        self.on_failure = on_failure
        self.checks = checks
        self._running: list[Pending] | None = None
        self._source = ""
        self._next: list[Pending] = []
        self._next_sources: list[str] = []
        self._probes: dict[Worker, str] = {}  # the running import checks
        self._timer: Timer | None = None
        self._candidate: tuple[NerveConfig, CodeSnapshot] | None = None
        self.stopped = False

    def request(self, source: str) -> Pending:
        """Reload soon; the Pending answers ``{changed: [...]}`` or the reason it failed."""
        pending = Pending()
        if self.stopped:
            pending.reject(RpcError(SHUTTING_DOWN, "nerved is shutting down"))
        elif self._running is None:
            self._start(source, [pending])
        else:
            self._next.append(pending)
            self._next_sources.append(source)
        return pending

    def _start(self, source: str, waiters: list[Pending]) -> None:
        self._running = waiters
        self._source = source
        try:
            # Resolved at each reload: a root that is a symlink (/etc/nerve ->
            # /etc/static/nerve, as NixOS lays it out) may point elsewhere now.
            root = self.root.resolve()
            config = load_config(root)
            missing = check_packages(root, config)
            if missing:
                raise ConfigError(tuple(missing))
        except ConfigError as exc:
            self._finish(None, list(exc.errors))
            return
        refused = self.checks(source)
        if refused:
            self._finish(None, refused)
            return
        code = CodeSnapshot.take(root, config.senses, config.workflows, config.group_members())
        refused = code.refusals()
        if refused:
            self._finish(None, refused)
            return
        changed = code.changed_since(self.current_code())
        if not changed:
            self._finish(self.apply(config, code, source), None)
            return
        self._candidate = (config, code)
        self._spawn_probe(changed)

    def _spawn_probe(self, units: list[tuple[Package, ...]]) -> None:
        """One import check per changed unit (a workflow, a sense group: what one worker
        imports), all at once, each in a process of its own: each has ``import_timeout``,
        like the worker it stands for, and the reload is answered within that time."""
        probes: dict[Worker, str] = {}  # each running probe, and the package it is in
        order: dict[Worker, int] = {}  # its unit's place: errors are told in unit order
        results: dict[int, list[str]] = {}

        def errors() -> list[str]:
            return [error for index in sorted(results) for error in results[index]]

        def done(worker: Worker, more: list[str]) -> None:
            if probes.pop(worker, None) is None:
                return
            results[order[worker]] = more
            worker.kill()  # it answered: nothing it does on its way out may linger
            if not probes and self._probes is probes:
                self._probed(errors())

        def on_message(worker: Worker, message: Message) -> None:
            if worker not in probes:
                return
            if message.get("t") == "importing":
                probes[worker] = str(message.get("package"))
            elif message.get("t") == "probed":
                done(worker, [str(e) for e in message.get("errors") or []])

        def on_gone(worker: Worker, why: str) -> None:
            if worker in probes:
                done(worker, [f"importing {probes[worker]} ended the import check ({why})"])

        for index, unit in enumerate(units):
            child_main = probe_child(unit, self.import_timeout)
            try:
                worker = self.workers.spawn("probe", "reload", child_main, on_message, on_gone)
            except OSError as exc:
                for started in probes:
                    started.kill()
                probes.clear()
                self._candidate = None
                self._finish(None, [f"cannot fork a process to import the changed packages: {exc}"])
                return
            probes[worker] = unit[0].label
            order[worker] = index

        def expire() -> None:
            self._timer = None
            if self._probes is not probes:
                return
            for worker, where in probes.items():
                results[order[worker]] = [
                    f"importing {where} took longer than {self.import_timeout:g}s"
                ]
                worker.kill()
            probes.clear()
            self._probed(errors())

        self._probes = probes
        self._timer = self.loop.call_later(self.import_timeout, expire)

    def _probed(self, errors: list[str]) -> None:
        self._probes = {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        candidate, self._candidate = self._candidate, None
        if candidate is None or self.stopped:
            return
        if errors:
            self._finish(None, errors)
        else:
            config, code = candidate
            self._finish(self.apply(config, code, self._source), None)

    def _finish(self, changed: list[str] | None, errors: list[str] | None) -> None:
        waiters = self._running or []
        self._running = None
        if errors is not None:
            text = "\n".join(errors)
            log.error("configuration not reloaded (%s):\n%s", self._source, text)
            self.on_failure(text)
            error = RpcError(
                INTERNAL_ERROR,
                f"configuration not reloaded: {'; '.join(errors)}",
                {"errors": errors},
            )
            for pending in waiters:
                pending.reject(error)
        else:
            for pending in waiters:
                pending.resolve({"changed": changed or []})
        if self._next and not self.stopped:
            waiting, self._next = self._next, []
            sources, self._next_sources = self._next_sources, []
            self._start(", ".join(dict.fromkeys(sources)), waiting)

    def stop(self) -> None:
        """No more reloads: kill a running probe and refuse whoever waits."""
        self.stopped = True
        for probe in self._probes:
            probe.kill()
        for pending in (self._running or []) + self._next:
            pending.reject(RpcError(SHUTTING_DOWN, "nerved is shutting down"))
        self._running, self._next = None, []
