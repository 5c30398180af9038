"""Hosts and their leases in a shared PostgreSQL store (issue 15; SPEC v2 §9).

Each nerved using the database is a *host*, named by its host id, with a row in ``hosts``:
its *lease* runs until ``lease_until`` and is renewed by the host while it runs
(nerved.master.leases); ``epoch`` grows each time a host takes its lease anew, so that what
a host writes for runs it drives can be fenced by the epoch it holds (a host that lost its
lease holds an old one). Times are those of the database's clock, never a host's.
"""

from __future__ import annotations

from nerved.store.errors import StoreError
from nerved.store.postgres.connection import Connection
from nerved.store.records import HostRecord

LEASE_LOCK = 0x6E657277  # pg_advisory_xact_lock's key while a host takes its lease
HELD = (
    "host_id = ? AND epoch = ? AND (lease_until > nerve_now_ms() OR NOT EXISTS"
    " (SELECT 1 FROM hosts other WHERE other.host_id <> hosts.host_id"
    "  AND other.started_at >= hosts.lease_until))"
)
"""The lease of (host id, epoch) is this host's still: not taken over (a new epoch), and
live, or lapsed (the host was stalled: a long recovery, a stopped process) with no other
host started on the database since (which would have taken the database: one serves one
host for now)."""


def claim(
    conn: Connection, host_id: str, instance: str, pid: int, version: str, lease_ms: int
) -> int:
    """Take ``host_id``'s lease, a new epoch (1 for a host new to the database), in a
    transaction of its own; the epoch. A live lease this host id holds from the same
    ``instance`` (its state directory: this nerved, killed and started again) is taken over,
    and that epoch fenced; one from another instance (another machine with the same id) is
    not: StoreError, so that two nerved never take one host's lease in turns.

    StoreError, taking nothing, while another host's lease is live: until runs carry the
    host that drives them (placement, issue 15), two hosts on one database would each
    recover the other's runs, so one database serves one host at a time.
    """
    conn.execute("SELECT pg_advisory_xact_lock(?)", (LEASE_LOCK,))
    # FOR UPDATE: a batch of another host being committed holds its row (FOR SHARE, its
    # fence: nerved.store.postgres.store) and is waited for; its next one finds its lease
    # lapsed, or taken, and fails.
    live = [h for h in hosts(conn, lock=True) if h.live and h.host_id != host_id]
    if live:
        conn.rollback()
        other = live[0]
        raise StoreError(
            f"{conn.where}: host {other.host_id} (pid {other.pid}) holds a live lease on it,"
            f" renewed {(other.now - other.renewed_at) / 1000:.1f}s ago: one database serves"
            " one nerved host for now; stop that one, or give this one a database of its own"
        )
    twin = conn.execute(
        "SELECT pid, nerve_now_ms() - renewed_at FROM hosts WHERE host_id = ?"
        " AND lease_until > nerve_now_ms() AND instance <> '' AND instance <> ?",
        (host_id, instance),
    ).fetchone()
    if twin is not None:
        conn.rollback()
        raise StoreError(
            f"{conn.where}: host id {host_id} is in use by another nerved (pid {twin[0]}, its"
            f" lease renewed {twin[1] / 1000:.1f}s ago, another state directory): machines"
            " cloned from one image share /etc/machine-id; give each its own --host-id or"
            " $NERVE_HOST_ID"
        )
    row = conn.execute(
        "INSERT INTO hosts (host_id, epoch, lease_until, renewed_at, started_at, pid, version,"
        " instance) VALUES (?, 1, nerve_now_ms() + ?, nerve_now_ms(), nerve_now_ms(), ?, ?, ?)"
        " ON CONFLICT (host_id) DO UPDATE SET epoch = hosts.epoch + 1,"
        " lease_until = excluded.lease_until, renewed_at = excluded.renewed_at,"
        " started_at = excluded.started_at, pid = excluded.pid, version = excluded.version,"
        " instance = excluded.instance RETURNING epoch",
        (host_id, lease_ms, pid, version, instance),
    ).fetchone()
    conn.commit()
    return int(row[0])


def renew(conn: Connection, host_id: str, epoch: int, lease_ms: int) -> bool:
    """Extend the lease of ``host_id`` at ``epoch`` (in the open batch); False if it is not
    that host's at that epoch any more (taken over: this host is fenced), or if it lapsed
    and another host took the database meanwhile (:data:`HELD`): this one must stop."""
    cur = conn.execute(
        "UPDATE hosts SET lease_until = nerve_now_ms() + ?, renewed_at = nerve_now_ms()"
        f" WHERE {HELD}",
        (lease_ms, host_id, epoch),
    )
    return cur.rowcount == 1


def release(conn: Connection, host_id: str, epoch: int) -> None:
    """End the lease now (a clean stop), if it is still this epoch's; in the open batch."""
    conn.execute(
        "UPDATE hosts SET lease_until = nerve_now_ms() WHERE host_id = ? AND epoch = ?",
        (host_id, epoch),
    )


def hosts(conn: Connection, *, lock: bool = False) -> list[HostRecord]:
    """Every host that ever used the database, by host id (their rows locked FOR UPDATE to
    the end of the transaction with ``lock``)."""
    rows = conn.execute(
        "SELECT host_id, epoch, lease_until, renewed_at, started_at, pid, version,"
        f" nerve_now_ms() FROM hosts ORDER BY host_id{' FOR UPDATE' if lock else ''}"
    ).fetchall()
    return [HostRecord(*row) for row in rows]
