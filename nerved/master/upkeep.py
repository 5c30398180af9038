"""What the master does on a clock besides its work, and at the end of every turn.

At the end of each turn of the loop, what systemd has yet to hear is sent and the turn's
writes are committed (one commit for the whole turn: group commit). On timers: systemd's
``STATUS=`` kept current, its watchdog fed, the WAL folded into logs.db in quiet moments,
and the state files checked while the daemon is idle.

Apart from the daemon because none of it is the daemon's work (senses, threads, reloads,
control): it is the upkeep of its store and of what systemd sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from nerved import logs
from nerved.loop import Loop
from nerved.master.notify import Notifier
from nerved.store import Storage

IDLE_CHECKPOINT: Final = 0.25  # seconds without a commit before the WAL is checkpointed
STATUS_EVERY: Final = 2.0  # seconds between STATUS= updates (sent only when they change)
CHECK_FILES_EVERY: Final = 1.0  # seconds between two checks that logs.db is still there


class Upkeep:
    """The end of each turn, and the daemon's timers for systemd and the store.

    ``summary()`` says what runs and what waits, in one line (STATUS=); ``stopping()``
    whether nerved stops (the status and the checkpoints then stop being kept).
    """

    def __init__(
        self,
        loop: Loop,
        store: Storage,
        notifier: Notifier,
        summary: Callable[[], str],
        stopping: Callable[[], bool],
    ) -> None:
        self.loop = loop
        self.store = store
        self.notifier = notifier
        self._summary = summary
        self._stopping = stopping
        self._last_status = ""  # the last STATUS= sent by _status_tick

    def at_each_turn(self) -> None:
        """From now on, each turn ends with :meth:`_end_of_turn` (the commit)."""
        self.loop.at_end_of_turn(self._end_of_turn)

    def start(self) -> None:
        """Schedule the timers: once the daemon is about to say it is ready."""
        if self.notifier.watchdog_interval:
            self._watchdog()
        self.loop.call_later(STATUS_EVERY, self._status_tick, gated=False)
        self.loop.call_later(IDLE_CHECKPOINT, self._checkpoint_when_idle)
        self.loop.call_later(CHECK_FILES_EVERY, self._check_files, gated=False)

    def _end_of_turn(self) -> None:
        # What systemd has yet to hear goes first, whatever happens to the commit (a failed
        # commit raises StoreError out of the loop: see the daemon's _storage_failed).
        self.notifier.flush()
        logs.flush()  # log entries journald's socket could not take at once
        self.store.commit()

    def _status_tick(self) -> None:
        """Keep ``systemctl status`` current: what runs and what waits, when it changes."""
        if self._stopping():
            return
        summary = self._summary()
        if self.store.locked_since is not None:
            summary = f"waiting for the write lock on {self.store.where}; {summary}"
        if summary != self._last_status:
            self.notifier.status(summary)
            self._last_status = summary
        self.loop.call_later(STATUS_EVERY, self._status_tick, gated=False)

    def _checkpoint_when_idle(self) -> None:
        """Fold the WAL into logs.db in a quiet moment, not in the middle of a burst."""
        if time.monotonic() - self.store.last_commit >= IDLE_CHECKPOINT:
            self.store.checkpoint()
        if not self._stopping():
            self.loop.call_later(IDLE_CHECKPOINT, self._checkpoint_when_idle)

    def _check_files(self) -> None:
        """An idle daemon notices a deleted state directory too, not only at its next commit:
        a second nerved could otherwise start on the same path (the lock file is new)."""
        self.store.check_files()  # StoreError: the daemon's _storage_failed
        self.loop.call_later(CHECK_FILES_EVERY, self._check_files, gated=False)

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        interval = self.notifier.watchdog_interval
        if interval:
            self.loop.call_later(interval, self._watchdog, gated=False)
