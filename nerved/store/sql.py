"""What the queries need of a connection: the shape both backends' wrappers give it.

The queries (:mod:`nerved.store.reads`, :mod:`nerved.store.writes`) are written once, in
SQLite's spelling with ``?`` parameters, over a :class:`Connection`: SQLite's wrapper
(:mod:`nerved.store.connection`) runs them as they are, PostgreSQL's
(:mod:`nerved.store.postgres.connection`) translates the few places where the two differ.
Every error of either is a :class:`~nerved.store.errors.StoreError` naming the store.

A leaf: it imports neither driver, so the queries import no driver either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


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

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def close(self) -> None: ...
