"""``nerved --daemon``: running detached on hosts without systemd, through python-daemon.

``nerved --daemon`` exits 0 only once a daemon serves, and otherwise with the exit code and
the reason the foreground would have given:

- the parent first makes every check that can refuse a start
  (:func:`nerved.master.startup.prepare`: the configuration, the pid file, the state
  directory's lock, the control socket), so a refusal is an exit code and a line on the
  terminal;
- it then forks a child that python-daemon detaches (double fork, new session, umask 027,
  working directory ``/``, stdout and stderr to ``<state>/nerved.log``, so workers write
  there too), keeping open what the checks hold (``files_preserve``) and the write end of a
  readiness pipe. logs.db is opened only there, after the forks;
- the parent waits on that pipe: the daemon writes ``0`` once ready, or its exit code and
  reason if its start fails (an unreadable logs.db, say); if it dies without a word, the
  parent exits EX_SOFTWARE and points at the log.

A SIGHUP that reaches the parent before it forks is carried into the daemon (one reload
once ready, see ``nerved.early``); after that the parent is only a waiter and takes no
notice of one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
from dataclasses import replace
from typing import Final, TextIO

import daemon

from nerved import logs, modes
from nerved.master.daemon import Daemon
from nerved.master.startup import (
    EX_CANTCREAT,
    EX_OK,
    EX_SOFTWARE,
    Fatal,
    Options,
    Prepared,
    prepare,
)

log = logging.getLogger(__name__)

MAX_WORD: Final = select.PIPE_BUF  # a report this long is written to the pipe at once


class _Readiness:
    """The daemon's end of the readiness pipe: one report, then closed (a :data:`Started`)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def __call__(self, code: int, message: str) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # the parent is gone (a ^C): nobody to tell
            os.write(fd, f"{code}\n{message}".encode()[:MAX_WORD])
        os.close(fd)


def run(options: Options, log_level: str) -> int:
    """Start a detached daemon; in the parent, its exit code; in the daemon, the daemon's."""
    options = replace(
        options,
        root=options.root.resolve(),
        state_dir=options.state_dir.resolve(),
        socket=options.socket.resolve(),
        pidfile=None if options.pidfile is None else options.pidfile.absolute(),
    )  # the daemon works in /; a symbolic link as pid file is refused, not followed
    try:
        prepared = prepare(options)
    except Fatal as exc:
        log.critical("%s", exc)
        return exc.code
    log_path = options.state_dir / "nerved.log"
    try:  # never through a link, created 0600 (nerved.modes): the state directory is checked
        fd = modes.open_state_file(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        log_file = open(fd, "a", buffering=1)  # noqa: SIM115 - handed to the daemon context
    except OSError as exc:
        prepared.close(remove=True)
        log.critical("cannot open %s: %s", log_path, exc.strerror or exc)
        return EX_CANTCREAT
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        return _serve(options, prepared, log_file, write_end, log_level)
    os.close(write_end)
    log_file.close()
    prepared.close(remove=False)
    word = _wait_for_word(read_end)
    os.waitpid(child, 0)  # it ended at python-daemon's first fork
    if word is None:
        log.critical("nerved exited during start-up without saying why; see %s", log_path)
        return EX_SOFTWARE
    code, message = word
    if code != EX_OK:
        log.critical("%s", message)
    return code


def _serve(
    options: Options, prepared: Prepared, log_file: TextIO, ready_fd: int, level: str
) -> int:
    """In the forked child: detach, then be the daemon; its exit code."""
    readiness = _Readiness(ready_fd)
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        files_preserve=[*prepared.fds(), ready_fd],
        stdout=log_file,
        stderr=log_file,
        signal_map={},  # nerved.early's, then the master's loop's
        detach_process=True,
    )
    try:
        context.open()
    except Exception as exc:
        readiness(EX_SOFTWARE, f"cannot detach: {exc}")
        return EX_SOFTWARE
    logs.setup(level, sys.stderr)
    return Daemon(options, prepared, readiness).run()


def _wait_for_word(fd: int) -> tuple[int, str] | None:
    """What the daemon wrote before closing its end: (0, summary) or (exit code, reason).

    None when it closed the pipe (by dying) without writing.
    """
    data = b""
    while chunk := os.read(fd, MAX_WORD):
        data += chunk
    os.close(fd)
    head, _, message = data.decode(errors="replace").partition("\n")
    return (int(head), message) if head.isdigit() else None
