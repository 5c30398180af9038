"""Keeping logs.db bounded: old final runs and old sense entries are pruned in small batches.

Pruning shares the master's loop with everything else, so it works in batches small enough
to be unnoticeable (a few hundred runs per turn), spaced out while there is a backlog and
idle for a minute once there is none. Active runs are never pruned, whatever their age.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from nerved.config import RetentionConfig
from nerved.loop import Loop, Timer
from nerved.store import Storage, StoreError, now_ms
from nerved.words import plural

log = logging.getLogger(__name__)

RUN_BATCH: Final = 200
SENSE_BATCH: Final = 2000
PAUSE: Final = 0.05  # between batches while there is a backlog
INTERVAL: Final = 60.0  # between passes once there is none
AFTER_FAILURE: Final = 3600.0  # after a pass that met a damaged page
FIRST_PASS: Final = 1.0  # after start, once recovery and readiness are out of the way


class Retention:
    def __init__(self, loop: Loop, store: Storage, settings: Callable[[], RetentionConfig]):
        self.loop = loop
        self.store = store
        self.settings = settings
        self.pruned_runs = 0
        self.pruned_entries = 0
        self._due = False
        self._stopped = False
        self._timer: Timer | None = loop.call_later(FIRST_PASS, self.tick)
        loop.at_end_of_turn(self._end_of_turn)  # after the daemon's commit, registered first

    def tick(self) -> None:
        """A batch is due: it runs at the end of this turn, after the turn's commit."""
        self._timer = None
        self._due = True

    def _end_of_turn(self) -> None:
        """One batch of pruning in a transaction of its own, after the turn's commit: a
        damaged page it meets poisons only this transaction (SQLite refuses every later
        statement of one that met it), which is rolled back and said once an hour; nothing
        anyone else wrote is lost, and the daemon goes on."""
        if not self._due or self._stopped or not self.store.acquire():
            return
        self._due = False
        try:
            runs, entries = self._prune()
            self.store.commit()
        except StoreError as exc:
            self.store.abandon(exc)
            log.error("retention: cannot prune (%s); trying again in an hour", exc)
            self._timer = self.loop.call_later(AFTER_FAILURE, self.tick)
            return
        self.pruned_runs += runs
        self.pruned_entries += entries
        backlog = runs == RUN_BATCH or entries == SENSE_BATCH
        if runs or entries:
            log.debug(
                "retention: pruned %s and %s",
                plural(runs, "run"),
                plural(entries, "sense entry", "sense entries"),
            )
        self._timer = self.loop.call_later(PAUSE if backlog else INTERVAL, self.tick)

    def _prune(self) -> tuple[int, int]:
        settings = self.settings()
        now = now_ms()
        runs = self.store.prune_runs(
            older_than=None if settings.run_max_age_ms is None else now - settings.run_max_age_ms,
            keep=settings.run_max_count,
            limit=RUN_BATCH,
        )
        entries = 0
        if settings.signal_max_age_ms is not None:
            entries = self.store.prune_sense_logs(
                older_than=now - settings.signal_max_age_ms, limit=SENSE_BATCH
            )
        return runs, entries

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
