"""Hosts and their leases in a shared PostgreSQL store (issue 15; SPEC v2 §9).

Each nerved using the database is a *host*, named by its host id, with a row in ``hosts``:
its *lease* runs until ``lease_until`` and is renewed by the host while it runs
(nerved.master.leases); ``epoch`` grows each time a host takes its lease anew, so that what
a host writes for runs it drives can be fenced by the epoch it holds (a host that lost its
lease holds an old one). Times are those of the database's clock, never a host's.
"""

from __future__ import annotations

from collections.abc import Sequence

from nerved.store.errors import StoreError
from nerved.store.postgres.connection import Connection
from nerved.store.records import HostRecord

LEASE_LOCK = 0x6E657277  # pg_advisory_xact_lock's key while a host takes its lease
HELD = "host_id = ? AND epoch = ?"
"""The lease of (host id, epoch) is this host's still: not taken anew, nor over (either moves
the epoch on). A lease that lapsed is still held until another host takes the host's runs
over (nerved.store.postgres.queue.take_over), which it does in a transaction that locks the
host's row: a batch of the host's, which holds that row FOR SHARE from its first write to its
commit, is either committed before the takeover, or finds the epoch moved on and fails."""


def claim(
    conn: Connection, host_id: str, instance: str, pid: int, version: str, lease_ms: int
) -> int:
    """Take ``host_id``'s lease, a new epoch (1 for a host new to the database), in a
    transaction of its own; the epoch. A live lease this host id holds from the same
    ``instance`` (its state directory: this nerved, killed and started again) is taken over,
    and that epoch fenced; one from another instance (another machine with the same id) is
    not: StoreError, so that two nerved never take one host's lease in turns.

    Several hosts share the database, each with its own lease (SPEC v2 §9).
    """
    conn.execute("SELECT pg_advisory_xact_lock(?)", (LEASE_LOCK,))
    # FOR UPDATE: a batch of this host id's being committed (a nerved killed a moment ago,
    # whose last commit is under way) holds its row FOR SHARE, its fence, and is waited
    # for; its next one finds the epoch moved on, and fails.
    conn.execute("SELECT 1 FROM hosts WHERE host_id = ? FOR UPDATE", (host_id,))
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


def renew(conn: Connection, host_id: str, epoch: int, lease_ms: int, serves: Sequence[str]) -> bool:
    """Extend the lease of ``host_id`` at ``epoch`` (in the open batch), and say which
    ``any`` workflows it ``serves`` now (its share of their slots: nerved.store.postgres.
    queue); False if it is not that host's at that epoch any more (taken anew by another
    nerved, or its runs taken over: :data:`HELD`): this one must stop."""
    cur = conn.execute(
        "UPDATE hosts SET lease_until = nerve_now_ms() + ?, renewed_at = nerve_now_ms(),"
        f" serves = ? WHERE {HELD}",
        (lease_ms, sorted(serves), host_id, epoch),
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
