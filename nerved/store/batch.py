"""The batch of a turn, as every backend keeps it: its callbacks, its commit, its abandon.

A backend mixes :class:`Batch` in and says how its database commits and rolls back
(:meth:`Batch._commit_batch`, :meth:`Batch._rollback`); the rules are here, once
(nerved.store.interface): the callbacks run, in order, only after the batch is durable; a
commit that fails rolls back, aborts them with the error and raises StoreError; nothing of
a batch is acknowledged before its commit, and a file the store watches that was unlinked
fails the commit.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from nerved.store.errors import StoreError
from nerved.store.interface import AbortCallback, CommitCallback
from nerved.store.watched import WatchedFiles


class Batch(ABC):
    """The open batch: whether anything was written, and what waits for its commit."""

    _watched: WatchedFiles

    def __init__(self) -> None:
        self._wrote = False  # something was written since the last commit
        self._on_commit: list[CommitCallback] = []
        self._on_abort: list[AbortCallback] = []
        self._watched = WatchedFiles()
        self.commits = 0
        self.last_commit = 0.0  # time.monotonic() of the last commit
        self.commit_observer: Callable[[float], None] | None = None  # the metrics' hook

    # -- what a backend says ---------------------------------------------------------------

    @abstractmethod
    def _commit_batch(self) -> None:
        """COMMIT what was written (StoreError if it cannot)."""

    @abstractmethod
    def _rollback(self) -> None:
        """Drop what was written since the last commit; never raises."""

    def _committed(self) -> None:  # noqa: B027 (an optional hook: nothing by default)
        """After a commit that wrote: what the backend does next (take its lock again)."""

    def _nothing_written(self) -> None:  # noqa: B027 (an optional hook: nothing by default)
        """At a commit with nothing written: what the backend does (end a reading one)."""

    # -- the rules -------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Something was written, or a callback registered, since the last commit."""
        return self._wrote or bool(self._on_commit)

    def after_commit(
        self, on_commit: CommitCallback, on_abort: AbortCallback | None = None
    ) -> None:
        """Run ``on_commit`` once everything written so far is durable.

        If nothing is pending, the callback still waits for the end of the turn, so callers
        never have to care whether their own write was the one that opened the batch.
        """
        self._on_commit.append(on_commit)
        if on_abort is not None:
            self._on_abort.append(on_abort)

    def commit(self) -> None:
        """Make the batch durable, then run its callbacks.

        On failure (a full disk, an I/O error, a database gone, a watched file unlinked),
        roll back, abort the callbacks (nothing of the batch is acknowledged) and raise
        StoreError.
        """
        callbacks, aborts = self._on_commit, self._on_abort
        self._on_commit, self._on_abort = [], []
        if self._wrote:
            began = time.monotonic()
            try:
                self._watched.check_linked()
                self._commit_batch()
            except StoreError as exc:
                self._rollback()
                for abort in aborts:
                    abort(exc)
                raise StoreError(f"commit failed: {exc}") from exc
            self._wrote = False
            self.commits += 1
            self.last_commit = time.monotonic()
            if self.commit_observer is not None:
                self.commit_observer(self.last_commit - began)
            self._committed()
        else:
            self._nothing_written()
        for callback in callbacks:
            callback()

    def abandon(self, exc: BaseException) -> None:
        """Roll the batch back and abort its callbacks: for work done in a batch of its own
        (:meth:`commit` first) whose failure must not stop the daemon (retention)."""
        aborts = self._on_abort
        self._on_commit, self._on_abort = [], []
        self._rollback()
        for abort in aborts:
            abort(exc)

    def watch(self, path: Path, fd: int) -> None:
        """Also check that ``path`` is still the file open as ``fd`` (:meth:`check_files`)."""
        self._watched.add(path, fd)

    def check_files(self) -> None:
        """Raise StoreError if a watched file is no longer the file opened at its path: the
        daemon calls this every second."""
        self._watched.check_paths()
