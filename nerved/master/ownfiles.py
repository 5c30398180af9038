"""The daemon's own files (its state directory, pid file and control socket) in strict modes.

What nerved writes and listens on must be where nobody but root and its own user could have
put something else (nerved.modes): a state directory others can write lets them point
nerved's writes at any file of the host; a socket directory others can write lets them put
a socket of theirs in its place for nervectl to talk to. These are the checks of those
paths, apart from what is done with them, because they are asked twice: before anything is
opened there at start (nerved.master.startup, which refuses or warns), and again at every
reload (the daemon), where an operator hears of a ``chmod`` made since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from nerved import modes

STATE_FILES: Final = (
    "nerved.lock",
    "nerved.log",
    "logs.db",
    *(f"logs.db{suffix}" for suffix in modes.DB_COMPANIONS),
)
"""What nerved writes in its state directory (the socket may be there too: it is checked
when bound, nerved.control.server)."""


def pidfile_violations(path: Path) -> list[modes.Violation]:
    """The path to the pid file (as the directory where it would be made, a sticky ``/tmp``
    is fine) and the file's owner, if it is there. The file is a state file: never followed
    (a link there is to be removed), its mode tightened when opened (nerved.master.pidfile)."""
    checker = modes.Checker()
    checker.path(path, create=True, state=True)
    return checker.violations


def state_dir_violations(state: Path) -> list[modes.Violation]:
    """The state directory, what leads to it, and the owners of the files nerved writes
    there (at start, once it exists, and at every reload)."""
    checker = modes.Checker()
    checker.path(state)
    return checker.violations + modes.file_owner_violations(state / n for n in STATE_FILES)


def socket_violations(path: Path) -> list[modes.Violation]:
    """The directories that lead to the control socket we bind (as the directory where it
    is made, a sticky ``/tmp`` is fine): whoever could write there could put a socket of
    theirs in its place for nervectl to talk to. The socket itself is no file of code."""
    checker = modes.Checker()
    checker.path(path, create=True)
    return checker.violations


def violations(state: Path, pidfile: Path | None, socket: Path | None) -> list[modes.Violation]:
    """All of the above, as a reload asks: the state directory, the pid file if there is one,
    the socket if we bound it (one systemd passed is not ours to check)."""
    found = state_dir_violations(state)
    if pidfile is not None:
        found += pidfile_violations(pidfile)
    if socket is not None:
        found += socket_violations(socket)
    return found
