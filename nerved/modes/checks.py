"""Strict modes' checks: whether a path, and all the kernel walks through to reach it, is
trusted (owned by root or the daemon's user, writable by neither group nor others).

The walk (:class:`Checker`), the user private groups it accepts (:func:`private_group`),
and the rounds made of it (:func:`root_violations`, :func:`dir_violations`,
:func:`file_owner_violations`). It only looks: it changes nothing on disk (the state files
are :mod:`nerved.modes.statefiles`' job) and decides nothing (a violation is refused or
warned of by :func:`nerved.modes.policy.enforce`).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from nerved.modes.policy import Violation, mode_text, user_label, user_name

MAX_ENTRIES: Final = 20_000
"""Entries checked in one package, through its symbolic links too: the 10,000 a package may
hold (nerved.code.reading) and as many again for ``__pycache__``, which the listing for reloads
skips but Python loads code from (a planted ``.pyc`` whose header matches the source's size
and mtime is run instead of it)."""

MAX_LINKS: Final = 40  # symbolic links followed on one path, as Linux does (ELOOP past it)

_WRITABLE: Final = stat.S_IWGRP | stat.S_IWOTH


def private_group(uid: int, gid: int) -> bool:
    """Whether ``gid`` is the private group of user ``uid`` (user private groups, as
    Debian's sshd accepts them): the group has the user's name, is the user's primary group,
    and lists no other member. Never root's group (gid 0): containers (OpenShift's arbitrary
    uids) run processes of users unknown to /etc/passwd with it. Other users whose primary
    group it is are not looked for: that would take enumerating every user."""
    if gid == 0:
        return False
    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return (
        user.pw_gid == gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    )


def _writers(mode: int) -> str:
    """Who may write, from the write bits that count (``Checker._writable``)."""
    if mode & _WRITABLE == _WRITABLE:
        return "its group and others"
    return "its group" if mode & stat.S_IWGRP else "others"


class Checker:
    """One round of checks (a start, a reload): violations found so far, each said once.

    ``lstat`` results are cached for the round, so that the ancestors shared by many paths
    (and the targets of a package's symbolic links) are looked at once.
    """

    def __init__(self) -> None:
        self.euid = os.geteuid()
        self.violations: list[Violation] = []
        self._said: set[tuple[str, str]] = set()
        self._stats: dict[str, os.stat_result] = {}
        self._private: dict[tuple[int, int], bool] = {}  # private_group(), once per pair

    # -- one entry ----------------------------------------------------------------------

    def _lstat(self, path: str) -> os.stat_result:
        st = self._stats.get(path)
        if st is None:
            st = self._stats[path] = os.lstat(path)
        return st

    def _say(self, path: str, problem: str, fix: str) -> None:
        if (path, problem) not in self._said:
            self._said.add((path, problem))
            self.violations.append(Violation(path, problem, fix))

    def _owners(self) -> str:
        if self.euid == 0:
            return "root"
        return f"root or {user_label(self.euid)}, the daemon's user"

    def _writable(self, st: os.stat_result) -> int:
        """The group and other write bits that count: the group's not when it is the owner's
        private group (:func:`private_group`)."""
        bits = st.st_mode & _WRITABLE
        if bits & stat.S_IWGRP:
            key = (st.st_uid, st.st_gid)
            private = self._private.get(key)
            if private is None:
                private = self._private[key] = private_group(*key)
            if private:
                bits &= ~stat.S_IWGRP
        return bits

    def entry(self, path: str, st: os.stat_result, *, ancestor: bool = False) -> None:
        """Check one entry as found (``lstat``): its owner and, unless a link, its mode.

        ``ancestor``: a directory walked through on the way to what is checked, which may be
        writable by others if it is sticky and owned by root (see the module's docstring).
        """
        link = stat.S_ISLNK(st.st_mode)
        if not (link or stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return  # a device, FIFO or socket holds no code (/dev/null is 0666, rightly)
        if st.st_uid not in (0, self.euid):
            owner = "root" if self.euid == 0 else user_name(self.euid)
            # What another user owns holds what they chose: look before taking it over.
            if link:
                look = "check where it points"
            elif stat.S_ISDIR(st.st_mode):
                look = "check what it holds"
            else:
                look = "check its content"
            self._say(
                path,
                f"is owned by {user_label(st.st_uid)}, not by {self._owners()}",
                f"{look}, then {'chown -h' if link else 'chown'} {owner} {path}",
            )
        if link:
            return
        writable = self._writable(st)
        if not writable:
            return
        if ancestor and st.st_mode & stat.S_ISVTX and stat.S_ISDIR(st.st_mode):
            if st.st_uid == 0:
                return
            self._say(
                path,
                f"is writable by {_writers(writable)} (mode {mode_text(st)}) and sticky, but"
                f" a sticky directory is trusted only when root owns it",
                f"chmod go-w {path}",
            )
            return
        self._say(
            path,
            f"is writable by {_writers(writable)} (mode {mode_text(st)})",
            f"chmod go-w {path}",
        )

    # -- a path, as the kernel walks it -------------------------------------------------

    def path(
        self, path: str | Path, *, create: bool = False, state: bool = False
    ) -> tuple[str, os.stat_result] | None:
        """Check ``path`` and every entry walked through to reach it; where it leads.

        Components are resolved one by one as the kernel does (``..`` after a link goes up
        from the link's target), each link checked as an entry and then followed. Returns
        the resolved path and its ``lstat``, or None when it does not exist (or cannot be
        walked). Then the last directory reached is checked as the place where the missing
        name would be made: with ``create`` (nerved makes it, and checks again after) as an
        ancestor, else strictly (a name anyone may create in ``/tmp`` is not ours).

        ``state``: ``path`` is a file nerved writes, opened without following a link (the
        pid file; nerved.modes.open_state_file): its last component is not followed, and
        only its owner is checked (its mode is tightened when it is opened, as the state
        files' are).
        """
        text = os.fspath(path)
        if not text.startswith("/"):  # not os.path.abspath: it folds `..` before any link
            text = os.path.join(os.getcwd(), text)
        pending = [part for part in reversed(text.split("/")) if part]
        current = "/"
        links = 0
        trail = ["/"]  # every entry stood on, in order, links aside
        try:
            self._lstat(current)
            while pending:
                name = pending.pop()
                if name == ".":
                    continue
                if name == "..":  # from where the walk stands: after a link, its target
                    current = os.path.dirname(current)
                    continue
                candidate = os.path.join(current, name)
                st = self._lstat(candidate)
                if state and not pending:  # a state file: never followed
                    trail.append(candidate)
                    current = candidate
                    break
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_LINKS:
                        raise OSError(errno.ELOOP, "too many symbolic links", str(path))
                    self.entry(candidate, st)
                    target = os.readlink(candidate)
                    if target.startswith("/"):
                        current = "/"
                    pending.extend(part for part in reversed(target.split("/")) if part)
                    continue
                trail.append(candidate)
                current = candidate
        except OSError:
            found = None
        else:
            found = current
        for where in dict.fromkeys(trail):
            if where != current and where in self._stats:
                self.entry(where, self._stats[where], ancestor=True)
        last = self._stats.get(current)
        if last is None:
            return None
        if found is None:
            if stat.S_ISDIR(last.st_mode):
                self.entry(current, last, ancestor=create)
            return None
        if state:
            if last.st_uid not in (0, self.euid):
                violation = file_of_others(Path(current), last)
                self._say(violation.path, violation.problem, violation.fix)
            return current, last
        self.entry(current, last)
        return current, last

    # -- a package ----------------------------------------------------------------------

    def tree(self, top: str | Path) -> None:
        """Check ``top`` (a directory), what leads to it, and everything inside it.

        Symbolic links inside are followed as Python's import would (each link and its
        target's chain are checked, a linked directory is walked too, once), within
        :data:`MAX_ENTRIES`. Hidden directories (``.git``) are not walked: no import reaches
        a name that is not an identifier. ``__pycache__`` is walked (see MAX_ENTRIES).
        """
        found = self.path(top)
        if found is None or not stat.S_ISDIR(found[1].st_mode):
            return  # missing, or not a package: nerved.config says so
        resolved, st = found
        seen = {(st.st_dev, st.st_ino)}
        pending = [resolved]
        count = 0
        while pending:
            directory = pending.pop()
            try:
                listing = list(os.scandir(directory))
            except OSError:
                continue  # gone meanwhile, or not listable by us: nothing of it imports
            for entry in listing:
                count += 1
                if count > MAX_ENTRIES:
                    self._say(
                        str(top),
                        f"cannot be checked: it leads to more than {MAX_ENTRIES:,} entries"
                        " (through its symbolic links too)",
                        "make it smaller, or link less into it",
                    )
                    return
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(est.st_mode):
                    self._stats[entry.path] = est
                    target = self.path(entry.path)
                    if target is None or not stat.S_ISDIR(target[1].st_mode):
                        continue
                    if entry.name.startswith("."):
                        continue
                    where, est = target
                elif stat.S_ISDIR(est.st_mode):
                    if entry.name.startswith("."):
                        continue
                    self.entry(entry.path, est)
                    where = entry.path
                else:
                    self.entry(entry.path, est)
                    continue
                if (est.st_dev, est.st_ino) not in seen:
                    seen.add((est.st_dev, est.st_ino))
                    pending.append(where)


def root_violations(root: Path, config_file: Path, packages: Iterable[Path]) -> list[Violation]:
    """What in a root nerve cannot trust: the root, nerve.yaml, ``senses/``, ``workflows/``,
    and the given package directories with all they hold (missing ones are skipped: the
    configuration check reports those)."""
    checker = Checker()
    checker.path(root)
    checker.path(config_file)
    for section in ("senses", "workflows"):
        if os.path.lexists(root / section):
            checker.path(root / section)
    for package in packages:
        checker.tree(package)
    return checker.violations


def dir_violations(directory: Path) -> list[Violation]:
    """What leads to ``directory``, which nerved creates if missing (check again after)."""
    checker = Checker()
    checker.path(directory, create=True)
    return checker.violations


def file_owner_violations(paths: Iterable[Path]) -> list[Violation]:
    """The owners of files nerved writes, where they exist (their directory is checked
    apart): one owned by another user is theirs, whatever its mode is now, and so is what
    it holds. (What is not a regular file is refused when opened, whatever the policy.)"""
    found: list[Violation] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid not in (0, os.geteuid()):
            found.append(file_of_others(path, st))
    return found


def file_of_others(path: Path, st: os.stat_result) -> Violation:
    euid = os.geteuid()
    owner = "root" if euid == 0 else user_name(euid)
    fix = (
        f"rm {path}"
        if stat.S_ISLNK(st.st_mode)
        else f"chown {owner} {path} if what it holds can be trusted, else rm {path}"
    )
    return Violation(str(path), f"is owned by {user_label(st.st_uid)}", fix)
