"""Forking workers, and what a child must do first so that it is a clean process.

A child of the master starts with a copy of everything the master had: its signal
handlers and wakeup fd, its blocked-signal mask, the SQLite connection, the control socket,
the inotify fd, the notify socket. None of that may be used in the child (a SQLite
connection carried across fork() corrupts locking; a stray write to the wakeup fd would
wake the master with a fake signal). So the child:

- resets every signal to its default and unblocks all of them, ignoring SIGINT so that a
  ^C on the terminal reaches the master alone, which then stops the workers in order;
- asks the kernel for SIGKILL when the master dies (``PR_SET_PDEATHSIG``), and checks the
  master did not die before it asked;
- closes every inherited fd but stdio and its own channel, at the fd level, without
  touching the Python objects (whose finalizers must never run in the child: it leaves
  with ``os._exit``);
- drops the systemd variables, so user code cannot speak to systemd for the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG: Final = 1
PR_SET_NAME: Final = 15

# Exit codes of workers, read by the master when it reaps them.
EXIT_OK: Final = 0
EXIT_CRASH: Final = 70  # EX_SOFTWARE: an unexpected exception in nerve's own worker code
EXIT_ORPHANED: Final = 71  # the master was gone before the child could attach to it
EXIT_UNREADABLE: Final = 72  # a frame from the master could not be read (nerved.port)

_SYSTEMD_VARIABLES: Final = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int | bytes) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _become_child(keep_fd: int, master_pid: int, title: str) -> None:
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # signals Python will not touch
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python's own default: EPIPE, not death
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != master_pid:
        os._exit(EXIT_ORPHANED)
    with contextlib.suppress(OSError):
        _prctl(PR_SET_NAME, title.encode()[:15])
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 20)
    for name in _SYSTEMD_VARIABLES:
        os.environ.pop(name, None)


def spawn(title: str, child_main: Callable[[socket.socket], int]) -> tuple[int, socket.socket]:
    """Fork a worker that runs ``child_main(its_end_of_the_channel)`` and exits with its result.

    Returns the child's pid and the master's end of the channel. The child never returns
    from this function: whatever happens, it ends in ``os._exit``.

    Raises OSError when no child can be made (``fork``: EAGAIN under a pids or process limit,
    ENOMEM; ``socketpair``: EMFILE, ENFILE), with nothing left open: the caller decides
    whether to retry.
    """
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        parent_end.close()
        child_end.close()
        raise
    if pid == 0:  # pragma: no cover - runs in the child, observed through its behaviour
        code = EXIT_CRASH
        try:
            _become_child(child_end.fileno(), master_pid, title)
            code = child_main(child_end)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else EXIT_CRASH
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    child_end.close()
    return pid, parent_end


def describe_exit(status: int) -> str:
    """'exit code 3' or 'killed by SIGKILL', from a raw waitpid status."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by {name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def reap() -> list[tuple[int, int]]:
    """Collect every child that has ended: (pid, raw status) pairs. Never blocks."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        ended.append((pid, status))
    return ended
