"""A run's last step and its end share one commit (issue 14): the worker asks its pure
moderator before it sends the step, and a decision to end goes with the step.

So a run is never seen, by a reader or after a crash, with its last step but not completed:
it is before the step (resumed, the role runs again) or completed with it.
"""

from __future__ import annotations

import json
import sqlite3

from support import Nerved, assert_runs_match_logs, wait_until

from nervectl.client import Unreachable

# payload["steps"] steps of one role; a step marked "kill" ends the master with SIGKILL
# "delay" seconds after the role returns, from a timer of the worker: the kill lands
# anywhere from before the step is sent to after it is committed. Only the master that
# triggered the run is killed (a resumed run's steps kill nothing).
STEPS = """
    import os, signal, threading
    from nerved import WorkflowDefinition

    def step(prompt, ctx):
        if prompt["kill"] and os.getppid() == prompt["master"]:
            kill = threading.Timer(prompt["delay"], os.kill, (prompt["master"], signal.SIGKILL))
            kill.start()
        return {"type": "did", "n": prompt["n"]}

    def moderate(thread, event):
        job = thread.events[0]["payload"]
        n = sum(1 for e in thread.events if e["type"] == "did")
        if n >= job["steps"]:
            return None
        last = n == job["steps"] - 1
        return {"role": "step", "prompt": {"n": n, "kill": last and job["kill"],
                "master": job["master"], "delay": job["delay"]}}

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def job(daemon: Nerved, steps: int, *, kill: bool = False, delay: float = 0.0) -> dict:
    return {"steps": steps, "kill": kill, "master": daemon.pid, "delay": delay}


def commits(daemon: Nerved) -> int:
    return int(daemon.rpc("status")["commits"])


def test_a_run_of_three_steps_costs_four_commits(nerved_factory):
    daemon = nerved_factory("workflows:\n  steps: {}\n", workflows={"steps": STEPS}).start()
    daemon.wait_run(daemon.trigger("steps", job(daemon, 3)))  # the worker is forked and ready
    for _ in range(5):
        before = commits(daemon)
        run_id = daemon.trigger("steps", job(daemon, 3))
        assert daemon.wait_run(run_id)["status"] == "completed"
        # The trigger, then each step: the last one with the run's end (five before issue 14).
        assert commits(daemon) - before == 4
        entries = daemon.entries(run_id)
        assert [e["type"] for e in entries][-2:] == ["step_complete", "completed"]
    assert_runs_match_logs(daemon.state / "logs.db")


def stored(daemon: Nerved) -> dict[str, tuple[str, int, int]]:
    """Every run's (status, steps it asked for, step_complete entries), read from logs.db."""
    conn = sqlite3.connect(f"file:{daemon.state / 'logs.db'}?mode=ro", uri=True)
    try:
        runs = {
            run_id: (status, json.loads(payload)["steps"], 0)
            for run_id, status, payload in conn.execute(
                "SELECT run_id, status, trigger_payload FROM workflow_runs"
            )
        }
        for (run_id,) in conn.execute(
            "SELECT ref_id FROM logs WHERE source = 'workflow' AND type = 'step_complete'"
        ):
            status, steps, done = runs[run_id]
            runs[run_id] = (status, steps, done + 1)
    finally:
        conn.close()
    return runs


def test_a_master_killed_right_after_a_last_step_never_leaves_it_without_the_end(
    nerved_factory,
):
    daemon = nerved_factory(
        "workflows:\n  steps: {concurrency: 8, overflow: queue, maxQueue: 100}\n",
        workflows={"steps": STEPS},
    )
    triggered: list[str] = []
    for round_ in range(12):
        daemon.start()
        with daemon.client() as client:  # each kills 0 to 3 ms after its last role returns
            for i in range(8):
                payload = job(daemon, 1 + i % 2, kill=True, delay=(round_ * 8 + i) / 32_000)
                try:
                    answer = client.call("workflow.trigger", {"workflow": "steps",
                                                              "payload": payload})  # fmt: skip
                except Unreachable:  # killed already by an earlier run of this round
                    break
                triggered.append(answer["runId"])
        daemon.wait(timeout=20)  # killed by one of its runs
        for run_id, (status, steps, done) in stored(daemon).items():
            assert done <= steps, run_id
            if done == steps:  # its last step is durable: so is its end, in the same commit
                assert status == "completed", (run_id, status, done)
            else:
                assert status in ("queued", "started"), (run_id, status, done)
    daemon.start()
    wait_until(
        lambda: all(status == "completed" for status, _, _ in stored(daemon).values()),
        timeout=60,
        interval=0.1,
        what="every run resumed to its end",
    )
    runs = stored(daemon)
    assert set(triggered) <= set(runs)  # and maybe one whose answer the kill took
    assert all(done == steps for _, steps, done in runs.values())
    assert_runs_match_logs(daemon.state / "logs.db")


RAISES = """
    from nerved import WorkflowDefinition

    def step(prompt, ctx):
        return {"type": "did"}

    def moderate(thread, event):
        if event["type"] == "did":
            raise ValueError("no more")
        return {"role": "step", "prompt": None}

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def test_a_moderator_that_raises_on_a_step_fails_the_run_once_the_step_is_recorded(
    nerved_factory,
):
    daemon = nerved_factory("workflows:\n  raises: {}\n", workflows={"raises": RAISES}).start()
    run = daemon.wait_run(daemon.trigger("raises"))
    assert run["status"] == "failed"
    assert "moderator raised ValueError: no more" in run["error"]
    kinds = [e["type"] for e in daemon.entries(run["runId"])]
    assert kinds[-2:] == ["step_complete", "failed"], kinds
    assert_runs_match_logs(daemon.state / "logs.db")
