"""logs.db: the store, the one part of nerve that speaks SQL.

Everything durable in nerve goes through here. The package is the interface and its SQLite
backend, one job per module:

- :mod:`~nerved.store.interface`: what the master needs from a store (:class:`Storage`,
  :class:`Reader`), the batch and ``after_commit`` rules any backend keeps;
- :mod:`~nerved.store.records`: what a store hands out (:class:`LogEntry`,
  :class:`RunRecord`, :class:`Unreadable`, :class:`Firing`) and their wire shapes;
- :mod:`~nerved.store.errors`: :class:`StoreError`, :class:`StoreBusy`;
- :mod:`~nerved.store.query`: what a logs query may ask (:class:`LogQuery`,
  :class:`BadQuery`), one definition for the socket's ``logs.query`` and ``ctx.logs.query``;
- the SQLite backend: :mod:`~nerved.store.connection` (the connect hook, every sqlite3
  error a StoreError), :mod:`~nerved.store.schema` (numbered migrations),
  :mod:`~nerved.store.reads`, :mod:`~nerved.store.writes` (guarded transitions) and
  :mod:`~nerved.store.sqlite` (:class:`Store`: logs.db opened, its write lock, the batch).

Only the backend imports sqlite3, and it is imported on first use of one of its names
(PEP 562's module ``__getattr__``): the user API, the workers and the control commands
import the records and the interface without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nerved.store.errors import StoreBusy, StoreError
from nerved.store.interface import AbortCallback, CommitCallback, Reader, Storage
from nerved.store.query import BadQuery, LogQuery
from nerved.store.records import (
    MAX_QUERY_LIMIT,
    ActiveRecord,
    Firing,
    LogEntry,
    RunRecord,
    StoredRun,
    Unreadable,
    dumps,
    now_ms,
)

if TYPE_CHECKING:
    from nerved.store.reads import Reads
    from nerved.store.schema import SCHEMA_VERSION
    from nerved.store.sqlite import Store

__all__ = [
    "MAX_QUERY_LIMIT",
    "SCHEMA_VERSION",
    "AbortCallback",
    "ActiveRecord",
    "BadQuery",
    "CommitCallback",
    "Firing",
    "LogEntry",
    "LogQuery",
    "Reader",
    "Reads",
    "RunRecord",
    "Storage",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoredRun",
    "Unreadable",
    "dumps",
    "now_ms",
]

_BACKEND = {
    "Reads": "nerved.store.reads",
    "SCHEMA_VERSION": "nerved.store.schema",
    "Store": "nerved.store.sqlite",
}

if not TYPE_CHECKING:  # hidden from type checkers, which would then take any name as valid
    from nerved._lazy import exports

    __getattr__, __dir__ = exports(globals(), _BACKEND, __all__)
