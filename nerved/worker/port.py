"""A worker's end of its channel, driven by the worker's asyncio loop.

Workers run user code that may be sync (then it runs in a thread, so the worker keeps
answering the master) or async. Messages may therefore be posted from any thread; they are
encoded in the caller's thread (so that a message the master would refuse raises there, in
the code that made it) and always written from the loop's thread, in order.

A frame from the master that cannot be read ends the worker (exit code
:data:`~nerved.process.EXIT_UNREADABLE`): it cannot know which run the frame was for, and a
run whose ``start`` or ``ack`` was lost would wait forever, so the worker leaves and the
master resumes its runs in a successor. The master encodes by the rules the worker decodes
by, so this is a bug's last line, never a run's fate.

Workers never open logs.db: a SQLite connection must not be used across ``fork()``, and
even a *new* connection in a forked child shares the parent's in-process lock bookkeeping
for the same file. So a worker that needs to read the logs asks the master, with
:meth:`Port.call`, which works from any thread, the loop's own included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Final, Protocol

from nerved import logs, wire
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
from nerved.code.importing import describe
from nerved.process import EXIT_OK, EXIT_UNREADABLE

log = logging.getLogger(__name__)

CALL_TIMEOUT: Final = 30.0


class Port:
    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message], None],
    ) -> None:
        self.channel = Channel(sock, receive_limit=TO_WORKER, send_limit=TO_MASTER)
        self._loop = loop
        self._on_message = on_message
        self._thread = threading.get_ident()
        self._writing = False
        self._calls = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[Message]] = {}
        self.closed = asyncio.Event()
        self.unreadable: str | None = None  # why a frame from the master could not be read
        loop.add_reader(self.channel.fileno(), self._readable)

    def post(self, message: Message) -> None:
        """Send from any thread; silently dropped once the master is gone.

        Raises :class:`wire.Invalid`, sending nothing, for a message the master would refuse
        (:func:`nerved.channel.frame`).
        """
        self._write(frame(message, self.channel.send_limit))

    def _write(self, data: bytes) -> None:
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._write, data)
            return
        if self.channel.closed:
            return
        try:
            if not self.channel.write(data) and not self._writing:
                self._writing = True
                self._loop.add_writer(self.channel.fileno(), self._writable)
        except ChannelClosed:
            self._close()

    def call(self, message: Message, timeout: float = CALL_TIMEOUT) -> Message:
        """Send a request to the master and wait for its ``reply`` (with the same ``call`` id).

        From a thread, the loop delivers the reply; on the loop's own thread (an async
        compute calling a sync API) the channel is read right here, and whatever else
        arrives meanwhile is handed to the loop to dispatch afterwards.
        """
        call_id = next(self._calls)
        request = {**message, "call": call_id}
        if threading.get_ident() != self._thread:
            future: concurrent.futures.Future[Message] = concurrent.futures.Future()
            self._waiting[call_id] = future
            try:
                self.post(request)
                return future.result(timeout)
            finally:
                self._waiting.pop(call_id, None)
        if self.channel.closed:
            raise ChannelClosed("the master is gone")
        self.channel.send(request)
        self.channel.flush_blocking(timeout)
        while True:
            try:
                replies = self.channel.receive_blocking(timeout)
            except ProtocolError as exc:
                self._unreadable(str(exc))
                raise ChannelClosed("a message from the master could not be read") from exc
            for reply in replies:
                if isinstance(reply, Garbled):
                    self._unreadable(reply.reason)
                    raise ChannelClosed("a message from the master could not be read")
                if reply.get("t") == "reply" and reply.get("call") == call_id:
                    return reply
                self._loop.call_soon(self._dispatch, reply)

    def _writable(self) -> None:
        try:
            if self.channel.flush():
                self._writing = False
                self._loop.remove_writer(self.channel.fileno())
        except ChannelClosed:
            self._close()

    def _readable(self) -> None:
        try:
            messages = self.channel.receive()
        except ChannelClosed:
            self._close()
            return
        except ProtocolError as exc:
            self._unreadable(str(exc))
            return
        for message in messages:
            if isinstance(message, Garbled):
                self._unreadable(message.reason)
                return
            self._dispatch(message)

    def _unreadable(self, reason: str) -> None:
        log.error(
            "a message from the master could not be read (%s); ending this worker so that"
            " its runs resume in a successor",
            reason,
        )
        self.unreadable = reason
        self._close()

    def _dispatch(self, message: Message) -> None:
        if message.get("t") == "reply":
            future = self._waiting.get(int(message.get("call", 0)))
            if future is not None and not future.done():
                future.set_result(message)
            return
        self._on_message(message)

    def _close(self) -> None:
        if self.channel.closed:
            return
        self._loop.remove_reader(self.channel.fileno())
        if self._writing:
            self._loop.remove_writer(self.channel.fileno())
        self.channel.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("the master is gone"))
        self.closed.set()

    def finish(self, timeout: float = 5.0) -> None:
        """Write out what is still queued before the worker exits, waiting at most ``timeout``."""
        if not self.channel.closed:
            with contextlib.suppress(ChannelClosed, OSError):
                self.channel.flush_blocking(timeout)


class Served(Protocol):
    """A worker as :func:`serve` runs it: its loop and port, and when its work is done."""

    loop: asyncio.AbstractEventLoop
    port: Port
    done: asyncio.Event

    def load(self) -> None: ...


async def _until_done_or_orphaned(worker: Served) -> None:
    worker.load()
    closed = asyncio.ensure_future(worker.port.closed.wait())
    done = asyncio.ensure_future(worker.done.wait())
    await asyncio.wait({closed, done}, return_when=asyncio.FIRST_COMPLETED)


def serve(label: str, worker: Served, **fields: str) -> int:
    """A worker's whole life: import the user package, serve until its work is done or the
    master is gone, write out what is still queued. ``fields`` go with each of its
    journal entries (``NERVE_WORKFLOW=...``). Threads still running sync user code
    are abandoned: the process ends right after.
    """
    logs.relabel(label, **fields)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    asyncio.set_event_loop(worker.loop)
    worker.loop.run_until_complete(_until_done_or_orphaned(worker))
    worker.port.finish()
    return EXIT_OK if worker.port.unreadable is None else EXIT_UNREADABLE


def explain(exc: BaseException) -> str:
    """:func:`nerved.code.importing.describe` as text nerve can keep (:func:`wire.text`).

    An exception's message is user code too: it may hold lone surrogates, run to megabytes,
    or fail to render at all, and none of that may keep a run from ending with a reason.
    """
    try:
        return wire.text(describe(exc))
    except Exception:
        return wire.text(f"{type(exc).__name__} (its message could not be rendered)")
