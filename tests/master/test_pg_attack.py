"""Attacks on the PostgreSQL store through a real nerved (issue 15): what a client, a role or
a payload can send that PostgreSQL stores differently from SQLite."""

from __future__ import annotations

import pytest
from pg_support import pg_unavailable

from nervectl.client import RemoteError

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

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
