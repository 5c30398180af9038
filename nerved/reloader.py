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
        self.root = root
        self.import_timeout = import_timeout  # seconds the whole import check may take
        self.current_code = current_code
        self.apply = apply
        self.on_failure = on_failure
        self.checks = checks
        self._running: list[Pending] | None = None
        self._source = ""
        self._next: list[Pending] = []
        self._next_sources: list[str] = []
        self._probe: Worker | None = None
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
            config = load_config(self.root)
            missing = check_packages(self.root, config)
            if missing:
                raise ConfigError(tuple(missing))
        except ConfigError as exc:
            self._finish(None, list(exc.errors))
            return
        refused = self.checks(source)
        if refused:
            self._finish(None, refused)
            return
        code = CodeSnapshot.take(self.root, config.senses, config.workflows)
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

    def _spawn_probe(self, packages: list[Package]) -> None:
        child_main = probe_child(packages, self.import_timeout)
        importing = "the changed packages"  # which one the probe is in, once it says

        def on_message(worker: Worker, message: Message) -> None:
            nonlocal importing
            if worker is not self._probe:
                return
            if message.get("t") == "importing":
                importing = str(message.get("package"))
            elif message.get("t") == "probed":
                self._probed([str(e) for e in message.get("errors") or []])

        def on_gone(worker: Worker, why: str) -> None:
            if worker is self._probe:
                self._probed([f"importing {importing} ended the import check ({why})"])

        try:
            self._probe = self.workers.spawn("probe", "reload", child_main, on_message, on_gone)
        except OSError as exc:
            self._candidate = None
            self._finish(None, [f"cannot fork a process to import the changed packages: {exc}"])
            return
        probe_worker = self._probe

        def expire() -> None:
            if self._probe is probe_worker:
                probe_worker.kill()
                self._probed([f"importing {importing} took longer than {self.import_timeout:g}s"])

        self._timer = self.loop.call_later(self.import_timeout, expire)

    def _probed(self, errors: list[str]) -> None:
        self._probe = None
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
        if self._probe is not None:
            self._probe.kill()
        for pending in (self._running or []) + self._next:
            pending.reject(RpcError(SHUTTING_DOWN, "nerved is shutting down"))
        self._running, self._next = None, []
