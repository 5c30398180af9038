"""The master's handles on its forked children, and the registry that reaps them.

A worker is gone when the master has *reaped* it: end of stream on its channel comes first
(and makes the master kill the process if it lingers), but only ``waitpid`` proves the
process no longer runs user code, so only then are its duties handed to a successor.
That ordering is what keeps a step from ever running twice in parallel.

Each worker is a unit with everything it starts (:mod:`nerved.containment`): killing a worker
kills its unit, and when a worker ends, however it ends, what is left of its unit is killed
before it is reaped.

The master does not trust what a worker sends: a frame longer than
:data:`~nerved.channel.TO_MASTER`, one that does not decode by :mod:`nerved.wire`'s rules, or a
message its owner cannot use ends that worker (its runs resume in a successor), never the
daemon. Nor does anything the master sends raise: see :meth:`Worker.send`.

What the master has imported, every worker holds: a forked child's resident memory counts
each page of the master's heap again. So a worker imports its own modules (asyncio with
them) after the fork (see :mod:`nerved.worker`), and user code later still, once in its
unit. One exception: the master imports ``ssl``, which asyncio imports in every worker,
because setting OpenSSL up reads some 1.5 MB of libcrypto into the process that does it:
once in the master rather than once per worker (``python -m bench.growth``, 4 workflows:
127 MB with asyncio in the master, 126.6 with it in each worker, 122.3 with ssl kept here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import ssl  # noqa: F401  # OpenSSL set up once, before any fork: see the module's doc
import time
from collections.abc import Callable, Iterator
from typing import Final

from nerved import wire
from nerved.channel import (
    TO_MASTER,
    TO_WORKER,
    Channel,
    ChannelClosed,
    Garbled,
    Message,
    ProtocolError,
    frame,
)
from nerved.containment import Containment, Unit
from nerved.loop import READ, WRITE, Loop
from nerved.process import describe_exit, reap
from nerved.states import WorkerState

log = logging.getLogger(__name__)

# What reading a worker's message can raise when its fields are not what the protocol says.
# Not StoreError (a storage failure stops the daemon) and not any other bug of nerve's own.
_MALFORMED: Final = (LookupError, TypeError, ValueError, AttributeError, ArithmeticError)

MessageHandler = Callable[["Worker", Message], None]
GoneHandler = Callable[["Worker", str], None]


class Worker:
    def __init__(
        self,
        registry: Workers,
        kind: str,
        name: str,
        unit: Unit,
        sock: socket.socket,
        on_message: MessageHandler,
        on_gone: GoneHandler,
    ) -> None:
        self._registry = registry
        self._loop = registry.loop
        self.kind = kind
        self.name = name
        self.unit = unit
        self.pid = unit.pid
        self.channel = Channel(sock, receive_limit=TO_MASTER, send_limit=TO_WORKER)
        self.on_message = on_message
        self.on_gone = on_gone
        self.started = time.monotonic()
        self.reaped = False
        self.state = WorkerState.SPAWNING  # its supervisor's word (nerved.master.supervisor)
        self._fd = self.channel.fileno()
        self._loop.add_reader(self._fd, self._on_ready)

    def __repr__(self) -> str:
        return f"<{self.kind} worker {self.name} pid {self.pid}>"

    @property
    def alive(self) -> bool:
        return not self.reaped

    @property
    def connected(self) -> bool:
        return not self.channel.closed

    def send(self, message: Message) -> bool:
        """Queue a message, written at the end of the turn; False if the worker is gone.

        Never raises, so that it is safe in an ``after_commit`` callback. A message that
        cannot be encoded (nerve's own bug) is logged and ends the worker, whose runs then
        resume in a successor; a caller that can answer such a failure better (a run built
        from stored data) encodes with :func:`nerved.channel.frame` and uses :meth:`send_frame`.
        """
        try:
            data = frame(message, self.channel.send_limit)
        except wire.Invalid as exc:
            log.error("cannot send %r a %r message (%s); killing it", self, message.get("t"), exc)
            self._disconnect("a message for it could not be encoded")
            return False
        return self.send_frame(data)

    @property
    def unsent(self) -> int:
        """Bytes queued for the worker that it has not read yet."""
        return self.channel.unsent

    def send_frame(self, data: bytes) -> bool:
        """Queue a frame made by :func:`nerved.channel.frame` for :data:`TO_WORKER`."""
        if self.channel.closed:
            return False
        self.channel.queue(data)
        self._loop.flush_at_end(self, self._flush)
        return True

    def _flush(self) -> None:
        if self.channel.closed:
            return
        try:
            if not self.channel.flush():
                self._loop.set_events(self._fd, READ | WRITE)
        except ChannelClosed:
            self._disconnect("its channel broke")

    def _on_ready(self, mask: int) -> None:
        if self.channel.closed:
            return
        if mask & WRITE:
            try:
                if self.channel.flush():
                    self._loop.set_events(self._fd, READ)
            except ChannelClosed:
                self._disconnect("its channel broke")
                return
        if not mask & READ:
            return
        try:
            messages = self.channel.receive()
        except ChannelClosed:
            self._disconnect("end of stream")
            return
        except ProtocolError as exc:
            log.error("%r sent garbage (%s); killing it", self, exc)
            self._disconnect("protocol error")
            return
        for message in messages:
            if self.channel.closed:
                break
            if isinstance(message, Garbled):
                log.error("%r sent an unreadable frame (%s); killing it", self, message.reason)
                self._disconnect("protocol error")
                break
            try:
                self.on_message(self, message)
            except _MALFORMED as exc:
                # A worker runs user code, which can reach the channel: a malformed message
                # (a field of the wrong type, a number that overflows: {"n": 1e400} decodes to
                # infinity) ends that worker (its runs resume elsewhere), never the daemon.
                log.error(
                    "%r sent a malformed %r message (%s); killing it", self, message.get("t"), exc
                )
                self._disconnect("malformed message")
                break

    def _disconnect(self, why: str) -> None:
        """Close the channel; a process that has no channel has no purpose, so end it."""
        if self.channel.closed:
            return
        log.debug("%r disconnected: %s", self, why)
        self._loop.remove(self._fd)
        self.channel.close()
        self.kill()  # a no-op once reaped

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the worker's whole unit; a no-op once reaped (the reaper killed it then)."""
        if not self.reaped:
            self.unit.kill(signum)

    def set_memory_max(self, limit: int | None) -> None:
        """memoryMax changed by a reload: the live worker's unit is held to it from now on."""
        self._registry.containment.set_memory_max(self.unit, limit)

    def _reaped(self, status: int) -> None:
        self.reaped = True
        if not self.channel.closed:
            # SIGCHLD can be handled before the channel's last bytes in the same turn: what
            # the worker said before it exited (a final "completed") must still be heard.
            # Bounded, and only while readable: a grandchild may still hold the socket.
            for _ in range(1024):
                if self.channel.closed or not select.select([self._fd], [], [], 0)[0]:
                    break
                self._on_ready(READ)
            if not self.channel.closed:
                self._loop.remove(self._fd)
                self.channel.close()
        self.on_gone(self, self.unit.exceeded or describe_exit(status))


class Workers:
    """Every child the master has forked, by pid."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._by_pid: dict[int, Worker] = {}
        self.containment = Containment(loop)
        self.before_fork: Callable[[], None] = lambda: None
        """Run before each fork: what the master can give back, a child would hold too (the
        daemon's store lets its page caches go)."""

    def contain(self) -> str:
        """Set containment up (before the first spawn); the line it logged."""
        return self.containment.start()

    def spawn(
        self,
        kind: str,
        name: str,
        child_main: Callable[[socket.socket], int],
        on_message: MessageHandler,
        on_gone: GoneHandler,
        *,
        memory_max: int | None = None,
    ) -> Worker:
        """Fork a worker in a unit of its own, held to ``memory_max`` bytes (None: no limit);
        raises OSError when no child can be made (see process.spawn)."""
        self.before_fork()
        unit, sock = self.containment.spawn(
            kind, name, f"nerve:{kind[:1]}:{name}", child_main, memory_max
        )
        worker = Worker(self, kind, name, unit, sock, on_message, on_gone)
        self._by_pid[unit.pid] = worker
        log.debug("forked %r", worker)
        return worker

    def reap(self) -> None:
        """On SIGCHLD: collect every ended child and tell its owner; what is left of each
        ended worker's unit is killed before the worker is reaped."""
        for pid, status in reap(before=self.containment.ended):
            worker = self._by_pid.pop(pid, None)
            if worker is None:
                log.debug("reaped pid %d (%s), not a worker", pid, describe_exit(status))
                continue
            worker._reaped(status)

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self._by_pid.values()))

    def __len__(self) -> int:
        return len(self._by_pid)

    def kill_all(self, signum: int = signal.SIGKILL) -> None:
        for worker in list(self._by_pid.values()):
            worker.kill(signum)

    def kill_now(self, within: float) -> None:
        """SIGKILL every worker and wait for them (at most ``within`` seconds), telling no
        one: for an exit where nothing more can be recorded (the daemon's storage failure, a
        failed start)."""
        self.kill_all()
        pids = set(self._by_pid)
        deadline = time.monotonic() + within
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                pids.discard(pid)
            if pids:
                time.sleep(0.01)

    def close(self) -> None:
        """At exit: see Containment.close."""
        self.containment.close()
