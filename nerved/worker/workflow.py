"""The workflow worker: one child per workflow, running its threads as asyncio tasks.

A thread is the loop moderate -> execute -> moderate ... (RFC-002 §5.4), with one rule that
the original design lacked: every role's output event is sent to the master and the thread
waits for the master's ``ack``, which comes only once the event is committed to logs.db.
The moderator therefore never sees an event that a crash could take back, and a thread
resumed after a crash replays exactly what its moderator saw.

Protocol (master -> worker):
    {"t": "start",  "run": ID, "payload": P, "maxSteps": N}
    {"t": "history", "run": ID, "events": [E1, E2, ...]}   the next events of a run to be
                                              resumed, in order, in frames of a few MiB
    {"t": "resume", "run": ID, "payload": P, "maxSteps": N}   after its history: run it on
    {"t": "ack", "run": ID, "n": K}           step K of the run is durable
    {"t": "end", "run": ID}                   the master ended the run (its history is full):
                                              drop its thread where it is, without a word
    {"t": "stop"}                             take nothing new; exit once every thread is done
    {"t": "halt"}                             the daemon stops: finish the running steps, start
                                              no new ones, exit (the threads stay started and
                                              resume at the next start)
Worker -> master:
    {"t": "ready"} or {"t": "load_error", "error": "..."}  once, after importing the package
    {"t": "step", "run": ID, "n": K, "role": R, "prompt": P, "event": E}
    {"t": "log", "run": ID, "message": "..."}
    {"t": "completed", "run": ID}
    {"t": "failed", "run": ID, "error": "..."}

Each moderator call is bounded (nerved.worker.timebox): it runs on this loop, so one that does not
return would hold every thread of the worker. Past the soft bound its run fails alone; past
the hard bound, where it could not be interrupted, the worker dies and the crash rules apply.

What user code hands over is checked here, where it enters: a prompt and an event must be
values :func:`nerved.wire.check_value` accepts (or the run fails, saying which part is wrong),
and free text (``ctx.log`` lines, exception messages) is made safe with :func:`wire.text`,
never refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import reprlib
import socket
from collections.abc import Mapping
from typing import Any, Final

from nerved import wire
from nerved.api import CommandEvent, ThreadState, WorkflowContext, WorkflowDefinition
from nerved.channel import Message
from nerved.code.importing import load_workflow
from nerved.code.reading import Package, UserCodeError
from nerved.worker.port import Port, explain, serve
from nerved.worker.timebox import Overrun, Timebox, overrun_message

log = logging.getLogger(__name__)

ROLE_THREADS: Final = 1024  # sync roles that may run at once in one worker


class ThreadFailed(Exception):
    """A rule of SPEC §4 was broken; the message is what the run's ``error`` will say."""


class Halted(Exception):
    """The daemon is stopping: this thread ends here without a final status."""


def _checked(value: Any, what: str) -> Any:
    """``value`` as it is kept: through JSON and back, so that a tuple is a list and a key a
    string now, as they will be when a resumed run replays it. Raises ThreadFailed unless it
    is one nerve keeps (:func:`wire.check_value`)."""
    try:
        return json.loads(wire.check_value(value, what))
    except wire.Invalid as exc:
        raise ThreadFailed(str(exc)) from None


def _check_event(role: str, event: Any) -> CommandEvent:
    if not isinstance(event, Mapping):
        raise ThreadFailed(
            f"role {role!r} returned {type(event).__name__}, not an event"
            " (a dict with a string 'type')"
        )
    if not isinstance(event.get("type"), str):
        raise ThreadFailed(f"role {role!r} returned an event without a string 'type'")
    checked: CommandEvent = _checked(dict(event), f"the event role {role!r} returned")
    return checked


def decide(
    definition: WorkflowDefinition, state: ThreadState, event: CommandEvent
) -> tuple[str | None, Any]:
    """What the moderator decides on ``event``, checked as a thread takes it: (role, prompt),
    or (None, None) to end; raises ThreadFailed (or what the moderator raised). The replay
    check calls it too (nerved.worker.replay), so that it judges what a worker would do."""
    decision = definition.moderate(state, event)
    if decision is None:
        return None, None
    if not isinstance(decision, Mapping) or not isinstance(decision.get("role"), str):
        raise ThreadFailed(
            f"moderator returned {reprlib.repr(decision)}; expected None or"
            " {'role': <name>, 'prompt': <JSON>}"
        )
    role_name = decision["role"]
    if role_name not in definition.roles:
        known = ", ".join(sorted(definition.roles))
        raise ThreadFailed(
            f"moderator chose unknown role {reprlib.repr(role_name)} (roles: {known})"
        )
    prompt = _checked(decision.get("prompt"), f"the moderator's prompt for role {role_name!r}")
    return role_name, prompt


