"""The master process: one loop that owns the store, the socket, the workers and systemd.

Shaped after gunicorn's arbiter: signal handlers only record (the loop's wakeup fd), and the
loop dispatches each to a ``handle_<signal>`` method; children are reaped exhaustively on
SIGCHLD; a graceful stop has a deadline that ends in SIGKILL. Unlike gunicorn there is no
thread anywhere in the master: the control socket is served by the same loop.

Start-up order matters for the guarantees: the configuration is validated first (a bad one
exits 78, EX_CONFIG, which the unit file tells systemd not to restart on), then the state
directory is locked and logs.db opened, unfinished work recovered, and only then does the
socket listen and ``READY=1`` go out.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nerved import _version
from nerved.config import ConfigError, NerveConfig, check_packages, load_config, unlined
from nerved.control.commands import COMMANDS
from nerved.control.rpc import METHOD_NOT_FOUND, SHUTTING_DOWN, Params, Pending, RpcError
from nerved.control.server import ControlServer, SocketInUse, bind, inherited_socket
from nerved.loop import Loop
from nerved.notify import Notifier
from nerved.reflexes import Reflexes
from nerved.reloader import Reloader
from nerved.retention import Retention
from nerved.senses import SenseManager
from nerved.store import Store, StoreError
from nerved.usercode import CodeSnapshot
from nerved.watch import Watcher
from nerved.workers import Workers
from nerved.workflows import WorkflowManager

log = logging.getLogger(__name__)

EX_OK: Final = 0
EX_SOFTWARE: Final = 70
EX_CANTCREAT: Final = 73
EX_TEMPFAIL: Final = 75
EX_CONFIG: Final = 78

STOP_MARGIN: Final = 1.0  # seconds past the longest grace period before SIGKILL
KILL_WAIT: Final = 5.0  # seconds to wait for SIGKILLed children to be reaped
IDLE_CHECKPOINT: Final = 0.25  # seconds without a commit before the WAL is checkpointed
STATUS_EVERY: Final = 2.0  # seconds between STATUS= updates (sent only when they change)


class Fatal(Exception):
    """A reason not to start (or to stop at once), with the exit code that says which."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Options:
    root: Path
    state_dir: Path
    socket: Path
    watch: bool = True


