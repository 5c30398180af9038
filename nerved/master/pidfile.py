"""The pid file of ``nerved --daemon``, locked with flock(2) for as long as the daemon lives.

Whether a pid file is stale is decided by its lock, never by the pid it names: that pid may
have been reused by any process since (or be pid 1, or a zombie), so "is it alive" proves
nothing. A pid file whose lock is free is stale, whatever it says, and is taken over; one
whose lock is held belongs to a running nerved, and another start is refused. The kernel
drops the lock when the holder dies, even of ``kill -9``.

The file is opened without following a symbolic link (the daemon may run as root and
truncates what it opens), must be a regular file with no other hard link (another name of
it could be any file of the host), and must belong to root or the daemon's user (strict
modes: nerved.modes.vet_state_fd). It is created 0644: a pid is no secret, and tools that
read pid files may run as anyone; permissions beyond that found on one nerved owns are taken
off (a WARNING, as for the state files), not refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Final

from nerved import modes

_ATTEMPTS: Final = 5  # the file was replaced between our open and our lock this many times
PIDFILE_MODE: Final = 0o644


class PidFileHeld(Exception):
    """Another process holds the pid file's lock: a nerved is running with it."""


class PidFile:
    """A pid file we hold: ``fd`` is open and locked until :meth:`close`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> PidFile:
        """Open, lock and empty ``path`` (created 0644, with its directory, if missing).

        Raises :class:`PidFileHeld` if another process holds it, naming the pid it wrote;
        ``OSError`` if it cannot be created, opened or locked, or is not a regular file.
        """
        modes.make_dirs(path.parent)  # 0755, whatever the umask (nerved.master.startup checks them)
        for _ in range(_ATTEMPTS):
            fd = modes.open_state_file(path, os.O_RDWR | os.O_CREAT, PIDFILE_MODE)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(fd)
                    raise PidFileHeld(f"already running (pid {holder}): {path} is locked") from None
                # The holder may have removed the file between our open and our lock (it
                # exited): then we hold a lock on a file nobody can see, and start over.
                if _still_at(path, fd):
                    os.ftruncate(fd, 0)
                    return cls(path, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OSError(errno.EAGAIN, "it keeps being replaced", str(path))

    def write(self, pid: int) -> None:
        """Name ``pid`` (the daemon's, once it has detached) in the file."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def close(self, *, remove: bool) -> None:
        """Let go of the lock; with ``remove``, remove the file first if it is still ours."""
        if remove and _still_at(self.path, self.fd):
            with contextlib.suppress(OSError):  # a read-only directory: stale, and harmless
                self.path.unlink()
        os.close(self.fd)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _still_at(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return _identity(os.stat(path, follow_symlinks=False)) == _identity(os.fstat(fd))
    except OSError:
        return False


def _holder(fd: int) -> str:
    """The pid the holder wrote, or "unknown" while it has not written it yet."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
