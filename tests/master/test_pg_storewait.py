"""nerved waiting for a PostgreSQL database it cannot reach (issue 15: "a clear status while
it is gone, and triggers refused with -32002 rather than acknowledged without being durable").

At start, and so at the start that follows a storage failure's exit 75, nerved serves its
control socket in a waiting mode (nerved.master.storewait): ``status`` says the store is
unreachable and why, every other method is refused with -32002, and once the database
answers nerved starts as it always did. Each test stops the run's cluster (tests/pg_support)
and starts it again however it ends.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_support import PgCluster, pg_unavailable
from support import Nerved, wait_until

from nervectl.client import RemoteError
from nerved.loop import Loop
from nerved.master.notify import Notifier
from nerved.master.startup import Options
from nerved.master.storewait import FIRST_DELAY, MAX_DELAY, StoreWait

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

SECRET = "s3cr3t-storewait"  # trust authentication: the server takes it, and ignores it
WORKFLOW = """
    import asyncio
    from pathlib import Path
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        if prompt and prompt.get("gate"):
            Path(prompt["mark"]).write_text(ctx.run_id)
            while not Path(prompt["gate"]).exists():
                await asyncio.sleep(0.01)  # the worker runs its other runs meanwhile
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "step", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""
CONFIG = """
workflows:
  w: {concurrency: 4, overflow: queue, idleTimeout: 1h}
"""


@pytest.fixture
def cluster(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    """The run's cluster, running again after the test whatever the test did to it."""
    yield pg_cluster
    if not pg_cluster.running:
        pg_cluster.start()


def refusal(daemon: Nerved, method: str, **params: Any) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        daemon.rpc(method, **params)
    return caught.value


def assert_waiting(daemon: Nerved) -> dict[str, Any]:
    """The waiting mode, as a client sees it; returns ``status``'s ``store``."""
    status = daemon.rpc("status")
    assert status["state"] == "waiting for the store", status
    store = status["store"]
    assert store["reachable"] is False
    assert store["where"].startswith("postgresql://postgres@") and SECRET not in str(status)
    assert store["error"] and store["tries"] >= 1 and store["nextTry"] >= store["since"]
    error = refusal(daemon, "workflow.trigger", workflow="w", payload={})
    assert error.code == -32002 and "unreachable" in error.message, error.message
    assert "nothing was done" in error.message and SECRET not in error.message
    assert refusal(daemon, "workflow.list").code == -32002  # a read needs the store too
    assert refusal(daemon, "no.such.method").code == -32601
    shown = daemon.ctl("status").stdout
    assert "waiting for the store" in shown and "unreachable" in shown, shown
    return dict(store)


def running(daemon: Nerved) -> bool:
    return bool(daemon.rpc("status")["state"] == "running")


def test_started_while_the_database_is_down_it_answers_then_serves_once_it_is_up(
    nerved_factory, cluster: PgCluster
):
    dsn = cluster.create_database() + f" password={SECRET}"
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", dsn))
    cluster.stop()
    daemon.start()  # READY=1: answering on its socket, degraded (see nerved.master.storewait)
    assert "waiting for the store" in daemon.wait_notify("READY=1")
    first = assert_waiting(daemon)
    wait_until(lambda: daemon.rpc("status")["store"]["tries"] > first["tries"],
               what="a retry")  # fmt: skip
    with daemon.client() as kept:  # a connection made while it waits is served after
        assert kept.call("status", {})["state"] == "waiting for the store"
        cluster.start()
        wait_until(lambda: running(daemon), timeout=30, what="nerved reached the database")
        run_id = kept.call("workflow.trigger", {"workflow": "w", "payload": {}})["runId"]
    assert daemon.wait_run(run_id)["status"] == "completed"
    assert SECRET not in daemon.log()


def test_the_database_gone_under_a_running_nerved_it_restarts_waiting_and_loses_nothing(
    nerved_factory, cluster: PgCluster, tmp_path: Path
):
    dsn = cluster.create_database()
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", dsn))
    daemon.start()
    mark, gate = tmp_path / "mark", tmp_path / "gate"
    held = daemon.trigger("w", {"mark": str(mark), "gate": str(gate)})
    wait_until(mark.exists, what="the role started")
    done = daemon.trigger("w", {})
    assert daemon.wait_run(done)["status"] == "completed"
    cluster.stop()
    assert daemon.wait(30) == 75  # the lease's renewal (every 2 s) fails: storage failure
    daemon.start()  # as systemd would (Restart=on-failure)
    assert_waiting(daemon)
    cluster.start()
    wait_until(lambda: running(daemon), timeout=30, what="nerved reached the database")
    gate.touch()
    assert daemon.wait_run(held)["status"] == "completed"
    assert daemon.wait_run(done)["status"] == "completed"


def test_sigterm_while_waiting_for_the_database_stops_it_at_once_and_cleanly(
    nerved_factory, tmp_path: Path
):
    url = f"host={tmp_path / 'nowhere'} port=5432 dbname=x user=postgres"
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", url))
    daemon.start()
    assert daemon.rpc("status")["state"] == "waiting for the store"
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert time.monotonic() - began < 5
    assert not daemon.socket.exists()
    assert "nerved stopped" in daemon.log()


def test_a_database_that_refuses_once_it_is_up_ends_the_wait_with_a_fatal_error(
    nerved_factory, cluster: PgCluster
):
    """Not retried forever: a missing database (as a refused login) is what a retry cannot
    mend, and nerved exits 73 (EX_CANTCREAT) saying why, as it does when it meets it first."""
    dsn = cluster.dsn("no_such_database")
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", dsn))
    cluster.stop()
    daemon.start()
    assert daemon.rpc("status")["state"] == "waiting for the store"
    cluster.start()
    assert daemon.wait(30) == 73
    assert "does not exist" in daemon.log()


def test_tries_back_off_exponentially_with_jitter_up_to_a_cap(tmp_path: Path) -> None:
    from nerved.store.postgres.connection import display  # psycopg: after the skip

    options = Options(tmp_path, tmp_path / "state", tmp_path / "sock")
    loop = Loop()
    try:
        url = f"host=/x dbname=y password={SECRET}"
        waiting = StoreWait(loop, Notifier(), options, None, url,  # type: ignore[arg-type]
                            f"{display(url)}: no", time.monotonic())  # fmt: skip
        assert waiting.error == "no" and SECRET not in waiting.where
        ceilings = []
        for _ in range(10):
            ceiling = waiting.delay
            before = time.monotonic()
            waiting._schedule()
            assert ceiling / 2 <= waiting.next_try - before <= ceiling + 0.01
            ceilings.append(ceiling)
        assert ceilings[:6] == [FIRST_DELAY * 2**n for n in range(5)] + [MAX_DELAY]
        assert set(ceilings[5:]) == {MAX_DELAY}
        assert len(waiting._timers) == 10  # loop timers, nothing slept
    finally:
        loop.close()
