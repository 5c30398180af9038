"""The shared queue of ``placement: any`` runs, and takeover (issue 15; SPEC v2 §9).

A run of an ``any`` workflow is triggered ``queued`` with no host; any host that serves the
workflow *claims* it: moves it to ``started`` with its own host id, in its batch (:func:`claim`;
its worker hears of the run once that batch is committed, as for any run). The rules that hold
across all hosts, and how:

- **concurrency**: a claim counts the workflow's ``started`` and ``waiting`` runs of every
  host and claims at most the slots left, in a batch that holds the hosts' write lock
  (nerved.store.postgres.store): no other host's claim, or end of a run, comes between the
  count and the claim, so the count is never stale.
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

from collections.abc import Mapping, Sequence
from typing import Final

from nerved.store.postgres.connection import Connection
from nerved.store.records import QueueCounts, dumps, now_ms

LIVE_COUNTS: Final = "status IN ('started', 'waiting')"  # what holds a slot


def orphans(reader: Connection, workflows: Sequence[str]) -> list[str]:
    """Those of ``workflows`` with queued ``any`` runs that no live host serves as ``any``,
    by the committed view."""
    if not workflows:
        return []
    rows = reader.execute(
        "SELECT DISTINCT workflow FROM workflow_runs WHERE placement = 'any'"
        " AND status = 'queued' AND workflow = ANY(?) AND NOT EXISTS (SELECT 1 FROM hosts"
        "  WHERE lease_until > nerve_now_ms() AND workflow_runs.workflow = ANY(serves))"
        " ORDER BY workflow",
        (list(workflows),),
    ).fetchall()
    return [str(row[0]) for row in rows]


def claimable(reader: Connection, wanted: Mapping[str, int]) -> list[str]:
    """Those of the ``any`` workflows ``wanted`` (name: concurrency) that a claim may find
    something of (a queued run, a free slot), by the committed view, in one query however
    many there are: a claim that would find nothing costs no transaction (its fence would
    lock a row: a commit, and a WAL flush, for nothing), and a host's idle looks at its
    queues one read a look."""
    if not wanted:
        return []
    rows = reader.execute(
        "SELECT w.name FROM unnest(?::text[], ?::int[]) AS w(name, conc)"
        " WHERE EXISTS (SELECT 1 FROM workflow_runs WHERE workflow = w.name"
        "  AND placement = 'any' AND status = 'queued')"
        " AND (SELECT count(*) FROM workflow_runs WHERE workflow = w.name"
        f"  AND placement = 'any' AND {LIVE_COUNTS}) < w.conc ORDER BY w.name",
        (list(wanted), list(wanted.values())),
    ).fetchall()
    return [str(row[0]) for row in rows]


def counts(
    conn: Connection, host_id: str, workflow: str, concurrency: int, max_queue: int
) -> QueueCounts:
    """The runs of the ``any`` workflow that admission weighs a new one against, read in the
    caller's batch (which holds the hosts' write lock: exact, this turn's triggers included),
    each count capped where admission compares it with no more: a few index entries,
    however long the queue has grown."""
    live = f"workflow = ? AND placement = 'any' AND {LIVE_COUNTS}"
    row = conn.execute(
        f"SELECT (SELECT count(*) FROM (SELECT 1 FROM workflow_runs WHERE {live} LIMIT ?) a),"
        f" (SELECT count(*) FROM (SELECT 1 FROM workflow_runs WHERE {live} AND host = ?"
        "   LIMIT ?) m),"
        " (SELECT count(*) FROM (SELECT 1 FROM workflow_runs WHERE workflow = ?"
        "   AND placement = 'any' AND status = 'queued' LIMIT ?) q),"
        " (SELECT count(*) FROM hosts WHERE lease_until > nerve_now_ms() AND ? = ANY(serves))",
        (workflow, concurrency, workflow, host_id, concurrency, workflow, max_queue, workflow),
    ).fetchone()
    share = -(-concurrency // max(1, int(row[3])))
    return QueueCounts(int(row[0]), int(row[1]), int(row[2]), share)


def oldest_queued(conn: Connection, workflow: str) -> str | None:
    """The oldest queued run of the ``any`` workflow (the one an ``evict`` drops), locked
    in the caller's transaction; None: none that no one else holds."""
    row = conn.execute(
        "SELECT run_id FROM workflow_runs WHERE workflow = ? AND placement = 'any'"
        " AND status = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        (workflow,),
    ).fetchone()
    return None if row is None else str(row[0])


