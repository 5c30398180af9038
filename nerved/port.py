"""A worker's end of its channel, driven by the worker's asyncio loop.

Workers run user code that may be sync (then it runs in a thread, so the worker keeps
answering the master) or async. Messages may therefore be posted from any thread; they are
always written from the loop's thread, in order.

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

from nerved import logs
from nerved.channel import Channel, ChannelClosed, Message, ProtocolError

log = logging.getLogger(__name__)

CALL_TIMEOUT: Final = 30.0


class Port:
    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message], None],
    ) -> None:
        self.channel = Channel(sock)
        self._loop = loop
        self._on_message = on_message
        self._thread = threading.get_ident()
        self._writing = False
        self._calls = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[Message]] = {}
        self.closed = asyncio.Event()
        loop.add_reader(self.channel.fileno(), self._readable)

    def post(self, message: Message) -> None:
        """Send from any thread; silently dropped once the master is gone."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.post, message)
            return
        if self.channel.closed:
            return
        try:
            if not self.channel.send(message) and not self._writing:
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
            self.post(request)
            try:
                return future.result(timeout)
            finally:
                self._waiting.pop(call_id, None)
        if self.channel.closed:
            raise ChannelClosed("the master is gone")
        self.channel.send(request)
        self.channel.flush_blocking(timeout)
        while True:
            for reply in self.channel.receive_blocking(timeout):
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
        except (ChannelClosed, ProtocolError):
            self._close()
            return
        for message in messages:
            self._dispatch(message)

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


def serve(label: str, worker: Served) -> int:
    """A worker's whole life: import the user package, serve until its work is done or the
    master is gone, write out what is still queued. Threads still running sync user code
    are abandoned: the process ends right after.
    """
    logs.relabel(label)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    asyncio.set_event_loop(worker.loop)
    worker.loop.run_until_complete(_until_done_or_orphaned(worker))
    worker.port.finish()
    return 0
