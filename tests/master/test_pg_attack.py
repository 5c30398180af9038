"""Attacks on the PostgreSQL store through a real nerved (issue 15): what a client, a role or
a payload can send that PostgreSQL stores differently from SQLite."""

from __future__ import annotations

import signal

import pytest
from pg_support import lapsed, pg_unavailable
from support import wait_until

from nervectl.client import RemoteError

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

import psycopg  # after the skip: where it is missing, the module skips

WORKFLOW = """
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        if prompt and prompt.get("raise"):
            raise RuntimeError(prompt["raise"])
        return {"type": "done", "echo": prompt}

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


def alive(daemon) -> None:
    """Still up and answering (its runs are where --store says: no logs.db to compare)."""
    assert daemon.proc.poll() is None, daemon.log()
    assert daemon.ctl("status").returncode == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def daemon(request, nerved_factory):
    args: tuple[str, ...] = ()
    if request.param == "postgresql":
        args = ("--store", request.getfixturevalue("pg_dsn"))
    d = nerved_factory(CONFIG, workflows={"w": WORKFLOW}, args=args)
    d.start()
    return d


def test_a_nul_in_a_run_id_prefix_is_no_run_not_a_storage_failure(daemon):
    for method, params in (
        ("workflow.inspect", {"runId": "ab\x00"}),
        ("workflow.cancel", {"runId": "ab\x00"}),
        ("workflow.signal", {"runId": "ab\x00", "name": "go"}),
    ):
        with pytest.raises(RemoteError) as caught:
            daemon.rpc(method, **params)
        assert "cannot read the store" not in str(caught.value), method
        alive(daemon)
    alive(daemon)


def test_a_nul_in_an_idempotency_key_does_not_stop_the_daemon(daemon):
    try:
        first = daemon.rpc("workflow.trigger", workflow="w", payload={}, idempotencyKey="k\x00")
    except RemoteError:
        first = None
    alive(daemon)
    if first is not None:
        again = daemon.rpc("workflow.trigger", workflow="w", payload={}, idempotencyKey="k\x00")
        assert again["runId"] == first["runId"]


def test_a_role_failing_with_a_nul_in_its_message_fails_its_run(daemon):
    run_id = daemon.trigger("w", {"raise": "bad\x00byte"})
    run = daemon.wait_run(run_id)
    assert run["status"] == "failed"
    alive(daemon)


@pytest.mark.parametrize(
    "params",
    [
        {"runId": "\ud800"},
        {"runId": "\U0010ffff"},
        {"runId": "é"},
        {"runId": "%"},
        {"runId": "_"},
    ],
)
def test_odd_run_id_prefixes_are_no_run(daemon, params):
    with pytest.raises(RemoteError) as caught:
        daemon.rpc("workflow.inspect", **params)
    assert "cannot read the store" not in str(caught.value)
    alive(daemon)


@pytest.mark.parametrize(
    "params",
    [
        {"afterId": 2**63 - 1},
        {"beforeId": 0},
        {"beforeId": 2**63 - 1, "limit": 0},
        {"since": 2**63 - 1},
        {"since": -(2**63)},
        {"source": "\ud800"},
        {"type": "%", "limit": 1},
    ],
)
def test_odd_log_queries_answer_like_sqlite(daemon, params):
    daemon.trigger("w", {})
    try:
        answer = daemon.rpc("logs.query", **params)
    except RemoteError as exc:
        answer = ("error", str(exc).split(":")[0])
    alive(daemon)
    assert "cannot read the store" not in str(answer)


GATED = """
    import os, time
    from pathlib import Path
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        with open(prompt["marks"], "a") as marks:
            marks.write(f"{os.getppid()}\\n")
        while not Path(prompt["gate"]).exists():
            time.sleep(0.01)
        return {"type": "done", "nerved": os.getppid()}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "step", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def idle(dsn: str, host_id: str) -> None:
    """Once the host's first turns after READY=1 are over (its first renewal committed): a
    host stopped in the middle of a batch has its session ended by the server after
    IDLE_IN_TRANSACTION_MS (it restarts then: nerved.store.postgres.connection); the tests
    of a host stalled between two turns stop it after this."""
    with psycopg.connect(dsn) as conn:
        started = conn.execute(
            "SELECT started_at FROM hosts WHERE host_id = %s", (host_id,)
        ).fetchone()[0]
    wait_until(lambda: renewal_after(dsn, started, host_id), what="the first renewal")


