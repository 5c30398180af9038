"""The shared queue of ``placement: any`` runs, and takeover (issue 15; SPEC v2 §9).

A run of an ``any`` workflow is triggered ``queued`` with no host; any host that serves the
workflow *claims* it: moves it to ``started`` with its own host id, in its batch (:func:`claim`;
its worker hears of the run once that batch is committed, as for any run). The rules that hold
across all hosts, and how:

- **concurrency**: a claim takes the workflow's queue lock (a transaction-level advisory lock
  keyed by the workflow's name, :data:`QUEUE_LOCK`), counts the workflow's ``started`` and
  ``waiting`` runs of every host, and claims at most the slots left. The lock is held to the
  batch's commit, so two claims of one workflow never overlap and the count is never stale.
  It is only *tried* (``pg_try_advisory_xact_lock``): a host that finds it taken claims again
  soon, and no batch ever waits for another's (two batches each holding one workflow's lock
  and waiting for the other's would deadlock).
- **FIFO**: the oldest queued runs first (``seq``, the database's own sequence: hosts' clocks
  differ), ``FOR UPDATE SKIP LOCKED`` as Procrastinate and Hatchet claim, so that a row some
  other transaction holds (a cancel) is passed over, not waited for.
- **sharing**: a host takes at most its share of the slots, ``ceil(concurrency / n)`` for the
  ``n`` live hosts serving the workflow (``hosts.serves``, renewed with each lease), so that
  the runs spread over the hosts rather than going to whichever frees a slot first.
- **takeover**: when a host's lease lapses, a live host serving the workflows of its started
  and waiting ``any`` runs takes them (:func:`take_over`), in its batch: it moves the lapsed
  host's epoch on (which fences it: :data:`nerved.store.postgres.leases.HELD`) and makes
  those runs its own, each with a ``taken`` entry; it then resumes them from their logged
  events, as after a worker's crash.

A host's batch locks its own row FOR SHARE at its first write (its fence) and holds it to the
commit; a takeover locks the lapsed host's row first (``SKIP LOCKED``: a row held is a batch
of that host's being committed, looked at again later), then its runs, in that same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from nerved.store.postgres.connection import Connection
from nerved.store.records import dumps, now_ms

QUEUE_LOCK: Final = 0x6E657271  # "nerq": the class of pg_advisory_xact_lock(class, hashtext(W))
LIVE_COUNTS: Final = "status IN ('started', 'waiting')"  # what holds a slot


def may_claim(reader: Connection, workflow: str, concurrency: int) -> bool:
    """Whether a claim of ``workflow`` may find something (a queued run, a free slot), by
    the committed view: a claim that would find nothing costs no transaction (its fence
    would lock a row: a commit, and a WAL flush, for nothing)."""
    row = reader.execute(
        "SELECT EXISTS (SELECT 1 FROM workflow_runs WHERE workflow = ? AND placement = 'any'"
        "  AND status = 'queued'),"
        " (SELECT count(*) FROM workflow_runs WHERE workflow = ? AND placement = 'any'"
        f"  AND {LIVE_COUNTS})",
        (workflow, workflow),
    ).fetchone()
    return bool(row[0]) and int(row[1]) < concurrency


def counts(reader: Connection, workflow: str) -> tuple[int, int]:
    """(holding a slot, queued) runs of the ``any`` workflow ``workflow`` over every host,
    as committed: what admission weighs a new run against."""
    row = reader.execute(
        f"SELECT count(*) FILTER (WHERE {LIVE_COUNTS}),"
        " count(*) FILTER (WHERE status = 'queued')"
        " FROM workflow_runs WHERE workflow = ? AND placement = 'any'"
        " AND status IN ('queued', 'started', 'waiting')",
        (workflow,),
    ).fetchone()
    return int(row[0]), int(row[1])


def oldest_queued(conn: Connection, workflow: str) -> str | None:
    """The oldest queued run of the ``any`` workflow (the one an ``evict`` drops), locked
    in the caller's transaction; None: none that no one else holds."""
    row = conn.execute(
        "SELECT run_id FROM workflow_runs WHERE workflow = ? AND placement = 'any'"
        " AND status = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        (workflow,),
    ).fetchone()
    return None if row is None else str(row[0])


