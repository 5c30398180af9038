"""One client of the control socket: its buffers, its requests, and the answers it is owed.

A connection never decides when its requests run: it splits what it reads into request
lines, queues them, and asks the server (nerved.control.server) to schedule them, which
shares every loop turn fairly between clients. What it does decide is how much it holds:
it stops reading (the kernel then makes the client wait) while it has requests queued up to
:data:`QUEUED_LINES` or :data:`INPUT_PAUSE` bytes, and while the client has not read
:data:`OUTPUT_PAUSE` bytes of answers; and its requests wait while :data:`MAX_PENDING` of
its earlier ones are still to be answered (``workflow.wait``, ``reload``). A client that
pipelines forever without reading therefore costs a bounded buffer, not the master's memory.

The connection knows its server only as a :class:`Host`, the few calls it makes on it, so
that it does not import the server (which imports it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections import deque
from typing import Any, Protocol

from nerved.control.limits import (
    INPUT_PAUSE,
    MAX_PENDING,
    OUTPUT_PAUSE,
    QUEUED_LINES,
    RECV_SIZE,
    RECVS_PER_TURN,
    SMALL_LINE,
)
from nerved.control.request import Request, valid_id
from nerved.control.rpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_LINE,
    PARSE_ERROR,
    PERMISSION_DENIED,
    Pending,
    RpcError,
    as_rpc,
)
from nerved.loop import READ, WRITE, Loop
from nerved.outcome import Refused

log = logging.getLogger(__name__)


class Dispatch(Protocol):
    """(method, params, the caller's uid) -> result | Pending; raises RpcError or a refusal."""

    def __call__(self, method: str, raw_params: dict[str, Any], uid: int | None = None) -> Any: ...


class Host(Protocol):
    """What a connection needs of the server that accepted it
    (:class:`nerved.control.server.ControlServer` is one)."""

    loop: Loop
    dispatch: Dispatch

    def may_read(self, conn: Connection) -> bool:
        """Whether ``conn`` may read more now (the input budget over all connections)."""
        ...

    def input_changed(self, delta: int) -> None:
        """Bytes of waiting requests, over all connections, changed by ``delta``."""
        ...

    def output_changed(self, delta: int) -> None:
        """Bytes of unread answers, over all connections, changed by ``delta``."""
        ...

    def schedule(self, conn: Connection) -> None:
        """``conn`` has requests to run: give it its turn."""
        ...

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed."""
        ...


class Connection:
    def __init__(self, server: Host, sock: socket.socket, uid: int, allowed: bool):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.uid = uid
        self.allowed = allowed
        self.rbuf = bytearray()  # the start of a request line whose newline has not come
        self.requests: deque[Request] = deque()
        self.queued_bytes = 0  # of self.requests
        self.outbox = bytearray()  # answers of this turn: sent only after its commit
        self.wbuf = bytearray()  # answers that may go: the socket takes them when it can
        self.skipping = False  # inside an oversized line: drop bytes until its newline
        self.read_closed = False
        self.pending = 0  # requests whose answer is not written yet (a wait, a reload)
        self.closed = False
        self.events = READ  # what the loop watches this client for
        now = time.monotonic()
        self.last_request = now  # a complete request arrived, or an answer was written
        self.last_drain = now  # the client last read some of its answers

    # -- input --------------------------------------------------------------------------

    @property
    def input_bytes(self) -> int:
        return self.queued_bytes + len(self.rbuf)

    def wants_input(self) -> bool:
        """Read more only while what waits is small: the kernel holds the rest."""
        if self.closed or self.read_closed or self.unread >= OUTPUT_PAUSE:
            return False
        if len(self.requests) >= QUEUED_LINES or self.input_bytes >= INPUT_PAUSE:
            return False
        return self.server.may_read(self)

    def on_ready(self, mask: int) -> None:
        if mask & WRITE:
            self.flush()
        if mask & READ and self.wants_input():
            self.read()
        self.update_interest()
        self.maybe_close()

    def read(self) -> None:
        for _ in range(RECVS_PER_TURN):
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            if not chunk:
                self.read_closed = True
                break
            self._take(chunk)
            if self.closed or len(chunk) < RECV_SIZE or not self.wants_input():
                break
        if self.read_closed and self.rbuf and not self.skipping:
            self.server.input_changed(-len(self.rbuf))
            self.rbuf.clear()
            self.reply_error(
                None, RpcError(PARSE_ERROR, "incomplete request: end of stream before newline")
            )
        if self.requests:
            self.server.schedule(self)

    def _take(self, chunk: bytes) -> None:
        start = 0
        before = self.input_bytes
        while not self.closed:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                if not self.skipping:
                    self.rbuf += chunk[start:]
                    if len(self.rbuf) > MAX_LINE:
                        self.rbuf.clear()
                        self.skipping = True
                        self._too_long()
                break
            if self.skipping:
                self.skipping = False
            else:
                self.rbuf += chunk[start:newline]
                if len(self.rbuf) > MAX_LINE:
                    self._too_long()
                elif self.rbuf.strip():
                    self.requests.append(Request(bytes(self.rbuf)))
                    self.queued_bytes += len(self.rbuf)
                    self.last_request = time.monotonic()
                self.rbuf.clear()
            start = newline + 1
        self.server.input_changed(self.input_bytes - before)

    def _too_long(self) -> None:
        self.reply_error(None, RpcError(INVALID_REQUEST, f"request line exceeds {MAX_LINE} bytes"))

    @property
    def runnable(self) -> bool:
        """Whether its oldest request may run now (not held back by what it has open)."""
        return (
            not self.closed
            and bool(self.requests)
            and self.unread < OUTPUT_PAUSE
            and self.pending < MAX_PENDING
        )

    def next_request(self) -> Request | None:
        """The oldest waiting request, decoded (the server looks before it decides)."""
        if not self.requests:
            return None
        request = self.requests[0]
        if len(request.raw) < SMALL_LINE:
            request.decode()
        return request

    def run_next(self) -> None:
        """Answer the oldest waiting request (the server chose it)."""
        request = self.requests.popleft()
        self.queued_bytes -= len(request.raw)
        self.server.input_changed(-len(request.raw))
        request.decode()
        self.handle(request)

    def handle(self, request: Request) -> None:
        if not self.allowed:
            self.reply_error(
                None, RpcError(PERMISSION_DENIED, f"uid {self.uid} may not use this socket")
            )
            self._stop_reading()
            return
        if request.error is not None or request.message is None:
            if not request.notification:
                refusal = request.error or RpcError(INVALID_REQUEST, "empty request")
                self.reply_error(request.id, refusal)
            return
        message = request.message
        request_id = message.get("id")
        if not valid_id(request_id):
            self.reply_error(
                None, RpcError(INVALID_REQUEST, "id must be a string, an integer or null")
            )
            return
        notification = "id" not in message
        method = message.get("method")
        params = message.get("params", {})
        if message.get("jsonrpc") != "2.0":
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
            result = self.server.dispatch(str(method), params, self.uid)
        except (RpcError, Refused) as exc:
            if not notification:
                self.reply_error(request_id, as_rpc(exc))
            return
        if notification:
            return
        if isinstance(result, Pending):
            self.pending += 1
            result.on_done(lambda value, err: self._deferred(request_id, value, err))
        else:
            self.reply(request_id, result)

    def _deferred(self, request_id: Any, result: Any, error: Exception | None) -> None:
        self.pending -= 1
        if self.closed:
            return
        if self.pending == MAX_PENDING - 1 and self.requests:
            self.server.schedule(self)  # its next request waited for this one
        if error is not None:
            self.reply_error(request_id, as_rpc(error))
        else:
            self.reply(request_id, result)
        self.maybe_close()

    def _stop_reading(self) -> None:
        self.read_closed = True
        dropped = sum(len(r.raw) for r in self.requests) + len(self.rbuf)
        self.requests.clear()
        self.queued_bytes = 0
        self.rbuf.clear()
        self.server.input_changed(-dropped)

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
        if not self.unread:
            self.last_drain = time.monotonic()  # the stall clock starts with the first byte
        self.outbox += data + b"\n"
        self.server.output_changed(len(data) + 1)
        self.last_request = time.monotonic()
        self.server.loop.flush_at_end(self, self._flush_and_close)

    @property
    def unread(self) -> int:
        """Bytes of answers the client has not taken yet (this turn's included)."""
        return len(self.outbox) + len(self.wbuf)

    def _flush_and_close(self) -> None:
        """At the end of a turn, after its commit: this turn's answers may go now."""
        self.release()
        self.update_interest()
        self.maybe_close()

    def release(self) -> None:
        """Make the answers written so far sendable, and send what the socket takes."""
        self.wbuf += self.outbox
        self.outbox.clear()
        self.flush()

    def flush(self) -> None:
        """Send what may go (never this turn's answers: see :meth:`release`)."""
        had = self.unread
        while self.wbuf and not self.closed:
            try:
                sent = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            del self.wbuf[:sent]
            self.server.output_changed(-sent)
            self.last_drain = time.monotonic()
        if had >= OUTPUT_PAUSE > self.unread and self.requests:
            self.server.schedule(self)  # its requests waited for this

    def update_interest(self) -> None:
        """Watch for reads while input is wanted, for writes while output waits; else nothing."""
        if self.closed:
            return
        events = (READ if self.wants_input() else 0) | (WRITE if self.wbuf else 0)
        if events == self.events:
            return
        loop = self.server.loop
        if not events:
            loop.remove(self.fd)
        elif not self.events:
            loop.add_reader(self.fd, self.on_ready, gated=False)
            loop.set_events(self.fd, events)
        else:
            loop.set_events(self.fd, events)
        self.events = events

    def maybe_close(self) -> None:
        if (
            not self.closed
            and self.read_closed
            and not self.unread
            and not self.pending
            and not self.requests
        ):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        self.server.input_changed(-self.input_bytes)
        self.server.output_changed(-self.unread)
        self.requests.clear()
        self.rbuf.clear()
        self.outbox.clear()
        self.wbuf.clear()
        with contextlib.suppress(OSError):
            self.sock.close()
