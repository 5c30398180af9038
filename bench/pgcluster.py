"""A real, throwaway PostgreSQL server: :class:`PgCluster`, for the tests and the benchmarks.

tests/pg_support.py makes fixtures of it (``pg_cluster``, ``pg_dsn``); :mod:`bench.pg` runs
workload W on one. It lives here rather than under tests/ so that a benchmark can use it
without pytest (this module imports nothing of pytest's).

    cluster = PgCluster()                  # initdb and start: about 1.3 s here
    dsn = cluster.create_database()        # a fresh, empty database: its libpq DSN
    ...
    cluster.kill()      # SIGKILL: the postmaster and every backend at once
    cluster.start()     # crash recovery replays the WAL; committed data is there
    cluster.destroy()   # stop, and delete the directory

Measured here (2 cores): initdb and start about 1.3 s; ``CREATE DATABASE`` 0.1 to 0.25 s
(it copies template0, 7 MB, through the WAL: 4 MB of it; no faster with fsync off); a DROP
15 ms, a restart 0.1 s.

The server is Debian's (``postgresql``, ``make test-deps`` installs it: the binaries under
/usr/lib/postgresql/<version>/bin, the newest taken; NERVE_TEST_PG_BINDIR names another
directory). It listens on a Unix socket only (``listen_addresses = ''``), with trust
authentication, as the superuser ``postgres``, and with ``fsync = on`` unless asked otherwise:
the durability of a commit is what the PostgreSQL store's tests are about, and what a
benchmark of it must pay. PostgreSQL refuses to run as root: run as root, the server runs as
the ``postgres`` system user the Debian package creates. The server is a child process of
the caller (not detached through ``pg_ctl``), in a session of its own: start() waits until
the postmaster says it is ready (the status line of postmaster.pid, as ``pg_ctl start -w``
reads it), stop() is PostgreSQL's fast shutdown (SIGINT) and waits for the process to end,
kill() is SIGKILL to the postmaster and every process it started, and waits until all are
gone (pidfds: no sleeps).

:func:`pg_unavailable` says why PostgreSQL cannot be had here (no binaries, no psycopg, run
as root with no ``postgres`` user).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"
"""The cluster's superuser (initdb -U), whoever runs the server."""

SERVICE_USER = "postgres"
"""The system user the server runs as when run as root (Debian's package makes it)."""

START_TIMEOUT = 60.0
"""Seconds start() waits for the server to be ready (about 0.1 s here; crash recovery longer)."""

STOP_TIMEOUT = 60.0
"""Seconds stop() waits for a fast shutdown (it checkpoints: fsyncs) before SIGKILL."""

_SOCKET_PATH_MAX = 107 - len("/.s.PGSQL.5432")
"""The longest socket directory a Unix socket path (sun_path, 108 bytes) leaves room for."""


def pg_bindir() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, postgres, psql), or None."""
    named = os.environ.get("NERVE_TEST_PG_BINDIR")
    if named:
        return Path(named)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    debian = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if (path / "initdb").is_file() and (path / "postgres").is_file()
    ]
    if debian:
        return max(debian, key=version)
    initdb = shutil.which("initdb")  # elsewhere (another distribution): on PATH
    return Path(initdb).parent if initdb else None


def pg_unavailable() -> str | None:
    """Why a PgCluster cannot run here, or None if it can (as far as can be seen unstarted)."""
    bindir = pg_bindir()
    if bindir is None:
        return "PostgreSQL's server is not installed (Debian: postgresql; `make test-deps`)"
    for tool in ("initdb", "postgres", "psql"):
        if not os.access(bindir / tool, os.X_OK):
            return f"{bindir / tool} is missing (Debian: postgresql; `make test-deps`)"
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:  # not installed, or its libpq will not load
        return f"the Python package psycopg cannot be imported (pip install -e '.[test]'): {exc}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return (
                f"run as root, and there is no {SERVICE_USER!r} user to run PostgreSQL as "
                "(it refuses root; Debian's postgresql package makes the user)"
            )
    return None


def _pidfd_wait(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` (not necessarily a child) has ended; False at the timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(fd)


def _processes_in(directory: Path) -> list[int]:
    """The live processes whose working directory is ``directory``: for a data directory,
    the postmaster and all its children (each chdirs there; they are in process groups of
    their own, so a group does not hold them; orphaned, their parent is not the postmaster)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):  # gone, or a zombie (no cwd): not live
                if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                    found.append(int(entry))
    return found


