"""Reloads, one at a time: validate, import the changed packages in a throwaway fork, apply.

A reload changes nothing until it is known to be good: the configuration is validated first,
then every package whose files changed is imported in a probe child, as its worker would
import it. Only if all of that succeeds are the new configuration and code applied (by
diff, in the managers); otherwise the error is reported and everything running stays as it
is. The probe is an ordinary child of the master's loop, so a package whose import hangs
costs a timeout, never a stalled daemon.

What the probes import is the snapshot the master read (:class:`CodeSnapshot`), not the
files: the code accepted is byte for byte the code that passed, and every worker forked
after imports that same snapshot. The check itself is nerved.master.importcheck's.

Requests that arrive during a reload are served by one more reload after it, so that none
of them is answered with a stale state. An import check takes at most twice
``--import-timeout`` (20 s by default, 30 s at most), so a request is answered within two
checks' time, two minutes at most: before ``nervectl reload`` gives up (130 s).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot, Package
from nerved.config import ConfigError, NerveConfig, load_root
from nerved.loop import Loop
from nerved.master.importcheck import ImportCheck
from nerved.master.workers import Workers
from nerved.outcome import Failed, Pending, ShuttingDown

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
        self._check: ImportCheck | None = None  # the running import check
        self._candidate: tuple[NerveConfig, CodeSnapshot] | None = None
        self.stopped = False

    def request(self, source: str) -> Pending:
        """Reload soon; the Pending answers ``{changed: [...]}`` or the reason it failed."""
        pending = Pending()
        if self.stopped:
            pending.reject(ShuttingDown("nerved is shutting down"))
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
            config = load_root(self.root)  # resolved at each reload: a link may point elsewhere
        except ConfigError as exc:
            self._finish(None, list(exc.errors))
            return
        root = config.path.parent
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
        """The import check of the changed units (nerved.master.importcheck), answered to
        :meth:`_probed` within twice the import timeout."""
        self._check = ImportCheck(
            self.loop,
            self.workers,
            units,
            self.import_timeout,
            os.cpu_count() or 1,
            self._probed,
        )

    def _probed(self, errors: list[str]) -> None:
        self._check = None
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
            error = Failed(f"configuration not reloaded: {'; '.join(errors)}", {"errors": errors})
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
        if self._check is not None:
            self._check.cancel()
        for pending in (self._running or []) + self._next:
            pending.reject(ShuttingDown("nerved is shutting down"))
        self._running, self._next = None, []
