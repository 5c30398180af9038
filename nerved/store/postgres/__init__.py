"""The PostgreSQL backend of the store (issue 15; SPEC v2 §9): ``store: postgresql://…``.

:class:`~nerved.store.postgres.store.PgStore` satisfies :class:`nerved.store.Storage` as the
SQLite backend does, and passes the same contract (``tests/store/test_contract.py``). Its
queries are the SQLite backend's (:mod:`nerved.store.reads`, :mod:`nerved.store.writes`),
translated where the two spell things apart (:mod:`.dialect`); its schema has migrations of
its own (:mod:`.schema`). psycopg (3) is imported only when a PostgreSQL store is opened.
"""
