"""The PostgreSQL store's URL (``--store``, ``store:``): one libpq cannot read, or one it
refuses, stops the start at once, and never shows its password (attack review, issue 15)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pg_support import pg_unavailable

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

from nerved.store import StoreError
from nerved.store.postgres.connection import connect
from nerved.store.postgres.store import PgStore

SECRET = "s3cr3t"


def opened(url: str, waited: list[str], timeout: float = 10.0) -> Any:
    """What PgStore(url) ends with (the store, or the exception), or "still waiting"."""
    result: list[Any] = []

    def open_it() -> None:
        try:
            result.append(PgStore(url, on_wait=waited.append))
        except StoreError as exc:
            result.append(exc)

    thread = threading.Thread(target=open_it, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else "still waiting"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}%zz@localhost/db",  # a bad percent-escape: libpq quotes it
        f"postgresql://u:{SECRET}@[::1/db",  # libpq quotes the whole URI
        f"host=localhost password={SECRET} junk",
        f"host=localhost password='{SECRET}",
        f"postgresql://u:{SECRET}@localhost/db?nosuch=1",
        f"postgresql://u:{SECRET}@localhost:99999/db",  # a port libpq refuses
    ],
)
def test_an_unusable_url_is_refused_at_once_without_its_password(caplog, url: str) -> None:
    waited: list[str] = []
    outcome = opened(url, waited)
    assert isinstance(outcome, StoreError), outcome
    shown = " ".join([str(outcome), *waited, caplog.text])
    assert SECRET not in shown


def test_a_missing_database_is_refused_at_once(pg_cluster) -> None:
    outcome = opened(pg_cluster.dsn("no_such_database") + f" password={SECRET}", [])
    assert isinstance(outcome, StoreError) and "does not exist" in str(outcome)
    assert SECRET not in str(outcome)


def test_the_urls_own_options_are_kept_with_the_bounds(pg_dsn: str) -> None:
    conn = connect(f"{pg_dsn} options='-c search_path=elsewhere'", autocommit=True)
    try:
        assert conn.execute("SHOW search_path").fetchone()[0] == "elsewhere"
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "4s"
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "3s"
    finally:
        conn.close()


def test_waiting_for_the_database_names_it_once(caplog) -> None:
    waited: list[str] = []
    assert opened("host=/nonexistent/dir port=5432 dbname=x", waited, timeout=3) == (
        "still waiting"
    )
    assert len(waited) == 1
    assert waited[0].count("postgresql://") == 1, waited[0]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("host=/run/postgresql port=5433 dbname=nerve user=n password=x",
         "postgresql://n@/nerve?host=/run/postgresql&port=5433"),
        ("postgresql:///nerve?host=/run/postgresql", "postgresql:///nerve?host=/run/postgresql"),
        ("postgresql://n:x@db.example:6432/nerve", "postgresql://n@db.example:6432/nerve"),
        ("dbname=nerve", "postgresql://localhost/nerve"),
    ],
)  # fmt: skip
def test_the_database_is_named_as_libpq_spells_it_without_the_password(url, shown) -> None:
    """A Unix socket's directory is a ``host`` query parameter (libpq's URI form), not a host
    name with a path in it (``postgres@/tmp/x:5432/db`` read as a path)."""
    from nerved.store.postgres.connection import display  # psycopg: after the skip

    assert display(url) == shown