def renewal_after(dsn: str, renewed_at: int, host_id: str = "alpha") -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT renewed_at FROM hosts WHERE host_id = %s", (host_id,)).fetchone()
    return bool(row and row[0] > renewed_at)


def test_a_nerved_whose_lease_was_taken_writes_nothing_more(nerved_factory, pg_dsn, tmp_path):
    """A nerved stalled past its lease while another with its host id took it over (allowed
    once the lease lapsed) writes nothing more when it goes on: its worker's step, finished
    after the takeover, must not be recorded by it; the new holder drives the run now."""
    args = ("--store", pg_dsn, "--host-id", "same")
    first = nerved_factory(CONFIG, workflows={"w": GATED}, args=args, name="a").start()
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    run_id = first.trigger("w", {"marks": str(marks), "gate": str(gate)})
    wait_until(lambda: marks.exists() and len(marks.read_text().split()) == 1)
    first.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: lapsed(pg_dsn, "same"), timeout=30, what="the lease lapsed")
        second = nerved_factory(CONFIG, workflows={"w": GATED}, args=args, name="b").start()
        wait_until(lambda: len(marks.read_text().split()) == 2)  # the second resumed it
    finally:
        first.signal(signal.SIGCONT)
    gate.touch()  # both workers finish their step now
    assert first.wait(15) == 75
    run = second.wait_run(run_id)
    assert run["status"] == "completed"
    steps = second.entries(run_id, "step_complete")
    assert [s["payload"]["event"]["nerved"] for s in steps] == [second.pid], (
        marks.read_text(),
        first.pid,
        second.pid,
        steps,
    )


def test_a_host_stalled_past_most_of_its_lease_stops_and_its_restart_goes_on(
    nerved_factory, pg_dsn, tmp_path
):
    """A host stalled past most of its lease (SIGSTOP here; a held loop, a database that
    does not answer, a paused VM in life) stops when it goes on (exit 75: its workers
    killed), whether or not another host took its runs over meanwhile: once its lease lapses
    another may, and none of its roles may be running still by then (the attacker's finding
    3: a stalled host's worker ran a role on while another host ran it again). Started again
    (systemd), it takes its lease anew and serves; a run it had queued is not lost."""
    alpha = nerved_factory(CONFIG, workflows={"w": WORKFLOW},
                           args=("--store", pg_dsn, "--host-id", "alpha"), name="a").start()  # fmt: skip
    idle(pg_dsn, "alpha")
    alpha.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: lapsed(pg_dsn, "alpha"), timeout=30, what="alpha's lease lapsed")
        beta = nerved_factory(CONFIG, workflows={"w": WORKFLOW},
                              args=("--store", pg_dsn, "--host-id", "beta"), name="b").start()  # fmt: skip
    finally:
        alpha.signal(signal.SIGCONT)
    assert alpha.wait(15) == 75
    said = ("stopping before it lapses", "closed the connection")  # (stopped mid-batch)
    assert any(words in alpha.log() for words in said), alpha.log()
    alpha.start()
    run_id = alpha.trigger("w", {})
    assert alpha.wait_run(run_id)["status"] == "completed"
    alive(alpha)
    alive(beta)


def test_store_sqlite_on_the_command_line_is_logs_db_over_the_files_postgresql(
    nerved_factory, pg_dsn
):
    config = f"store: postgresql:///nowhere?host=/nonexistent\n{CONFIG}"
    daemon = nerved_factory(config, workflows={"w": WORKFLOW}, args=("--store", "sqlite"))
    daemon.start(timeout=10)
    assert daemon.wait_run(daemon.trigger("w", {}))["status"] == "completed"
    assert (daemon.state / "logs.db").exists()


def test_concurrent_triggers_with_one_key_make_one_run(daemon):
    import concurrent.futures

    def trigger(_: int) -> str:
        answer = daemon.rpc("workflow.trigger", workflow="w", payload={}, idempotencyKey="k")
        return str(answer["runId"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(trigger, range(64)))
    assert len(ids) == 1
    assert len(daemon.rpc("workflow.list", all=True)) == 1
    alive(daemon)