class WorkflowWorker:
    def __init__(self, sock: socket.socket, package: Package) -> None:
        self.package = package
        self.workflow = package.name
        self.definition: WorkflowDefinition | None = None
        self.load_error: str | None = None
        self.loop = asyncio.new_event_loop()
        # A thread per sync role in flight, up to ROLE_THREADS: the default (cpus + 4) would
        # hold a workflow's concurrency below its setting when its roles block. Threads are
        # made as needed and reused, so the bound costs nothing until used.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=ROLE_THREADS, thread_name_prefix="role"
        )
        self.port = Port(sock, self.loop, self.on_message)
        self.threads: dict[str, asyncio.Task[None]] = {}
        self.histories: dict[str, list[CommandEvent]] = {}  # of runs whose resume is coming
        self.acks: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.stopping = False
        self.halting = False
        self.done = asyncio.Event()
        self.timebox = Timebox()  # every moderator call is bounded: see nerved.worker.timebox

    def load(self) -> None:
        try:
            self.definition = load_workflow(self.package)
        except UserCodeError as exc:
            self.load_error = wire.text(str(exc))
            self.port.post({"t": "load_error", "error": self.load_error})
        else:
            self.port.post({"t": "ready"})

    # -- messages -----------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        kind = message.get("t")
        if kind == "history":
            self.histories.setdefault(str(message["run"]), []).extend(message["events"])
        elif kind in ("start", "resume"):
            run_id = str(message["run"])
            history = self.histories.pop(run_id, [])
            if run_id in self.threads:
                log.error("run %s is already running here; ignoring a second %s", run_id, kind)
                return
            events = [{"type": "thread_start", "payload": message.get("payload")}, *history]
            task = self.loop.create_task(self.run_thread(run_id, events, int(message["maxSteps"])))
            self.threads[run_id] = task
            task.add_done_callback(functools.partial(self._thread_done, run_id))
        elif kind == "ack":
            future = self.acks.pop((str(message["run"]), int(message["n"])), None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "end":
            thread = self.threads.get(str(message["run"]))
            if thread is not None:
                thread.cancel()
        elif kind == "stop":
            self.stopping = True
            self._maybe_done()
        elif kind == "halt":
            self.halting = self.stopping = True
            self._maybe_done()

    def _thread_done(self, run_id: str, _task: object = None) -> None:
        self.threads.pop(run_id, None)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.stopping and not self.threads:
            self.done.set()

    # -- a thread -----------------------------------------------------------------------

    async def run_thread(self, run_id: str, events: list[CommandEvent], max_steps: int) -> None:
        try:
            await self._steps(run_id, events, max_steps)
        except Halted:
            return  # the run stays started; the next daemon resumes it
        except ThreadFailed as exc:
            error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nerve's own bug: say so, but keep the worker serving
            log.exception("thread %s broke inside nerve", run_id)
            error = f"internal error: {explain(exc)}"
        else:
            self.port.post({"t": "completed", "run": run_id})
            return
        # The reason quotes user code (names, messages): made safe to carry, never refused.
        self.port.post({"t": "failed", "run": run_id, "error": wire.text(error)})

    async def _steps(self, run_id: str, events: list[CommandEvent], max_steps: int) -> None:
        if self.definition is None:
            raise ThreadFailed(self.load_error or "the workflow package is not loaded")
        definition = self.definition
        steps = len(events) - 1

        def log_line(text: str) -> None:
            self.port.post({"t": "log", "run": run_id, "message": wire.text(text)})

        ctx = WorkflowContext(run_id, self.workflow, log_line)
        while True:
            role_name, prompt = self._moderate(definition, run_id, events)
            if role_name is None:
                return
            if self.halting:
                raise Halted
            if steps >= max_steps:
                raise ThreadFailed(
                    f"exceeded maxSteps ({max_steps}): the moderator asked for step "
                    f"{steps + 1} (role {role_name!r})"
                )
            event = await self._execute(definition, role_name, prompt, ctx)
            steps += 1
            try:
                self.port.post(
                    {"t": "step", "run": run_id, "n": steps, "role": role_name,
                     "prompt": prompt, "event": event}
                )  # fmt: skip
            except wire.Invalid as exc:  # prompt and event are checked: the role's name is not
                raise ThreadFailed(
                    f"step {steps} (role {role_name!r}) cannot be sent: {exc}"
                ) from None
            ack = self.acks[(run_id, steps)] = self.loop.create_future()
            try:
                await ack  # durable before the moderator sees it
            finally:
                self.acks.pop((run_id, steps), None)  # the master may end the run instead
            events.append(event)

    def _moderate(
        self, definition: WorkflowDefinition, run_id: str, events: list[CommandEvent]
    ) -> tuple[str | None, Any]:
        """The moderator's decision, checked: (role, prompt), or (None, None) to end.

        The whole of it runs in the time box, the checks included: what the moderator
        returned is user code too (a Mapping whose ``get`` loops, a prompt that shares one
        list a million times and takes seconds to encode), and runs on this loop.
        """
        state = ThreadState(run_id, self.workflow, tuple(events))
        try:
            return self.timebox.call(decide, definition, state, events[-1])
        except Overrun as exc:
            raise ThreadFailed(overrun_message(exc)) from None
        except ThreadFailed:
            raise
        except Exception as exc:
            raise ThreadFailed(f"moderator raised {explain(exc)}") from exc

    async def _execute(
        self, definition: WorkflowDefinition, role_name: str, prompt: Any, ctx: WorkflowContext
    ) -> CommandEvent:
        role = definition.roles[role_name]
        try:
            if inspect.iscoroutinefunction(role):
                result: Any = await role(prompt, ctx)
            else:
                result = await asyncio.wrap_future(self.executor.submit(role, prompt, ctx))
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            raise ThreadFailed(f"role {role_name!r} raised {explain(exc)}") from exc
        return _check_event(role_name, result)


def run(sock: socket.socket, package: Package) -> int:
    return serve(f"workflow:{package.name}", WorkflowWorker(sock, package))
