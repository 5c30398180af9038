"""The test tool PgCluster (tests/pg_support.py): a real PostgreSQL server, a fresh database
per test through psycopg, and a server that restarts and recovers from SIGKILL with its
committed data."""

from __future__ import annotations

import threading

import pytest
from pg_support import PgCluster, dbname_of, pg_unavailable

if (_reason := pg_unavailable()) is not None:  # the whole module, psycopg's import included
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

import psycopg


def test_a_commit_is_seen_by_another_connection(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as writer, psycopg.connect(pg_dsn) as reader:
        writer.execute("CREATE TABLE t (n integer PRIMARY KEY, body text NOT NULL)")
        writer.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        # Not yet committed: the other connection does not see the table.
        with pytest.raises(psycopg.errors.UndefinedTable):
            reader.execute("SELECT * FROM t")
        reader.rollback()
        writer.commit()
        rows = reader.execute("SELECT n, body FROM t ORDER BY n").fetchall()
        assert rows == [(1, "one"), (2, "two")]
        settings: dict[str, str] = dict(
            reader.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["fsync", "synchronous_commit", "listen_addresses", "max_connections"],),
            ).fetchall()
        )
    assert settings == {
        "fsync": "on",
        "synchronous_commit": "on",
        "listen_addresses": "",
        "max_connections": "100",
    }


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_has_a_fresh_empty_database(
    pg_cluster: PgCluster, pg_dsn: str, turn: int
) -> None:
    # The same table in both turns: a database left over from the other would hold it.
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert pg_cluster.psql(tables, dbname_of(pg_dsn)) == "0"
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE t (turn integer)")
        conn.execute("INSERT INTO t VALUES (%s)", (turn,))
    assert pg_cluster.psql("SELECT turn FROM t", dbname_of(pg_dsn)) == str(turn)
    # And a database made beside it is another one.
    other = pg_cluster.create_database()
    assert other != pg_dsn
    assert pg_cluster.psql(tables, dbname_of(other)) == "0"
    pg_cluster.drop_database(dbname_of(other))
    exists = f"SELECT count(*) FROM pg_database WHERE datname = '{dbname_of(other)}'"
    assert pg_cluster.psql(exists) == "0"


def test_a_database_is_dropped_with_its_sessions(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.create_database()
    left_open = psycopg.connect(dsn)  # as a test might leave one
    pg_cluster.drop_database(dbname_of(dsn))
    with pytest.raises(psycopg.OperationalError):
        left_open.execute("SELECT 1")
    left_open.close()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(dsn)


def test_restart_keeps_committed_data_and_ends_old_connections(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    before = psycopg.connect(pg_dsn, autocommit=True)
    before.execute("CREATE TABLE t (n integer)")
    before.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    old_pid = pg_cluster.pid
    pg_cluster.restart()
    assert pg_cluster.pid != old_pid
    with pytest.raises(psycopg.OperationalError):
        before.execute("SELECT 1")
    before.close()
    with psycopg.connect(pg_dsn) as after:
        assert after.execute("SELECT count(*), sum(n) FROM t").fetchone() == (1000, 500500)


def test_restart_while_clients_write(pg_cluster: PgCluster, pg_dsn: str) -> None:
    """Commits from several connections go on as the server restarts: each commit that
    returned is there afterwards, and each client sees its connection end with an
    OperationalError."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (writer integer, n integer, PRIMARY KEY (writer, n))")
    committed: dict[int, list[int]] = {w: [] for w in range(4)}
    errors: dict[int, BaseException] = {}
    under_way = {w: threading.Event() for w in committed}  # a writer has committed 20

    def write(writer: int) -> None:
        conn = psycopg.connect(pg_dsn, autocommit=True)
        try:
            for n in range(1_000_000):
                conn.execute("INSERT INTO t VALUES (%s, %s)", (writer, n))
                committed[writer].append(n)
                if n == 20:
                    under_way[writer].set()
        except psycopg.OperationalError as exc:
            errors[writer] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in committed]
    for thread in threads:
        thread.start()
    # Once every writer has committed a few, so that the restart lands among commits.
    for event in under_way.values():
        assert event.wait(timeout=60)
    pg_cluster.restart()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert sorted(errors) == sorted(committed)  # each writer's connection ended
    with psycopg.connect(pg_dsn) as conn:
        for writer, ns in committed.items():
            rows = conn.execute("SELECT n FROM t WHERE writer = %s ORDER BY n", (writer,))
            there = [n for (n,) in rows.fetchall()]
            # Every acknowledged commit is there; at most one more (its answer was lost).
            assert there[: len(ns)] == ns and len(there) - len(ns) in (0, 1)


def test_kill_then_start_recovers_committed_data(pg_cluster: PgCluster, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n integer)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 500)")
    pending = psycopg.connect(pg_dsn)  # a transaction open, never committed
    pending.execute("INSERT INTO t SELECT generate_series(501, 600)")
    backend = pending.info.backend_pid
    assert {pg_cluster.pid, backend} <= set(pg_cluster.processes())
    pg_cluster.kill()
    assert not pg_cluster.running
    assert pg_cluster.processes() == []  # the backends too, not only the postmaster
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError):
        pending.commit()
    pending.close()
    pg_cluster.start()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*), max(n) FROM t").fetchone() == (500, 500)
    # It went through crash recovery, not a clean start.
    assert "database system was interrupted" in pg_cluster.log_tail(50)
