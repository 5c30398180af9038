"""The psycopg connections: opened with bounds on every statement, errors made StoreErrors.

The only module of the PostgreSQL backend that imports psycopg. Each connection is
opened with the bounds the master's loop needs: the loop is single-threaded, so a
statement that waited for a lock, or for a database that no longer answers, would hold
everything the daemon does (SPEC v2 §9; issue 15: "a slow or unreachable database must not
stall the loop past the watchdog"):

- ``connect_timeout`` (:data:`CONNECT_TIMEOUT`) to open it;
- ``statement_timeout`` (:data:`STATEMENT_TIMEOUT_MS`) and ``lock_timeout``
  (:data:`LOCK_TIMEOUT_MS`) on every statement;
- TCP keepalives and ``tcp_user_timeout``, so that a peer gone silent is noticed within
  seconds, not after the kernel's retransmissions (minutes).

A statement that meets any of them fails with a StoreError, as an I/O error of SQLite does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from nerved.store.errors import StoreError
from nerved.store.postgres.dialect import translate
from nerved.store.sql import Rows

CONNECT_TIMEOUT: Final = 5  # seconds (libpq counts whole seconds, at least 2)
STATEMENT_TIMEOUT_MS: Final = 5_000
LOCK_TIMEOUT_MS: Final = 1_000
_SOCKET_OPTIONS: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def display(url: str) -> str:
    """``url`` without its password, for messages and the journal."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql (an unreadable URL)"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


def without_nul(params: Sequence[Any]) -> Sequence[Any]:
    """``params`` with each NUL of a text made U+FFFD: PostgreSQL's text cannot hold NUL,
    and a statement that carried one would fail, and with it the turn's batch. JSON is never
    concerned (its encoder escapes NUL as ``\\u0000``); free text can be (an exception's
    message kept as a run's error, a cancel's reason), and SQLite keeps it as it is."""
    if not any(isinstance(p, str) and "\x00" in p for p in params):
        return params
    return [p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params]


def store_error(where: str, exc: psycopg.Error) -> StoreError:
    """One line: what PostgreSQL (or libpq) said, naming the store."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"{where}: {text}")


class Connection:
    """One psycopg connection running nerve's queries (:func:`translate`), every error a
    StoreError. ``autocommit``: each statement its own transaction (the committed view);
    else a transaction is open from the first statement to :meth:`commit`."""

    __slots__ = ("_conn", "where")

    def __init__(self, conn: psycopg.Connection[Any], where: str) -> None:
        self._conn = conn
        self.where = where

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows[str]:
        try:
            cursor = self._conn.execute(translate(sql), without_nul(params), prepare=True)
            return Rows(cursor, psycopg.Error, store_error, self.where)
        except psycopg.Error as exc:
            raise store_error(self.where, exc) from exc

    def script(self, sql: str) -> None:
        """Run ``sql`` as it is (several statements, no parameters): the migrations."""
        try:
            self._conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise store_error(self.where, exc) from exc

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (a statement ran since the last commit or rollback)."""
        return self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        """The connection is gone (closed, or lost with the server)."""
        return self._conn.closed or self._conn.broken

    def commit(self) -> None:
        try:
            self._conn.commit()
        except psycopg.Error as exc:
            raise store_error(self.where, exc) from exc

    def rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()


def connect(url: str, *, autocommit: bool, application_name: str = "nerved") -> Connection:
    """A connection to ``url`` with the bounds above; StoreError if it cannot be made."""
    where = display(url)
    options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
    try:
        conninfo = psycopg.conninfo.make_conninfo(
            url, connect_timeout=CONNECT_TIMEOUT, options=options,
            application_name=application_name, **_SOCKET_OPTIONS,
        )  # fmt: skip
        conn = psycopg.connect(conninfo, autocommit=autocommit)
    except psycopg.Error as exc:
        raise store_error(where, exc) from exc
    return Connection(conn, where)
