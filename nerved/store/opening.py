"""Which backend a daemon's store is: logs.db, or the PostgreSQL database it was given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nerved.store.interface import Storage


def open_store(
    state_dir: Path, url: str | None, on_wait: Callable[[str], None] | None = None
) -> Storage:
    """logs.db in ``state_dir`` (``url`` None), or the PostgreSQL database at ``url``
    (``--store``, nerve.yaml's ``store:``; psycopg is imported only then). ``on_wait`` hears,
    once, why it waits (another process holds logs.db's lock; the database is not up yet).
    Raises StoreError."""
    if url is None:
        from nerved.store.sqlite import Store

        return Store(state_dir / "logs.db", on_wait=on_wait)
    from nerved.store.postgres.store import PgStore

    return PgStore(url, on_wait=on_wait)
