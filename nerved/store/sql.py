"""What the queries need of a connection: the shape both backends' wrappers give it.

The queries (:mod:`nerved.store.reads`, :mod:`nerved.store.writes`) are written once, in
SQLite's spelling with ``?`` parameters, over a :class:`Connection`: SQLite's wrapper
(:mod:`nerved.store.connection`) runs them as they are, PostgreSQL's
(:mod:`nerved.store.postgres.connection`) translates the few places where the two differ.
Every error of either is a :class:`~nerved.store.errors.StoreError` naming the store.

A leaf: it imports neither driver, so the queries import no driver either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from nerved.store.errors import StoreError

W = TypeVar("W")  # where the store is: what its errors name


class Cursor(Protocol):
    """The rows of one statement."""

    @property
    def rowcount(self) -> int:
        """Rows an UPDATE or DELETE changed."""
        ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection to the store's database."""

    reads_ahead: bool
    """The driver reads a statement's whole result before its first row (psycopg; not
    sqlite3): a page of large entries is read by their sizes first (nerved.store.reads)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def close(self) -> None: ...


class Rows(Generic[W]):
    """A driver's cursor (sqlite3's, psycopg's) whose errors, even half-way through its rows,
    are StoreErrors: ``errors`` are the driver's, ``convert(where, exc)`` makes one."""

    __slots__ = ("_convert", "_cursor", "_errors", "_where")

    def __init__(
        self,
        cursor: Any,
        errors: type[Exception],
        convert: Callable[[W, Any], StoreError],
        where: W,
    ) -> None:
        self._cursor = cursor
        self._errors = errors
        self._convert = convert
        self._where = where

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except self._errors as exc:
            raise self._convert(self._where, exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            rows: list[Any] = self._cursor.fetchall()
            return rows
        except self._errors as exc:
            raise self._convert(self._where, exc) from exc

    def close(self) -> None:
        with contextlib.suppress(self._errors):
            self._cursor.close()

    def __iter__(self) -> Iterator[Any]:
        rows = iter(self._cursor)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except self._errors as exc:
                raise self._convert(self._where, exc) from exc
            yield row
