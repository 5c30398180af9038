"""Cron reflexes: a workflow started, or a sense computed, at the minutes a crontab names.

The schedule lives in the master's loop like every other timer: one timer for the earliest
firing due among all cron reflexes, no thread, nothing per reflex. The loop's timers run on
the monotonic clock and a crontab speaks of the wall clock, so the timer is never set
further than :data:`RECHECK` ahead: a wall clock that jumps (NTP stepping it, an operator's
``date``) is noticed within a minute. A jump forward past firings fires once, for the latest
one passed (as ``catchUp`` does at start); a jump back never fires an instant twice: the
next firing is always computed after the last one fired (nerved.config.cron).

Each reflex's last firing is kept in the store (``Storage.record_firing``), in the batch
that starts its run: so a firing and its run are durable together, and the run carries the
idempotency key ``cron:<expr> <zone>@<scheduled ms>`` besides, so that nothing can make one firing
start two runs. At start, a reflex whose latest firing before now is later than the one
recorded was missed while nerved was down: ``catchUp: true`` fires it once (once, however
many were missed; the run's payload says which firing it is), otherwise it is recorded as
``missed`` and nothing runs. A reflex armed for the first time records when (``armed``),
so that a downtime right after it still counts as one; a reflex newly added by a reload
never catches up on what came before it.

A reflex is the same across reloads while its kind, its target, its expression and its time
zone are; changing any of them makes another reflex (no last firing, no catch-up).

``NERVED_TEST_NOW`` (tests only: epoch milliseconds or an ISO 8601 time with its offset)
sets the wall clock cron reads at start; it then advances at the monotonic rate.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from nerved.config import CronSpec, NerveConfig, SenseReflex
from nerved.config.cron import HOST_ZONE, Schedule, zone
from nerved.loop import Loop, Timer
from nerved.store import Firing, Storage

log = logging.getLogger(__name__)

RECHECK: Final = 60.0  # seconds: the longest the timer waits before asking the wall clock again
TEST_NOW: Final = "NERVED_TEST_NOW"
ARMED: Final = "armed"  # a Firing's note: no firing yet, only when the reflex was first armed
MISSED: Final = "missed"

# Fire a sense: False when it is not there (a reload removed it).
TriggerSense = Callable[[str], bool]
# Start a workflow with a payload and an idempotency key: the run's id, or why it did not start.
StartRun = Callable[[str, Any, str], tuple[str | None, str | None]]


class Clock:
    """The wall clock cron reads, in ms since the epoch: the host's, or the tests' own."""

    def __init__(self, test_now: str | None = None) -> None:
        self.base: int | None = None
        if test_now:
            self.base = _parse_now(test_now)
            log.warning(
                "%s is set: cron reads a wall clock that started at %s (for tests only)",
                TEST_NOW, test_now,
            )  # fmt: skip
        self.started = time.monotonic()

    @classmethod
    def from_environment(cls) -> Clock:
        return cls(os.environ.get(TEST_NOW))

    def now_ms(self) -> int:
        if self.base is None:
            return int(time.time() * 1000)
        return self.base + int((time.monotonic() - self.started) * 1000)


LAST_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: datetime's last instant


def _parse_now(text: str) -> int:
    if text.strip().isascii() and text.strip().isdigit():
        ms = int(text)
        if ms > LAST_MS:
            raise ValueError(f"{TEST_NOW}={text!r}: past the year 9999")
        return ms
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{TEST_NOW}={text!r}: expected epoch ms or an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{TEST_NOW}={text!r}: an ISO 8601 time needs its offset")
    return int(moment.timestamp() * 1000)


def _shown(ms: int) -> str:
    """A firing as the journal says it: UTC, to the second (``2026-03-29T01:30:00Z``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def identity(kind: str, target: str, spec: CronSpec) -> str:
    """What makes a cron reflex the same across reloads and restarts."""
    return f"{kind}:{target} {spec.expr} {spec.timezone or HOST_ZONE}"


@dataclass(slots=True)
class _Reflex:
    identity: str
    kind: str  # "workflow" or "sense"
    target: str
    spec: CronSpec
    schedule: Schedule
    next: int | None  # the next firing (ms), None: never again
    last: Firing | None  # its last firing, or when it was armed (note ARMED)


class CronReflexes:
    def __init__(
        self,
        loop: Loop,
        store: Storage,
        clock: Clock,
        trigger_sense: TriggerSense,
        start_run: StartRun,
    ) -> None:
        self.loop = loop
        self.store = store
        self.clock = clock
        self.trigger_sense = trigger_sense
        self.start_run = start_run
        self.reflexes: dict[str, _Reflex] = {}
        self.timer: Timer | None = None

    def apply(self, config: NerveConfig, *, starting: bool = False) -> None:
        """Arm the cron reflexes of ``config``: those that stay keep their schedule; at
        ``starting``, each fires a firing it missed while nerved was down (catchUp) or
        records it missed."""
        now = self.clock.now_ms()
        wanted: dict[str, tuple[str, str, CronSpec]] = {}
        for reflex in config.reflexes:
            if reflex.cron is None:
                continue
            if isinstance(reflex, SenseReflex):
                kind, target = "sense", reflex.sense
            else:
                kind, target = "workflow", reflex.workflow
            wanted.setdefault(identity(kind, target, reflex.cron), (kind, target, reflex.cron))
        for name in list(self.reflexes):
            if name not in wanted:
                del self.reflexes[name]
        self.store.forget_firings(wanted)
        recorded = self.store.firings() if starting else {}
        for name, (kind, target, spec) in wanted.items():
            current = self.reflexes.get(name)
            if current is not None:
                current.spec = spec  # catchUp may change; it matters at the next start only
                continue
            schedule = Schedule(spec.expr, zone(spec.timezone))
            armed = _Reflex(name, kind, target, spec, schedule, None, recorded.get(name))
            self.reflexes[name] = armed
            if armed.last is None:
                armed.last = Firing(name, now, now, note=ARMED)
                self.store.record_firing(armed.last)
                after = now
            else:
                after = self._missed(armed, now)
            armed.next = schedule.next_after(after)
        self._arm()

    def _missed(self, reflex: _Reflex, now: int) -> int:
        """At start: what to do with a firing missed while nerved was down; the instant the
        schedule goes on after."""
        last = reflex.last
        assert last is not None
        latest = reflex.schedule.last_until(now)
        if latest is None or latest <= last.scheduled_at:
            return max(now, last.scheduled_at)
        if reflex.spec.catch_up:
            log.info("cron reflex %s missed its firing at %s while nerved was down: catching up",
                     reflex.identity, _shown(latest))  # fmt: skip
            self._fire(reflex, latest, now, catch_up=True)
        else:
            reflex.last = Firing(reflex.identity, latest, now, note=MISSED)
            self.store.record_firing(reflex.last)
            log.info("cron reflex %s missed its firing at %s while nerved was down (no catchUp)",
                     reflex.identity, _shown(latest))  # fmt: skip
        return now

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        due = [r.next for r in self.reflexes.values() if r.next is not None]
        if not due:
            return
        wait = (min(due) - self.clock.now_ms()) / 1000
        self.timer = self.loop.call_later(min(max(wait, 0.0), RECHECK), self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = self.clock.now_ms()
        for reflex in list(self.reflexes.values()):
            if reflex.next is None or reflex.next > now:
                continue
            # The wall clock may have jumped past several firings: the latest, once.
            scheduled = max(reflex.next, reflex.schedule.last_until(now) or reflex.next)
            self._fire(reflex, scheduled, now)
            reflex.next = reflex.schedule.next_after(max(now, scheduled))
        self._arm()

    def _fire(self, reflex: _Reflex, scheduled: int, now: int, *, catch_up: bool = False) -> None:
        run_id: str | None = None
        note: str | None = None
        if reflex.kind == "sense":
            note = "triggered" if self.trigger_sense(reflex.target) else "no such sense"
        else:
            payload: dict[str, Any] = {
                "cron": reflex.spec.expr,
                "timezone": reflex.spec.timezone or HOST_ZONE,
                "scheduledAt": scheduled,
            }
            if catch_up:
                payload["catchUp"] = True
            key = f"cron:{reflex.spec.expr} {reflex.spec.timezone or HOST_ZONE}@{scheduled}"
            run_id, note = self.start_run(reflex.target, payload, key)
            if note is not None:
                log.warning("cron reflex %s could not start a run: %s", reflex.identity, note)
        reflex.last = Firing(reflex.identity, scheduled, now, run_id=run_id, note=note)
        self.store.record_firing(reflex.last)

    def listing(self) -> list[dict[str, Any]]:
        """Each cron reflex with its next and last firing and its last run's outcome, next
        firing first (``schedule.list``)."""
        rows = []
        for reflex in self.reflexes.values():
            last = reflex.last
            fired = last is not None and last.note != ARMED
            status = None
            if fired and last is not None:
                status = last.note
                if last.run_id is not None:
                    run = self.store.get_run(last.run_id)  # this turn's batch too
                    status = "pruned" if run is None else str(run.status)
            rows.append(
                {
                    "kind": reflex.kind,
                    "target": reflex.target,
                    "cron": reflex.spec.expr,
                    "timezone": reflex.spec.timezone or HOST_ZONE,
                    "catchUp": reflex.spec.catch_up,
                    "next": reflex.next,
                    "last": last.scheduled_at if fired and last is not None else None,
                    "lastFiredAt": last.fired_at if fired and last is not None else None,
                    "lastRunId": last.run_id if last is not None else None,
                    "lastStatus": status,
                }
            )
        never = 1 << 63
        return sorted(rows, key=lambda row: row["next"] if row["next"] is not None else never)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
