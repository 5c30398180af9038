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
    conn: Connection,
    host_id: str,
    instance: str,
    pid: int,
    version: str,
    lease_ms: int,
    site: str = "",
) -> int:
    """Take ``host_id``'s lease, a new epoch (1 for a host new to the database), in a
    transaction of its own; the epoch. Several hosts share the database, each with its own
    lease (SPEC v2 §9).

    A live lease of this host id is taken over only from this nerved's own predecessor: the
    same ``instance`` (its state directory's token) at the same ``site`` (the machine's boot
    and the state directory itself: nerved's lock on it says the predecessor is gone). Else
    StoreError, taking nothing, so that two nerved never take one host's lease in turns:
    another state directory with this host id (machines cloned from one image share
    /etc/machine-id), a copy of this one (a machine cloned with nerved's state: the token,
    not the site), or this machine rebooted within the lease (it waits for it to lapse).

    A lapsed lease of another host id held from this state directory (this nerved, started
    again under a new ``--host-id``) is this host's past: its active runs and cron firings
    become this host's, and its row goes.
    """
    conn.execute("SELECT pg_advisory_xact_lock(?)", (LEASE_LOCK,))
    # FOR UPDATE: a batch of this host id's being committed (a nerved killed a moment ago,
    # whose last commit is under way) holds its row FOR SHARE, its fence, and is waited
    # for; its next one finds the epoch moved on, and fails.
    conn.execute("SELECT 1 FROM hosts WHERE host_id = ? FOR UPDATE", (host_id,))
    twin = conn.execute(
        "SELECT pid, nerve_now_ms() - renewed_at, instance = ? FROM hosts WHERE host_id = ?"
        " AND lease_until > nerve_now_ms() AND instance <> ''"
        " AND (instance <> ? OR (site <> '' AND site <> ?))",
        (instance, host_id, instance, site),
    ).fetchone()
    if twin is not None:
        conn.rollback()
        pid_, age, copy = twin
        where = (
            "a copy of this state directory (a machine cloned with nerved's state), or this"
            " machine before a reboot"
            if copy
            else "another state directory: machines cloned from one image share"
            " /etc/machine-id; give each its own --host-id or $NERVE_HOST_ID"
        )
        raise StoreError(
            f"{conn.where}: host id {host_id} is in use by another nerved (pid {pid_}, its"
            f" lease renewed {age / 1000:.1f}s ago, {where}); refused while its lease is live"
        )
    for (past,) in conn.execute(
        "SELECT host_id FROM hosts WHERE instance = ? AND instance <> '' AND host_id <> ?"
        " AND (lease_until <= nerve_now_ms() OR site = ?) FOR UPDATE",
        (instance, host_id, site),
    ).fetchall():
        _adopt(conn, past, host_id)
    row = conn.execute(
        "INSERT INTO hosts (host_id, epoch, lease_until, renewed_at, started_at, pid, version,"
        " instance, site) VALUES (?, 1, nerve_now_ms() + ?, nerve_now_ms(), nerve_now_ms(),"
        " ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET epoch = hosts.epoch + 1,"
        " lease_until = excluded.lease_until, renewed_at = excluded.renewed_at,"
        " started_at = excluded.started_at, pid = excluded.pid, version = excluded.version,"
        " instance = excluded.instance, site = excluded.site RETURNING epoch",
        (host_id, lease_ms, pid, version, instance, site),
    ).fetchone()
    conn.commit()
    return int(row[0])


def _adopt(conn: Connection, past: str, host_id: str) -> None:
    """The host ``past`` was this nerved under another host id: its active runs and cron
    firings are ``host_id``'s now, and its row goes (in the claim's transaction)."""
    conn.execute(
        "UPDATE workflow_runs SET host = ? WHERE host = ?"
        " AND status IN ('queued', 'started', 'waiting')",
        (host_id, past),
    )
    conn.execute(
        "DELETE FROM cron_firings WHERE host = ? AND reflex IN"
        " (SELECT reflex FROM cron_firings WHERE host = ?)",
        (past, host_id),
    )
    conn.execute("UPDATE cron_firings SET host = ? WHERE host = ?", (host_id, past))
    conn.execute("DELETE FROM hosts WHERE host_id = ?", (past,))


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


def hosts(conn: Connection) -> list[HostRecord]:
    """Every host that ever used the database, by host id."""
    rows = conn.execute(
        "SELECT host_id, epoch, lease_until, renewed_at, started_at, pid, version,"
        " nerve_now_ms() FROM hosts ORDER BY host_id"
    ).fetchall()
    return [HostRecord(*row) for row in rows]
