"""``nerved --daemon``: running detached on hosts without systemd, through python-daemon.

python-daemon does the double fork, the session, the umask, the working directory and the
stdio redirection, and holds the pid file's lock for as long as the daemon lives. A pid file
left by a daemon that died is recognised (its pid no longer runs) and replaced. Log lines go
to ``<state>/nerved.log`` (stderr is pointed at it, so workers write there too).
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import replace
from pathlib import Path

import daemon
import daemon.pidfile

from nerved import logs
from nerved.daemon import EX_TEMPFAIL, Daemon, Options


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _clear_stale(pidfile: daemon.pidfile.TimeoutPIDLockFile) -> None:
    pid = pidfile.read_pid()
    if pid is not None and not _pid_alive(pid):
        pidfile.break_lock()


def run(options: Options, pidfile_path: str | None, log_level: str) -> int:
    options = replace(
        options,
        root=options.root.resolve(),
        state_dir=options.state_dir.resolve(),
        socket=options.socket.resolve(),
    )
    options.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = options.state_dir / "nerved.log"
    pidfile = None
    if pidfile_path:
        pidfile = daemon.pidfile.TimeoutPIDLockFile(str(Path(pidfile_path).resolve()), 0)
        _clear_stale(pidfile)
        if pidfile.is_locked():
            print(f"nerved: already running (pid file {pidfile_path})", file=sys.stderr)
            return EX_TEMPFAIL
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - handed to the daemon context
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        pidfile=pidfile,
        stdout=log_file,
        stderr=log_file,
        signal_map={},  # the master's loop handles its own signals
        detach_process=True,
    )
    with context:
        logs.setup(log_level, sys.stderr)
        return Daemon(options).run()
