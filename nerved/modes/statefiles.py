"""Strict modes' fixes: the directories and state files nerved makes and opens, made safe.

Whatever the policy, nerved never follows a symbolic link in its state, never opens anything
but a regular file there, and never one with a second hard link; it creates its files 0600
and takes group and other permissions off existing ones (:func:`open_state_file`,
:func:`vet_state_fd`, :func:`prepare_db`), and makes its directories with exact modes
whatever the umask (:func:`make_dirs`). Apart from the checks (:mod:`nerved.modes.checks`),
which only look, because this is what changes files.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Final

from nerved.modes import policy
from nerved.modes.checks import file_of_others
from nerved.modes.policy import mode_text

log = logging.getLogger("nerved.modes")

STATE_FILE_MODE: Final = 0o600

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
        message = str(file_of_others(path, st))
        if policy.strict():
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
                path, mode_text(st), exc.strerror or exc,
            )  # fmt: skip
            return
        level = logging.WARNING if extra & 0o007 else logging.INFO
        log.log(
            level,
            "%s: mode %s is now %04o: nerved's state is for its user alone",
            path, mode_text(st), tighter,
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
    directory passed strict modes (nerved.master.startup, before anything was opened in it); under
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
