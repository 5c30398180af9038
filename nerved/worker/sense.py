"""The sense-group worker: the child process that imports a group's senses and computes them.

Protocol (master -> worker):
    {"t": "compute", "id": N, "sense": NAME}
    {"t": "cancel", "id": N}        the master gave up on compute N (timeout)
    {"t": "stop"}                   finish what runs, then exit
Worker -> master:
    {"t": "loaded", "sense": NAME, "error": null | "why it did not import"}
    {"t": "ready"}
    {"t": "result", "id": N, "payload": JSON | null}   null: no signal
    {"t": "error", "id": N, "error": "..."}
    {"t": "cancelled", "id": N}
    {"t": "log", "sense": NAME, "message": "..."}
    {"t": "query", "call": N, "query": {source?, type?, refId?, since?, afterId?,
     beforeId?, limit?}}                                  ctx.logs.query (nerved.store.query)
Master -> worker, answering a query:
    {"t": "reply", "call": N, "entries": [...]} or {"t": "reply", "call": N, "error": "..."}
    ("refused": true with the error: the query itself was refused, as by LogQuery.parse)

A result must be a value :func:`nerved.wire.check_value` accepts, or the compute ends in an
error that says which part is wrong; log lines and exception messages are free text, made
safe with :func:`wire.text` and never refused. A frame from the master that cannot be read
ends the worker (see :mod:`nerved.worker.port`).

The master owns the timeouts. An async compute that is cancelled answers ``cancelled``; a
sync compute cannot be interrupted, so the worker stays silent and the master kills it once
the sense's grace period is over. Sync computes run in threads so that the worker keeps
reading its channel (and can cancel its async computes) while they run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import socket
from typing import Any

from nerved import wire
from nerved.api import ComputeFn, SenseContext
from nerved.channel import Message
from nerved.code.importing import load_sense
from nerved.code.reading import Package, UserCodeError
from nerved.store.query import DEFAULT_LIMIT, BadQuery, LogQuery
from nerved.store.records import LogEntry
from nerved.worker.port import Port, explain, serve

log = logging.getLogger(__name__)


class RemoteLogs:
    """``ctx.logs``: queries answered by the master, the only process that opens logs.db."""

    def __init__(self, port: Port) -> None:
        self._port = port

    def query(
        self,
        *,
        source: str | None = None,
        type: str | None = None,
        ref_id: str | None = None,
        since: int | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[LogEntry]:
        """See :meth:`nerved.api.LogsReader.query`: checked here by the rules the master and
        the socket apply (:meth:`LogQuery.parse`), so a bad query raises
        :class:`BadQuery` (a ValueError) before anything is sent."""
        query = LogQuery.parse(
            {
                "source": source,
                "type": type,
                "refId": ref_id,
                "since": since,
                "afterId": after_id,
                "beforeId": before_id,
                "limit": limit,
            }
        )
        reply = self._port.call({"t": "query", "query": query.to_wire()})
        error = reply.get("error")
        if error:
            raise (BadQuery if reply.get("refused") else ValueError)(str(error))
        return [
            LogEntry(e["id"], e["source"], e["type"], e["refId"], e["payload"], e["ts"])
            for e in reply["entries"]
        ]


class SenseGroupWorker:
    def __init__(self, sock: socket.socket, group: str, packages: list[Package]):
        self.group = group
        self.packages = packages
        self.computes: dict[str, ComputeFn] = {}
        self.load_errors: dict[str, str] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.stopping = False
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="compute")
        self.port = Port(sock, self.loop, self.on_message)
        self.logs = RemoteLogs(self.port)
        self.done = asyncio.Event()

    def load(self) -> None:
        for package in self.packages:
            name = package.name
            error: str | None = None
            try:
                self.computes[name] = load_sense(package)
            except UserCodeError as exc:
                error = wire.text(str(exc))
                self.load_errors[name] = error
            self.port.post({"t": "loaded", "sense": name, "error": error})
        self.port.post({"t": "ready"})

    def on_message(self, message: Message) -> None:
        kind = message.get("t")
        if kind == "compute":
            compute_id = int(message["id"])
            task = self.loop.create_task(self.compute(compute_id, str(message["sense"])))
            self.tasks[compute_id] = task
            task.add_done_callback(functools.partial(self._finished, compute_id))
        elif kind == "cancel":
            running = self.tasks.get(int(message["id"]))
            if running is not None:
                running.cancel()
        elif kind == "stop":
            self.stopping = True
            self._maybe_done()

    def _finished(self, compute_id: int, _task: object = None) -> None:
        self.tasks.pop(compute_id, None)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.stopping and not self.tasks:
            self.done.set()

    async def compute(self, compute_id: int, sense: str) -> None:
        fn = self.computes.get(sense)
        if fn is None:
            why = self.load_errors.get(sense, f"sense {sense!r} is not in group {self.group!r}")
            self.port.post({"t": "error", "id": compute_id, "error": why})
            return

        def log_line(text: str) -> None:
            self.port.post({"t": "log", "sense": sense, "message": wire.text(text)})

        ctx = SenseContext(sense, log_line, self.logs)
        thread: concurrent.futures.Future[Any] | None = None
        try:
            if inspect.iscoroutinefunction(fn):
                result: Any = await fn(ctx)
            else:
                thread = self.executor.submit(fn, ctx)
                result = await asyncio.wrap_future(thread)
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            cancelled = {"t": "cancelled", "id": compute_id}
            if thread is not None and not thread.done():
                # A thread cannot be interrupted: the compute is over for the master only
                # once the function returns. If it never does, the master kills us.
                thread.add_done_callback(lambda _f: self.port.post(cancelled))
            else:
                self.port.post(cancelled)
            return
        except Exception as exc:
            self.port.post({"t": "error", "id": compute_id, "error": explain(exc)})
            return
        if result is not None:
            try:
                wire.check_value(result, "the result")
            except wire.Invalid as exc:
                self.port.post({"t": "error", "id": compute_id, "error": wire.text(str(exc))})
                return
        self.port.post({"t": "result", "id": compute_id, "payload": result})


def run(sock: socket.socket, group: str, packages: list[Package]) -> int:
    # A group of one sense (the usual case) names it; a larger group's lines name the group.
    fields = {"NERVE_SENSE": packages[0].name} if len(packages) == 1 else {}
    worker = SenseGroupWorker(sock, group, packages)
    return serve(f"sense:{group}", worker, NERVE_SENSE_GROUP=group, **fields)
