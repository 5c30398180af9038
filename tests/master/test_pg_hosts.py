"""Hosts and their leases on a PostgreSQL store (issue 15, SPEC v2 §9).

Each nerved takes its host's lease at start (a new epoch) and renews it while it runs;
``status`` lists the store's hosts with their leases' ages. Several hosts share one database,
each with its own lease. A nerved whose lease another took (the same host id) stops, writing
nothing more.
"""

from __future__ import annotations

import itertools
import signal
import time

import pytest
from pg_support import pg_unavailable
from support import wait_until

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

import psycopg  # after the skip: where it is missing, the module skips

CONFIG = """
workflows: {}
"""


def host(nerved_factory, dsn: str, host_id: str, name: str):
    return nerved_factory(CONFIG, args=("--store", dsn, "--host-id", host_id), name=name)


def epoch(dsn: str, host_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT epoch FROM hosts WHERE host_id = %s", (host_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_status_lists_the_hosts_of_the_store_with_their_leases(nerved_factory, pg_dsn: str):
    alpha = host(nerved_factory, pg_dsn, "alpha", "a").start()
    status = alpha.rpc("status")
    assert status["host"] == "alpha"
    (entry,) = status["hosts"]
    assert entry["host"] == "alpha" and entry["self"] and entry["live"]
    assert 0 <= entry["leaseAgeMs"] < 3_000
    assert entry["pid"] == alpha.pid
    # Renewed while it runs (every 2 s): over 5 s the age goes back down, and never reaches
    # the lease's half.
    ages = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ages.append(alpha.rpc("status")["hosts"][0]["leaseAgeMs"])
        time.sleep(0.1)
    assert max(ages) < 5_000
    assert any(later < earlier for earlier, later in itertools.pairwise(ages)), ages


def test_two_hosts_share_the_database_each_with_its_lease(nerved_factory, pg_dsn: str):
    """Several hosts on one database (SPEC v2 §9): each takes its own lease, and each
    lists both; a clean stop ends the stopping host's lease at once."""
    alpha = host(nerved_factory, pg_dsn, "alpha", "a").start()
    beta = host(nerved_factory, pg_dsn, "beta", "b").start()
    for daemon in (alpha, beta):
        wait_until(lambda d=daemon: len(d.rpc("status")["hosts"]) == 2, what="both hosts")
        hosts = {h["host"]: h for h in daemon.rpc("status")["hosts"]}
        assert hosts["alpha"]["live"] and hosts["beta"]["live"]
    assert alpha.stop() == 0
    assert dict(psycopg_hosts(pg_dsn)) == {"alpha": False, "beta": True}


def psycopg_hosts(dsn: str) -> list[tuple[str, bool]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT host_id, lease_until > nerve_now_ms() FROM hosts").fetchall()
    return [(row[0], row[1]) for row in rows]


def test_the_same_host_after_kill_9_takes_its_lease_again_at_once(nerved_factory, pg_dsn: str):
    alpha = host(nerved_factory, pg_dsn, "alpha", "a").start()
    assert epoch(pg_dsn, "alpha") == 1
    alpha.signal(signal.SIGKILL)
    alpha.wait()
    alpha.start(timeout=10)  # no wait for the old lease to lapse: it was this host's
    assert epoch(pg_dsn, "alpha") == 2


def test_a_second_nerved_with_the_same_host_id_is_refused_not_let_take_turns(
    nerved_factory, pg_dsn: str
):
    """Machines cloned from one image share /etc/machine-id, so the same default host id: a
    second nerved with it (another state directory) is refused while the first's lease is
    live, where each start took the lease from the other, forever (the attacker's finding
    10). The first goes on; its own restart (same state directory) still takes it at once."""
    first = host(nerved_factory, pg_dsn, "alpha", "a").start()
    twin = host(nerved_factory, pg_dsn, "alpha", "b")
    twin.start(wait=False)
    assert twin.wait(30) == 75
    assert "host id alpha is in use by another nerved" in twin.log()
    assert first.rpc("status")["hosts"][0]["live"]
    assert epoch(pg_dsn, "alpha") == 1
    assert first.stop() == 0
    first.start()
    assert epoch(pg_dsn, "alpha") == 2


def test_nervectl_status_shows_the_host_and_the_stores_hosts(nerved_factory, pg_dsn: str):
    alpha = host(nerved_factory, pg_dsn, "alpha", "a").start()
    done = alpha.ctl("status")
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout
    header = next(line for line in done.stdout.splitlines() if line.startswith("HOST"))
    assert header.split()[:3] == ["HOST", "LEASE", "RENEWED"]
    row = next(line for line in done.stdout.splitlines() if line.startswith("alpha *"))
    assert "live" in row
