"""``workflow.wait``: clients waiting for runs to end, answered once the end is durable.

A waiter is a :class:`~nerved.outcome.Pending` the control server answers when it resolves:
with the run as ``workflow.inspect`` shows it, read from the committed view after the commit
that ended the run; or rejected when its timeout passes (``Failed``, with ``{timeout: true,
status}``) or once nerved has stopped (``ShuttingDown``).

A graceful stop lets each run finish the step it is in, and a run whose moderator then ends
it completes during the drain: its waiters are answered with it, as at any other time. Only
the waiters of runs still active once the workers are gone hear that nerved stopped, with
the status the run keeps and resumes from at the next start (:meth:`Waiters.close`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from nerved.loop import Loop, Timer
from nerved.outcome import Failed, NotFound, Pending, ShuttingDown
from nerved.store import Storage

ELSEWHERE_EVERY: Final = 0.25
"""Seconds between two reads of the runs waited for that another host drives (a store several
hosts share): their end is committed by that host, and this one hears of it no other way."""
ELSEWHERE_READS: Final = 64  # runs read per look, in turns: a look is bounded whatever waits


class Waiters:
    def __init__(
        self, loop: Loop, store: Storage, here: Callable[[str], bool] = lambda run_id: False
    ) -> None:
        self.loop = loop
        self.store = store
        self.here = here  # a run this host drives: its end answers its waiters (ended())
        self._by_run: dict[str, list[Pending]] = {}
        self._elsewhere: Timer | None = None  # the next look at runs other hosts drive

    def wait(self, run_id: str, timeout: float | None, stopping: bool) -> Any:
        """The run (its wire form) if it is final; otherwise a Pending answered when it ends,
        or rejected ``timeout`` seconds from now (None: no timeout). Raises NotFound for no
        such run, and ShuttingDown when ``stopping`` (nerved stops and no worker holds the
        run: it cannot end before the next start)."""
        # The engine's own view, this turn's batch included: a run that ended in it has no
        # waiters left to answer, so the end must be seen here (the answer still goes out
        # only after the commit, with every other answer of the turn).
        record = self.store.get_run(run_id)
        if record is None:
            raise NotFound(f"no run {run_id}")
        if record.status.is_final:
            return record.to_wire()
        if stopping:
            raise ShuttingDown(f"nerved is shutting down; run {run_id} resumes at the next start")
        pending = Pending()
        self._by_run.setdefault(run_id, []).append(pending)
        if self.store.leasing is not None and self._elsewhere is None:
            self._elsewhere = self.loop.call_later(ELSEWHERE_EVERY, self._look_elsewhere)
        if timeout is not None:

            def expire() -> None:
                waiting = self._by_run.get(run_id, [])
                if pending in waiting:
                    waiting.remove(pending)
                    current = self.store.committed.get_run(run_id)
                    status = current.status if current else "unknown"
                    pending.reject(
                        Failed(
                            f"timed out after {timeout:g}s waiting for run {run_id} "
                            f"(still {status})",
                            {"timeout": True, "status": str(status)},
                        )
                    )

            # Reads only the committed view: due even while another process holds logs.db.
            self.loop.call_later(timeout, expire, gated=False)
        return pending

    def ended(self, run_id: str) -> None:
        """``run_id`` reached a final status in this turn's batch: its waiters are answered
        once the batch commits."""
        waiters = self._by_run.pop(run_id, None)
        if waiters:
            self.store.after_commit(lambda: self._answer(run_id, waiters))

    def _look_elsewhere(self) -> None:
        """Answer the waiters of runs that ended on another host (as committed; not those
        this host drives: their end answers them), up to :data:`ELSEWHERE_READS` runs a
        look, those waited for longest first; the next look is armed while any waiter is
        left."""
        self._elsewhere = None
        elsewhere = [run_id for run_id in self._by_run if not self.here(run_id)]
        for run_id in elsewhere[:ELSEWHERE_READS]:
            record = self.store.committed.get_run(run_id)
            if record is None or record.status.is_final:
                self._answer(run_id, self._by_run.pop(run_id))
            else:  # to the back: the next look reads the next ones
                self._by_run[run_id] = self._by_run.pop(run_id)
        if self._by_run:
            self._elsewhere = self.loop.call_later(ELSEWHERE_EVERY, self._look_elsewhere)

    def _answer(self, run_id: str, waiters: list[Pending]) -> None:
        record = self.store.committed.get_run(run_id)
        for pending in waiters:
            if record is None:
                pending.reject(NotFound(f"run {run_id} vanished"))
            else:
                pending.resolve(record.to_wire())

    def close(self) -> None:
        """nerved has stopped: the runs still waited for did not end during the drain, and
        resume at the next start; each waiter hears so, with the status the run keeps."""
        for run_id, waiters in list(self._by_run.items()):
            current = self.store.committed.get_run(run_id)
            status = current.status if current else "unknown"
            for pending in waiters:
                pending.reject(
                    ShuttingDown(
                        f"nerved stopped before run {run_id} ended; it stays {status} and "
                        "resumes at the next start",
                        {"status": str(status)},
                    )
                )
        self._by_run.clear()
