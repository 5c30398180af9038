"""The control socket: JSON-RPC 2.0 over a Unix stream socket, one JSON object per line.

It lives in the master's loop, so it must never block it, and no client may make it wait
for another: every client is non-blocking with bounded input and output buffers
(nerved.control.connection), each turn's work is shared between clients within a time
budget, the number of connections is capped with room kept for root, and a client that goes
quiet or stops reading is disconnected after a timeout. Who may connect is checked with
``SO_PEERCRED`` on every connection (SPEC §6).

This module is the serving: accepting clients (who they are is :mod:`nerved.control.peers`'),
sharing the turn between their requests, and the sweep of idle and stalled ones. Its parts:
the socket file bound at start (:mod:`nerved.control.listener`, whose names are also
importable from here), the numbers that bound it all (:mod:`nerved.control.limits`), one
client (:mod:`nerved.control.connection`) and one request line (:mod:`nerved.control.request`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import time

from nerved import wire
from nerved.control.connection import Connection, Dispatch
from nerved.control.limits import (
    ACCEPT_CALM,
    ACCEPT_PAUSE,
    ACCEPTS_PER_TURN,
    INPUT_BUDGET,
    MAX_PENDING,
    OUTPUT_BUDGET,
    OUTPUT_PAUSE,
    REFUSAL_LOG_EVERY,
    ROOT_RESERVE,
    SMALL_LINE,
    SWEEP_EVERY,
    TurnBudget,
)
from nerved.control.listener import SocketInUse, bind, inherited_socket
from nerved.control.peers import GROUP, Peer, PeerPolicy, PeerUnknown, peer_of
from nerved.control.request import Request
from nerved.control.rpc import SHUTTING_DOWN, RpcError
from nerved.loop import Loop, Timer
from nerved.words import plural

__all__ = ["ControlServer", "Dispatch", "SocketInUse", "bind", "inherited_socket"]

log = logging.getLogger(__name__)


class ControlServer:
    """Accepts clients and shares each loop turn between their requests.

    Per turn: every client with a request waiting gets one answered per round, round after
    round; light requests (``status``, a trigger) up to :data:`LIGHT_PER_TURN` in all, heavy
    ones (``logs.query``, ``workflow.list``, ``workflow.inspect``, or any long line) until
    :data:`TURN_BUDGET` seconds have gone (at least one, unless answers nobody reads already
    fill :data:`OUTPUT_BUDGET`). The rest waits for the next turn, which comes at once: no
    client can hold the loop, so ``status`` is answered within a turn and the watchdog fed.

    Connections: at most ``max_connections``, of which the last :data:`ROOT_RESERVE` only
    root may take, so that a full table never locks the operator out. A client with nothing
    in flight for ``idle_timeout`` seconds, or that has not read its answers for as long, is
    disconnected.
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        dispatch: Dispatch,
        *,
        heavy: frozenset[str],
        idle_timeout: float,
        max_connections: int,
    ) -> None:
        """``heavy``: the methods that share the per-turn budget; ``idle_timeout`` (seconds)
        and ``max_connections`` come from nerve.yaml's ``control:`` (see :meth:`configure`)."""
        self.loop = loop
        self.sock = sock
        self.dispatch = dispatch
        self.heavy = heavy
        self.policy = PeerPolicy()
        self.connections: dict[int, Connection] = {}
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.input_total = 0  # bytes of requests waiting, over every connection
        self.output_total = 0  # bytes of answers not yet read, over every connection
        self._ready: dict[Connection, None] = {}  # connections with requests, in turn order
        self._work_timer: Timer | None = None
        self._budget = TurnBudget(-1, heavy_waited=False)
        self._accept_pause = 0.0  # seconds accept() is paused for after running out of fds
        self._accept_failed = float("-inf")  # monotonic time of the last failed accept()
        self._refused = 0  # connections refused since the last line about it
        self._refused_logged = float("-inf")
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept, gated=False)
        self.listening = True
        self._sweep_timer = loop.call_later(SWEEP_EVERY, self._sweep, gated=False)

    def configure(self, *, idle_timeout: float, max_connections: int) -> None:
        """Apply nerve.yaml's ``control`` settings (at start and at every reload)."""
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections

    # -- accepting ----------------------------------------------------------------------

    def _accept(self, _mask: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                client, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # that client gave up; the next may not have
                self._pause_accepting(exc)
                return
            if self._accept_pause and time.monotonic() - self._accept_failed > ACCEPT_CALM:
                log.warning("accepting control connections again")
                self._accept_pause = 0.0
            self._admit(client)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of fds (or memory): stop looking at the socket for a while, say so once.

        The pending connection stays in the kernel's backlog, so the listening socket stays
        readable: without the pause the loop would spin on it (and log each try).
        """
        if not self._accept_pause:  # a new episode: one line (it ends after ACCEPT_CALM)
            log.error(
                "cannot accept control connections: %s; retrying every %gs to %gs",
                exc.strerror or exc, ACCEPT_PAUSE[0], ACCEPT_PAUSE[1],
            )  # fmt: skip
        self._accept_failed = time.monotonic()
        self._accept_pause = min(ACCEPT_PAUSE[1], max(ACCEPT_PAUSE[0], self._accept_pause * 2))
        self.loop.remove(self.sock.fileno())
        self.loop.call_later(self._accept_pause, self._resume_accepting, gated=False)

    def _resume_accepting(self) -> None:
        if self.listening:
            self.loop.add_reader(self.sock.fileno(), self._accept, gated=False)

    def _admit(self, client: socket.socket) -> None:
        try:
            client.setblocking(False)
            peer = peer_of(client)
        except OSError:
            client.close()
            return
        limit = self.max_connections - (0 if peer.uid == 0 else ROOT_RESERVE)
        if len(self.connections) >= limit:
            open_ = len(self.connections)
            self._refuse(
                client, peer,
                f"too many control connections ({open_} open, the last {ROOT_RESERVE} kept"
                " for root)",
            )  # fmt: skip
            return
        try:
            allowed = self.policy.allows(peer)
        except PeerUnknown as exc:
            self._refuse(client, peer, f"cannot tell who you are right now ({exc})")
            return
        if not allowed:
            log.warning(
                "refused control connection from uid %d (not root, uid %d or in group %s)",
                peer.uid, self.policy.own_uid, GROUP,
            )  # fmt: skip
        conn = Connection(self, client, peer.uid, allowed)
        self.connections[conn.fd] = conn
        self.loop.add_reader(conn.fd, conn.on_ready, gated=False)

    def _refuse(self, client: socket.socket, peer: Peer, why: str) -> None:
        """Tell a client why it cannot be served now, in one line (-32002), and close (never
        blocking on it). Refusals are counted and logged at most every REFUSAL_LOG_EVERY."""
        error = RpcError(SHUTTING_DOWN, f"{why}; try again later")
        line = json.dumps({"jsonrpc": "2.0", "id": None, "error": error.to_wire()}) + "\n"
        with contextlib.suppress(OSError):
            client.send(line.encode())
        client.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= REFUSAL_LOG_EVERY:
            log.warning(
                "refused %s (uid %d last): %s",
                plural(self._refused, "control connection"),
                peer.uid,
                why,
            )
            self._refused, self._refused_logged = 0, now

    # -- scheduling ---------------------------------------------------------------------

    def may_read(self, conn: Connection) -> bool:
        """Past :data:`INPUT_BUDGET` waiting in all, only clients with little waiting read."""
        return self.input_total < INPUT_BUDGET or conn.input_bytes < SMALL_LINE

    def input_changed(self, delta: int) -> None:
        self.input_total += delta

    def output_changed(self, delta: int) -> None:
        self.output_total += delta

    def schedule(self, conn: Connection) -> None:
        self._ready[conn] = None
        if self._work_timer is None:
            self._work_timer = self.loop.call_later(0, self._work, gated=False)

    def _work(self) -> None:
        """Answer waiting requests, round by round, within this turn's budgets.

        Each round takes at most one request per client (its oldest: a client's answers keep
        their order). Light requests go first, and a turn that answered some leaves heavy ones
        to the next turn, which comes at once (but never two turns running): answers go out at
        the end of a turn, so a ``status`` is not held back by somebody else's query. This
        may run several times in one turn (the loop runs due timers after each look for
        input); the budgets are the turn's.
        """
        self._work_timer = None
        budget = self._budget_of_turn()
        if self._rounds(budget, heavy=False):
            budget.light_ran = True
        if budget.light_ran and not budget.heavy_waited_last_turn:
            budget.heavy_waits = True
        else:
            self._rounds(budget, heavy=True)
        for conn in list(self.connections.values()):
            conn.update_interest()
            conn.maybe_close()
        if any(c.runnable for c in self._ready):
            self._work_timer = self.loop.call_later(0, self._work, gated=False)

    def _budget_of_turn(self) -> TurnBudget:
        if self._budget.turn != self.loop.turn:
            self._budget = TurnBudget(self.loop.turn, heavy_waited=self._budget.heavy_waits)
        return self._budget

    def _rounds(self, budget: TurnBudget, *, heavy: bool) -> int:
        """Rounds over the clients whose oldest request is ``heavy`` (or light) while the
        budget lasts; returns how many requests were answered."""
        answered = 0
        progress = True
        while progress:
            progress = False
            for conn in list(self._ready):
                request = conn.next_request()
                if request is None or conn.closed:
                    self._ready.pop(conn, None)
                    continue
                if self._is_heavy(request) != heavy:
                    continue
                if conn.unread >= OUTPUT_PAUSE or conn.pending >= MAX_PENDING:
                    continue  # it runs again once its client reads, or an answer comes
                if not budget.take(heavy, self.output_total >= OUTPUT_BUDGET):
                    continue
                conn.run_next()
                answered += 1
                progress = True
                # Round robin across turns too: whoever was served goes to the back.
                self._ready.pop(conn, None)
                if conn.requests and not conn.closed:
                    self._ready[conn] = None
        return answered

    def _is_heavy(self, request: Request) -> bool:
        return not request.decoded or request.method in self.heavy

    # -- time ---------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Disconnect clients idle, or not reading their answers, for ``idle_timeout``."""
        now = time.monotonic()
        for conn in list(self.connections.values()):
            if conn.unread:
                if now - conn.last_drain >= self.idle_timeout:
                    log.warning(
                        "control client uid %d has not read its answers for %gs (%s waiting);"
                        " disconnecting it",
                        conn.uid, self.idle_timeout, wire.size_text(conn.unread),
                    )  # fmt: skip
                    conn.close()
            elif (
                not conn.requests
                and not conn.pending
                and now - conn.last_request >= self.idle_timeout
            ):
                log.debug(
                    "control client uid %d idle for %gs; closing", conn.uid, self.idle_timeout
                )
                conn.close()
        self._sweep_timer = self.loop.call_later(SWEEP_EVERY, self._sweep, gated=False)

    # -- the end ------------------------------------------------------------------------

    def forget(self, conn: Connection) -> None:
        self.loop.remove(conn.fd)
        self.connections.pop(conn.fd, None)
        self._ready.pop(conn, None)

    def stop_listening(self) -> None:
        if self.listening:
            self.listening = False
            self.loop.remove(self.sock.fileno())

    def close(self, *, flush: bool = True) -> None:
        """Close every connection, after writing what they are owed unless ``flush`` is
        False (a failed commit: answers of that turn may describe what was never stored)."""
        self.stop_listening()
        self._sweep_timer.cancel()
        for conn in list(self.connections.values()):
            if flush:
                conn.release()
            conn.close()
        self.sock.close()
