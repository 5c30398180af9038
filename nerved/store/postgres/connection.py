"""The psycopg connections: opened with bounds on every statement, errors made StoreErrors.

The only module of the PostgreSQL backend that imports psycopg. Each connection is
opened with the bounds the master's loop needs: the loop is single-threaded, so a
statement that waited for a lock, or for a database that no longer answers, would hold
everything the daemon does (SPEC v2 §9; issue 15: "a slow or unreachable database must not
stall the loop past the watchdog"):

- ``connect_timeout`` (:data:`CONNECT_TIMEOUT`) to open it;
- ``statement_timeout`` (:data:`STATEMENT_TIMEOUT_MS`) and ``lock_timeout``
  (:data:`LOCK_TIMEOUT_MS`) on every statement;
- ``idle_in_transaction_session_timeout`` (:data:`IDLE_IN_TRANSACTION_MS`): a nerved that
  stops between two statements of its batch (SIGSTOP, a paused VM) holds the locks of that
  batch, the hosts' write lock among them (nerved.store.postgres.store); the server ends its
  session after this long, so that the other hosts wait for it that long at most (less than
  :data:`LOCK_TIMEOUT_MS`: they wait, not fail). Its batch is lost, never acknowledged; it
  finds its connection gone when it goes on, and restarts. A master's batch lasts one loop
  turn, milliseconds; between turns its connections hold no transaction;
- TCP keepalives and ``tcp_user_timeout`` (5 s), so that a peer gone silent is noticed
  within seconds, not after the kernel's retransmissions (minutes): well within a lease
  (nerved.master.leases.SELF_FENCE);

A statement that meets any of them fails with a StoreError, as an I/O error of SQLite does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from nerved.store.errors import StoreError
from nerved.store.postgres.dialect import translate
from nerved.store.sql import Rows

CONNECT_TIMEOUT: Final = 5  # seconds (libpq counts whole seconds, at least 2)
STATEMENT_TIMEOUT_MS: Final = 5_000
LOCK_TIMEOUT_MS: Final = 4_000
IDLE_IN_TRANSACTION_MS: Final = 3_000
NUL: Final = "\x00"
NUL_STAND_IN: Final = "\ufffd"
"""PostgreSQL's text cannot hold a NUL character, SQLite's can: in a parameter it becomes
U+FFFD (the replacement character), in reads and writes alike, so that a role's error text
with one in it is stored (not a failed batch: the daemon would stop, and the run fail again
at each restart), and a client's run id, prefix or key with one in it matches what it
would have matched when written (never a stored text with a NUL: there is none). Payloads
are JSON, where a NUL is the escape ``\\u0000``: they never need it."""
_SOCKET_OPTIONS: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5_000,
}


class Refused(StoreError):
    """What a retry cannot mend: a connection string libpq cannot read, a refused login, a
    database or role that does not exist. Raised by :func:`connect` (a start stops at once
    rather than wait for it forever)."""


UNREADABLE: Final = "postgresql (an unreadable URL)"

# libpq's words for a connection that a retry will not make (others: the server is not up
# yet, a network down: worth waiting for).
_FINAL: Final = (
    "authentication failed",  # password, peer, ident, scram...
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",  # the database, the role
    "connection is bad: invalid",  # an option libpq reads but refuses: a port, an sslmode
)


def parse(url: str) -> dict[str, str]:
    """``url``'s parameters; Refused, showing none of it (libpq's message quotes the token
    it could not read, a password as well as any), for one libpq cannot read."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise Refused(
            f"{UNREADABLE}: not a libpq connection string or postgresql:// URI"
            " (not shown: it may hold a password)"
        ) from None
    return {key: str(value) for key, value in info.items() if value is not None}


def display(url: str) -> str:
    """``url`` without its password, for messages and the journal."""
    try:
        info = parse(url)
    except Refused:
        return UNREADABLE
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    dbname = info.get("dbname") or ""
    if host.startswith("/"):  # a Unix socket's directory: as libpq's URIs spell it
        query = f"?host={host}" + (f"&port={info['port']}" if info.get("port") else "")
        return f"postgresql://{user}/{dbname}{query}"
    return f"postgresql://{user}{host}{port}/{dbname}"


def without_nul(params: Sequence[Any]) -> Sequence[Any]:
    """``params`` with each NUL of a text made :data:`NUL_STAND_IN` (see there)."""
    if not any(type(p) is str and NUL in p for p in params):
        return params
    return [p.replace(NUL, NUL_STAND_IN) if type(p) is str else p for p in params]


def store_error(where: str, exc: psycopg.Error) -> StoreError:
    """One line: what PostgreSQL (or libpq) said, naming the store."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"{where}: {text}")


class Connection:
    """One psycopg connection running nerve's queries (:func:`translate`), every error a
    StoreError. ``autocommit``: each statement its own transaction (the committed view);
    else a transaction is open from the first statement to :meth:`commit`."""

    __slots__ = ("_conn", "where")

    reads_ahead = True
    """psycopg reads a statement's whole result before its first row: a page of large
    entries is read by their sizes first (nerved.store.reads._sized_page)."""

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
    """A connection to ``url`` with the bounds above; Refused for what a retry cannot mend
    (see :data:`_FINAL`), else StoreError if it cannot be made. The bounds come after the
    ``options`` that ``url`` (or ``$PGOPTIONS``) gives: theirs, a ``search_path`` say, stay."""
    info = parse(url)
    where = display(url)
    given = info.get("options", os.environ.get("PGOPTIONS", ""))
    ours = (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
        f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    )
    options = f"{given} {ours}".strip()
    try:
        conninfo = psycopg.conninfo.make_conninfo(
            url, connect_timeout=CONNECT_TIMEOUT, options=options,
            application_name=application_name, **_SOCKET_OPTIONS,
        )  # fmt: skip
        conn = psycopg.connect(conninfo, autocommit=autocommit)
    except psycopg.Error as exc:
        error = store_error(where, exc)
        if any(words in str(error) for words in _FINAL):
            raise Refused(str(error)) from exc
        raise error from exc
    return Connection(conn, where)
