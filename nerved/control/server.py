"""The control socket: JSON-RPC 2.0 over a Unix stream socket, one JSON object per line.

It lives in the master's loop, so it must never block it: every client is non-blocking with
its own input and output buffers, a line longer than 1 MiB is refused without being kept,
a client that stops reading is cut off once its output backlog passes a bound, and a client
that sends half a line and goes quiet costs one buffer, nothing more. Who may connect is
checked with ``SO_PEERCRED`` on every connection (SPEC §6).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nerved import wire
from nerved.control.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_LINE,
    PARSE_ERROR,
    PERMISSION_DENIED,
    Pending,
    RpcError,
)
from nerved.loop import READ, WRITE, Loop

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 256
MAX_BACKLOG: Final = 32 * 1024 * 1024  # unread output past which a client is dropped
_UCRED: Final = struct.Struct("3i")
GROUP: Final = "nerve"

Dispatch = Callable[[str, Any], Any]  # (method, params) -> result | Pending; raises RpcError


class SocketInUse(Exception):
    """Another process answers on the control socket path."""


def bind(path: Path) -> socket.socket:
    """Listen on ``path``: mode 0660, group ``nerve`` when it exists, a stale file replaced.

    A path where something still answers is left alone: two daemons on one socket would
    each think the other's clients were theirs.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left behind by a daemon that was killed
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
    os.chmod(path, 0o660)
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, -1, grp.getgrnam(GROUP).gr_gid)
    sock.listen(128)
    return sock


SD_LISTEN_FDS_START: Final = 3


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


class PeerPolicy:
    """Root, the daemon's own user, and members of the ``nerve`` group may connect.

    Membership is looked up at each connection (no cache: ``usermod -aG nerve`` takes
    effect without a restart): the peer's group, the supplementary groups of the peer
    process (``sg nerve``), or the group database.
    """

    def __init__(self) -> None:
        self.own_uid = os.getuid()

    def allows(self, peer: Peer) -> bool:
        if peer.uid in (0, self.own_uid):
            return True
        try:
            gid = grp.getgrnam(GROUP).gr_gid
        except KeyError:
            return False
        if peer.gid == gid or gid in _process_groups(peer.pid):
            return True
        try:
            user = pwd.getpwuid(peer.uid)
        except KeyError:
            return False
        return gid == user.pw_gid or gid in os.getgrouplist(user.pw_name, user.pw_gid)


def _process_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


