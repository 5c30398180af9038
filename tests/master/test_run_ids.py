"""Run ids as nerved hands them out, and runs of older files found under the new index.

A run id begins with 8 random hex characters (what ``workflow list`` shows and an operator
types), then its creation time; logs.db files entries under the id turned by 8 characters
(schema 6, nerved.store.refs), so runs of one time share index pages.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid

from support import Nerved

from nerved.store.schema import MIGRATIONS

ONE_STEP = """
    from nerved import WorkflowDefinition

    def echo(prompt, ctx):
        return {"type": "echoed", "payload": prompt}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "echo", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"echo": echo}, moderate=moderate)
"""
CONFIG = "workflows:\n  echo: {}\n"


def test_run_ids_are_random_first_then_time_and_prefixes_name_them(nerved_factory) -> None:
    daemon: Nerved = nerved_factory(CONFIG, workflows={"echo": ONE_STEP}).start()
    ids = [daemon.trigger("echo", {"n": n}) for n in range(20)]
    for run_id in ids:
        run = daemon.wait_run(run_id)
        assert run["status"] == "completed"
        assert re.fullmatch(r"[0-9a-f]{32}", run_id)
        assert run["createdAt"] - 1000 <= int(run_id[8:20], 16) <= run["createdAt"]
        short = daemon.rpc("workflow.inspect", runId=run_id[:8])
        assert short["runId"] == run_id
        steps = [e for e in short["events"] if e["type"] == "step_complete"]
        assert [s["payload"]["event"]["payload"] for s in steps] == [{"n": ids.index(run_id)}]
    assert len({run_id[:8] for run_id in ids}) == len(ids)
    listed = daemon.ctl("workflow", "list", "--all")
    assert all(run_id[:8] in listed.stdout for run_id in ids), listed.stdout
    daemon.healthy()


def test_runs_of_a_schema_5_file_keep_their_history_and_can_be_retried(nerved_factory) -> None:
    """A file of the release before: uuid4 ids, entries under the old index. The migration
    indexes them anew; inspect, logs.query and a retry from a step read them."""
    daemon: Nerved = nerved_factory(CONFIG, workflows={"echo": ONE_STEP})
    daemon.state.mkdir(parents=True, exist_ok=True)
    old = uuid.uuid4().hex
    conn = sqlite3.connect(daemon.state / "logs.db")
    for number, script in enumerate(MIGRATIONS[:5], 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    step = '{"role":"echo","prompt":{"n":7},"event":{"type":"echoed","payload":{"n":7}}}'
    with conn:
        conn.execute(
            "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at,"
            " trigger_payload, steps) VALUES (?, 'echo', 'completed', 1, 3, '{\"n\":7}', 1)",
            (old,),
        )
        conn.executemany(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('workflow', ?, ?, ?, ?)",
            [
                ("started", old, '{"n":7}', 1),
                ("step_complete", old, step, 2),
                ("completed", old, None, 3),
            ],
        )
    conn.close()
    daemon.start()
    inspected = daemon.rpc("workflow.inspect", runId=old[:8])
    assert [e["type"] for e in inspected["events"]] == ["started", "step_complete", "completed"]
    logged = daemon.rpc("logs.query", source="workflow", runId=old)
    assert [e["type"] for e in logged] == ["started", "step_complete", "completed"]
    retried = daemon.rpc("workflow.retry", runId=old, fromStep=1)
    run = daemon.wait_run(retried["runId"])
    assert run["status"] == "completed" and run["steps"] == 1
    copied = [e for e in daemon.entries(retried["runId"]) if e["type"] == "step_complete"]
    assert copied[0]["payload"] == json.loads(step)
    daemon.healthy()
