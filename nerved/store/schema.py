"""logs.db's schema: its numbered migrations, applied in order at open.

``PRAGMA user_version`` is the number of the last migration applied; a file of a newer
release than this one is refused, never half-understood and overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from nerved.store.connection import Connection
from nerved.store.errors import StoreError

SCHEMA_VERSION: Final = 8

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the RFC-002 §6 tables, with what the engine needs to resume and explain a run.
    # Every index costs pages in each commit's fsync, so there are only the ones the hot
    # paths need: a run's history (ref_id), filters by source/type, the active runs.
    # Time (``since``) is found through ids, which grow with time; the rest of
    # workflow_runs is scanned newest first, which retention keeps short.
    """
    CREATE TABLE logs (
        id      INTEGER PRIMARY KEY,
        source  TEXT    NOT NULL,
        type    TEXT    NOT NULL,
        ref_id  TEXT,
        payload TEXT,
        ts      INTEGER NOT NULL
    );
    CREATE INDEX logs_ref_id      ON logs (ref_id, id);
    CREATE INDEX logs_source_type ON logs (source, type, id);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE workflow_runs (
        seq             INTEGER PRIMARY KEY,
        run_id          TEXT    NOT NULL UNIQUE,
        workflow        TEXT    NOT NULL,
        status          TEXT    NOT NULL CHECK (status IN
                          ('queued', 'started', 'completed', 'failed', 'crashed', 'dropped')),
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        trigger_payload TEXT,
        steps           INTEGER NOT NULL DEFAULT 0,
        error           TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        retry_of        TEXT
    );
    CREATE INDEX workflow_runs_active ON workflow_runs (seq)
        WHERE status IN ('queued', 'started');
    """,
    # 2 (issue 11): a run may be cancelled, and a role's failed tries are counted: `tries`,
    # the failed tries of the step in flight, and `retry_at`, when its next try is due (ms;
    # NULL: none pending). SQLite cannot alter a CHECK, so the table is rebuilt, every row
    # with its seq; 'waiting' is accepted already (issue 12), so that it needs no rebuild.
    # The partial index covers nerved.states.ACTIVE, in the order (sorted) in which the
    # queries spell it: SQLite uses a partial index only for a WHERE written the same way.
    """
    CREATE TABLE workflow_runs_2 (
        seq             INTEGER PRIMARY KEY,
        run_id          TEXT    NOT NULL UNIQUE,
        workflow        TEXT    NOT NULL,
        status          TEXT    NOT NULL CHECK (status IN
                          ('queued', 'started', 'waiting', 'completed', 'failed', 'crashed',
                           'dropped', 'cancelled')),
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        trigger_payload TEXT,
        steps           INTEGER NOT NULL DEFAULT 0,
        error           TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        retry_of        TEXT,
        tries           INTEGER NOT NULL DEFAULT 0,
        retry_at        INTEGER
    );
    INSERT INTO workflow_runs_2 (seq, run_id, workflow, status, created_at, updated_at,
                                 trigger_payload, steps, error, attempts, retry_of)
        SELECT seq, run_id, workflow, status, created_at, updated_at,
               trigger_payload, steps, error, attempts, retry_of
        FROM workflow_runs ORDER BY seq;
    DROP TABLE workflow_runs;
    ALTER TABLE workflow_runs_2 RENAME TO workflow_runs;
    CREATE INDEX workflow_runs_active ON workflow_runs (seq)
        WHERE status IN ('queued', 'started');
    """,
    # 3 (issue 12): a run may carry the idempotency key it was triggered with; a workflow's
    # kept runs have distinct keys (a trigger with a key some run has returns that run), and
    # a run pruned by retention frees its key. The rows of before have none (NULL).
    """
    ALTER TABLE workflow_runs ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX workflow_runs_key ON workflow_runs (workflow, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    """,
    # 4 (issue 12): a run may wait (status 'waiting', accepted since 2): for the signal
    # `wait_for` (NULL: a sleep) until `wake_at` (ms; NULL: no deadline), both NULL unless
    # waiting. A waiting run is active (nerved.states.ACTIVE), so the partial index that
    # recovery reads through covers it, spelled as reads.ACTIVE_SQL spells it.
    """
    ALTER TABLE workflow_runs ADD COLUMN wait_for TEXT;
    ALTER TABLE workflow_runs ADD COLUMN wake_at INTEGER;
    DROP INDEX workflow_runs_active;
    CREATE INDEX workflow_runs_active ON workflow_runs (seq)
        WHERE status IN ('queued', 'started', 'waiting');
    """,
    # 5 (issue 12, cron reflexes): the last firing of each cron reflex (``reflex``: its
    # identity, nerved.master.cron), for catchUp and the schedule's listing after a restart;
    # ``run_id``: the run it started, if any, whose status is its outcome (no foreign key:
    # retention prunes runs, and a firing keeps naming what it started).
    """
    CREATE TABLE cron_firings (
        reflex       TEXT    PRIMARY KEY,
        scheduled_at INTEGER NOT NULL,
        fired_at     INTEGER NOT NULL,
        run_id       TEXT,
        note         TEXT
    ) WITHOUT ROWID;
    """,
    # 6 (issue 14): the index of a ref's entries files them under the ref turned by 8
    # characters (nerved.store.refs.REF_KEY): a new run id then begins with its time, and
    # the entries of the runs active now share a few pages, not a page each per commit.
    # The expression is spelled as refs.REF_KEY spells it, or no query would use it.
    """
    CREATE INDEX logs_ref ON logs (substr(ref_id, 9) || substr(ref_id, 1, 8), id);
    DROP INDEX logs_ref_id;
    """,
    # 7 (issue 15): a run carries the host that drives it and its workflow's placement, as
    # a store several hosts share has them (nerved.store.postgres.schema, 5); in logs.db,
    # which one host holds, ``host`` stays NULL and ``placement`` 'local'.
    """
    ALTER TABLE workflow_runs ADD COLUMN host TEXT;
    ALTER TABLE workflow_runs ADD COLUMN placement TEXT NOT NULL DEFAULT 'local';
    """,
    # 8 (issue 15): a cron reflex's last firing is its host's (nerved.store.postgres.schema,
    # 6); in logs.db, which one host holds, ``host`` stays '' and ``reflex`` the key.
    """
    ALTER TABLE cron_firings ADD COLUMN host TEXT NOT NULL DEFAULT '';
    """,
)


def migrate(conn: Connection, path: Path) -> None:
    """Bring the file at ``path`` up to :data:`SCHEMA_VERSION`, one migration per transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}; this nerved knows up to "
            f"{SCHEMA_VERSION} (was it written by a newer release?)"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[number - 1]
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")


def user_version(conn: Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
