"""The metrics as the master serves them: the ``metrics`` method's OpenMetrics text, and
the textfile (nerve.yaml's ``metrics.textfile``) rewritten every ``metrics.interval``.

No port is opened and no thread started (the master forks, and is single-threaded): the
families are built in the loop's turn that asks, from a registry of nerve's own, made at
the first ask, which is when prometheus_client is imported: a daemon nobody asks for its
metrics never pays for the library. The textfile's first write comes a second after the
daemon is ready (or a reload names the file), then every interval: a timer of the loop,
not gated by logs.db's lock (it writes no row). A write that fails (its directory missing,
or not writable by nerve's user) is a warning in the log, once until it works again, and
never stops the daemon; a reload that drops or moves the textfile removes the one it wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nerved.config import MetricsConfig
from nerved.loop import Loop, Timer
from nerved.master.metrics.tally import COMMIT_BUCKETS, Histogram
from nerved.master.metrics.textfile import write_atomically
from nerved.master.senses import SenseManager
from nerved.master.workflows import WorkflowManager
from nerved.store import Storage

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

FIRST_WRITE: Final = 1.0  # seconds from the start (or the reload) to the first textfile


class Metrics:
    """What ``metrics`` answers (:meth:`exposition`) and the textfile's timer (:meth:`apply`,
    :meth:`stop`). Counts commits of ``store`` from now on."""

    def __init__(
        self, loop: Loop, store: Storage, senses: SenseManager, workflows: WorkflowManager
    ) -> None:
        self.loop = loop
        self.store = store
        self.senses = senses
        self.workflows = workflows
        self.commits = Histogram(COMMIT_BUCKETS)
        store.commit_observer = self.commits.observe
        self.config = MetricsConfig()
        self._registry: CollectorRegistry | None = None
        self._timer: Timer | None = None
        self._written: Path | None = None  # the textfile this process wrote last
        self._failing: str | None = None  # why the last write failed, logged once

    def registry(self) -> CollectorRegistry:
        """nerve's registry: its own series and the master process's (``nerve_process_*``)."""
        if self._registry is None:
            from prometheus_client import ProcessCollector
            from prometheus_client.registry import CollectorRegistry

            from nerved.master.metrics.families import NerveCollector, Sources

            store, senses, workflows = self.store, self.senses, self.workflows

            def created_at(run_id: str) -> int | None:
                record = store.committed.get_run(run_id)
                return None if record is None else record.created_at

            sources = Sources(
                flows=lambda: workflows.flows.values(),
                senses=lambda: senses.senses.values(),
                supervisors=lambda: (*senses.supervisors(), *workflows.supervisors()),
                created_at=created_at,
                store_files=lambda: store.files,
                commits=self.commits,
            )
            registry = CollectorRegistry(auto_describe=False)
            registry.register(NerveCollector(sources))
            ProcessCollector(namespace="nerve", registry=registry)
            self._registry = registry
        return self._registry

    def exposition(self) -> str:
        """The OpenMetrics text (SPEC §6: the ``metrics`` method)."""
        from prometheus_client.openmetrics import exposition

        text: bytes = exposition.generate_latest(self.registry())  # type: ignore[no-untyped-call]
        return text.decode()

    def textfile(self) -> bytes:
        """The Prometheus text format (0.0.4), which node_exporter's textfile collector reads."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry())

    # -- the textfile ---------------------------------------------------------------------

    def apply(self, config: MetricsConfig) -> bool:
        """Make ``config`` current; whether it changed anything."""
        if config == self.config:
            return False
        self.config = config
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._written is not None and self._written != config.textfile:
            self._remove(self._written)
        if config.textfile is not None:
            self._timer = self.loop.call_later(FIRST_WRITE, self._write, gated=False)
        return True

    def stop(self) -> None:
        """No more writes (nerved stops). The textfile stays: node_exporter's
        ``node_textfile_mtime_seconds`` tells how old it is."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _write(self) -> None:
        path = self.config.textfile
        self._timer = None
        if path is None:
            return
        self._timer = self.loop.call_later(self.config.interval_ms / 1000, self._write, gated=False)
        try:
            write_atomically(path, self.textfile())
        except OSError as exc:
            self._failed(f"cannot write {path}: {exc.strerror or exc}")
        except Exception as exc:  # a bug in nerve's metrics must not stop the daemon
            self._failed(f"cannot make the metrics for {path}: {exc!r}", exc)
        else:
            self._written = path
            if self._failing is not None:
                log.info("metrics: %s written again", path)
                self._failing = None

    def _failed(self, why: str, bug: Exception | None = None) -> None:
        if why != self._failing:
            log.warning("metrics: %s (tried again every %gs)", why,
                        self.config.interval_ms / 1000, exc_info=bug)  # fmt: skip
            self._failing = why

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("metrics: cannot remove %s, which nerve no longer writes: %s",
                        path, exc.strerror or exc)  # fmt: skip
        self._written = None
