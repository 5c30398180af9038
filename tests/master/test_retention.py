"""logs.db stays bounded: final runs and sense entries are pruned, active runs never."""

from __future__ import annotations

from support import assert_runs_match_logs, wait_until

WORKFLOW = """
    import os
    from nerved import WorkflowDefinition

    def step(prompt, ctx):
        return {"type": "done"}

    async def hold(prompt, ctx):
        import asyncio
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "held"}

    def moderate(thread, event):
        payload = thread.events[0]["payload"] or {}
        if event["type"] == "thread_start":
            return {"role": "hold", "prompt": payload} if "gate" in payload else {"role": "step", "prompt": None}
        return None

    workflow = WorkflowDefinition(roles={"step": step, "hold": hold}, moderate=moderate)
"""


def test_old_runs_and_sense_entries_are_pruned_but_active_runs_stay(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        """
        senses:
          tick: {}
        reflexes:
          - {kind: sense, sense: tick, interval: 100ms}
        workflows:
          w: {concurrency: 5, drainTimeout: 500ms}
        retention:
          runs: {maxCount: 5, maxAge: null}
          signals: {maxAge: 500ms}
        """,
        {"tick": "def compute(ctx):\n    return {'t': 1}\n"},
        {"w": WORKFLOW},
    ).start()
    held = daemon.rpc("workflow.trigger", workflow="w", payload={"gate": str(gate)})["runId"]
    done = []
    for _ in range(12):
        run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
        daemon.rpc("workflow.wait", runId=run_id, timeout=10)
        done.append(run_id)
    wait_until(lambda: len(daemon.rpc("logs.query", source="sense", type="signal")) >= 8)
    daemon.stop()
    daemon.start()  # the first retention pass comes a second after start
    remaining = wait_until(
        lambda: len(r := daemon.rpc("workflow.list", status="completed", limit=100)) == 5 and r,
        what="pruning to 5 final runs",
    )
    assert {r["runId"] for r in remaining} == set(done[-5:])
    assert daemon.rpc("logs.query", refId=done[0]) == []  # its log entries went with it
    assert daemon.rpc("workflow.list")[0]["runId"] == held  # active: never pruned
    oldest_signal = daemon.rpc("logs.query", source="sense", type="signal", limit=1000)[0]
    assert oldest_signal["ts"] > daemon.rpc("logs.query", refId=held)[0]["ts"]
    gate.touch()
    assert daemon.rpc("workflow.wait", runId=held, timeout=10)["status"] == "completed"
    assert_runs_match_logs(daemon.state / "logs.db")
