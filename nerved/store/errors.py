"""The store's errors: what a caller of any backend may have to handle."""

from __future__ import annotations


class StoreError(Exception):
    """logs.db cannot be opened, read or written: one line, naming the file and why."""


class StoreBusy(StoreError):
    """Another process holds logs.db's write lock (SQLITE_BUSY): try again later."""
