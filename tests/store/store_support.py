"""What the store's tests share: runs brought into a status by legal transitions only,
step records as the engine encodes them, a run's whole history, payloads of given sizes.

Everything here goes through the interface (nerved.store.Storage), so that it serves the
contract suite of any backend as well as the SQLite backend's own tests; but for
:func:`install_poison`, the SQLite backend's way to make a commit fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerved import wire
from nerved.states import RunStatus, Transition
from nerved.store import LogEntry, Reader, Storage, Store

CREATING = [t for t in Transition if t.creates]
MOVING = [t for t in Transition if not t.creates]

KIB = 1024
MIB = 1024 * KIB
BUDGET = 4 * MIB  # wire.RESULT_BUDGET

# How to bring a fresh run into each status with legal transitions only.
PATH_TO: dict[RunStatus, tuple[Transition, ...]] = {
    RunStatus.QUEUED: (Transition.ENQUEUE,),
    RunStatus.STARTED: (Transition.START,),
    RunStatus.COMPLETED: (Transition.START, Transition.COMPLETE),
    RunStatus.FAILED: (Transition.START, Transition.FAIL),
    RunStatus.CRASHED: (Transition.START, Transition.CRASH),
    RunStatus.DROPPED: (Transition.ENQUEUE, Transition.EVICT),
}


def step(role: str, prompt: Any, event: Any) -> str:
    """A step record as the engine hands it to record_step: encoded once, by the caller."""
    return wire.dumps({"role": role, "prompt": prompt, "event": event})


def make_run(store: Storage, run_id: str, status: RunStatus, *, workflow: str = "wf") -> str:
    """Bring a new run into ``status`` through legal transitions (not committed)."""
    first, *rest = PATH_TO[status]
    store.create_run(run_id, workflow, first, {"run": run_id})
    for transition in rest:
        assert store.transition_run(run_id, transition)
    return run_id


def history(store: Reader, run_id: str) -> list[LogEntry]:
    """Every entry of one run, oldest first, page after page."""
    entries: list[LogEntry] = []
    more = True
    while more:
        page, more = store.run_history_page(run_id, entries[-1].id if entries else 0)
        entries += page
    return entries


def fill(store: Storage, sizes: list[int], ref_id: str = "big") -> list[int]:
    """One entry per size: a string payload of that many bytes once encoded (its quotes)."""
    ids = [store.append_log("test", "big", ref_id, "x" * (size - 2)) for size in sizes]
    store.commit()
    return ids


def install_poison(store: Storage) -> None:
    """Make COMMIT itself fail for real, for any batch that logs an entry of type 'poison'.

    In WAL mode the store holds the write lock from its ``BEGIN IMMEDIATE`` onwards, so no
    other connection can make its COMMIT busy. A deferred foreign key can: the violation is
    only checked at COMMIT, which then fails and leaves the transaction open. The trigger and
    tables are added from another connection (while the store lets go of its write lock),
    so the store's code path is untouched, and the store's own connection has
    ``foreign_keys = ON``.
    """
    store.release()
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE poison_parent (id INTEGER PRIMARY KEY);
        CREATE TABLE poison_child (
            parent INTEGER REFERENCES poison_parent (id) DEFERRABLE INITIALLY DEFERRED
        );
        CREATE TRIGGER poison AFTER INSERT ON logs WHEN NEW.type = 'poison'
        BEGIN
            INSERT INTO poison_child (parent) VALUES (-1);
        END;
        """
    )
    conn.close()


# -- the backends ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[], Storage]
    """Open the store under test: a new one the first time, then the same one again."""
    poison: Callable[[Storage], None]
    """Make COMMIT itself fail, for real, for any batch that logs an entry of type
    'poison' (the store may let go of its write lock to arrange it)."""
    child: str
    """Python source that opens the same store in another process as ``store``; the
    place is ``sys.argv[1]``."""
    place: str


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "state" / "logs.db"  # its parent does not exist yet: the store makes it
    return Backend(
        name="sqlite",
        open=lambda: Store(path),
        poison=install_poison,
        child="from nerved.store import Store\nstore = Store(Path(sys.argv[1]))",
        place=str(path),
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {"sqlite": sqlite_backend}
