"""Strict modes: nerved refuses code and state that someone else could have written.

nerved often runs as root, and it imports the packages of its root and runs them: a package
that another local user can rewrite is that user's code run as root, within seconds (the
watch reloads on its own). Its state directory holds the files it truncates, writes and
turns into a database: one that another user controls lets them point those writes at any
file of the system. So, after OpenSSH's ``StrictModes`` (sshd_config(5); OpenSSH's
``safe_path()``), nerve trusts a path only when nobody but root and the daemon's own
user (its effective uid) could have put there what it finds:

- the path and *everything the kernel walks through to reach it*, from ``/``, symbolic links
  included (:class:`Checker`, :meth:`Checker.path`), are owned by root or the daemon's user
  and are writable by neither their group nor others;
- except an *ancestor* directory that is sticky and owned by root, such as ``/tmp``: in a
  sticky directory others may add entries but never remove or rename ours
  (``unlink(2)``, ``rename(2)``), so it cannot swap what lies below. The checked path itself
  gets no such exception, nor the directory where a missing name would be created (anyone
  may create a name in ``/tmp``);
- a symbolic link's own mode means nothing (it is always 0777), but its owner may replace it
  in a sticky directory, so it must be owned by root or the daemon's user too; then its
  target is walked like the rest (``/etc/nerve -> /srv/conf`` is fine when the link and the
  chain to ``/srv/conf`` are);
- only directories, regular files and links are checked: a device, FIFO or socket holds no
  code Python could import (``/dev/null`` is rightly 0666), and state files are refused
  unless regular (below).

What is checked, and when (callers in nerved.config, nerved.master.daemon, nerved.master.pidfile,
nerved.store, nerved.master.detach):

- the root, ``nerve.yaml``, ``senses/``, ``workflows/`` and every configured package with
  everything inside it (:func:`root_violations`), at start, at every reload and by
  ``nerved check``, before any user code is imported;
- the state directory with what leads to it, the owners of the state files already there
  (:func:`file_owner_violations`), the pid file's path and the control socket's, at start,
  before anything is opened there (:func:`dir_violations`, :meth:`Checker.path`), and again
  at every reload (nerved.master.daemon).

A violation refuses the start (exit 78, like a bad nerve.yaml) or the reload. An operator who
chose otherwise starts ``nerved --no-strict-modes`` (sshd's ``StrictModes no``): every
violation is then a WARNING line, at start and at each reload (:func:`enforce`). The
refusals are counted (:func:`refusals`): after one, the daemon refuses reloads from file
changes until an explicit one (what others could write meanwhile must be looked at first).

*User private groups* (Debian's and Ubuntu's ``umask 002``): after Debian's sshd, a path
writable by its group is accepted when that group is its owner's own, the group of the
same name that is the owner's primary group and has no other member
(:func:`private_group`); never root's group (gid 0), which containers give to processes of
arbitrary uids.

State files (:func:`open_state_file`, :func:`prepare_db`) are another matter, checked
whatever the policy: nerved never follows a symbolic link in its state, never opens anything
but a regular file there and never one with a second hard link (a hard link to
``/etc/shadow`` is a regular file owned by root). It creates them 0600, and takes group and
other permissions off existing ones (nerved owns them): its state is its user's alone.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MAX_ENTRIES: Final = 20_000
"""Entries checked in one package, through its symbolic links too: the 10,000 a package may
hold (nerved.code.packages) and as many again for ``__pycache__``, which the listing for reloads
skips but Python loads code from (a planted ``.pyc`` whose header matches the source's size
and mtime is run instead of it)."""

MAX_LINKS: Final = 40  # symbolic links followed on one path, as Linux does (ELOOP past it)

STATE_FILE_MODE: Final = 0o600

_WRITABLE: Final = stat.S_IWGRP | stat.S_IWOTH

_strict = True
_refusals = 0  # strict-modes refusals made in this process (see refusals())

HINT: Final = (
    "strict modes: nerved runs code and keeps state only where nobody but root and its own"
    " user can write (nerved --no-strict-modes would only warn)"
)


def configure(*, strict: bool) -> None:
    """Set the policy of this process, once, from the command line (``--no-strict-modes``).

    A process-wide setting, like logging's: the reloader and ``nerved check`` reach the
    checks through nerved.config's ``check_packages``, which the flag must not have to be
    threaded through.
    """
    global _strict
    _strict = strict


def strict() -> bool:
    return _strict


@dataclass(frozen=True, slots=True)
class Violation:
    """One path nerve cannot trust: what is wrong with it and the command that fixes it."""

    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"strict modes: {self.path} {self.problem}; fix: {self.fix}"


def enforce(violations: Iterable[Violation]) -> list[str]:
    """The refusals: every violation's message; or, with ``--no-strict-modes``, none (each is
    logged as a WARNING instead, so that it is said at start and at every reload)."""
    global _refusals
    messages = [str(violation) for violation in violations]
    if not messages:
        return messages
    if _strict:
        _refusals += 1
        return [*messages, HINT]
    for message in messages:
        log.warning("%s (ignored: --no-strict-modes)", message)
    return []


def refusals() -> int:
    """How many times :func:`enforce` refused something in this process (never under
    ``--no-strict-modes``): the daemon compares it across reloads, nerved.master.daemon."""
    return _refusals


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


def _name(uid: int) -> str:
    """The user's name, or its number where it has none (for a ``chown`` command)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    name = _name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


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
        return f"root or {_user(self.euid)}, the daemon's user"

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
            owner = "root" if self.euid == 0 else _name(self.euid)
            # What another user owns holds what they chose: look before taking it over.
            if link:
                look = "check where it points"
            elif stat.S_ISDIR(st.st_mode):
                look = "check what it holds"
            else:
                look = "check its content"
            self._say(
                path,
                f"is owned by {_user(st.st_uid)}, not by {self._owners()}",
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
                f"is writable by {_writers(writable)} (mode {_mode(st)}) and sticky, but"
                f" a sticky directory is trusted only when root owns it",
                f"chmod go-w {path}",
            )
            return
        self._say(
            path,
            f"is writable by {_writers(writable)} (mode {_mode(st)})",
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
                violation = _file_of_others(Path(current), last)
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


DIR_MODE: Final = 0o755  # what nerved (and nervectl init) make, above what needs less


def make_dirs(path: Path, mode: int = DIR_MODE, parents_mode: int = DIR_MODE) -> list[Path]:
    """Make directory ``path`` (``mode``) and its missing parents (``parents_mode``), each
    with exactly that mode whatever the umask (``mkdir -p`` would give the parents the
    umask's: 0777 under ``umask 0``, 0775 under 002). What exists is left as it is, and one
    made meanwhile by another process is taken as found (the callers check strict modes
    after). Returns the directories made, outermost first; raises ``OSError``.

    The umask is set around each ``mkdir(2)``: process-wide, which is fine in nerved's
    master and in nervectl (no threads).
    """
    missing: list[Path] = []
    for where in (path, *path.parents):
        if os.path.lexists(where):
            break
        missing.append(where)
    made: list[Path] = []
    for where in reversed(missing):
        old = os.umask(0)
        try:
            os.mkdir(where, mode if where == path else parents_mode)
        except FileExistsError:
            continue
        finally:
            os.umask(old)
        made.append(where)
    return made


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
            found.append(_file_of_others(path, st))
    return found


def _file_of_others(path: Path, st: os.stat_result) -> Violation:
    euid = os.geteuid()
    owner = "root" if euid == 0 else _name(euid)
    fix = (
        f"rm {path}"
        if stat.S_ISLNK(st.st_mode)
        else f"chown {owner} {path} if what it holds can be trusted, else rm {path}"
    )
    return Violation(str(path), f"is owned by {_user(st.st_uid)}", fix)


# -- state files ------------------------------------------------------------------------


class UnsafeStateFile(OSError):
    """A state file nerved will not open: a link, not a regular file, or a file of others."""

    def __str__(self) -> str:
        if str(self.filename) in str(self.strerror):
            return str(self.strerror)
        return f"{self.filename}: {self.strerror}"


def open_state_file(path: Path, flags: int, mode: int = STATE_FILE_MODE) -> int:
    """Open (``O_CREAT``: create ``mode``) a file of nerved's own, never through a symlink.

    The descriptor is then vetted (:func:`vet_state_fd`). Raises :class:`UnsafeStateFile`
    for what must not be opened, ``OSError`` for what cannot be.
    """
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStateFile(
                errno.ELOOP,
                "it is a symbolic link (nerved never follows one in its state; remove it)",
                str(path),
            ) from None
        raise
    try:
        vet_state_fd(fd, path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def vet_state_fd(fd: int, path: Path, mode: int = STATE_FILE_MODE) -> None:
    """Refuse what ``fd`` opened unless it is a regular file with one link, of root or of
    ours (strict modes; warned only, with ``--no-strict-modes``); take group and other
    permissions beyond ``mode`` off it, saying so."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeStateFile(errno.EINVAL, "not a regular file", str(path))
    if st.st_nlink != 1:
        raise UnsafeStateFile(
            errno.EMLINK,
            f"it has {st.st_nlink} hard links (another name for the same file may be anyone's;"
            " nerved writes only files of its own)",
            str(path),
        )
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        message = str(_file_of_others(path, st))
        if _strict:
            raise UnsafeStateFile(errno.EPERM, message, str(path))
        log.warning("%s (ignored: --no-strict-modes)", message)
        return
    extra = stat.S_IMODE(st.st_mode) & 0o077 & ~mode
    if extra:
        tighter = stat.S_IMODE(st.st_mode) & ~extra
        try:
            os.fchmod(fd, tighter)
        except OSError as exc:
            log.warning(
                "%s: cannot take permissions off (mode %s): %s",
                path, _mode(st), exc.strerror or exc,
            )  # fmt: skip
            return
        level = logging.WARNING if extra & 0o007 else logging.INFO
        log.log(
            level,
            "%s: mode %s is now %04o: nerved's state is for its user alone",
            path, _mode(st), tighter,
        )  # fmt: skip


DB_COMPANIONS: Final = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside a database; it creates them with the database's mode."""


def prepare_db(path: Path) -> int:
    """Make logs.db safe for SQLite, which opens it and its companions by path.

    Opens (creating it 0600 if missing: an empty file is an empty database, and SQLite makes
    ``-wal`` and ``-shm`` with the database's own mode) and vets logs.db, and vets each
    companion that exists, without following a link. Returns the descriptor of logs.db: the
    caller compares it with what SQLite opened (``st_dev``, ``st_ino``). Between these checks
    and SQLite's own opens nobody but root and nerved can swap a name, because the state
    directory passed strict modes (nerved.master.daemon, before anything was opened in it); under
    ``--no-strict-modes`` the operator accepted that window. Raises as
    :func:`open_state_file`.
    """
    fd = open_state_file(path, os.O_RDONLY | os.O_CREAT)
    try:
        for suffix in DB_COMPANIONS:
            companion = path.with_name(path.name + suffix)
            try:
                os.close(open_state_file(companion, os.O_RDONLY))
            except FileNotFoundError:
                continue
    except BaseException:
        os.close(fd)
        raise
    return fd
