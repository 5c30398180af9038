"""What the store's tests share: runs brought into a status by legal transitions only,
step records as the engine encodes them, a run's whole history, payloads of given sizes.

Everything here goes through the interface (nerved.store.Storage), so that it serves the
contract suite of any backend as well as the SQLite backend's own tests; but for
:func:`install_poison`, the SQLite backend's way to make a commit fail.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from nerved import wire
from nerved.states import RunStatus, Transition
from nerved.store import LogEntry, Reader, RunRecord, Storage, Store, StoreError
from nerved.store.records import cancelled_error

CREATING = [t for t in Transition if t.creates]
MOVING = [t for t in Transition if not t.creates]

KIB = 1024
MIB = 1024 * KIB
BUDGET = 4 * MIB  # wire.RESULT_BUDGET

# How to bring a fresh run into each status with legal transitions only.
PATH_TO: dict[RunStatus, tuple[Transition, ...]] = {
    RunStatus.QUEUED: (Transition.ENQUEUE,),
    RunStatus.STARTED: (Transition.START,),
    RunStatus.WAITING: (Transition.START, Transition.WAIT),
    RunStatus.COMPLETED: (Transition.START, Transition.COMPLETE),
    RunStatus.FAILED: (Transition.START, Transition.FAIL),
    RunStatus.CRASHED: (Transition.START, Transition.CRASH),
    RunStatus.DROPPED: (Transition.ENQUEUE, Transition.EVICT),
    RunStatus.CANCELLED: (Transition.ENQUEUE, Transition.CANCEL),
}


def step(role: str, prompt: Any, event: Any) -> str:
    """A step record as the engine hands it to record_step: encoded once, by the caller."""
    return wire.dumps({"role": role, "prompt": prompt, "event": event})


def failure(role: str, error: str, try_: int, retry_at: int | None, prompt: Any = None) -> str:
    """A failed try as the engine hands it to record_failure (issue 11's ``step_failed``)."""
    record = {"role": role, "prompt": prompt, "error": error, "try": try_, "retryAt": retry_at}
    return wire.dumps(record)


def role_failed(role: str, error: str, attempts: int) -> str:
    """The event the engine hands to record_input when a role failed for good."""
    event = {"type": "role_failed", "role": role, "error": error, "attempts": attempts}
    return wire.dumps(event)


def move(
    store: Storage,
    run_id: str,
    transition: Transition,
    *,
    reason: str | None = None,
    uid: int | None = 0,
    ts: int | None = None,
) -> bool:
    """Apply ``transition`` with the entry the engine writes for it: the cancelled
    ``{reason, uid}`` and its error, a reason for the other ends but completed."""
    if transition is Transition.CANCEL:
        payload = wire.dumps({"reason": reason, "uid": uid})
        error = cancelled_error(reason, uid)
        return store.transition_run(run_id, transition, payload_json=payload, error=error, ts=ts)
    bad = transition.target in (RunStatus.FAILED, RunStatus.CRASHED, RunStatus.DROPPED)
    error = (reason or f"{transition.name.lower()} for a test") if bad else None
    return store.transition_run(run_id, transition, error=error, ts=ts)


def make_run(store: Storage, run_id: str, status: RunStatus, *, workflow: str = "wf") -> str:
    """Bring a new run into ``status`` through legal transitions (not committed)."""
    first, *rest = PATH_TO[status]
    store.create_run(run_id, workflow, first, {"run": run_id})
    for transition in rest:
        assert move(store, run_id, transition)
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


class Run(NamedTuple):
    """What should be in a store of one run."""

    status: RunStatus
    steps: int = 0
    attempts: int = 0
    tries: int = 0
    retry_at: int | None = None


Model = dict[str, Run]
"""What should be in a store: each run as :class:`Run`."""


def as_run(record: RunRecord) -> Run:
    return Run(record.status, record.steps, record.attempts, record.tries, record.retry_at)


def random_operations(
    store: Storage, poison: Callable[[Storage], None], seed: int, check: Callable[[Model], None]
) -> Model:
    """400 random operations on ``store``, legal and not, with batches committed and batches
    whose COMMIT fails (``poison``), each checked against a model of what should happen;
    ``check`` is called with the model as committed after every commit and every failed one.
    Returns the model once all is committed. The sequence is asserted to have exercised
    every kind of operation, so that it cannot go vacuous. Every entry is written as the
    engine writes it (:func:`move`, :func:`failure`, :func:`role_failed`), so that the
    runs can be derived from the logs (tests/support.py) at any point.
    """
    rng = random.Random(seed)
    poison(store)
    seen: Counter[str] = Counter()

    # The model, and its state at the last commit.
    model: Model = {}
    committed: Model = {}
    created = 0

    def new_run_id() -> str:
        nonlocal created
        created += 1  # rolled-back run ids are not reused
        return f"run-{created - 1}"

    for _ in range(400):
        run_ids = [*model, "unknown"]
        op = rng.random()
        run_id = rng.choice(run_ids)
        run = model.get(run_id)
        started = run is not None and run.status is RunStatus.STARTED
        if op < 0.17 or not model:
            run_id = new_run_id()
            transition = rng.choice(CREATING)
            reason = "full" if transition is Transition.REJECT else None
            store.create_run(run_id, rng.choice("ab"), transition, {"i": created}, reason=reason)
            model[run_id] = Run(transition.target)
        elif op < 0.42:
            transition = rng.choice(MOVING)
            legal = run is not None and run.status in transition.sources
            reason = rng.choice([None, "why"])
            assert (
                move(store, run_id, transition, reason=reason, uid=rng.choice([None, 0])) is legal
            )
            seen["moved" if legal else "refused"] += 1
            if run is not None and legal:
                final = transition.target.is_final  # a final run has no retry to come
                retry_at = None if final else run.retry_at
                model[run_id] = run._replace(status=transition.target, retry_at=retry_at)
        elif op < 0.57:
            record = step(rng.choice("xyz"), None, {"n": run.steps if run else 0})
            assert store.record_step(run_id, record) is started
            seen["step" if started else "step refused"] += 1
            if run is not None and started:
                model[run_id] = run._replace(steps=run.steps + 1, tries=0, retry_at=None)
        elif op < 0.65:
            tries = run.tries + 1 if run else 1
            retry_at = rng.choice([None, 10**12 + tries])
            record = failure(rng.choice("xyz"), "boom", tries, retry_at)
            assert store.record_failure(run_id, record, retry_at) is started
            seen["failure" if started else "failure refused"] += 1
            if run is not None and started:
                model[run_id] = run._replace(tries=tries, retry_at=retry_at)
        elif op < 0.70:
            assert store.record_input(run_id, role_failed("x", "boom", 3)) is started
            seen["input" if started else "input refused"] += 1
            if run is not None and started:
                model[run_id] = run._replace(tries=0, retry_at=None)
        elif op < 0.74:
            expected = run.attempts + 1 if run is not None and started else 0
            assert store.count_attempt(run_id) == expected
            if run is not None and expected:
                model[run_id] = run._replace(attempts=expected)
        elif op < 0.77:
            # A run retried from a step: created, then given the history of another.
            steps = rng.randint(0, run.steps + 1 if run else 1)
            to_run = new_run_id()
            store.create_run(to_run, "a", Transition.START, None)
            model[to_run] = Run(RunStatus.STARTED)
            if run is not None and steps <= run.steps:
                store.copy_history(run_id, to_run, steps)
                model[to_run] = Run(RunStatus.STARTED, steps)
                seen["copy"] += 1
            else:
                with pytest.raises(ValueError):
                    store.copy_history(run_id, to_run, steps)
                seen["copy refused"] += 1
        elif op < 0.85:
            # Entries that must not move a run: ctx.log lines, other sources on the same id.
            if rng.random() < 0.5:
                store.append_log("workflow", "log", rng.choice(list(model)), "a ctx.log line")
            else:
                store.append_log("sense", "completed", run_id, "same ref_id")
        elif op < 0.97:
            store.commit()
            committed = dict(model)
            seen["commit"] += 1
            check(committed)
        else:
            store.append_log("test", "poison", None, None)
            with pytest.raises(StoreError):
                store.commit()
            model = dict(committed)
            seen["rollback"] += 1
            check(committed)
    store.commit()
    kinds = ("moved", "refused", "step", "failure", "input", "copy", "commit", "rollback")
    assert min(seen[k] for k in kinds) > 0, seen
    assert len(model) > 10
    return model


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


def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    path = tmp_path / "state" / "logs.db"  # its parent does not exist yet: the store makes it
    return Backend(
        name="sqlite",
        open=lambda: Store(path),
        poison=install_poison,
        child="from nerved.store import Store\nstore = Store(Path(sys.argv[1]))",
        place=str(path),
    )


def install_pg_poison(store: Storage) -> None:
    """PostgreSQL's poison: a deferred constraint trigger, run at COMMIT, that raises for
    an entry of type 'poison' (added from another connection, as SQLite's)."""
    import psycopg

    from nerved.store.postgres.store import PgStore

    assert isinstance(store, PgStore)
    store.release()
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'poisoned batch'; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON logs"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.type = 'poison')"
            " EXECUTE FUNCTION poison()"
        )


def postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh database of the test run's throwaway cluster (tests/pg_support.py)."""
    from pg_support import pg_unavailable

    reason = pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    dsn: str = request.getfixturevalue("pg_dsn")

    def open_store() -> Storage:
        from nerved.store.postgres.store import PgStore

        return PgStore(dsn)

    return Backend(
        name="postgresql",
        open=open_store,
        poison=install_pg_poison,
        child="from nerved.store.postgres.store import PgStore\nstore = PgStore(sys.argv[1])",
        place=dsn,
    )


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": sqlite_backend,
    "postgresql": postgres_backend,
}
