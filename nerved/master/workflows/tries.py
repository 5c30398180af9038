"""Failed tries of a step: the role's policy applied, retries timed, timeouts held.

A worker reports a failed try (``step_failed``: the role raised, asked to retry, gave up
with ``nerved.Fatal``, or ran past its timeout) and drops the run's thread. What follows is
decided here, from the role's policy in nerve.yaml (:class:`~nerved.config.RolePolicy`,
SPEC §3), and written to logs.db before anything else happens:

- another try is due: ``step_failed`` with ``retryAt``; a timer of the master's loop gives
  the run back to a worker then (a resume: the moderator, which is pure, asks for the same
  step again). Nothing polls, and no worker holds the run meanwhile; a retry due while
  nerved was down is armed again at start (:meth:`Tries.recovered`) and runs at once.
- no try left, ``onError: fail``: ``step_failed`` (``retryAt`` null), and the run fails
  (``Transition.GIVE_UP``).
- no try left, ``onError: moderate``: ``step_failed``, then the moderator gets a
  ``role_failed`` event (an ``input`` entry) and decides; the run resumes at once.

A role's ``timeout`` is held by its worker (an async role is cancelled; a sync role's
thread cannot be, so its worker says it is ``stuck`` and is replaced: it takes no new
runs, finishes its others, under the drain rules). The worker posts ``begin`` when such a
role starts, and the master holds the same bound a little later (:mod:`.backstops`): a role
that blocks its worker's event loop (``time.sleep`` in an ``async def``) silences the
worker, so the master then records the timeout itself and replaces the worker. Either way the run
moves on within its timeout plus a second (SPEC §5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from nerved import logs, wire
from nerved.config import OnError
from nerved.loop import Loop
from nerved.master.workers import Worker
from nerved.master.workflows.backstops import Backstops, Bound
from nerved.master.workflows.runs import ActiveRun, Flow, InFlight
from nerved.states import Transition
from nerved.store import ActiveRecord, Storage
from nerved.store.records import input_payload, now_ms

log = logging.getLogger("nerved.master.workflows")

MAX_AFTER: Final = 1e9  # seconds (31 years): past it, a Retry(after=) is no wish nerve keeps

NO_PROMPT: Final = object()
"""The prompt of a try the master ended itself: only the worker had it. Its ``step_failed``
entry then has no ``prompt`` (a replay compares its role alone). Nor has the entry of any
try after a step's first: the prompt is the first try's, and a role that fails a 1 MiB
prompt a thousand times must not store it a thousand times."""


def _seconds(after: Any) -> float | None:
    """A worker's ``after`` (seconds a ``nerved.Retry`` asked for), if it is one nerve can
    wait; None (the policy's delay) for anything else: a worker is not trusted with a number
    that would overflow a timer or the store."""
    if isinstance(after, bool) or not isinstance(after, (int, float)):
        return None
    return float(after) if 0 <= after < MAX_AFTER else None


def final_error(role: str, error: str, tries: int, attempts: int) -> str:
    """A run's error when its role failed its last try: ``role 'w' raised ValueError: x``,
    with ``(try 3 of 3)`` when the policy allowed more than one."""
    text = f"role {role!r} {error}"
    return text if attempts <= 1 else f"{text} (try {tries} of {attempts})"


class Tries:
    """The failed tries of every run: their entries, retry timers and timeout backstops.

    ``assign(run)`` gives a run to a worker (a resume); ``end(run, transition, error)``
    ends it; ``replace(worker)`` drains a worker that cannot be trusted with new runs (a
    role's thread is stuck in it).
    """

    def __init__(
        self,
        loop: Loop,
        store: Storage,
        assign: Callable[[ActiveRun], None],
        end: Callable[[ActiveRun, Transition, str | None], None],
        replace: Callable[[Flow, Worker], None],
    ) -> None:
        self.loop = loop
        self.store = store
        self.assign = assign
        self.end = end
        self.replace = replace
        self.backstops = Backstops(loop, self._overdue)

    # -- from the worker ----------------------------------------------------------------

    def began(self, run: ActiveRun, worker: Worker, message: dict[str, Any]) -> None:
        """A role with a timeout started (``begin``): note it, and hold the bound too."""
        n, role = int(message["n"]), str(message["role"])
        if n != run.steps + 1:
            return
        run.in_flight = flight = InFlight(role, now_ms())
        timeout = run.flow.config.policy(role).timeout_ms
        if timeout is not None:  # None: a reload took its timeout away meanwhile
            self.backstops.arm(run, worker, flight, timeout)

    def _overdue(self, bound: Bound) -> None:
        """A role ran past its timeout and its worker said nothing: the master ends the try."""
        run, worker, role = bound.run, bound.worker, bound.flight.role or "?"
        log.warning("run %s of %s: role %r ran past its timeout and its worker pid %d did not"
                    " answer; replacing that worker", run.run_id, run.flow.name, role,
                    worker.pid, extra=logs.run(run.run_id, run.flow.name))  # fmt: skip
        self.replace(run.flow, worker)
        error = (f"timed out after {bound.timeout_ms / 1000:g}s (its worker did not answer:"
                 " something blocks its event loop)")  # fmt: skip
        self.failed(run, role, NO_PROMPT, error, True, None)

    def reported(self, run: ActiveRun, message: dict[str, Any]) -> None:
        """The worker reported a failed try (``step_failed``) and dropped the thread."""
        n = int(message["n"])
        if n != run.steps + 1:
            log.error("run %s: a failed try of step %d arrived after step %d; ignoring it",
                      run.run_id, n, run.steps)  # fmt: skip
            return
        self.failed(
            run,
            str(message["role"]),
            message.get("prompt"),
            str(message["error"]),
            bool(message.get("retry", True)),
            _seconds(message.get("after")),
        )

    def stepped(self, run: ActiveRun) -> None:
        """A step of ``run`` completed: the next starts now, at its first try (the bound on
        the step before, if any, is no longer live)."""
        run.tries = 0
        run.in_flight = InFlight(None, now_ms())

    # -- the decision -------------------------------------------------------------------

    def failed(
        self,
        run: ActiveRun,
        role: str,
        prompt: Any,
        error: str,
        retry: bool,
        after: float | None,
    ) -> None:
        """Record one failed try and apply the role's policy (see the module's docstring)."""
        policy = run.flow.config.policy(role)
        attempts = policy.retry.attempts
        tries = run.tries + 1
        again = retry and tries < attempts
        retry_at: int | None = None
        now = now_ms()  # the entry's time, and what its retryAt counts from
        if again:
            delay_ms = policy.retry.delay_before(tries + 1) if after is None else int(after * 1000)
            retry_at = now + delay_ms
        step = {"role": role, "prompt": prompt, "error": error, "try": tries, "retryAt": retry_at}
        if prompt is NO_PROMPT or tries > 1:  # a step's later tries had the first one's prompt
            del step["prompt"]
        record = wire.dumps(step, max_depth=wire.MAX_DEPTH + 1)
        if not self.store.record_failure(run.run_id, record, retry_at, ts=now):
            log.error("run %s is no longer started; ignoring its failed try", run.run_id)
            return
        run.flow.tally.failed(role)
        run.tries = tries
        run.worker = None  # the worker dropped the thread (or was replaced under it)
        run.in_flight = InFlight(role, now_ms()) if again else None  # its role, until due
        where = f"run {run.run_id} of {run.flow.name}: role {role!r} {error} (try {tries}"
        if again:
            assert retry_at is not None
            wait = (retry_at - now_ms()) / 1000
            log.warning("%s of %d); next try in %.1fs", where, attempts, wait)
            self.wait(run, retry_at)
        elif policy.on_error is OnError.MODERATE:
            log.warning("%s of %d); the moderator decides (onError: moderate)", where, attempts)
            event = wire.dumps(
                {"type": "role_failed", "role": role, "error": error, "attempts": tries}
            )
            if not self.store.record_input(run.run_id, event):
                return
            run.history += len(input_payload(event).encode())  # what a resume sends
            run.tries = 0
            self.assign(run)
        else:
            self.end(run, Transition.GIVE_UP, final_error(role, error, tries, attempts))

    # -- timers -------------------------------------------------------------------------

    def wait(self, run: ActiveRun, retry_at: int) -> None:
        """Give ``run`` back to a worker at ``retry_at`` (ms since the epoch)."""
        if run.retry_timer is not None:
            run.retry_timer.cancel()

        def due() -> None:
            run.retry_timer = None
            run.retry_at = None
            self.assign(run)

        run.retry_at = retry_at
        run.retry_timer = self.loop.call_later((retry_at - now_ms()) / 1000, due)

    def recovered(self, run: ActiveRun, record: ActiveRecord) -> None:
        """At start: arm the retry ``record`` was waiting for, if any (at once if it fell due
        while nerved was down)."""
        run.tries = record.tries
        if record.retry_at is not None:
            self.wait(run, record.retry_at)

    def cancel(self, run: ActiveRun) -> None:
        """``run`` ends, or is given to a worker otherwise: no retry to come, and no bound
        on its step in flight."""
        if run.retry_timer is not None:
            run.retry_timer.cancel()
            run.retry_timer = None
        run.retry_at = None
        run.in_flight = None