class Connection:
    def __init__(self, server: ControlServer, sock: socket.socket, uid: int, allowed: bool):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.uid = uid
        self.allowed = allowed
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.skipping = False  # inside an oversized line: drop bytes until its newline
        self.read_closed = False
        self.pending = 0  # requests whose answer is not written yet
        self.closed = False
        self.events = READ  # what the loop watches this client for

    # -- input --------------------------------------------------------------------------

    def on_ready(self, mask: int) -> None:
        if mask & WRITE:
            self.flush()
        if mask & READ and not self.closed and not self.read_closed:
            self.read()
        self.maybe_close()

    def read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            if not chunk:
                self.read_closed = True
                break
            self._take(chunk)
            if self.closed or len(chunk) < 65536:
                break
        if self.read_closed:
            if self.rbuf and not self.skipping:
                self.rbuf.clear()
                self.reply_error(
                    None, RpcError(PARSE_ERROR, "incomplete request: end of stream before newline")
                )
            self._update_interest()

    def _take(self, chunk: bytes) -> None:
        start = 0
        while not self.closed and not self.read_closed:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                if not self.skipping:
                    self.rbuf += chunk[start:]
                    if len(self.rbuf) > MAX_LINE:
                        self.rbuf.clear()
                        self.skipping = True
                        self.reply_error(
                            None,
                            RpcError(INVALID_REQUEST, f"request line exceeds {MAX_LINE} bytes"),
                        )
                return
            if self.skipping:
                self.skipping = False
            else:
                self.rbuf += chunk[start:newline]
                line = bytes(self.rbuf)
                self.rbuf.clear()
                if len(line) > MAX_LINE:
                    self.reply_error(
                        None, RpcError(INVALID_REQUEST, f"request line exceeds {MAX_LINE} bytes")
                    )
                else:
                    self.handle(line)
            start = newline + 1

    def handle(self, line: bytes) -> None:
        if not line.strip():
            return
        if not self.allowed:
            self.reply_error(
                None, RpcError(PERMISSION_DENIED, f"uid {self.uid} may not use this socket")
            )
            self.read_closed = True
            return
        try:
            # Two levels for the envelope ({"params": {"payload": ...}}): a payload may nest
            # as deep as any value nerve keeps, and the request line no deeper.
            request = wire.loads(line, max_depth=wire.MAX_DEPTH + 2)
        except wire.Invalid as exc:
            self.reply_error(None, _invalid(exc))
            return
        if not isinstance(request, dict):
            what = (
                "batch requests are not supported"
                if isinstance(request, list)
                else "a request must be a JSON object"
            )
            self.reply_error(None, RpcError(INVALID_REQUEST, what))
            return
        request_id = request.get("id")
        if not (
            request_id is None
            or (isinstance(request_id, (str, int)) and not isinstance(request_id, bool))
        ):
            self.reply_error(
                None, RpcError(INVALID_REQUEST, "id must be a string, an integer or null")
            )
            return
        notification = "id" not in request
        method = request.get("method")
        params = request.get("params", {})
        if request.get("jsonrpc") != "2.0":
            error: RpcError | None = RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"')
        elif not isinstance(method, str):
            error = RpcError(INVALID_REQUEST, "method must be a string")
        elif params is None:
            params, error = {}, None
        elif not isinstance(params, dict):
            error = RpcError(INVALID_REQUEST, "params must be an object")
        else:
            error = None
        if error is not None:
            if not notification:
                self.reply_error(request_id, error)
            return
        try:
            result = self.server.dispatch(str(method), params)
        except RpcError as exc:
            if not notification:
                self.reply_error(request_id, exc)
            return
        except Exception as exc:
            log.exception("control method %s failed", method)
            if not notification:
                self.reply_error(request_id, RpcError(INTERNAL_ERROR, f"internal error: {exc}"))
            return
        if notification:
            return
        if isinstance(result, Pending):
            self.pending += 1
            result.on_done(lambda value, err: self._deferred(request_id, value, err))
        else:
            self.reply(request_id, result)

    def _deferred(self, request_id: Any, result: Any, error: RpcError | None) -> None:
        self.pending -= 1
        if self.closed:
            return
        if error is not None:
            self.reply_error(request_id, error)
        else:
            self.reply(request_id, result)
        self.maybe_close()

    # -- output -------------------------------------------------------------------------

    def reply(self, request_id: Any, result: Any) -> None:
        self._write({"jsonrpc": "2.0", "id": request_id, "result": result})

    def reply_error(self, request_id: Any, error: RpcError) -> None:
        self._write({"jsonrpc": "2.0", "id": request_id, "error": error.to_wire()})

    def _write(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            log.error("cannot encode a control reply: %s", exc)
            err = RpcError(INTERNAL_ERROR, "internal error: result not encodable")
            data = json.dumps(
                {"jsonrpc": "2.0", "id": message.get("id"), "error": err.to_wire()}
            ).encode()
        self.wbuf += data + b"\n"
        if len(self.wbuf) > MAX_BACKLOG:
            log.warning("control client uid %d stopped reading; disconnecting it", self.uid)
            self.close()
            return
        self.server.loop.flush_at_end(self, self._flush_and_close)

    def _flush_and_close(self) -> None:
        self.flush()
        self.maybe_close()

    def flush(self) -> None:
        while self.wbuf and not self.closed:
            try:
                sent = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            del self.wbuf[:sent]
        self._update_interest()

    def _update_interest(self) -> None:
        """Watch for reads until end of stream, for writes while output waits; else nothing."""
        if self.closed:
            return
        events = (0 if self.read_closed else READ) | (WRITE if self.wbuf else 0)
        if events == self.events:
            return
        loop = self.server.loop
        if not events:
            loop.remove(self.fd)
        elif not self.events:
            loop.add_reader(self.fd, self.on_ready)
            loop.set_events(self.fd, events)
        else:
            loop.set_events(self.fd, events)
        self.events = events

    def maybe_close(self) -> None:
        if not self.closed and self.read_closed and not self.wbuf and not self.pending:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()


def _invalid(exc: wire.Invalid) -> RpcError:
    """The JSON-RPC error for a request line :func:`wire.loads` refused.

    Not JSON at all is a parse error; a bad value inside one param names that param
    (-32602); anything else about the shape of the request is an invalid request.
    """
    if exc.reason.startswith(("not JSON", "not UTF-8")):
        return RpcError(PARSE_ERROR, exc.reason)
    path = exc.path
    if len(path) >= 2 and path[0] == "params" and isinstance(path[1], str):
        name = path[1]
        at = wire.where(path[2:], name)
        return RpcError(
            INVALID_PARAMS, f"param {name!r} holds what JSON cannot carry: {exc.reason} (at {at})"
        )
    if exc.reason.startswith("nested deeper"):
        depth = wire.MAX_DEPTH
        return RpcError(
            INVALID_REQUEST,
            f"request nested deeper than {depth + 2} levels: a value may nest at most {depth}",
        )
    return RpcError(INVALID_REQUEST, f"invalid request: {exc}")


class ControlServer:
    def __init__(self, loop: Loop, sock: socket.socket, dispatch: Dispatch) -> None:
        self.loop = loop
        self.sock = sock
        self.dispatch = dispatch
        self.policy = PeerPolicy()
        self.connections: dict[int, Connection] = {}
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)
        self.listening = True

    def _accept(self, _mask: int) -> None:
        for _ in range(64):
            try:
                client, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept control connections: %s", exc)
                    return
                raise
            client.setblocking(False)
            if len(self.connections) >= MAX_CONNECTIONS:
                log.warning("refusing a control connection: %d are open", MAX_CONNECTIONS)
                client.close()
                continue
            peer = peer_of(client)
            uid = peer.uid
            allowed = self.policy.allows(peer)
            if not allowed:
                log.warning(
                    "refused control connection from uid %d (not root, uid %d or in group %s)",
                    uid,
                    self.policy.own_uid,
                    GROUP,
                )
            conn = Connection(self, client, uid, allowed)
            self.connections[conn.fd] = conn
            self.loop.add_reader(conn.fd, conn.on_ready)

    def forget(self, conn: Connection) -> None:
        self.loop.remove(conn.fd)
        self.connections.pop(conn.fd, None)

    def stop_listening(self) -> None:
        if self.listening:
            self.listening = False
            self.loop.remove(self.sock.fileno())

    def close(self) -> None:
        self.stop_listening()
        for conn in list(self.connections.values()):
            conn.flush()
            conn.close()
        self.sock.close()
