"""The control socket's file: bound at its path (mode 0660, group ``nerve``, a stale file
replaced, a live one left alone), or taken from systemd (socket activation).

What happens before the first client: the path, its mode and owner, the listening socket.
Apart from the server (:mod:`nerved.control.server`) because it runs once, at start, and
touches the file system, where the server only serves the socket it is handed.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Final

from nerved import modes
from nerved.control.peers import GROUP

log = logging.getLogger("nerved.control.server")

PROBE_TIMEOUT: Final = 1.0  # seconds to see whether a socket file left at our path is live
SD_LISTEN_FDS_START: Final = 3


class SocketInUse(Exception):
    """Another process answers on the control socket path."""


def bind(path: Path) -> socket.socket:
    """Listen on ``path``: mode 0660, group ``nerve`` when it exists, a stale file replaced.

    A path where something still answers is left alone: two daemons on one socket would
    each think the other's clients were theirs.
    """
    modes.make_dirs(path.parent)  # 0755, whatever the umask (nerved.master.startup checks them)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink()  # nobody listens: left behind by a daemon that was killed
        except OSError as exc:  # a listener too busy to take us (EAGAIN) still listens
            raise SocketInUse(f"something listens on {path} ({exc.strerror or exc})") from exc
        else:
            raise SocketInUse(f"another nerved is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    try:
        _set_mode(path)
    except BaseException:
        sock.close()  # the file stays: it may not be ours now (a next start replaces a stale one)
        raise
    sock.listen(128)
    return sock


def _set_mode(path: Path) -> None:
    """Mode 0660, group ``nerve`` for the socket just bound, never through a symbolic link.

    Whoever could swap a link in for the socket would otherwise have root give the group
    any file of the host (see nerved.modes). The file is opened ``O_PATH | O_NOFOLLOW``,
    proved a socket, and changed through its descriptor's ``/proc/self/fd`` entry (Linux
    has no ``fchmod`` for an ``O_PATH`` descriptor before 6.6).
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.EEXIST, "was replaced by something that is not a socket", str(path))
        inode = f"/proc/self/fd/{fd}"
        os.chmod(inode, 0o660)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(inode, -1, grp.getgrnam(GROUP).gr_gid)
    finally:
        os.close(fd)


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation, sd_listen_fds(3)), if any.

    The variables are removed once read, so that no child ever believes it was activated.
    """
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit() or int(count) < 1:
        return None
    if int(count) > 1:
        log.warning("systemd passed %s sockets; using the first", count)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise OSError(f"the socket systemd passed is not a Unix stream socket ({sock})")
    os.set_inheritable(sock.fileno(), False)
    return sock
