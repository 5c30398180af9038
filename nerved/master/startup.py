"""Preparing a start: every check that can refuse it, and what those checks claim.

Start-up order matters for the guarantees. First :func:`prepare` makes every check that can
refuse a start: the configuration and the strict modes of the root (a bad one exits 78,
EX_CONFIG, which the unit file tells systemd not to restart on; nerved.modes), the pid file,
the strict modes of the state directory and its lock, the control socket.
``nerved --daemon`` runs it before detaching (nerved.master.detach), so that a refusal
reaches the terminal with the same exit code as in the foreground. Then, in the process that
will serve, the daemon (nerved.master.daemon) opens logs.db (never before a fork), recovers
unfinished work, and only then accepts connections (they wait in the socket's backlog until
then) and sends ``READY=1``.

Apart from the daemon because none of this needs its loop, its store or its workers: what
it holds (:class:`Prepared`) is handed to the daemon, in this process or across the
detaching. The exit codes are here too (sysexits(3)), with :class:`Fatal`, the reason not to
start that carries one, which the daemon raises and exits with as well.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nerved import modes
from nerved.code.packages import IMPORT_TIMEOUT
from nerved.config import ConfigError, NerveConfig, load_root
from nerved.control.server import SocketInUse, bind, inherited_socket
from nerved.master.ownfiles import pidfile_violations, socket_violations, state_dir_violations
from nerved.master.pidfile import PidFile, PidFileHeld

EX_OK: Final = 0
EX_SOFTWARE: Final = 70
EX_CANTCREAT: Final = 73
EX_TEMPFAIL: Final = 75
EX_CONFIG: Final = 78

STATE_DIR_MODE: Final = 0o750


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
    store: str | None = None  # --store: a PostgreSQL URL, over nerve.yaml's store:
    host_id: str = "localhost"  # nerved.hostid.resolve: --host-id, $NERVE_HOST_ID, machine id


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
