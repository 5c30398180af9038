"""Noticing edits under the nerve root with inotify, debounced into one reload.

An editor saving a file makes a burst of events (a temp file, a rename, a chmod), and a
``git checkout`` makes hundreds; the watcher waits for a quiet moment before it asks for a
reload, so a burst costs one. It watches the root, ``senses/``, ``workflows/`` and every
directory below them, adding watches for new directories at each reload.

A package directory, ``senses/``, ``workflows/`` or ``nerve.yaml`` may be a symbolic link
to somewhere else (stow, nix and configuration management deploy that way); an edit there
makes no event under the root, so the watcher follows each such link, hop by hop, and
watches where it leads too: the directory of every link on the way (for that link's name
alone: it may be ``/etc``, whose other entries are none of nerve's business), and the target,
a package's whole tree or ``nerve.yaml``'s directory for that one name. Links are resolved
again at every reload, so a link pointed elsewhere moves its watches with it (the old ones
are removed). Symlinks *inside* a package are not followed, as a reload does not read
through them either (nerved.code.packages), and a link among the directories *above* a target
is resolved but not watched: retargeting it is noticed at the next reload.
"""

from __future__ import annotations

import contextlib
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
MAX_HOPS: Final = 40  # symlinks followed from one path, as the kernel's own limit (ELOOP)
ROOT_NAMES: Final = frozenset({"nerve.yaml", "senses", "workflows"})
_IGNORED_SUFFIXES: Final = (".pyc", ".pyo", ".swp", ".swx", ".tmp", "~")

_F = inotify_simple.flags
_MASK: Final = (
    _F.CLOSE_WRITE | _F.MOVED_TO | _F.MOVED_FROM | _F.CREATE | _F.DELETE
    | _F.DELETE_SELF | _F.MOVE_SELF | _F.ATTRIB
)  # fmt: skip

Names = frozenset[str] | None
"""Which entries of a watched directory matter: those names, or (None) every one."""


def _ignored(name: str) -> bool:
    return (
        name == "__pycache__"
        or name.endswith(_IGNORED_SUFFIXES)
        or name.startswith(".#")
        or name == "4913"  # vim's probe file
    )


def _hidden(name: str) -> bool:
    """Not part of a package's code: ``__pycache__``, editors' files, ``.git`` and the like."""
    return _ignored(name) or name.startswith(".")


def _merge(one: Names, other: Names) -> Names:
    return None if one is None or other is None else one | other


class Watcher:
    def __init__(self, loop: Loop, root: Path, on_change: Callable[[], None]) -> None:
        self.loop = loop
        self.root = root
        self.on_change = on_change
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._paths: dict[Path, int] = {}  # directory (resolved) -> its watch descriptor
        self._watches: dict[int, Names] = {}  # watch descriptor -> the names that matter
        self._timer: Timer | None = None
        self._said_too_many = False
        loop.add_reader(self._inotify.fileno(), self._readable)
        self.refresh()

    def refresh(self) -> None:
        """Watch what is wanted now, and only that (cheap to repeat: known ones are kept).

        Called at start and after each reload: new directories get a watch, and those no
        longer wanted (a link now points elsewhere, a package was removed) lose theirs.
        """
        wanted = self._wanted()
        for path in [p for p in self._paths if p not in wanted]:
            wd = self._paths.pop(path)
            if wd not in self._paths.values():
                self._watches.pop(wd, None)
                with contextlib.suppress(OSError):  # gone with its directory already
                    self._inotify.rm_watch(wd)
        for path in wanted:
            known = self._paths.get(path)
            if known is not None and known in self._watches:
                continue
            try:
                self._paths[path] = self._inotify.add_watch(path, _MASK)
            except OSError as exc:
                self._paths.pop(path, None)
                log.warning("cannot watch %s: %s", path, exc)
        # Two paths may be one directory (a bind mount): its watch serves both.
        watches: dict[int, Names] = {}
        for path, wd in self._paths.items():
            names = wanted[path]
            watches[wd] = _merge(watches[wd], names) if wd in watches else names
        self._watches = watches

    def _wanted(self) -> dict[Path, Names]:
        """The directories to watch, each with the names that matter in it, at most
        :data:`MAX_WATCHED`: each is an inotify watch (a kernel resource), and walking them
        happens in the master's loop. Past the bound the rest are not watched, which is said
        once; ``nervectl reload`` still sees every change."""
        wanted: dict[Path, Names] = {}

        def add(directory: Path, names: Names) -> bool:
            """False once the bound is reached."""
            if directory in wanted:
                wanted[directory] = _merge(wanted[directory], names)
                return True
            if len(wanted) >= MAX_WATCHED:
                if not self._said_too_many:
                    log.warning(
                        "more than %d directories under %s: changes below the first %d"
                        " are not noticed by themselves (nervectl reload sees them)",
                        MAX_WATCHED, self.root, MAX_WATCHED,
                    )  # fmt: skip
                    self._said_too_many = True
                return False
            wanted[directory] = names
            return True

        # The root as given, link by link: pointing a symlinked root elsewhere is a change.
        root = self._follow(self.root, add)
        if root is None:
            return wanted
        add(root, ROOT_NAMES)
        self._follow(root / "nerve.yaml", add)
        for top in ("senses", "workflows"):
            base = self._follow(root / top, add)
            if base is None or not self._tree(base, add):
                continue
            try:
                with os.scandir(base) as listing:
                    links = [e.name for e in listing if e.is_symlink() and not _hidden(e.name)]
            except OSError:
                continue
            for name in sorted(links):
                package = self._follow(base / name, add)
                if package is not None and not self._tree(package, add):
                    break
        return wanted

    @staticmethod
    def _follow(path: Path, add: Callable[[Path, Names], bool]) -> Path | None:
        """Where ``path`` leads, through symlinks, watching the directory of each hop for
        that hop's name (the last one included: an edit of ``nerve.yaml`` is an event in its
        directory). None when it leads nowhere: a missing directory, a loop."""
        for _ in range(MAX_HOPS):
            parent = Path(os.path.realpath(path.parent))
            if path.name in ("", ".", ".."):
                return Path(os.path.realpath(path))
            here = parent / path.name
            if not parent.is_dir() or not add(parent, frozenset({path.name})):
                return None
            try:
                target = os.readlink(here)
            except OSError:  # not a link (EINVAL), or nothing there
                return here
            path = parent / target  # an absolute target replaces the parent
        return None

    @classmethod
    def _tree(cls, top: Path, add: Callable[[Path, Names], bool]) -> bool:
        """Watch ``top`` and every directory below it for every name, hidden directories
        and ``__pycache__`` left out; False once the bound is reached. Links are not
        followed, but for a ``.py`` link, which nerve reads through (nerved.code.packages): its
        target is watched too, as stow and configuration management lay files out."""
        if not top.is_dir():
            return True
        for dirpath, dirnames, files in os.walk(top):
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            if not add(Path(dirpath), None):
                return False
            for name in files:
                if name.endswith(".py") and os.path.islink(os.path.join(dirpath, name)):
                    cls._follow(Path(dirpath) / name, add)
        return True

    def _readable(self, _mask: int) -> None:
        relevant = False
        for event in self._inotify.read(timeout=0):
            watched = event.wd in self._watches  # not: a watch removed since (IGNORED follows)
            names = self._watches.get(event.wd)
            if event.mask & (_F.IGNORED | _F.DELETE_SELF):
                self._watches.pop(event.wd, None)
            if event.mask & _F.Q_OVERFLOW:
                relevant = True
                continue
            if not watched or (event.name and _ignored(event.name)):
                continue
            if names is not None and event.name not in names:
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
