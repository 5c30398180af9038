"""Noticing edits under the nerve root with inotify, debounced into one reload.

An editor saving a file makes a burst of events (a temp file, a rename, a chmod), and a
``git checkout`` makes hundreds; the watcher waits for a quiet moment before it asks for a
reload, so a burst costs one. It watches the root, ``senses/``, ``workflows/`` and every
directory below them, adding watches for new directories at each reload.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import inotify_simple

from nerved.loop import Loop, Timer

log = logging.getLogger(__name__)

DEBOUNCE: Final = 0.3
MAX_WATCHED: Final = 4096  # directories watched with inotify (each a kernel watch)
_IGNORED_SUFFIXES: Final = (".pyc", ".pyo", ".swp", ".swx", ".tmp", "~")

_F = inotify_simple.flags
_MASK: Final = (
    _F.CLOSE_WRITE | _F.MOVED_TO | _F.MOVED_FROM | _F.CREATE | _F.DELETE
    | _F.DELETE_SELF | _F.MOVE_SELF | _F.ATTRIB
)  # fmt: skip


def _ignored(name: str) -> bool:
    return (
        name == "__pycache__"
        or name.endswith(_IGNORED_SUFFIXES)
        or name.startswith(".#")
        or name == "4913"  # vim's probe file
    )


class Watcher:
    def __init__(self, loop: Loop, root: Path, on_change: Callable[[], None]) -> None:
        self.loop = loop
        self.root = root
        self.on_change = on_change
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._watches: dict[int, Path] = {}
        self._timer: Timer | None = None
        self._said_too_many = False
        loop.add_reader(self._inotify.fileno(), self._readable)
        self.refresh()

    def refresh(self) -> None:
        """Watch every directory that exists now (cheap to repeat: known ones are kept)."""
        known = set(self._watches.values())
        for directory in self._directories():
            if directory in known:
                continue
            try:
                wd = self._inotify.add_watch(directory, _MASK)
            except OSError as exc:
                log.warning("cannot watch %s: %s", directory, exc)
                continue
            self._watches[wd] = directory

    def _directories(self) -> list[Path]:
        """The root and the directories of the packages, at most :data:`MAX_WATCHED`: each is
        an inotify watch (a kernel resource), and walking them happens in the master's loop.
        Past the bound the rest are not watched, which is said once; ``nervectl reload``
        still sees every change."""
        found = [self.root]
        for top in ("senses", "workflows"):
            base = self.root / top
            if not base.is_dir():
                continue
            for dirpath, dirnames, _files in os.walk(base):
                dirnames[:] = [d for d in dirnames if not _ignored(d) and not d.startswith(".")]
                found.append(Path(dirpath))
                if len(found) >= MAX_WATCHED:
                    if not self._said_too_many:
                        log.warning(
                            "more than %d directories under %s: changes below the first %d"
                            " are not noticed by themselves (nervectl reload sees them)",
                            MAX_WATCHED, self.root, MAX_WATCHED,
                        )  # fmt: skip
                        self._said_too_many = True
                    return found
        return found

    def _readable(self, _mask: int) -> None:
        relevant = False
        for event in self._inotify.read(timeout=0):
            if event.mask & (_F.IGNORED | _F.DELETE_SELF):
                self._watches.pop(event.wd, None)
            if event.mask & _F.Q_OVERFLOW:
                relevant = True
                continue
            if event.name and _ignored(event.name):
                continue
            directory = self._watches.get(event.wd)
            if directory == self.root and event.name not in ("nerve.yaml", "senses", "workflows"):
                continue
            relevant = True
        if relevant:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.refresh()
        self.on_change()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.loop.remove(self._inotify.fileno())
        self._inotify.close()
