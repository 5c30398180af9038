"""Recovered started runs go to their worker after READY=1, a few hundred a turn
(nerved.master.workflows.rebuild): every one is resumed once, with its ``resumed`` entry,
and one a client cancels before its turn came ends cancelled, not resumed."""

from __future__ import annotations

import uuid

from support import assert_runs_match_logs

from nervectl.client import RemoteError
from nerved import wire
from nerved.master.workflows.rebuild import RESUMES_PER_TURN
from nerved.states import Transition
from nerved.store import Store

STEPS = """
    from nerved import WorkflowDefinition

    def step(prompt, ctx):
        return {"type": "step"}

    def moderate(thread, event):
        if len(thread.events) >= 3:  # thread_start and two steps
            return None
        return {"role": "step", "prompt": None}

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""
RUNS = RESUMES_PER_TURN * 2 + 50  # three turns of resumes at least


def seed(db_dir, started: int, queued: int) -> tuple[list[str], list[str]]:
    """A logs.db as a nerved killed mid-run left it: ``started`` runs with one step each,
    then ``queued`` runs; their ids."""
    db_dir.mkdir(parents=True, mode=0o700)
    store = Store(db_dir / "logs.db")
    ran, waiting = [], []
    for i in range(started + queued):
        run_id = uuid.uuid4().hex
        if i < started:
            store.create_run(run_id, "s", Transition.START, {"i": i})
            step = {"role": "step", "prompt": None, "event": {"type": "step"}}
            store.record_step(run_id, wire.dumps(step))
            ran.append(run_id)
        else:
            store.create_run(run_id, "s", Transition.ENQUEUE, {"i": i})
            waiting.append(run_id)
    store.commit()
    store.close()
    return ran, waiting


def test_every_recovered_started_run_is_resumed_once_over_turns(nerved_factory):
    config = f"workflows:\n  s: {{concurrency: {RUNS}, maxQueue: 100, idleTimeout: 1h}}\n"
    daemon = nerved_factory(config, workflows={"s": STEPS})
    started, queued = seed(daemon.state, RUNS, 10)
    daemon.start()
    last = started[-1]
    # Right after READY=1 the last run waits for its turn (or, on a fast machine, ran):
    # cancelled, it ends so and is not resumed after.
    try:
        assert daemon.rpc("workflow.cancel", runId=last)["status"] == "cancelled"
    except RemoteError as exc:
        assert exc.code == -32004  # it completed first
    for run_id in started[:-1] + queued:
        assert daemon.wait_run(run_id)["status"] == "completed"
    for run_id in started[:-1]:
        resumed = daemon.entries(run_id, "resumed")
        assert [e["payload"] for e in resumed] == [{"reason": "nerved restarted", "attempt": 0}]
    for run_id in queued:
        assert not daemon.entries(run_id, "resumed")
    final = daemon.rpc("workflow.inspect", runId=last)
    assert final["status"] in ("cancelled", "completed")
    assert len(daemon.entries(last, "resumed")) <= 1  # resumed before the cancel, or never
    assert_runs_match_logs(daemon.state / "logs.db")
