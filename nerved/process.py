"""Forking workers, and what a child must do first so that it is a clean process.

A child of the master starts with a copy of everything the master had: its signal
handlers and wakeup fd, its blocked-signal mask, the SQLite connection, the control socket,
the inotify fd, the notify socket. None of that may be used in the child (a SQLite
connection carried across fork() corrupts locking; a stray write to the wakeup fd would
wake the master with a fake signal). So the child:

- makes itself the leader of a process group of its own (``setpgid(0, 0)``), first of all,
  and the master does the same for it right after ``fork``, so that the group exists before
  either goes on: the worker and everything it starts is one unit that
  :mod:`nerved.containment` signals as one;
- resets every signal to its default and unblocks all of them, ignoring SIGINT (a ^C is
  the master's, which then stops the workers in order) and SIGTTOU, so that writing to the
  terminal never stops a worker (its group is not the terminal's foreground group);
- asks the kernel for SIGKILL when the master dies (``PR_SET_PDEATHSIG``), and checks the
  master did not die before it asked;
- when the master asked for it (``contain``: a worker put in a cgroup of its own), waits
  until the master says it is in place, so that nothing but this module's code ever runs
  outside it; the master kills a child it could not put there;
- reads /dev/null as its standard input: a read from the terminal would stop it (SIGTTIN),
  for the same reason;
- closes every inherited fd but stdio and its own channel, at the fd level, without
  touching the Python objects (whose finalizers must never run in the child: it leaves
  with ``os._exit``);
- drops the systemd variables, so user code cannot speak to systemd for the daemon.

:func:`reap` collects ended children in two steps, so that a caller can signal an ended
worker's process group while its leader is still a zombie (see :func:`reap`).
"""

from __future__ import annotations

import contextlib
import ctypes
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
EXIT_UNREADABLE: Final = 72  # a frame from the master could not be read (nerved.worker.port)
EXIT_UNCONTAINED: Final = 73  # the master could not contain the child (it is killed anyway)

_SYSTEMD_VARIABLES: Final = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    """The C library's functions, from the symbols already loaded (``dlopen(NULL)``).

    Not ``ctypes.util.find_library``: it runs ``ldconfig -p`` in a subprocess, which in a
    child that is not yet in its cgroup would be a process outside its unit. Loaded by the
    master before it forks (:func:`spawn`), so that the child has it already.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _prctl(option: int, arg: int | bytes) -> None:
    if _load_libc().prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _become_child(keep_fd: int, master_pid: int, title: str, gate_fd: int | None) -> None:
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # signals Python will not touch
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python's own default: EPIPE, not death
    # Not the terminal's foreground group: a write to it under `stty tostop` would stop us.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != master_pid:
        os._exit(EXIT_ORPHANED)
    if gate_fd is not None:
        if not os.read(gate_fd, 1):  # the master closed the gate: it could not contain us
            os._exit(EXIT_UNCONTAINED)
        os.close(gate_fd)
    with contextlib.suppress(OSError):
        _prctl(PR_SET_NAME, title.encode()[:15])
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 20)
    for name in _SYSTEMD_VARIABLES:
        os.environ.pop(name, None)


def spawn(
    title: str,
    child_main: Callable[[socket.socket], int],
    *,
    contain: Callable[[int], None] | None = None,
) -> tuple[int, socket.socket]:
    """Fork a worker that runs ``child_main(its_end_of_the_channel)`` and exits with its result.

    Returns the child's pid, which is also its process group's id, and the master's end of
    the channel. The child never returns from this function: whatever happens, it ends in
    ``os._exit``.

    ``contain(pid)``, when given, runs in the master while the child waits (before it runs
    anything of ``child_main``): where the child is put in its cgroup. If it raises
    OSError, the child is killed and reaped and the error raised from here.

    Raises OSError when no child can be made (``fork``: EAGAIN under a pids or process limit,
    ENOMEM; ``socketpair``, ``pipe``: EMFILE, ENFILE), with nothing left open: the caller
    decides whether to retry.
    """
    libc = _load_libc()
    if hasattr(libc, "malloc_trim"):  # glibc: free heap pages back to the kernel, before the
        libc.malloc_trim(0)  # fork copies them into the child's RSS (about 0.2 ms)
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    gate_r = gate_w = None
    try:
        if contain is not None:
            gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        master_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except OSError:
        parent_end.close()
        child_end.close()
        for fd in (gate_r, gate_w):
            if fd is not None:
                os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - runs in the child, observed through its behaviour
        code = EXIT_CRASH
        try:
            if gate_w is not None:
                os.close(gate_w)
            _become_child(child_end.fileno(), master_pid, title, gate_r)
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
    # The child does the same first thing; whichever runs first, the group exists when this
    # returns. EACCES (the child exec'd: never here) or ESRCH (it died): nothing to group.
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.setpgid(pid, pid)
    if contain is None or gate_r is None or gate_w is None:
        return pid, parent_end
    os.close(gate_r)
    try:
        contain(pid)
    except OSError:
        os.close(gate_w)  # the child leaves (EXIT_UNCONTAINED), if the kill does not come first
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        parent_end.close()
        raise
    os.write(gate_w, b"\0")
    os.close(gate_w)
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


def reap(before: Callable[[int], None] | None = None) -> list[tuple[int, int]]:
    """Collect every child that has ended: (pid, raw status) pairs. Never blocks.

    ``before(pid)`` is called for each while it is still a zombie: ``waitid(WNOWAIT)`` finds
    it, ``waitpid`` reaps it after. Until a zombie is reaped, the kernel keeps its pid, and
    with it the id of the process group it leads, from being reused: signalling that group
    then reaches the worker's leftovers (a forked copy, a daemonised child still in the
    group) and nothing else. ``before`` must not raise.
    """
    ended: list[tuple[int, int]] = []
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        if found is None or found.si_pid == 0:
            break
        pid = found.si_pid
        if before is not None:
            before(pid)
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - only we reap our children
            continue
        if reaped != pid:  # pragma: no cover - waitid said it had ended
            break
        ended.append((pid, status))
    return ended