def claim(conn: Connection, host_id: str, workflow: str, concurrency: int) -> list[str] | None:
    """Claim, in the caller's batch, the oldest queued runs of ``workflow`` that its free
    slots and this host's share allow (see the module's doc); their ids, oldest first, or
    None when another host holds the workflow's queue lock (it is claiming: try again
    soon). Each moves to ``started`` with this host, logged as a dispatch is (``started``,
    the trigger payload)."""
    locked = conn.execute(
        "SELECT pg_try_advisory_xact_lock(?, hashtext(?))", (QUEUE_LOCK, workflow)
    ).fetchone()
    if not locked[0]:
        return None
    total, mine, serving = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE host = ?),"
        "  (SELECT count(*) FROM hosts WHERE lease_until > nerve_now_ms() AND ? = ANY(serves))"
        f" FROM workflow_runs WHERE workflow = ? AND placement = 'any' AND {LIVE_COUNTS}",
        (host_id, workflow, workflow),
    ).fetchone()
    share = -(-concurrency // max(1, int(serving)))
    free = min(concurrency - int(total), share - int(mine))
    if free <= 0:
        return []
    ts = now_ms()
    rows = conn.execute(
        "UPDATE workflow_runs SET status = 'started', host = ?, updated_at = ?"
        " WHERE run_id IN (SELECT run_id FROM workflow_runs WHERE workflow = ?"
        "  AND placement = 'any' AND status = 'queued' ORDER BY seq LIMIT ?"
        "  FOR UPDATE SKIP LOCKED)"
        " RETURNING run_id, seq, trigger_payload",
        (host_id, ts, workflow, free),
    ).fetchall()
    rows.sort(key=lambda row: row[1])
    for run_id, _, payload in rows:
        conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts)"
            " VALUES ('workflow', 'started', ?, ?, ?)",
            (run_id, payload, ts),
        )
    return [str(row[0]) for row in rows]


def lapsed(reader: Connection, host_id: str, serves: Sequence[str]) -> list[str]:
    """The hosts whose lease lapsed that left started or waiting ``any`` runs of the
    workflows this host serves, by the committed view."""
    if not serves:
        return []
    rows = reader.execute(
        "SELECT host_id FROM hosts WHERE lease_until <= nerve_now_ms() AND host_id <> ?"
        " AND EXISTS (SELECT 1 FROM workflow_runs WHERE host = hosts.host_id"
        f"  AND placement = 'any' AND {LIVE_COUNTS} AND workflow = ANY(?))"
        " ORDER BY host_id",
        (host_id, list(serves)),
    ).fetchall()
    return [str(row[0]) for row in rows]


def take_over(conn: Connection, host_id: str, lapsed_host: str, serves: Sequence[str]) -> list[str]:
    """Take over, in the caller's batch, ``lapsed_host``'s started and waiting ``any`` runs
    of the workflows in ``serves``: its epoch moves on (so that, should it come back, it
    writes nothing more: every batch of its fails its fence), and each run is this host's,
    with a ``taken`` entry ``{"from": H, "by": H}``. Their ids, oldest first; none when its
    lease is live again (it came back first), or its row is held (its last batch is being
    committed, or another host is taking it over: looked at again later)."""
    held = conn.execute(
        "SELECT 1 FROM hosts WHERE host_id = ? AND lease_until <= nerve_now_ms()"
        " FOR UPDATE SKIP LOCKED",
        (lapsed_host,),
    ).fetchone()
    if held is None:
        return []
    conn.execute("UPDATE hosts SET epoch = epoch + 1 WHERE host_id = ?", (lapsed_host,))
    ts = now_ms()
    rows = conn.execute(
        "UPDATE workflow_runs SET host = ?, updated_at = ? WHERE host = ?"
        f" AND placement = 'any' AND {LIVE_COUNTS} AND workflow = ANY(?)"
        " RETURNING run_id, seq",
        (host_id, ts, lapsed_host, list(serves)),
    ).fetchall()
    rows.sort(key=lambda row: row[1])
    note = dumps({"from": lapsed_host, "by": host_id})
    for run_id, _ in rows:
        conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts)"
            " VALUES ('workflow', 'taken', ?, ?, ?)",
            (run_id, note, ts),
        )
    return [str(row[0]) for row in rows]
