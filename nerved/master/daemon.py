"""The master process: one loop that owns the store, the socket, the workers and systemd.

Shaped after gunicorn's arbiter: signal handlers only record (the loop's wakeup fd), and the
loop dispatches each to a ``handle_<signal>`` method; children are reaped exhaustively on
SIGCHLD; a graceful stop has a deadline that ends in SIGKILL. Unlike gunicorn there is no
thread anywhere in the master: the control socket is served by the same loop.

Start-up order matters for the guarantees. First :func:`prepare` makes every check that can
refuse a start: the configuration and the strict modes of the root (a bad one exits 78,
EX_CONFIG, which the unit file tells systemd not to restart on; nerved.modes), the pid file,
the strict modes of the state directory and its lock, the control socket.
``nerved --daemon`` runs it before detaching, so that a refusal reaches the terminal with
the same exit code as in the foreground. Then, in the process that will serve, logs.db is
opened (never before a fork), unfinished work recovered, and only then are connections
accepted (they wait in the socket's backlog until then) and ``READY=1`` sent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nerved import _version, early, modes
from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot, Package
from nerved.config import ConfigError, NerveConfig, load_root, unlined
from nerved.control.dispatch import HEAVY, Dispatcher
from nerved.control.server import ControlServer, SocketInUse, bind, inherited_socket
from nerved.loop import Loop, Timer
from nerved.master.notify import Notifier
from nerved.master.pidfile import PidFile, PidFileHeld
from nerved.master.reflexes import Reflexes
from nerved.master.reloader import Reloader
from nerved.master.retention import Retention
from nerved.master.senses import SenseManager
from nerved.master.watch import Watcher
from nerved.master.workers import Worker, Workers
from nerved.master.workflows import WorkflowManager
from nerved.outcome import Pending, Refused
from nerved.store import Storage, Store, StoreError

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
CHECK_FILES_EVERY: Final = 1.0  # seconds between two checks that logs.db is still there


WATCH_SOURCE: Final = "inotify"  # the source of reloads nobody asked for: a file changed
STORM_WINDOW: Final = 2.0  # s: automatic reloads changing code this close together are a storm
AUTO_BACKOFF_MAX: Final = 60.0  # s: the longest an automatic reload is held back in a storm
UNTRUSTED_SINCE_REFUSAL: Final = (
    "not reloaded on a file change: strict modes were violated since the last accepted"
    " reload: check the packages' content, then run `nervectl reload` (or send nerved SIGHUP)"
)


def _explicit(source: str) -> bool:
    """Whether someone asked for a reload from ``source`` (SIGHUP, ``nervectl reload``),
    not only the watch: sources of requests served together are joined with ", "
    (nerved.master.reloader)."""
    return any(part != WATCH_SOURCE for part in source.split(", "))


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
    pidfile: Path | None = None
    import_timeout: float = IMPORT_TIMEOUT  # seconds: see nerved.code.packages.IMPORT_TIMEOUT
    strict_modes: bool = True  # False: --no-strict-modes (nerved.modes)


Started = Callable[[int, str], None]  # (0, summary) once ready, or (exit code, why not)


@dataclass(slots=True)
class Prepared:
    """What a start holds once every check passed: see :func:`prepare`."""

    config: NerveConfig
    lock_fd: int  # <state>/nerved.lock, flock()ed
    pidfile: PidFile | None
    listener: socket.socket
    socket_path: Path
    socket_inode: int | None  # of the socket file we bound; None when systemd passed it

    def fds(self) -> list[int]:
        """What must stay open across the detaching (python-daemon's ``files_preserve``)."""
        fds = [self.lock_fd, self.listener.fileno()]
        return fds if self.pidfile is None else [*fds, self.pidfile.fd]

    def record_pid(self, pid: int) -> None:
        """Name the serving process in nerved.lock and the pid file (after any detaching)."""
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{pid}\n".encode(), 0)
        if self.pidfile is not None:
            self.pidfile.write(pid)

    def close(self, *, remove: bool) -> None:
        """Let go of it all; with ``remove``, also remove the socket and pid file we made.

        The parent of ``nerved --daemon`` closes its copies without removing anything: the
        daemon holds the same open files, and so the locks, from then on.
        """
        self.listener.close()
        if remove and self.socket_inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self.socket_inode:
                    os.unlink(self.socket_path)
        if self.pidfile is not None:
            self.pidfile.close(remove=remove)
        os.close(self.lock_fd)  # last: until here, no other nerved can start on this state


def prepare(options: Options) -> Prepared:
    """Make every check that can refuse a start, and hold what they claim.

    In this order: the configuration with the strict modes of the root (EX_CONFIG), the pid
    file (EX_TEMPFAIL if a running nerved holds it, EX_CANTCREAT if it cannot be created,
    EX_CONFIG if its directory fails strict modes), the state directory's strict modes
    (EX_CONFIG) and its lock (as the pid file's), the control socket (EX_TEMPFAIL if another
    nerved listens there, EX_CANTCREAT if it cannot be created). Nothing here forks, opens
    logs.db or runs user code, so that ``nerved --daemon`` can do it before detaching.
    Raises :class:`Fatal`.

    It sets the strict-modes policy of the process first (``options.strict_modes``): the
    reloads of the daemon it prepares follow it too.
    """
    modes.configure(strict=options.strict_modes)
    config = _load_config(options.root)
    with contextlib.ExitStack() as undo:
        pidfile = None
        if options.pidfile is not None:
            pidfile = _acquire_pidfile(options.pidfile)
            undo.callback(pidfile.close, remove=True)
        lock_fd = _lock_state_dir(options.state_dir)
        undo.callback(os.close, lock_fd)
        listener, socket_inode = _listen(options.socket)
        undo.pop_all()
    return Prepared(config, lock_fd, pidfile, listener, options.socket, socket_inode)


def _load_config(root: Path) -> NerveConfig:
    """The root's configuration, read as every reload and ``nerved check`` read it: the way
    to the root, nerve.yaml and the packages it names (nerved.config's ``load_root``; it
    resolves the root)."""
    try:
        return load_root(root)
    except ConfigError as exc:
        raise Fatal(f"bad configuration:\n{exc}", EX_CONFIG) from exc


def _acquire_pidfile(path: Path) -> PidFile:
    """The pid file, once the strict modes of its path passed (before, and again after its
    directories were made, if they were missing)."""
    made = not os.path.lexists(path.parent)
    _check_pidfile_path(path)
    try:
        pidfile = PidFile.acquire(path)
    except PidFileHeld as exc:
        raise Fatal(str(exc), EX_TEMPFAIL) from exc
    except OSError as exc:
        raise Fatal(f"cannot create pid file {path}: {exc.strerror or exc}", EX_CANTCREAT) from exc
    if made:
        try:
            _check_pidfile_path(path)
        except Fatal:
            pidfile.close(remove=True)
            raise
    return pidfile


def _check_pidfile_path(path: Path) -> None:
    _refuse_unsafe(pidfile_violations(path), f"unsafe pid file {path}")


def pidfile_violations(path: Path) -> list[modes.Violation]:
    """The path to the pid file (as the directory where it would be made, a sticky ``/tmp``
    is fine) and the file's owner, if it is there. The file is a state file: never followed
    (a link there is to be removed), its mode tightened when opened (nerved.master.pidfile)."""
    checker = modes.Checker()
    checker.path(path, create=True, state=True)
    return checker.violations


def state_dir_violations(state: Path) -> list[modes.Violation]:
    """The state directory, what leads to it, and the owners of the files nerved writes
    there (at start, once it exists, and at every reload)."""
    checker = modes.Checker()
    checker.path(state)
    return checker.violations + modes.file_owner_violations(state / n for n in STATE_FILES)


def socket_violations(path: Path) -> list[modes.Violation]:
    """The directories that lead to the control socket we bind (as the directory where it
    is made, a sticky ``/tmp`` is fine): whoever could write there could put a socket of
    theirs in its place for nervectl to talk to. The socket itself is no file of code."""
    checker = modes.Checker()
    checker.path(path, create=True)
    return checker.violations


STATE_DIR_MODE: Final = 0o750

STATE_FILES: Final = (
    "nerved.lock",
    "nerved.log",
    "logs.db",
    *(f"logs.db{suffix}" for suffix in modes.DB_COMPANIONS),
)
"""What nerved writes in its state directory (the socket may be there too: it is checked
when bound, nerved.control.server)."""


def _refuse_unsafe(violations: list[modes.Violation], what: str) -> None:
    """Strict modes: raise Fatal (EX_CONFIG) for the violations, or let them be warned of."""
    refusals = modes.enforce(violations)
    if refusals:
        raise Fatal(f"{what}:\n" + "\n".join(refusals), EX_CONFIG)


def _lock_state_dir(state: Path) -> int:
    """Check the state directory, make it if missing, and take its lock (``nerved.lock``).

    Strict modes come before anything is opened in it: the directory and what leads to it
    (before and after making it), and the owners of the files nerved will write there. Then
    nerved.lock is opened without following a link (nerved.modes.open_state_file), created
    0600: whoever could put a link there would have nerved truncate any file of the host.
    """
    try:
        if not os.path.lexists(state):
            if modes.strict():  # where it will be made (warnings come once, below)
                _refuse_unsafe(modes.dir_violations(state), f"unsafe state directory {state}")
            modes.make_dirs(state, STATE_DIR_MODE)  # and its parents 0755, whatever the umask
        _refuse_unsafe(state_dir_violations(state), f"unsafe state directory {state}")
        fd = modes.open_state_file(state / "nerved.lock", os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise Fatal(f"cannot use state directory {state}: {exc}", EX_CANTCREAT) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise Fatal(f"another nerved is using {state}", EX_TEMPFAIL) from exc
    return fd


def _listen(path: Path) -> tuple[socket.socket, int | None]:
    """The socket systemd passed (socket activation), or one bound at ``path``, and its inode.

    One we bind is where strict modes pass (before, and again after its directories were
    made, if they were missing: 0755, whatever the umask).
    """
    try:
        activated = inherited_socket()  # first: the variables are for us alone
    except OSError as exc:
        raise Fatal(f"bad socket activation: {exc}", EX_CONFIG) from exc
    if activated is not None:
        return activated, None
    made = not os.path.lexists(path.parent)
    _refuse_unsafe(socket_violations(path), f"unsafe socket {path}")
    try:
        sock = bind(path)
    except SocketInUse as exc:
        raise Fatal(f"cannot listen on {path}: {exc}", EX_TEMPFAIL) from exc
    except OSError as exc:
        code = EX_TEMPFAIL if exc.errno == errno.EADDRINUSE else EX_CANTCREAT
        raise Fatal(f"cannot listen on {path}: {exc}", code) from exc
    inode = os.stat(path).st_ino
    if made:
        try:
            _refuse_unsafe(socket_violations(path), f"unsafe socket {path}")
        except Fatal:
            sock.close()
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            raise
    return sock, inode


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
        self.senses: SenseManager
        self.workflows: WorkflowManager
        self.reflexes: Reflexes
        self.control: ControlServer | None = None
        self.watcher: Watcher | None = None
        # Pacing of automatic reloads (see _pace_automatic_reloads), in monotonic seconds.
        self._last_auto_code = -STORM_WINDOW
        self._auto_backoff = 0.0
        self._auto_hold = 0.0
        self._auto_timer: Timer | None = None

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
        try:
            self.store = Store(self.options.state_dir / "logs.db", on_wait=self.notifier.status)
        except StoreError as exc:
            raise Fatal(f"cannot use the store: {exc}", EX_CANTCREAT) from exc
        self.store.watch(self.options.state_dir / "nerved.lock", prepared.lock_fd)
        self.loop.set_gate(self.store.acquire)
        self.loop.at_end_of_turn(self._end_of_turn)
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
            self.recovery = self.workflows.recover()
        except StoreError as exc:
            raise Fatal(f"cannot read unfinished runs: {exc}", EX_CANTCREAT) from exc
        self.store.commit()

        self.control = ControlServer(
            self.loop,
            prepared.listener,
            Dispatcher(self),
            heavy=HEAVY,
            idle_timeout=self.config.control.idle_timeout_ms / 1000,
            max_connections=self.config.control.max_connections,
        )

        self.senses.apply(self.config, self.code)
        self.reflexes.apply(self.config)
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
        self._refusals_accepted = modes.refusals()
        self.retention = Retention(self.loop, self.store, lambda: self.config.retention)
        if self.options.watch:
            self.watcher = Watcher(self.loop, self.options.root, self._files_changed)
        self.store.commit()
        if self.notifier.watchdog_interval:
            self._watchdog()
        self._last_status = ""
        self.loop.call_later(STATUS_EVERY, self._status_tick, gated=False)
        self.loop.call_later(IDLE_CHECKPOINT, self._checkpoint_when_idle)
        self.loop.call_later(CHECK_FILES_EVERY, self._check_files, gated=False)
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
        return (
            f"{len(self.config.senses)} senses in {len(self.config.groups())} groups, "
            f"{len(self.config.workflows)} workflows, {active} active and {queued} queued threads"
        )

    # -- the turn -----------------------------------------------------------------------

    def _end_of_turn(self) -> None:
        # What systemd has yet to hear goes first, whatever happens to the commit (a failed
        # commit raises StoreError out of the loop: see _storage_failed).
        self.notifier.flush()
        self.store.commit()

    def _status_tick(self) -> None:
        """Keep ``systemctl status`` current: what runs and what waits, when it changes."""
        if self.stopping:
            return
        summary = self._summary()
        if self.store.locked_since is not None:
            summary = f"waiting for the write lock on {self.store.path}; {summary}"
        if summary != self._last_status:
            self.notifier.status(summary)
            self._last_status = summary
        self.loop.call_later(STATUS_EVERY, self._status_tick, gated=False)

    def _checkpoint_when_idle(self) -> None:
        """Fold the WAL into logs.db in a quiet moment, not in the middle of a burst."""
        if time.monotonic() - self.store.last_commit >= IDLE_CHECKPOINT:
            self.store.checkpoint()
        if not self.stopping:
            self.loop.call_later(IDLE_CHECKPOINT, self._checkpoint_when_idle)

    def _check_files(self) -> None:
        """An idle daemon notices a deleted state directory too, not only at its next commit:
        a second nerved could otherwise start on the same path (the lock file is new)."""
        self.store.check_files()  # StoreError: _storage_failed
        self.loop.call_later(CHECK_FILES_EVERY, self._check_files, gated=False)

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval
        if interval:
            self.loop.call_later(interval, self._watchdog, gated=False)

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
                f"{self.store.path} is locked by another process; nothing was changed,"
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
            "workers": self._workers_view(workers),
            "containment": self.workers.containment.mode,
            "rss": _tree_rss([os.getpid(), *(w.pid for w in workers)]),
            "commits": self.store.commits,
        }

    def _workers_view(self, workers: list[Worker]) -> list[dict[str, Any]]:
        """Each sense group and workflow with the state of its worker (nerved.states.
        WorkerState; ``pid`` None when it has none now), and every other live process
        (one draining for a unit a reload removed, an import check's)."""
        entries = [
            entry
            for supervisor in self.senses.supervisors() + self.workflows.supervisors()
            for entry in supervisor.to_wire()
        ]
        shown = {entry["pid"] for entry in entries}
        entries += [
            {"kind": w.kind, "name": w.name, "pid": w.pid, "state": str(w.state),
             "restarts": 0, "reason": None}
            for w in workers if w.pid not in shown
        ]  # fmt: skip
        return entries

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
        Reloader asks once those passed, before it reads any code).

        The strict modes of the state directory, the pid file and the socket we bound, as at
        start: a reload is where an operator hears of a ``chmod`` made since. Then, once
        strict modes refused something since the last reload an operator asked for, the
        files may hold what others wrote while they could: a reload from a file change is
        refused until someone looked and ran ``nervectl reload`` (or SIGHUP). Otherwise the
        very ``chmod go-w`` the refusal suggested would load what was written meanwhile.
        """
        found = state_dir_violations(self.options.state_dir)
        if self.options.pidfile is not None:
            found += pidfile_violations(self.options.pidfile)
        if self.prepared is not None and self.prepared.socket_inode is not None:
            found += socket_violations(self.prepared.socket_path)
        refused = modes.enforce(found)
        if refused:
            return refused
        if modes.refusals() != self._refusals_accepted and not _explicit(source):
            return [UNTRUSTED_SINCE_REFUSAL]
        return []

    def apply(self, config: NerveConfig, code: CodeSnapshot, source: str) -> list[str]:
        """Make a validated configuration and code current, by diff."""
        if _explicit(source):  # asked for: whatever strict modes refused before was looked at
            self._refusals_accepted = modes.refusals()
        self.notifier.reloading()
        before = self.code
        changed = self.senses.apply(config, code) + self.workflows.apply(config, code)
        if [unlined(r) for r in config.reflexes] != [unlined(r) for r in self.config.reflexes]:
            changed.append("reflexes")
        self.reflexes.apply(config)
        if config.control != self.config.control and self.control is not None:
            self.control.configure(
                idle_timeout=config.control.idle_timeout_ms / 1000,
                max_connections=config.control.max_connections,
            )
            changed.append("control")
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
        self._pace_automatic_reloads(source, changed, code.changed_since(before))
        return changed

    def _pace_automatic_reloads(
        self, source: str, changed: list[str], units: list[tuple[Package, ...]]
    ) -> None:
        """Back off automatic reloads while code keeps changing as soon as it is reloaded.

        A package that writes into its own directory when it is imported (a cache, a
        timestamp) changes itself in every import check and every new worker: each reload
        would bring the next, forever. When automatic reloads change code again within
        STORM_WINDOW of the last one (or of the end of its wait), the next waits, 1 s doubling
        to AUTO_BACKOFF_MAX, said once a storm; an explicit reload, or an automatic one that
        changes no code, ends it.
        """
        now = time.monotonic()
        if _explicit(source) or not units:
            self._auto_backoff = self._auto_hold = 0.0
            return
        if now - max(self._last_auto_code, self._auto_hold) < STORM_WINDOW:
            first = self._auto_backoff == 0
            self._auto_backoff = min(AUTO_BACKOFF_MAX, max(1.0, 2 * self._auto_backoff))
            self._auto_hold = now + self._auto_backoff
            if first:
                log.warning(
                    "packages keep changing as soon as they are reloaded (%s): automatic"
                    " reloads now wait up to %gs (a package that writes into its own"
                    " directory does this: keep such files elsewhere)",
                    ", ".join(unit[0].label for unit in units), AUTO_BACKOFF_MAX,
                )  # fmt: skip
        else:
            self._auto_backoff = 0.0
        self._last_auto_code = now

    def _files_changed(self) -> None:
        if self.stopping:
            return
        wait = self._auto_hold - time.monotonic()
        if wait > 0:
            if self._auto_timer is None:

                def later() -> None:
                    self._auto_timer = None
                    self._files_changed()

                self._auto_timer = self.loop.call_later(wait, later)
            return
        self.request_reload(WATCH_SOURCE)

    def _reload_failed(self, errors: str) -> None:
        self.notifier.status(f"{self._summary()}; last reload failed")

    # -- signals to reflexes -------------------------------------------------------------

    def _on_signal(self, sense: str, payload: Any) -> None:
        self.reflexes.on_signal(sense, payload)

    def _start_workflow(self, workflow: str, payload: Any) -> None:
        """A workflow reflex fired: the signal's payload becomes the trigger payload."""
        try:
            self.workflows.trigger(workflow, payload)
        except Refused as exc:
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
        # The control socket stays open while workers finish: status and reads still answer
        # (showing "stopping"), and whatever would change something gets -32002 at once.
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        self.reflexes.stop()
        self.reloader.stop()
        self.retention.stop()
        grace = max(self.senses.stop(), self.workflows.stop())
        self._stop_timer = self.loop.call_later(
            grace + STOP_MARGIN, self._kill_remaining, gated=False
        )
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
        self.loop.call_later(KILL_WAIT, self._give_up_waiting, gated=False)

    def _give_up_waiting(self) -> None:
        log.error("%d workers were not reaped after SIGKILL; exiting anyway", len(self.workers))
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
        self._kill_workers_now()

    def _kill_workers_now(self) -> None:
        """SIGKILL every worker and wait for them (at most KILL_WAIT), telling no one: for an
        exit where nothing more can be recorded."""
        self.workers.kill_all()
        pids = {worker.pid for worker in self.workers}
        deadline = time.monotonic() + KILL_WAIT
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                pids.discard(pid)
            if pids:
                time.sleep(0.01)

    def _close(self) -> None:
        if self.control is not None:
            self.control.close(flush=self.exit_code != EX_TEMPFAIL)
        if self.watcher is not None:
            self.watcher.close()
        self.workers.close()
        with contextlib.suppress(StoreError):
            self.store.close()
        self.loop.close()
        early.ignore()  # the loop restored SIGHUP's default: death, of a clean exit
        if self.prepared is not None:
            self.prepared.close(remove=True)

    def _shutdown_after_failed_start(self, reason: Fatal, bug: Exception | None = None) -> int:
        """Undo what the start did and tell whoever waits for readiness why; the exit code."""
        log.critical("%s", reason, exc_info=bug)
        self._kill_workers_now()
        if hasattr(self, "store"):
            with contextlib.suppress(Exception):
                self.store.close()
        if self.prepared is not None:
            self.prepared.close(remove=True)
        self._started(reason.code, str(reason))
        return reason.code


def _tree_rss(pids: list[int]) -> int:
    """Resident bytes of the master and its workers (``/proc/<pid>/statm``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * page
    return total
