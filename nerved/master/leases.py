"""This host's lease on a store several hosts may share (PostgreSQL; issue 15, SPEC v2 §9).

At start, before recovery, the host takes its lease (a new epoch: nerved.store.postgres.
leases); it renews it :data:`RENEWALS` times a lease in the turn's batch while it runs, and
ends it at a clean stop. A renewal that finds the lease no longer this epoch's (another
nerved with the same host id took it, or another host took this one's runs over once it
lapsed) means another process drives this host's runs now: it
raises StoreError out of the loop, and the daemon stops at once (its storage-failure path:
exit 75), writing nothing more for them.
``status`` lists every host of the store with the age of its lease (:meth:`HostLease.view`).

With SQLite there is no lease (its write lock is one): :func:`take` returns None.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from nerved import _version, modes
from nerved.loop import Loop
from nerved.master.startup import Options
from nerved.store import Storage, StoreError
from nerved.store.interface import Leasing
from nerved.store.records import HostRecord

log = logging.getLogger(__name__)

LEASE_MS: Final = 10_000
"""How long a lease runs unless renewed: how long after a host's death others may take
over its work (issue 15). Renewed five times as often (:data:`RENEWALS`), so that a loop
turn or a commit slow by seconds does not lose it. ``$NERVE_LEASE_MS`` sets another
(:data:`LEASE_RANGE`): shorter, a dead host's ``any`` runs go on sooner elsewhere, and a
host stalled for longer (a paused VM, a slow disk) loses its lease and restarts."""
LEASE_RANGE: Final = (1_000, 600_000)
RENEWALS: Final = 5  # renewals per lease
SELF_FENCE: Final = 0.7
"""A host whose last renewal committed this share of a lease ago stops (exit 75, its
workers killed) rather than renew: another host may take its runs over once the lease
lapses, and the roles it runs must be gone by then. The master's loop or the database held
that long (each statement waits 5 s at most, a silent peer is given up after 5 s:
nerved.store.postgres.connection) is what it takes."""


def lease_ms(environ: Mapping[str, str] = os.environ) -> int:
    """The lease's length: ``$NERVE_LEASE_MS``, else :data:`LEASE_MS`; StoreError (the start
    fails: a configuration error) for a value that is not a whole number of ms in
    :data:`LEASE_RANGE`."""
    text = environ.get("NERVE_LEASE_MS", "").strip()
    if not text:
        return LEASE_MS
    low, high = LEASE_RANGE
    if not text.isdigit() or not low <= int(text) <= high:
        raise StoreError(f"$NERVE_LEASE_MS must be a whole number of ms, {low} to {high}: {text!r}")
    return int(text)


class HostLease:
    """The lease of ``host_id``, taken at ``epoch``."""

    def __init__(
        self,
        loop: Loop,
        store: Storage,
        leasing: Leasing,
        host_id: str,
        epoch: int,
        length_ms: int = LEASE_MS,
    ):
        self.loop = loop
        self.store = store
        self.leasing = leasing
        self.host_id = host_id
        self.epoch = epoch
        self.length_ms = length_ms
        self.serves: Callable[[], Sequence[str]] = tuple  # its ``any`` workflows
        self._hosts: list[HostRecord] = []  # read after each renewal's commit: view()
        self._read_at = time.monotonic()
        self._read_hosts()

    def _read_hosts(self) -> None:
        self._hosts, self._read_at = self.leasing.hosts(), time.monotonic()

    def start(self, serves: Callable[[], Sequence[str]]) -> None:
        """Renew from now on (once the daemon is ready), each renewal saying which ``any``
        workflows the host ``serves`` then (its share of their slots)."""
        self.serves = serves
        self._read_at = time.monotonic()  # a long recovery before READY=1 is no stall
        self.loop.call_later(0, self._renew)  # in the first turn's batch

    def _renew(self) -> None:
        overdue = time.monotonic() - self._read_at
        if overdue > self.length_ms * SELF_FENCE / 1000:
            raise StoreError(
                f"host {self.host_id}'s lease was last renewed {overdue:.1f}s ago (the loop or"
                f" the database was held): stopping before it lapses ({self.length_ms} ms),"
                " so that no role of its runs is still running here once another host may"
                " take them over"
            )
        renewed = self.leasing.renew_lease(self.host_id, self.epoch, self.length_ms, self.serves())
        if not renewed:
            raise StoreError(
                f"host {self.host_id}'s lease lapsed or was taken by another nerved (epoch"
                f" {self.epoch}): this one writes nothing more"
            )
        self.store.after_commit(self._read_hosts)
        self.loop.call_later(self.length_ms / RENEWALS / 1000, self._renew)

    def release(self) -> None:
        """End the lease now (a clean stop), in the batch the caller commits."""
        self.leasing.release_lease(self.host_id, self.epoch)

    def view(self) -> list[dict[str, Any]]:
        """``status``'s ``hosts``: every host of the store, this one marked ``self``, as read
        after the last renewal's commit, its ages and liveness brought to now: ``status``
        never waits for the database, however slow it is."""
        since = round((time.monotonic() - self._read_at) * 1000)
        return [host.to_wire(self.host_id, since) for host in self._hosts]


def instance(state_dir: Path) -> str:
    """This nerved's instance token: random, made once and kept in its state directory
    (``host-instance``), so that a restart of it is told from another nerved that has the
    same host id (a machine cloned from the same image). OSError if it cannot be kept."""
    path = state_dir / "host-instance"
    fd = modes.open_state_file(path, os.O_RDWR | os.O_CREAT)
    try:
        token = os.read(fd, 64).decode("ascii", "replace").strip()
        if len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
            token = os.urandom(16).hex()
            os.ftruncate(fd, 0)
            os.pwrite(fd, token.encode() + b"\n", 0)
            os.fsync(fd)
        return token
    finally:
        os.close(fd)


def site(state_dir: Path, boot: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """Where this nerved runs: its machine's boot id and its state directory's device and
    inode ('' parts when unreadable). Its own restart has the same; a copy of its state
    directory (a machine cloned with nerved's state, or a copied directory here) has its
    instance token but not this."""
    try:
        boot_id = boot.read_text(encoding="ascii").strip()[:40]
    except (OSError, UnicodeDecodeError):
        boot_id = ""
    try:
        where = os.stat(state_dir)
        return f"{boot_id}:{where.st_dev}:{where.st_ino}"
    except OSError:
        return f"{boot_id}::"


def take(loop: Loop, store: Storage, options: Options) -> HostLease | None:
    """This host's lease on ``store`` (``options.host_id``), taken now (None: a store that
    needs none). Raises StoreError when the store will not serve this host (another one
    holds it)."""
    leasing = store.leasing
    if leasing is None:
        return None
    host_id, state_dir = options.host_id, options.state_dir
    try:
        token = instance(state_dir)
    except (OSError, modes.UnsafeStateFile) as exc:
        raise StoreError(f"{state_dir}/host-instance: {exc}") from exc
    length = lease_ms()
    epoch = leasing.claim_lease(
        host_id, token, os.getpid(), _version.__version__, length, site(state_dir)
    )
    log.info("host %s took its lease on %s (epoch %d, %d ms)", host_id, store.where, epoch,
             length)  # fmt: skip
    return HostLease(loop, store, leasing, host_id, epoch, length)