def claim(conn: Connection, host_id: str, workflow: str, concurrency: int) -> list[str]:
    """Claim, in the caller's batch, the oldest queued runs of ``workflow`` that its free
    slots and this host's share allow (see the module's doc), in one statement; their ids,
    oldest first. Each moves to ``started`` with this host, logged as a dispatch is
    (``started``, the trigger payload). The batch holds the hosts' write lock: no other
    host's claim or end of a run comes between the count and the claim."""
    ts = now_ms()
    rows = conn.execute(
        "WITH counted AS ("
        "  SELECT count(*) AS total, count(*) FILTER (WHERE host = ?) AS mine,"
        "   (SELECT count(*) FROM hosts WHERE lease_until > nerve_now_ms()"
        "    AND ? = ANY(serves)) AS serving"
        f"  FROM workflow_runs WHERE workflow = ? AND placement = 'any' AND {LIVE_COUNTS}),"
        " picked AS ("
        "  SELECT run_id FROM workflow_runs WHERE workflow = ? AND placement = 'any'"
        "  AND status = 'queued' ORDER BY seq"
        "  LIMIT (SELECT GREATEST(0, LEAST(? - total,"
        "   (? + GREATEST(serving, 1) - 1) / GREATEST(serving, 1) - mine)) FROM counted)"
        "  FOR UPDATE SKIP LOCKED),"
        " moved AS ("
        "  UPDATE workflow_runs SET status = 'started', host = ?, updated_at = ?"
        "  WHERE run_id IN (SELECT run_id FROM picked)"
        "  RETURNING run_id, seq, trigger_payload),"
        " logged AS ("
        "  INSERT INTO logs (source, type, ref_id, payload, ts)"
        "  SELECT 'workflow', 'started', run_id, trigger_payload, ? FROM moved ORDER BY seq)"
        " SELECT run_id FROM moved ORDER BY seq",
        (host_id, workflow, workflow, workflow, concurrency, concurrency, host_id, ts, ts),
    ).fetchall()
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


def fence_lapsed(conn: Connection, host: str) -> bool:
    """Move the epoch of ``host`` on, in the caller's batch, if its lease has lapsed (and no
    batch of its is being committed: its row held); whether it did. A host fenced so writes
    nothing more should it come back: another may then change its runs."""
    held = conn.execute(
        "SELECT 1 FROM hosts WHERE host_id = ? AND lease_until <= nerve_now_ms()"
        " FOR UPDATE SKIP LOCKED",
        (host,),
    ).fetchone()
    if held is None:
        return False
    conn.execute("UPDATE hosts SET epoch = epoch + 1 WHERE host_id = ?", (host,))
    return True


def take_over(conn: Connection, host_id: str, lapsed_host: str, serves: Sequence[str]) -> list[str]:
    """Take over, in the caller's batch, ``lapsed_host``'s started and waiting ``any`` runs
    of the workflows in ``serves``: its epoch moves on (so that, should it come back, it
    writes nothing more: every batch of its fails its fence), and each run is this host's,
    with a ``taken`` entry ``{"from": H, "by": H}``. Their ids, oldest first; none when its
    lease is live again (it came back first), or its row is held (its last batch is being
    committed, or another host is taking it over: looked at again later)."""
    if not fence_lapsed(conn, lapsed_host):
        return []
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
