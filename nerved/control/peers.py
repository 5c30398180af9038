"""Who may use the control socket: the peer as the kernel saw it connect (``SO_PEERCRED``)
and the policy (root, the daemon's user, members of the ``nerve`` group; SPEC §6).

Apart from the server because it is a question of users and groups (name service lookups,
``/proc``), asked once per connection, that the server only acts on.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Final

GROUP: Final = "nerve"
_UCRED: Final = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    """Who is at the other end, as the kernel saw them connect (SO_PEERCRED)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid)


class PeerUnknown(Exception):
    """Who the peer is cannot be told now (the master is out of file descriptors)."""


class PeerPolicy:
    """Root, the daemon's own user, and members of the ``nerve`` group may connect.

    Membership is looked up at each connection (no cache: ``usermod -aG nerve`` takes
    effect without a restart): the peer's group, the supplementary groups of the peer
    process (``sg nerve``), or the group database. Out of file descriptors those lookups
    fail as if the answer were "no": that is :class:`PeerUnknown`, not a refusal.
    """

    def __init__(self) -> None:
        self.own_uid = os.getuid()

    def allows(self, peer: Peer) -> bool:
        """Raises PeerUnknown when the lookups cannot be made now."""
        if peer.uid in (0, self.own_uid):
            return True
        try:
            gid = grp.getgrnam(GROUP).gr_gid
        except KeyError:
            _check_fds()
            return False
        if peer.gid == gid or gid in _process_groups(peer.pid):
            return True
        try:
            user = pwd.getpwuid(peer.uid)
        except KeyError:
            _check_fds()
            return False
        return gid == user.pw_gid or gid in os.getgrouplist(user.pw_name, user.pw_gid)


def _check_fds() -> None:
    """A name service lookup said "not found": make sure it was not for want of an fd."""
    try:
        os.close(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise PeerUnknown(exc.strerror or str(exc)) from exc


def _process_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise PeerUnknown(exc.strerror or str(exc)) from exc
    except ValueError:
        pass
    return set()
