"""Files a store must still have at their paths: its own, and those it was told to watch.

A state directory deleted under a running daemon must stop it, not have it acknowledge work
into an unlinked file. So a store keeps each file's descriptor and identity (device, inode):
every commit checks, cheaply (``fstat``, no path lookup), that none was unlinked
(:meth:`WatchedFiles.check_linked`), and every second the daemon checks that each path still
names the file opened (:meth:`WatchedFiles.check_paths`). SQLite's logs.db is one of them;
with any backend, the state directory's lock file (nerved.master.startup) is another.
"""

from __future__ import annotations

import os
from pathlib import Path

from nerved.store.errors import StoreError


def gone(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path} is gone from under nerved ({why}): was the state directory deleted?"
        " Nothing more is written to the file nerved had open"
    )


def file_id(path: Path | int) -> tuple[int, int]:
    st = os.fstat(path) if isinstance(path, int) else os.stat(path)
    return st.st_dev, st.st_ino


class WatchedFiles:
    """``(path, open fd, identity)`` of each file watched."""

    def __init__(self) -> None:
        self._files: list[tuple[Path, int, tuple[int, int]]] = []

    def add(self, path: Path, fd: int, identity: tuple[int, int] | None = None) -> None:
        self._files.append((path, fd, file_id(fd) if identity is None else identity))

    def check_paths(self) -> None:
        """Raise StoreError if a path no longer names the file opened (the daemon: every
        second)."""
        for path, _fd, identity in self._files:
            try:
                now = file_id(path)
            except OSError as exc:
                now, why = None, exc.strerror or str(exc)
            else:
                why = "it is another file now"
            if now != identity:
                raise gone(path, why)

    def check_linked(self) -> None:
        """Raise StoreError if a file was unlinked (deleted, or replaced by a rename): at
        every commit, so that nothing is acknowledged into it."""
        for path, fd, _identity in self._files:
            if os.fstat(fd).st_nlink == 0:
                raise gone(path, "deleted")
