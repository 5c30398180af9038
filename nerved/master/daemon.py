"""The master process: one loop that owns the store, the socket, the workers and systemd.

Shaped after gunicorn's arbiter: signal handlers only record (the loop's wakeup fd), and the
loop dispatches each to a ``handle_<signal>`` method; children are reaped exhaustively on
SIGCHLD; a graceful stop has a deadline that ends in SIGKILL. Unlike gunicorn there is no
thread anywhere in the master: the control socket is served by the same loop.

Start-up order matters for the guarantees: every check that can refuse a start comes first
(nerved.master.startup's ``prepare``, before any detaching); then, in the process that will
serve, the store is opened (never before a fork; a PostgreSQL database not reached is waited
for with the socket served in a waiting mode: nerved.master.storewait), unfinished work
recovered, and only then is work accepted and ``READY=1`` sent (with its summary).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Final

from nerved import _version, early, modes
from nerved.code.packages import CodeSnapshot
from nerved.config import NerveConfig, unlined
from nerved.control.dispatch import HEAVY, Dispatcher
from nerved.control.server import ControlServer
from nerved.loop import Loop
from nerved.master import leases, memory, ownfiles, storewait
from nerved.master.autoreload import AutomaticReloads
from nerved.master.cron import Clock, CronReflexes
from nerved.master.metrics.service import Metrics
from nerved.master.notify import EXTEND_EVERY, Notifier
from nerved.master.reflexes import Reflexes
from nerved.master.reloader import Reloader
from nerved.master.retention import Retention
from nerved.master.senses import SenseManager
from nerved.master.startup import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    Fatal,
    Options,
    Prepared,
    Started,
    prepare,
)
from nerved.master.supervisor import workers_view
from nerved.master.upkeep import Upkeep
from nerved.master.workers import Workers
from nerved.master.workflows import WorkflowManager
from nerved.outcome import Pending, Refused
from nerved.store import Storage, StoreError
from nerved.words import plural

if TYPE_CHECKING:
    from nerved.master.watch import Watcher

log = logging.getLogger(__name__)


STOP_MARGIN: Final = 1.0  # seconds past the longest grace period before SIGKILL
KILL_WAIT: Final = 5.0  # seconds to wait for SIGKILLed children to be reaped


class Daemon:
    def __init__(
        self, options: Options, prepared: Prepared | None = None, started: Started | None = None
    ) -> None:
        """``prepared`` when :func:`prepare` already ran (``nerved --daemon``, before detaching).

        ``started`` is told once, when the daemon is ready or its start failed: the readiness
        pipe of ``nerved --daemon``.
        """
        self.options = options
        self.prepared = prepared
        self._started = started or (lambda code, message: None)
        self.root = options.root.resolve()
        self.loop = Loop()
        self.notifier = Notifier()
        self.workers = Workers(self.loop)
        self.started_at = time.monotonic()
        self.stopping = False
        self.exit_code = EX_OK
        self._stop_timer: Any = None
        self.config: NerveConfig
        self.store: Storage
        self.lease: leases.HostLease | None = None
        self.senses: SenseManager
        self.workflows: WorkflowManager
        self.reflexes: Reflexes
        self.cron: CronReflexes
        self.metrics: Metrics
        self.control: ControlServer | None = None
        self.watcher: Watcher | None = None
        self.upkeep: Upkeep
        self.autoreload = AutomaticReloads(self.loop, self.request_reload, lambda: self.stopping)

    # -- start --------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._start()
        except Fatal as exc:
            return self._shutdown_after_failed_start(exc)
        except StoreError as exc:  # past opening logs.db: as in a turn, a restart recovers
            return self._shutdown_after_failed_start(Fatal(f"storage failure: {exc}", EX_TEMPFAIL))
        except Exception as exc:  # a bug in nerve: its traceback goes to the log
            fatal = Fatal(f"internal error during start-up: {exc!r}", EX_SOFTWARE)
            return self._shutdown_after_failed_start(fatal, exc)
        try:
            if not self.stopping:  # else a signal ended the wait for the store: exit 0
                self.loop.run()
        except StoreError as exc:
            self._storage_failed(exc)
        except Exception:
            # A bug in nerve itself: state in memory can no longer be trusted, but logs.db can.
            # Exit non-zero so that systemd restarts us and recovery rebuilds from the store.
            log.critical("internal error; exiting so that a restart recovers", exc_info=True)
            self.exit_code = EX_SOFTWARE
        finally:
            self._close()
        log.info("nerved stopped")
        return self.exit_code

    def _start(self) -> None:
        if self.prepared is None:
            self.prepared = prepare(self.options)
        prepared = self.prepared
        self.config = prepared.config
        prepared.record_pid(os.getpid())
        self.notifier.status("starting")
        try:  # a PostgreSQL database not reached: the socket served meanwhile (storewait)
            store, self.control = storewait.open_or_wait(
                self.loop, self.notifier, self.options, prepared, self._started, self.started_at
            )
        except StoreError as exc:
            raise Fatal(f"cannot use the store: {exc}", EX_CANTCREAT) from exc
        if store is None:  # stopped while it waited: nothing else was started
            self.stopping = True
            return
        self.store = store
        self.store.watch(self.options.state_dir / "nerved.lock", prepared.lock_fd)
        try:  # another host holds the store: a restart may find it free (75)
            self.lease = leases.take(self.loop, self.store, self.options)
        except StoreError as exc:
            raise Fatal(f"cannot use the store: {exc}", EX_TEMPFAIL) from exc
        self.workers.before_fork = self.store.shrink  # a worker would hold the page caches
        self.loop.set_gate(self.store.acquire)
        self.upkeep = Upkeep(
            self.loop, self.store, self.notifier, self._summary, lambda: self.stopping
        )
        self.upkeep.at_each_turn()
        # The wakeup fd first: from here on a signal reaches the loop, even one that comes
        # while the handlers below replace nerved.early's. Stopping writes nothing, so it goes
        # on while another process holds logs.db's lock; reaping (which ends runs) and
        # reloading wait for the lock (nerved.loop, the gate).
        self.loop.install_signal_wakeup()
        for signum, gated in (
            (signal.SIGTERM, False),
            (signal.SIGINT, False),
            (signal.SIGHUP, True),
            (signal.SIGCHLD, True),
            (signal.SIGUSR1, False),
            (signal.SIGUSR2, False),
        ):
            name = signal.Signals(signum).name.lower()
            handler = getattr(self, f"handle_{name[3:]}")
            self.loop.add_signal_handler(signum, handler, gated=gated)

        self.workers.contain()  # before the first worker: it may move the master to a cgroup
        timeout = self.options.import_timeout
        self.senses = SenseManager(self.loop, self.workers, self.store, self._on_signal, timeout)
        self.workflows = WorkflowManager(self.loop, self.workers, self.store, timeout)
        self.reflexes = Reflexes(self.loop, self.senses.trigger, self._start_workflow)
        self.metrics = Metrics(self.loop, self.store, self.senses, self.workflows)
        try:
            clock = Clock.from_environment()
        except ValueError as exc:
            raise Fatal(str(exc), EX_CONFIG) from exc
        self.cron = CronReflexes(
            self.loop, self.store, clock, self.senses.trigger, self._start_cron_run
        )

        # Recovery comes before the socket is served: nothing is admitted until the queues
        # and active sets are rebuilt from logs.db, in their original order.
        self.notifier.status("recovering unfinished runs")
        config = self.config
        self.code = CodeSnapshot.take(
            self.root, config.senses, config.workflows, config.group_members()
        )
        refused = self.code.refusals()
        if refused:
            raise Fatal("\n".join(refused), EX_CONFIG)
        self.workflows.apply(self.config, self.code)
        try:
            self.recovery = self.workflows.recover(self.notifier.extend)
        except StoreError as exc:
            raise Fatal(f"cannot read unfinished runs: {exc}", EX_CANTCREAT) from exc
        self.store.commit()

        if self.control is not None:  # served while it waited: its clients stay, served now
            self.control.dispatch = Dispatcher(self)
        else:
            self.control = ControlServer(
                self.loop, prepared.listener, Dispatcher(self), heavy=HEAVY,
                idle_timeout=self.config.control.idle_timeout_ms / 1000,
                max_connections=self.config.control.max_connections,
            )  # fmt: skip

        self.senses.apply(self.config, self.code)
        self.reflexes.apply(self.config)
        self.cron.apply(self.config, starting=True)
        self.reloader = Reloader(
            self.loop,
            self.workers,
            self.options.root,
            lambda: self.code,
            self.apply,
            self._reload_failed,
            timeout,
            checks=self._reload_checks,
        )
        self.autoreload.trust_now()
        self.retention = Retention(self.loop, self.store, lambda: self.config.retention)
        if self.options.watch:  # inotify_simple (and subprocess) only for a daemon that watches
            from nerved.master.watch import Watcher

            self.watcher = Watcher(self.loop, self.options.root, self.autoreload.files_changed)
        self.store.commit()
        self.upkeep.start()
        if self.lease is not None:
            self.lease.start(self.workflows.shared.serves)
        self.metrics.apply(self.config.metrics)
        summary = self._summary()
        log.info(
            "nerved %s ready (pid %d): root %s, state %s, socket %s; %s",
            _version.__version__, os.getpid(), self.root, self.options.state_dir,
            self.options.socket, summary,
        )  # fmt: skip
        self.notifier.ready(summary)
        self._started(EX_OK, summary)
        if early.reload_requested():
            self.request_reload("SIGHUP during start-up")

    def _summary(self) -> str:
        active, queued = self.workflows.counts()
        senses = plural(len(self.config.senses), "sense")
        groups = plural(len(self.config.groups()), "group")
        workflows = plural(len(self.config.workflows), "workflow")
        return f"{senses} in {groups}, {workflows}; threads: {active} active, {queued} queued"

    # -- signals ------------------------------------------------------------------------

    def handle_term(self, signum: int) -> None:
        self.begin_stop("SIGTERM")

    def handle_int(self, signum: int) -> None:
        self.begin_stop("SIGINT")

    def handle_hup(self, signum: int) -> None:
        if not self.stopping:
            self.request_reload("SIGHUP")

    def handle_usr1(self, signum: int) -> None:
        self._ignored(signum)

    def handle_usr2(self, signum: int) -> None:
        self._ignored(signum)

    def _ignored(self, signum: int) -> None:
        """A signal nerved gives no meaning to: its default action would end the daemon."""
        log.warning("%s ignored: nerved gives it no meaning", signal.Signals(signum).name)

    def handle_chld(self, signum: int) -> None:
        self.workers.reap()
        if self.stopping and not len(self.workers):
            self.loop.stop()

    # -- control ------------------------------------------------------------------------

    def refuses_writes(self) -> str | None:
        """Why no control command may change anything now, if so (nerved.control.engine)."""
        if self.stopping:
            return "nerved is shutting down"
        if not self.loop.gate_open:
            return (
                f"{self.store.where} is locked by another process; nothing was changed,"
                " try again once it lets go"
            )
        return None

    def status(self) -> dict[str, Any]:
        workers = list(self.workers)
        active, queued = self.workflows.counts()
        return {
            "version": _version.__version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started_at, 3),
            "state": self._state(),
            "root": str(self.root),
            "stateDir": str(self.options.state_dir),
            "senses": len(self.config.senses),
            "groups": len(self.config.groups()),
            "workflows": len(self.config.workflows),
            "activeWorkflows": active,
            "queuedWorkflows": queued,
            "workers": workers_view(
                self.senses.supervisors() + self.workflows.supervisors(), workers
            ),
            "containment": self.workers.containment.mode,
            "rss": memory.total_rss([os.getpid(), *(w.pid for w in workers)]),
            "commits": self.store.commits,
            "host": self.options.host_id,
            "hosts": [] if self.lease is None else self.lease.view(),
        }

    def _state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.store.locked_since is not None:
            return "waiting for the write lock on logs.db (only reads are served)"
        return "running"

    # -- reload -------------------------------------------------------------------------

    def request_reload(self, source: str) -> Pending:
        """SIGHUP, inotify and ``nervectl reload`` all come here; see nerved.master.reloader."""
        return self.reloader.request(source)

    def _reload_checks(self, source: str) -> list[str]:
        """Why a reload from ``source`` is refused, beyond the root's own checks (the
        Reloader asks once those passed, before it reads any code): the strict modes of the
        daemon's own files, as at start (nerved.master.ownfiles), then whether a reload from
        a file change may be trusted (nerved.master.autoreload)."""
        prepared = self.prepared
        bound = prepared.socket_path if prepared and prepared.socket_inode is not None else None
        found = ownfiles.violations(self.options.state_dir, self.options.pidfile, bound)
        return modes.enforce(found) or self.autoreload.untrusted(source)

    def apply(self, config: NerveConfig, code: CodeSnapshot, source: str) -> list[str]:
        """Make a validated configuration and code current, by diff."""
        self.autoreload.accept_refusals(source)
        self.notifier.reloading()
        before = self.code
        changed = self.senses.apply(config, code) + self.workflows.apply(config, code)
        if [unlined(r) for r in config.reflexes] != [unlined(r) for r in self.config.reflexes]:
            changed.append("reflexes")
        self.reflexes.apply(config)
        self.cron.apply(config)
        if config.control != self.config.control and self.control is not None:
            self.control.configure(
                idle_timeout=config.control.idle_timeout_ms / 1000,
                max_connections=config.control.max_connections,
            )
            changed.append("control")
        if self.metrics.apply(config.metrics):
            changed.append("metrics")
        if config.store != self.config.store and self.options.store is None:
            log.warning("store: changed; nerved keeps %s until it restarts", self.store.where)
        self.config, self.code = config, code
        root = config.path.parent
        if root != self.root:
            changed.append(f"root {root}")
            self.root = root
        if self.watcher is not None:
            self.watcher.refresh()
        self.notifier.ready(self._summary())
        if changed:
            log.info("reloaded (%s): %s", source, ", ".join(changed))
        else:
            log.debug("reload (%s): nothing changed", source)
        self.autoreload.pace(source, code.changed_since(before))
        return changed

    def _reload_failed(self, errors: str) -> None:
        self.notifier.status(f"{self._summary()}; last reload failed")

    # -- signals to reflexes -------------------------------------------------------------

    def _on_signal(self, sense: str, payload: Any) -> None:
        self.reflexes.on_signal(sense, payload)

    def _start_workflow(self, workflow: str, payload: Any, key: str | None = None) -> None:
        """A workflow reflex fired: the signal's payload becomes the trigger payload, and
        ``key`` (read from it by the reflex's ``key:``) the run's idempotency key."""
        try:
            self.workflows.trigger(workflow, payload, idempotency_key=key)
        except Refused as exc:
            log.warning("reflex could not start workflow %s: %s", workflow, exc.message)

    def _start_cron_run(
        self, workflow: str, payload: Any, key: str
    ) -> tuple[str | None, str | None]:
        """A cron reflex fired: the run's id, or why it did not start."""
        try:
            return self.workflows.trigger(workflow, payload, idempotency_key=key).run_id, None
        except Refused as exc:
            return None, exc.message

    # -- stop ---------------------------------------------------------------------------

    def begin_stop(self, reason: str) -> None:
        if self.stopping:
            if reason in ("SIGTERM", "SIGINT"):
                log.warning("%s again while stopping: killing workers now", reason)
                self._kill_remaining()
            return
        self.stopping = True
        log.info("stopping (%s)", reason)
        self.notifier.stopping(f"stopping ({reason})")
        # The control socket stays open while workers finish: status and reads still answer
        # (showing "stopping"), and whatever would change something gets -32002 at once.
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        self.reflexes.stop()
        self.cron.stop()
        self.reloader.stop()
        self.retention.stop()
        self.metrics.stop()
        grace = max(self.senses.stop(), self.workflows.stop())
        self._extend_stop()
        self._stop_timer = self.loop.call_later(
            grace + STOP_MARGIN, self._kill_remaining, gated=False
        )
        if not len(self.workers):
            self.loop.stop()

    def _extend_stop(self) -> None:
        """While workers finish (bounded by the stop timer below, from their drainTimeout and
        gracePeriod), systemd's TimeoutStopSec= must not SIGKILL them first."""
        self.notifier.extend()
        self.loop.call_later(EXTEND_EVERY, self._extend_stop, gated=False)

    def _kill_remaining(self) -> None:
        remaining = list(self.workers)
        if not remaining:
            self.loop.stop()
            return
        for worker in remaining:
            log.warning("%r did not stop in time; killing it", worker)
            worker.kill()
        self.loop.call_later(KILL_WAIT, self._give_up_waiting, gated=False)

    def _give_up_waiting(self) -> None:
        log.error("%s not reaped after SIGKILL; exiting", plural(len(self.workers), "worker"))
        self.loop.stop()

    def _storage_failed(self, exc: StoreError) -> None:
        """logs.db could not take a write: stop at once, so that a restart recovers.

        The store is the source of truth and what the master holds in memory may now be
        ahead of it, so nothing more can be acknowledged: workers are killed (whatever they
        would finish could not be recorded), clients see the connection close, and the exit
        code (75, EX_TEMPFAIL) has systemd start a fresh nerved, which recovers every run
        from what was committed. One line in the journal says why.
        """
        log.critical("storage failure, stopping so that a restart recovers: %s", exc)
        log.debug("where the storage failure was met", exc_info=exc)
        self.notifier.stopping(f"storage failure: {exc}")
        self.exit_code = EX_TEMPFAIL
        self.stopping = True
        self.workers.kill_now(KILL_WAIT)

    def _close(self) -> None:
        if self.exit_code != EX_TEMPFAIL and self.lease is not None:
            with contextlib.suppress(StoreError):  # others may take over at once
                self.lease.release()
                self.store.commit()
        if self.exit_code != EX_TEMPFAIL and hasattr(self, "workflows"):
            with contextlib.suppress(StoreError):  # each waiter's run, read as committed
                self.workflows.stopped()  # answered before the connections close
        if self.control is not None:
            self.control.close(flush=self.exit_code != EX_TEMPFAIL)
        if self.watcher is not None:
            self.watcher.close()
        self.workers.close()
        with contextlib.suppress(StoreError):
            if hasattr(self, "store"):  # none: a signal ended the wait for it (storewait)
                self.store.close()
        self.loop.close()
        early.ignore()  # the loop restored SIGHUP's default: death, of a clean exit
        if self.prepared is not None:
            self.prepared.close(remove=True)

    def _shutdown_after_failed_start(self, reason: Fatal, bug: Exception | None = None) -> int:
        """Undo what the start did and tell whoever waits for readiness why; the exit code."""
        log.critical("%s", reason, exc_info=bug)
        self.workers.kill_now(KILL_WAIT)
        if hasattr(self, "store"):
            with contextlib.suppress(Exception):
                self.store.close()
        if self.prepared is not None:
            self.prepared.close(remove=True)
        self._started(reason.code, str(reason))
        return reason.code
