"""A real, throwaway PostgreSQL server for the tests: :class:`PgCluster` and two fixtures.

    def test_something(pg_dsn: str) -> None:            # a fresh, empty database, dropped after
        with psycopg.connect(pg_dsn) as conn: ...

    def test_crash(pg_cluster: PgCluster) -> None:       # the server itself
        dsn = pg_cluster.create_database()
        ...
        pg_cluster.kill()      # SIGKILL: the postmaster and every backend at once
        pg_cluster.start()     # crash recovery replays the WAL; committed data is there

The fixtures are registered for the whole suite by ``pytest_plugins = ["pg_support"]`` in
tests/conftest.py: a test asks for them by name, and skips (saying why) where PostgreSQL
cannot be had. A module that imports psycopg at its top skips itself first, so that it
skips rather than fails to import where psycopg is missing::

    import pytest
    from pg_support import PgCluster, pg_unavailable

    if (_reason := pg_unavailable()) is not None:
        pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

    import psycopg

``pg_cluster`` is session-scoped: one cluster per pytest process, so under pytest-xdist each
worker has its own (its own temporary directory holding the data directory and the Unix
socket: nothing is shared between workers, no port, no lock). ``pg_dsn`` is function-scoped:
a database of its own per test, dropped with ``WITH (FORCE)`` afterwards, so that a connection
a test leaves open does not get in the way.

The cluster itself (:class:`PgCluster`: Debian's server, on a Unix socket only, trust
authentication, ``fsync = on``, run as the ``postgres`` user when run as root; the times
it takes) is bench/pgcluster.py's, where the benchmarks can use it without pytest; this
module re-exports it, so that the tests import it from here as before.

:func:`pg_unavailable` says why PostgreSQL cannot be had here (no binaries, no psycopg, run
as root with no ``postgres`` user); the fixtures skip with that reason.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# PgCluster itself is bench/pgcluster.py's (bench.pg runs one without pytest); the checkout's
# root is not on pytest's sys.path (tests/ is, and the editable install maps only nerved and
# nervectl), so it is put there for this import.
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.append(_REPO)

from bench.pgcluster import (  # noqa: E402
    SERVICE_USER,
    SUPERUSER,
    PgCluster,
    dbname_of,
    pg_bindir,
    pg_unavailable,
)

__all__ = [
    "SERVICE_USER",
    "SUPERUSER",
    "PgCluster",
    "dbname_of",
    "pg_bindir",
    "pg_cluster",
    "pg_dsn",
    "pg_unavailable",
]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """This pytest process's PostgreSQL cluster (under xdist, this worker's own); skips where
    PostgreSQL cannot be had. A test that stops or kills it must leave it running."""
    reason = pg_unavailable()
    if reason is not None:
        pytest.skip(f"PostgreSQL: {reason}")
    cluster = PgCluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database of this test's own on ``pg_cluster``: its libpq DSN."""
    if not pg_cluster.running:  # an earlier test stopped or killed it and failed meanwhile
        pg_cluster.start()
    dsn = pg_cluster.create_database()
    yield dsn
    if not pg_cluster.running:  # the test stopped or killed it and did not start it again
        pg_cluster.start()
    pg_cluster.drop_database(dbname_of(dsn))


def lapsed(dsn: str, host_id: str) -> bool:
    """Whether the host's lease has lapsed, by the database's clock (psycopg: a test that
    calls it skipped already where it is missing)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT lease_until <= nerve_now_ms() FROM hosts WHERE host_id = %s", (host_id,)
        ).fetchone()
    return bool(row and row[0])