class Daemon:
    def __init__(self, options: Options) -> None:
        self.options = options
        self._activated = inherited_socket()  # read first: the variables are for us alone
        self.root = options.root.resolve()
        self.loop = Loop()
        self.notifier = Notifier()
        self.workers = Workers(self.loop)
        self.started_at = time.monotonic()
        self.stopping = False
        self.exit_code = EX_OK
        self._lock_fd: int | None = None
        self._stop_timer: Any = None
        self.config: NerveConfig
        self.store: Store
        self.senses: SenseManager
        self.workflows: WorkflowManager
        self.reflexes: Reflexes
        self.control: ControlServer | None = None
        self.watcher: Watcher | None = None

    # -- start --------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._start()
        except Fatal as exc:
            log.critical("%s", exc)
            self._shutdown_after_failed_start()
            return exc.code
        try:
            self.loop.run()
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
        self.notifier.status("starting")
        self.config = self._load_config()
        self._lock_state_dir()
        try:
            self.store = Store(self.options.state_dir / "logs.db")
        except StoreError as exc:
            raise Fatal(str(exc), EX_CANTCREAT) from exc
        self.loop.at_end_of_turn(self._end_of_turn)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            name = signal.Signals(signum).name.lower()
            self.loop.add_signal_handler(signum, getattr(self, f"handle_{name[3:]}"))
        self.loop.install_signal_wakeup()

        self.senses = SenseManager(self.loop, self.workers, self.store, self.root, self._on_signal)
        self.workflows = WorkflowManager(self.loop, self.workers, self.store, self.root)
        self.reflexes = Reflexes(self.loop, self.senses.trigger, self._start_workflow)

        # Recovery comes before the socket listens: nothing is admitted until the queues
        # and active sets are rebuilt from logs.db, in their original order.
        self.notifier.status("recovering unfinished runs")
        self.code = CodeSnapshot.take(self.root, self.config.senses, self.config.workflows)
        self.workflows.apply(self.config, self.code)
        self.recovery = self.workflows.recover()
        self.store.commit()

        try:
            sock = self._activated or bind(self.options.socket)
        except (SocketInUse, OSError) as exc:
            raise Fatal(f"cannot listen on {self.options.socket}: {exc}", EX_TEMPFAIL) from exc
        # A socket we bound is ours to remove at exit; systemd's stays for the next start.
        self._socket_inode = None if self._activated else os.stat(self.options.socket).st_ino
        self.control = ControlServer(self.loop, sock, self.dispatch)

        self.senses.apply(self.config, self.code)
        self.reflexes.apply(self.config)
        self.reloader = Reloader(
            self.loop, self.workers, self.root, lambda: self.code, self.apply, self._reload_failed
        )
        self.retention = Retention(self.loop, self.store, lambda: self.config.retention)
        if self.options.watch:
            self.watcher = Watcher(self.loop, self.root, self._files_changed)
        self.store.commit()
        if self.notifier.watchdog_interval:
            self._watchdog()
        self._last_status = ""
        self.loop.call_later(STATUS_EVERY, self._status_tick)
        self.loop.call_later(IDLE_CHECKPOINT, self._checkpoint_when_idle)
        summary = self._summary()
        log.info(
            "nerved %s ready (pid %d): root %s, state %s, socket %s; %s",
            _version.__version__, os.getpid(), self.root, self.options.state_dir,
            self.options.socket, summary,
        )  # fmt: skip
        self.notifier.ready(summary)

    def _load_config(self) -> NerveConfig:
        try:
            config = load_config(self.root)
        except ConfigError as exc:
            raise Fatal(f"bad configuration:\n{exc}", EX_CONFIG) from exc
        missing = check_packages(self.root, config)
        if missing:
            raise Fatal("bad configuration:\n" + "\n".join(missing), EX_CONFIG)
        return config

    def _lock_state_dir(self) -> None:
        state = self.options.state_dir
        try:
            state.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(state / "nerved.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise Fatal(f"cannot use state directory {state}: {exc}", EX_CANTCREAT) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise Fatal(f"another nerved is using {state}", EX_TEMPFAIL) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _summary(self) -> str:
        active, queued = self.workflows.counts()
        return (
            f"{len(self.config.senses)} senses in {len(self.config.groups())} groups, "
            f"{len(self.config.workflows)} workflows, {active} active and {queued} queued threads"
        )

    # -- the turn -----------------------------------------------------------------------

    def _end_of_turn(self) -> None:
        try:
            self.store.commit()
        except StoreError as exc:
            # The store is the source of truth: if it cannot commit, nothing we would
            # acknowledge is safe. Stop, and let the restart recover from what is on disk.
            log.critical("%s; stopping so that a restart recovers from logs.db", exc)
            self.exit_code = EX_TEMPFAIL
            self.begin_stop("storage failure")
        self.notifier.flush()

    def _status_tick(self) -> None:
        """Keep ``systemctl status`` current: what runs and what waits, when it changes."""
        if self.stopping:
            return
        summary = self._summary()
        if summary != self._last_status:
            self.notifier.status(summary)
            self._last_status = summary
        self.loop.call_later(STATUS_EVERY, self._status_tick)

    def _checkpoint_when_idle(self) -> None:
        """Fold the WAL into logs.db in a quiet moment, not in the middle of a burst."""
        if time.monotonic() - self.store.last_commit >= IDLE_CHECKPOINT:
            self.store.checkpoint()
        if not self.stopping:
            self.loop.call_later(IDLE_CHECKPOINT, self._checkpoint_when_idle)

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval
        if interval:
            self.loop.call_later(interval, self._watchdog)

    # -- signals ------------------------------------------------------------------------

    def handle_term(self, signum: int) -> None:
        self.begin_stop("SIGTERM")

    def handle_int(self, signum: int) -> None:
        self.begin_stop("SIGINT")

    def handle_hup(self, signum: int) -> None:
        if not self.stopping:
            self.request_reload("SIGHUP")

    def handle_chld(self, signum: int) -> None:
        self.workers.reap()
        if self.stopping and not len(self.workers):
            self.loop.stop()

    # -- control ------------------------------------------------------------------------

    def dispatch(self, method: str, raw_params: dict[str, Any]) -> Any:
        command = COMMANDS.get(method)
        if command is None:
            raise RpcError(METHOD_NOT_FOUND, f"no method {method!r}")
        if command.mutates and self.stopping:
            raise RpcError(SHUTTING_DOWN, "nerved is shutting down")
        return command.run(self, Params(raw_params, command.params))

    def status(self) -> dict[str, Any]:
        workers = list(self.workers)
        active, queued = self.workflows.counts()
        return {
            "version": _version.__version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started_at, 3),
            "state": "stopping" if self.stopping else "running",
            "root": str(self.root),
            "stateDir": str(self.options.state_dir),
            "senses": len(self.config.senses),
            "groups": len(self.config.groups()),
            "workflows": len(self.config.workflows),
            "activeWorkflows": active,
            "queuedWorkflows": queued,
            "workers": [{"kind": w.kind, "name": w.name, "pid": w.pid} for w in workers],
            "rss": _tree_rss([os.getpid(), *(w.pid for w in workers)]),
            "commits": self.store.commits,
        }

    # -- reload -------------------------------------------------------------------------

    def request_reload(self, source: str) -> Pending:
        """SIGHUP, inotify and ``nervectl reload`` all come here; see nerved.reloader."""
        return self.reloader.request(source)

    def apply(self, config: NerveConfig, code: CodeSnapshot, source: str) -> list[str]:
        """Make a validated configuration and code current, by diff."""
        self.notifier.reloading()
        changed = self.senses.apply(config, code) + self.workflows.apply(config, code)
        if [unlined(r) for r in config.reflexes] != [unlined(r) for r in self.config.reflexes]:
            changed.append("reflexes")
        self.reflexes.apply(config)
        self.config, self.code = config, code
        if self.watcher is not None:
            self.watcher.refresh()
        self.notifier.ready(self._summary())
        if changed:
            log.info("reloaded (%s): %s", source, ", ".join(changed))
        else:
            log.debug("reload (%s): nothing changed", source)
        return changed

    def _files_changed(self) -> None:
        if not self.stopping:
            self.request_reload("inotify")

    def _reload_failed(self, errors: str) -> None:
        self.notifier.status(f"{self._summary()}; last reload failed")

    # -- signals to reflexes -------------------------------------------------------------

    def _on_signal(self, sense: str, payload: Any) -> None:
        self.reflexes.on_signal(sense, payload)

    def _start_workflow(self, workflow: str, payload: Any) -> None:
        """A workflow reflex fired: the signal's payload becomes the trigger payload."""
        try:
            self.workflows.trigger(workflow, payload)
        except RpcError as exc:
            log.warning("reflex could not start workflow %s: %s", workflow, exc.message)

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
        if self.control is not None:
            self.control.stop_listening()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        self.reflexes.stop()
        self.reloader.stop()
        self.retention.stop()
        grace = max(self.senses.stop(), self.workflows.stop())
        self._stop_timer = self.loop.call_later(grace + STOP_MARGIN, self._kill_remaining)
        if not len(self.workers):
            self.loop.stop()

    def _kill_remaining(self) -> None:
        remaining = list(self.workers)
        if not remaining:
            self.loop.stop()
            return
        for worker in remaining:
            log.warning("%r did not stop in time; killing it", worker)
            worker.kill()
        self.loop.call_later(KILL_WAIT, self._give_up_waiting)

    def _give_up_waiting(self) -> None:
        log.error("%d workers were not reaped after SIGKILL; exiting anyway", len(self.workers))
        self.loop.stop()

    def _close(self) -> None:
        if self.control is not None:
            self.control.close()
            with contextlib.suppress(OSError):
                if self._socket_inode and os.stat(self.options.socket).st_ino == self._socket_inode:
                    os.unlink(self.options.socket)
        if self.watcher is not None:
            self.watcher.close()
        with contextlib.suppress(StoreError):
            self.store.close()
        self.loop.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def _shutdown_after_failed_start(self) -> None:
        self.workers.kill_all()
        for worker in list(self.workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
        if hasattr(self, "store"):
            with contextlib.suppress(Exception):
                self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)


def _tree_rss(pids: list[int]) -> int:
    """Resident bytes of the master and its workers (``/proc/<pid>/statm``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * page
    return total