class PgCluster:
    """A throwaway PostgreSQL cluster in a temporary directory of its own.

    ``PgCluster()`` runs initdb and starts the server; :meth:`destroy` stops it and deletes
    the directory. ``fsync=False`` turns PostgreSQL's fsync off (faster commits; never for a
    test of durability).
    """

    def __init__(self, *, fsync: bool = True, bindir: Path | None = None) -> None:
        found = bindir or pg_bindir()
        if found is None:
            raise RuntimeError("PostgreSQL's binaries are not installed")
        self.bindir = found
        base = Path(tempfile.gettempdir())
        if len(str(base)) + len("/nerve-pg-XXXXXXXX") > _SOCKET_PATH_MAX:
            base = Path("/tmp")  # a long TMPDIR would not leave room for the socket's name
        self.base = Path(os.path.realpath(tempfile.mkdtemp(prefix="nerve-pg-", dir=base)))
        self.data = self.base / "data"
        self.socket_dir = self.base  # .s.PGSQL.5432 and its lock file
        self.log = self.base / "postgres.log"
        self.port = 5432  # names the socket file only: there is no TCP
        # Run as root, the server runs as SERVICE_USER (its primary group, no other).
        self._user: str | None = None
        self._group: int | None = None
        self._extra_groups: list[int] | None = None
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_USER)
            self._user, self._group, self._extra_groups = SERVICE_USER, account.pw_gid, []
        self._proc: subprocess.Popen[bytes] | None = None
        self._names = (f"t{os.getpid()}_{n}" for n in itertools.count(1))
        try:
            if self._user is not None:
                os.chown(self.base, pwd.getpwnam(self._user).pw_uid, self._group or 0)
            self._initdb(fsync)
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _initdb(self, fsync: bool) -> None:
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            cwd=self.base,
            env=self._env(),
            user=self._user,
            group=self._group,
            extra_groups=self._extra_groups,
        )
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "fsync": "on" if fsync else "off",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "shared_buffers": "16MB",
            "max_connections": "100",
            "huge_pages": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# bench/pgcluster.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        if self._user is not None:
            env["HOME"] = str(self.base)
        return env

    # -- the server's life ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        if self._proc is None:
            raise RuntimeError("the cluster is not running")
        return self._proc.pid

    def start(self) -> None:
        """Start the server on the data directory; return once it accepts connections."""
        if self.running:
            raise RuntimeError("the cluster is running already")
        self._wait_processes_gone()  # a killed server's backends must be gone: its shared memory
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=self._env(),
                start_new_session=True,
                user=self._user,
                group=self._group,
                extra_groups=self._extra_groups,
            )
        self._wait_ready(self._proc)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for postmaster.pid's status line to say ``ready`` (what pg_ctl -w waits for;
        the postmaster writes it once it accepts connections) for this postmaster."""
        pidfile = self.data / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited ({proc.returncode}) before it was ready: {self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                # pid, data dir, start time, port, socket dir, listen address, shmem key, status
                if len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready in {START_TIMEOUT} s: {self.log_tail()}")
            time.sleep(0.005)  # a poll of the readiness status, not a wait in place of one

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, a checkpoint written); waits for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"postgres did not shut down in {STOP_TIMEOUT} s: {self.log_tail()}"
            ) from None
        self._proc = None
        self._wait_processes_gone()

    def restart(self) -> None:
        """stop() then start() on the same data directory."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes at once (a crash: nothing is written
        or synced on the way out); waits until all are gone. start() then recovers.

        The postmaster is stopped (SIGSTOP) first, so that it forks no process while they
        are found and killed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            for pid in [proc.pid, *_processes_in(self.data)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
        self._proc = None
        self._wait_processes_gone()

    def processes(self) -> list[int]:
        """The live processes of this cluster: the postmaster and its children."""
        return _processes_in(self.data)

    def _wait_processes_gone(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait until no process of this cluster lives any more (the last server's backends
        hold its shared memory: a new postmaster refuses to start while they do)."""
        deadline = time.monotonic() + timeout
        while pids := _processes_in(self.data):
            for pid in pids:
                if not _pidfd_wait(pid, max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"PostgreSQL's process {pid} did not end in {timeout} s")

    def destroy(self) -> None:
        """Stop the server (or kill it if it will not stop) and delete its directory."""
        try:
            if self.running:
                try:
                    self.stop()
                except RuntimeError:
                    self.kill()
            else:
                self.kill()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The server's last log lines (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- databases --------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq conninfo for ``dbname`` over the Unix socket, as the superuser."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The same as :meth:`dsn` as a ``postgresql://`` URL: what a client that takes only
        URLs (SQLAlchemy's, hence DBOS's ``system_database_url``) is given."""
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh unique name unless given); return its DSN."""
        name = name or next(self._names)
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop the database, ending any session still connected to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` through psql; return its unaligned, tuples-only output (fields
        separated by ``|``), stripped. CalledProcessError if psql fails."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "--no-psqlrc",
                "--no-align",
                "--tuples-only",
                "--set",
                "ON_ERROR_STOP=1",
                "--dbname",
                self.dsn(dbname),
                "--command",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**self._env(), "PGCONNECT_TIMEOUT": "10"},
        )
        return done.stdout.strip()


def dbname_of(dsn: str) -> str:
    """The database a DSN of :meth:`PgCluster.dsn` names."""
    return dsn.rsplit("dbname=", 1)[1]
