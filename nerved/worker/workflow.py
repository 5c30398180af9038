"""The workflow worker: one child per workflow, running its threads as asyncio tasks.

A thread is the loop moderate -> execute -> moderate ... (RFC-002 §5.4), with one rule that
the original design lacked: every role's output event is sent to the master and the thread
waits for the master's ``ack``, which comes only once the event is committed to logs.db.
No decision on an event takes effect before that, and a thread resumed after a crash
replays exactly what its moderator saw.

The moderator is pure, so the thread asks for its decision on a role's event before it
sends the step (nerved.worker.moderation): a decision to end the run goes with the step
(``then``), and the master commits the step and the run's end at once; a role or a wait is
taken when the ack arrives, without a second call; a call that raised fails the run then.
A role with a timeout too near its end sends its step first and asks after the ack, as the
master's bound on it runs until the step arrives (:func:`moderation.ahead`).

Protocol (master -> worker):
    {"t": "start",  "run": ID, "payload": P, "maxSteps": N}
    {"t": "history", "run": ID, "events": [E1, E2, ...]}   the next events of a run to be
                                              resumed, in order, in frames of a few MiB
    {"t": "resume", "run": ID, "payload": P, "maxSteps": N, "steps": S, "try": K}
                                              after its history: run it on (S steps are
                                              complete; the next step's try is K)
    {"t": "ack", "run": ID, "n": K}           step K of the run is durable
    {"t": "end", "run": ID}                   the master ended the run (cancelled, or its
                                              history is full): drop its thread where it is
    {"t": "timeouts", "roles": {R: seconds}}  the roles' timeouts, when a reload changes them
    {"t": "stop"}                             take nothing new; exit once every thread is done
    {"t": "halt"}                             the daemon stops: finish the running steps, start
                                              no new ones, exit (the threads stay started and
                                              resume at the next start)
Worker -> master:
    {"t": "ready"} or {"t": "load_error", "error": "..."}  once, after importing the package
    {"t": "begin", "run": ID, "n": K, "role": R, "try": T}  a role with a timeout starts: the
                                              master holds the bound too (see _execute)
    {"t": "step", "run": ID, "n": K, "role": R, "prompt": P, "event": E}
    {"t": "step", ..., "then": "completed"}  step K, and the run ends on it: the master
                                              records both in one commit, and sends no ack
    {"t": "step_failed", "run": ID, "n": K, "role": R, "prompt": P, "error": "...",
     "retry": bool, "after": seconds | null}  a try of step K failed; the thread is dropped
                                              here, and the master resumes the run when (and
                                              if) the role's retry policy says so
    {"t": "wait", "run": ID, "n": K, "wait": NAME, "timeout": ms | null}  or
    {"t": "wait", "run": ID, "n": K, "sleep": ms}
                                              the moderator waits (nerved.waits) before step
                                              K; the thread is dropped here, and the master
                                              resumes the run with the input that ends it
    {"t": "stuck", "role": R}                 a sync role's thread could not be stopped (a
                                              timeout, a cancel): take nothing new, replace me
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
import logging
import socket
from collections.abc import Coroutine, Mapping
from typing import Any, Final, cast

from nerved import logs, wire
from nerved.api import (
    CommandEvent,
    Fatal,
    Retry,
    ThreadState,
    WorkflowContext,
    WorkflowDefinition,
)
from nerved.channel import Message
from nerved.code.importing import load_workflow
from nerved.code.reading import Package, UserCodeError
from nerved.worker import moderation
from nerved.worker.moderation import Decision, ThreadFailed, check_event
from nerved.worker.port import Port, explain, serve
from nerved.worker.timebox import Timebox

log = logging.getLogger(__name__)

ROLE_THREADS: Final = 1024  # sync roles that may run at once in one worker
CANCEL_GRACE: Final = 1.0  # seconds an async role has to end once cancelled, or it is stuck
MAX_RETRY_AFTER: Final = 1e9  # seconds (31 years): a Retry(after=) past it is a mistake


class Halted(Exception):
    """The daemon is stopping: this thread ends here without a final status."""


class TryFailed(Exception):
    """A try of a role failed: the master decides, under the role's policy, what follows.

    ``error`` says what happened, without the role's name (``raised ValueError: x``,
    ``timed out after 2s``); ``retry`` is False for :class:`nerved.Fatal`; ``after``: the
    seconds a :class:`nerved.Retry` asked for (None: the policy's delay).
    """

    def __init__(self, error: str, *, retry: bool = True, after: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.retry = retry
        self.after = after


class WorkflowWorker:
    def __init__(
        self, sock: socket.socket, package: Package, timeouts: Mapping[str, float] | None = None
    ) -> None:
        self.package = package
        self.timeouts = dict(timeouts or {})  # seconds, by role: its nerve.yaml policy
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
                log.error("run %s is already running here; ignoring a second %s", run_id, kind,
                          extra=logs.run(run_id, self.package.name))  # fmt: skip
                return
            events = [{"type": "thread_start", "payload": message.get("payload")}, *history]
            steps = int(message.get("steps", len(history)))
            task = self.loop.create_task(
                self.run_thread(
                    run_id, events, int(message["maxSteps"]), steps, int(message.get("try", 1))
                )
            )
            self.threads[run_id] = task
            task.add_done_callback(functools.partial(self._thread_done, run_id))
        elif kind == "ack":
            future = self.acks.pop((str(message["run"]), int(message["n"])), None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "end":  # answered with "ended" once its thread let go (see the master's)
            run_id = str(message["run"])
            self.histories.pop(run_id, None)
            thread = self.threads.get(run_id)
            if thread is None:
                self.port.post({"t": "ended", "run": run_id})
            else:
                thread.cancel()
                thread.add_done_callback(lambda _: self.port.post({"t": "ended", "run": run_id}))
        elif kind == "timeouts":
            self.timeouts = {str(k): float(v) for k, v in dict(message["roles"]).items()}
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

    async def run_thread(
        self, run_id: str, events: list[CommandEvent], max_steps: int, steps: int, tries: int
    ) -> None:
        try:
            await self._steps(run_id, events, max_steps, steps, tries)
        except Halted:
            return  # the run stays started; the next daemon resumes it
        except ThreadFailed as exc:
            error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nerve's own bug: say so, but keep the worker serving
            log.exception("thread %s broke inside nerve", run_id,
                          extra=logs.run(run_id, self.package.name))  # fmt: skip
            error = f"internal error: {explain(exc)}"
        else:
            return
        # The reason quotes user code (names, messages): made safe to carry, never refused.
        self.port.post({"t": "failed", "run": run_id, "error": wire.text(error)})

    async def _steps(
        self, run_id: str, events: list[CommandEvent], max_steps: int, steps: int, tries: int
    ) -> None:
        """Moderate and execute until the run completes (posted here), a try fails (posted,
        and the thread ends: the master resumes the run if the policy retries), or a rule is
        broken (ThreadFailed). ``steps``: the steps complete; ``tries``: the next step's try."""
        if self.definition is None:
            raise ThreadFailed(self.load_error or "the workflow package is not loaded")
        definition = self.definition

        def log_line(text: str) -> None:
            self.port.post({"t": "log", "run": run_id, "message": wire.text(text)})

        decision = self._moderate(definition, run_id, events)
        while True:
            if decision is None:
                self.port.post({"t": "completed", "run": run_id})
                return
            if self.halting:
                raise Halted
            decisions = len(events) - 1  # every event after the first answers a decision
            role_name = decision.get("role")
            if decisions >= max_steps:
                asked = "a wait" if role_name is None else f"role {role_name!r}"
                raise ThreadFailed(
                    f"exceeded maxSteps ({max_steps}): the moderator asked for step "
                    f"{decisions + 1} ({asked})"
                )
            n = steps + 1
            if role_name is None:  # a wait: the master parks the run, and resumes it later
                self.port.post({"t": "wait", "run": run_id, "n": n, **decision})
                return
            prompt = decision["prompt"]
            ctx = WorkflowContext(run_id, self.workflow, log_line, tries)
            began = self.loop.time()
            try:
                event = await self._execute(definition, run_id, n, role_name, prompt, ctx)
            except TryFailed as failed:
                self.port.post(
                    {"t": "step_failed", "run": run_id, "n": n, "role": role_name,
                     "prompt": prompt, "error": wire.text(failed.error),
                     "retry": failed.retry, "after": failed.after}
                )  # fmt: skip
                return
            steps, tries = n, 1
            events.append(event)  # this thread's own: it takes effect once durable (the ack)
            early = None
            if moderation.ahead(self.timeouts.get(role_name), self.loop.time() - began):
                early = moderation.early(self.timebox, definition, self._state(run_id, events))
            ends = early is not None and early.ends  # the step and the run's end: one commit
            step = {"t": "step", "run": run_id, "n": n, "role": role_name, "prompt": prompt,
                    "event": event, **({"then": "completed"} if ends else {})}  # fmt: skip
            try:
                self.port.post(step)
            except wire.Invalid as exc:  # prompt and event are checked: the role's name is not
                raise ThreadFailed(f"step {n} (role {role_name!r}) cannot be sent: {exc}") from None
            if ends:
                return  # the master ends the run with the step, and acks nothing
            ack = self.acks[(run_id, n)] = self.loop.create_future()
            try:
                await ack  # durable before a decision on it takes effect
            finally:
                self.acks.pop((run_id, n), None)  # the master may end the run instead
            if early is None:
                decision = self._moderate(definition, run_id, events)
            else:
                decision = early.taken()  # raises what the moderator's call raised

    def _state(self, run_id: str, events: list[CommandEvent]) -> ThreadState:
        return ThreadState(run_id, self.workflow, tuple(events))

    def _moderate(
        self, definition: WorkflowDefinition, run_id: str, events: list[CommandEvent]
    ) -> Decision:
        """The moderator's decision on the last of ``events``, checked and bounded."""
        return moderation.moderate(self.timebox, definition, self._state(run_id, events))

    async def _execute(
        self,
        definition: WorkflowDefinition,
        run_id: str,
        n: int,
        role_name: str,
        prompt: Any,
        ctx: WorkflowContext,
    ) -> CommandEvent:
        """One try of a role: its checked event, or TryFailed.

        A role with a timeout gets it here, measured from its start: an async role is
        cancelled (one that ignores the cancel for :data:`CANCEL_GRACE` is *stuck*); a sync
        role's thread cannot be stopped, so the worker says it is stuck and the master
        replaces it (its other threads finish). The master holds the same bound, a little
        later, from the ``begin`` posted here: a role that blocks this loop itself (a
        ``time.sleep`` in an ``async def``) cannot be timed out from inside.
        """
        role = definition.roles[role_name]
        timeout = self.timeouts.get(role_name)
        if timeout is not None:
            self.port.post(
                {"t": "begin", "run": run_id, "n": n, "role": role_name, "try": ctx.attempt}
            )
        sync = not inspect.iscoroutinefunction(role)
        work: asyncio.Future[Any]
        if sync:
            work = asyncio.wrap_future(self.executor.submit(role, prompt, ctx))
        else:
            work = self.loop.create_task(
                _contained(cast(Coroutine[Any, Any, Any], role(prompt, ctx)))
            )
        try:
            if timeout is not None and not await self._settled(work, timeout):
                self._abandon(work, role_name, sync)
                raise TryFailed(f"timed out after {timeout:g}s")
            result = await work  # done already when a timeout applies
            if inspect.isawaitable(result):  # a sync function that returned a coroutine
                result = await result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the master ended the run: a cancel
                self._abandon(work, role_name, sync)
                raise
            raise TryFailed("raised CancelledError") from None  # the role's own
        except TryFailed:
            raise
        except Retry as exc:  # said on purpose: its message is the whole story, not its line
            said = _message(exc)
            raise TryFailed(f"asked to retry: {said}" if said else "asked to retry",
                            after=retry_after(exc)) from exc  # fmt: skip
        except Fatal as exc:
            said = _message(exc)
            raise TryFailed(f"gave up: {said}" if said else "gave up", retry=False) from exc
        except Raised as exc:  # a BaseException of an async role, carried out of its task
            raise TryFailed(f"raised {explain(exc.raised)}") from exc
        except BaseException as exc:  # a sync role's SystemExit too: a failed try, no more
            raise TryFailed(f"raised {explain(exc)}") from exc
        return check_event(role_name, result)

    async def _settled(self, work: asyncio.Future[Any], timeout: float) -> bool:
        """Whether ``work`` is done within ``timeout`` seconds (asyncio.wait's job, for one
        future: a step of a role with a timeout pays for this on every try)."""
        waiter = self.loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        work.add_done_callback(wake)
        handle = self.loop.call_later(timeout, wake)
        try:
            await waiter
        finally:
            handle.cancel()
            work.remove_done_callback(wake)
        return work.done()

    def _abandon(self, work: asyncio.Future[Any], role_name: str, sync: bool) -> None:
        """Leave a role (past its timeout, or its run was cancelled); say so if it cannot be
        made to stop: a sync role's thread never can, an async role may ignore its cancel."""
        work.cancel()
        work.add_done_callback(_ignore_outcome)
        if sync:
            self.port.post({"t": "stuck", "role": role_name})
            return

        def check() -> None:
            if not work.done():
                log.warning("role %r ignores its cancel; this worker will be replaced", role_name)
                self.port.post({"t": "stuck", "role": role_name})

        self.loop.call_later(CANCEL_GRACE, check)


class Raised(Exception):
    """A BaseException an async role raised (SystemExit, KeyboardInterrupt, GeneratorExit, a
    subclass of its own), carried out of the role's task as an ordinary exception: asyncio
    raises SystemExit and KeyboardInterrupt out of the event loop itself, which would end
    the worker and every run in it, and other BaseExceptions leave the task unanswered."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(str(raised))
        self.raised = raised


async def _contained(role: Coroutine[Any, Any, Any]) -> Any:
    """An async role, whatever it raises but a cancel as an Exception (:class:`Raised`)."""
    try:
        return await role
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as exc:
        raise Raised(exc) from exc


def retry_after(exc: Retry) -> float | None:
    """``Retry.after`` as a number of seconds nerve can wait: the constructor checks it, but
    user code may set the attribute afterwards (None: the policy's delay)."""
    after = getattr(exc, "after", None)
    if isinstance(after, bool) or not isinstance(after, (int, float)):
        return None
    seconds = float(after)
    return seconds if 0 <= seconds < MAX_RETRY_AFTER else None


def _message(exc: BaseException) -> str:
    """An exception's message as text nerve keeps (user code: it may not even render)."""
    try:
        return wire.text(str(exc))
    except Exception:
        return "(its message could not be rendered)"


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """An abandoned role's end is of no interest (and must not be logged as never retrieved)."""
    if not future.cancelled():
        future.exception()


def run(sock: socket.socket, package: Package, timeouts: Mapping[str, float] | None = None) -> int:
    """The worker's life; ``timeouts``: the roles' timeouts (seconds) when it was forked."""
    worker = WorkflowWorker(sock, package, timeouts)
    return serve(f"workflow:{package.name}", worker, NERVE_WORKFLOW=package.name)
