"""nerved on a PostgreSQL store (issue 15): runs are kept there, and survive restarts and
``kill -9`` of the daemon as they do in logs.db (SPEC v2 §9).

Each test gets a fresh database of the run's throwaway cluster (tests/pg_support.py); the
tests skip, saying why, where PostgreSQL cannot be run.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from pg_support import PgCluster, pg_unavailable
from support import wait_until

from nervectl.client import RemoteError, Unreachable

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

import psycopg  # after the skip: where it is missing, the module skips

WORKFLOW = """
    import time
    from pathlib import Path
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        gate = Path(prompt["gate"]) if prompt and prompt.get("gate") else None
        if gate is not None:
            Path(prompt["mark"]).write_text(ctx.run_id)
            while not gate.exists():
                time.sleep(0.01)
        return {"type": "done", "n": len(ctx.run_id)}

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
def pg_url(pg_dsn: str) -> str:
    """The database as ``--store`` takes it: any libpq connection string."""
    return pg_dsn


def test_runs_are_kept_in_postgresql_and_survive_a_restart(nerved_factory, pg_url: str):
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", pg_url))
    daemon.start()
    run_id = daemon.trigger("w", {})
    assert daemon.wait_run(run_id)["status"] == "completed"
    assert not (daemon.state / "logs.db").exists()
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT status, steps FROM workflow_runs WHERE run_id = %s", (run_id,)
        ).fetchone()
    assert row == ("completed", 1)
    assert daemon.stop() == 0
    daemon.start()
    listed = daemon.rpc("workflow.list", all=True)
    assert [r["runId"] for r in listed] == [run_id]
    assert [e["type"] for e in daemon.entries(run_id)] == ["started", "step_complete", "completed"]


def test_a_run_under_way_at_kill_9_is_resumed_at_the_next_start(
    nerved_factory, pg_url: str, tmp_path: Path
):
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", pg_url))
    daemon.start()
    mark, gate = tmp_path / "mark", tmp_path / "gate"
    run_id = daemon.trigger("w", {"mark": str(mark), "gate": str(gate)})
    wait_until(mark.exists, what="the role started")
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    daemon.start()
    gate.touch()
    run = daemon.wait_run(run_id)
    assert run["status"] == "completed"
    assert "resumed" in [e["type"] for e in daemon.entries(run_id)]


def test_the_database_restarted_under_load_loses_nothing_acknowledged(
    nerved_factory, pg_cluster: PgCluster
):
    """PostgreSQL restarts while triggers come: nerved meets the broken connection, stops
    with 75 (EX_TEMPFAIL: systemd starts it again), and, started again, has every run it
    acknowledged, each of which completes."""
    dsn = pg_cluster.create_database()
    daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=("--store", dsn))
    daemon.start()
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                acked.append(daemon.trigger("w", {}))
            except (Unreachable, RemoteError):  # nerved is down, or refuses as it stops
                time.sleep(0.01)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: len(acked) >= 30, what="30 runs acknowledged")
        pg_cluster.restart()
        assert daemon.wait(30) == 75
        assert "storage failure" in daemon.log()
        before = len(acked)
        daemon.start()  # as systemd would
        wait_until(lambda: len(acked) >= before + 30, what="30 more runs acknowledged")
    finally:
        stop.set()
        loader.join()
    for run_id in acked:
        assert daemon.wait_run(run_id)["status"] == "completed", run_id
    listed = {r["runId"] for r in daemon.rpc("workflow.list", all=True, limit=10_000)}
    assert set(acked) <= listed
