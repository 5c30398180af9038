"""What several hosts' stores on one PostgreSQL database keep apart, and what they share:
each store as its host's master holds it (its lease taken), two hosts at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_support import pg_unavailable

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

from nerved.states import Transition
from nerved.store.postgres.store import PgStore
from nerved.store.records import Firing


@pytest.fixture
def two(pg_dsn: str) -> Iterator[tuple[PgStore, PgStore]]:
    stores = []
    for host in ("a", "b"):
        store = PgStore(pg_dsn)
        store.claim_lease(host, host * 32, 1, "test", 10_000)
        stores.append(store)
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def test_each_host_keeps_its_own_cron_firings(two: tuple[PgStore, PgStore]) -> None:
    """A cron reflex is its host's (as a sense is): two hosts with a reflex of one name keep
    a firing each, and one forgetting its reflexes leaves the other's alone."""
    a, b = two
    a.record_firing(Firing("nightly", 1_000, 1_001, None, "computed"))
    a.commit()  # (a batch holds the hosts' write lock to its commit: one after the other)
    b.record_firing(Firing("nightly", 2_000, 2_002, None, "missed"))
    b.commit()
    assert a.firings()["nightly"].scheduled_at == 1_000
    assert b.committed.firings()["nightly"].scheduled_at == 2_000
    assert a.forget_firings([]) == 1
    a.commit()
    assert a.firings() == {}
    assert b.firings()["nightly"].note == "missed"


def test_each_host_recovers_its_own_runs_and_lists_every_hosts(
    two: tuple[PgStore, PgStore],
) -> None:
    a, b = two
    a.create_run("ra", "w", Transition.START, None)
    a.commit()
    b.create_run("rb", "w", Transition.START, None)
    b.create_run("rq", "w", Transition.ENQUEUE, None, placement="any")
    b.commit()
    assert [r.run_id for r in a.active_runs()] == ["ra"]
    assert [r.run_id for r in b.active_runs()] == ["rb"]  # not the queued any run: claimed
    listed = {r.run_id: r.host for r in a.committed.list_runs()}
    assert listed == {"ra": "a", "rb": "b", "rq": None}


DAY = 86_400_000


def test_retention_prunes_by_the_databases_clock_and_each_host_its_own_senses(
    two: tuple[PgStore, PgStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second attacker's finding 3: a host whose clock was days ahead pruned every
    host's runs (and so freed their idempotency keys), and a host's sense settings pruned
    every host's sense entries. Ages are by the database's clock; a host prunes the entries
    of its own senses alone."""
    import nerved.store.postgres.store as pg_store
    from nerved.store.records import now_ms

    a, b = two
    a.create_run("young", "w", Transition.START, None, idempotency_key="k")
    assert a.transition_run("young", Transition.COMPLETE)
    a.append_log("sense", "signal", "s@a", {"n": 1})
    a.commit()
    b.append_log("sense", "signal", "s@b", {"n": 1})
    b.commit()
    ahead = now_ms() + 2 * DAY  # b's clock, two days fast
    monkeypatch.setattr(pg_store, "now_ms", lambda: ahead)
    assert b.prune_runs(older_than=ahead - DAY, keep=None, limit=100) == 0
    assert b.prune_sense_logs(older_than=ahead + DAY, limit=100) == 1  # all of its own
    b.commit()
    assert a.committed.run_by_key("w", "k") is not None
    kept = a.committed.query_logs(source="sense", limit=10)
    assert [entry.ref_id for entry in kept] == ["s@a"]
