"""The replay check through a real nerved: ``workflow.replay`` (and ``nervectl workflow
replay``) runs the current code's moderator over kept histories; a reload that changes a
workflow's code checks its active runs and warns of those it would send another way."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import Nerved, pid_alive, wait_until, write_package

from nervectl.client import RemoteError
from nerved.worker.timebox import MODERATOR_KILL, MODERATOR_TIMEOUT

# Three roles; the moderator asks FIRST, then SECOND, then ends. The second role waits for the
# file named by the payload's ``gate`` (when there is one), so a run can be held at step 2.
CODE = """
    import itertools, os, time
    from nerved import WorkflowDefinition

    FIRST, SECOND, LOOP = {first!r}, {second!r}, {loop!r}

    def role(name):
        def run(prompt, ctx):
            while prompt.get("gate") and not os.path.exists(prompt["gate"]):
                time.sleep(0.01)
            return {{"type": name + "_done", "n": prompt["n"]}}
        return run

    def moderate(thread, event):
        payload = thread.events[0]["payload"] or {{}}
        if event["type"] == "thread_start":
            return {{"role": FIRST, "prompt": {{"n": 1}}}}
        if event["type"] == FIRST + "_done":
            while LOOP == "python":
                pass
            if LOOP == "c":  # a loop in C that checks no signal: only the hard bound ends it
                any(itertools.repeat(False))
            return {{"role": SECOND, "prompt": {{"n": 2, "gate": payload.get("gate")}}}}
        return None

    workflow = WorkflowDefinition(
        roles={{name: role(name) for name in ("a", "b", "c")}}, moderate=moderate
    )
"""


def code(first: str = "a", second: str = "b", loop: str = "") -> str:
    return CODE.format(first=first, second=second, loop=loop)


@pytest.fixture
def daemon(nerved_factory) -> Nerved:
    return nerved_factory("workflows:\n  w: {}\n", workflows={"w": code()}).start()


def run_to_end(daemon: Nerved, payload: object = None) -> str:
    run_id = daemon.rpc("workflow.trigger", workflow="w", payload=payload)["runId"]
    with daemon.client(timeout=30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "completed", run
    return str(run_id)


def change(daemon: Nerved, **variant: object) -> None:
    write_package(daemon.root, "workflows", "w", code(**variant))  # type: ignore[arg-type]
    daemon.rpc("reload")  # applied when it answers (after an automatic one, if any)


def test_a_moderator_that_decides_otherwise_at_step_2_is_reported(daemon: Nerved) -> None:
    run_id = run_to_end(daemon)
    same = daemon.ctl("workflow", "replay", run_id[:8])
    assert same.returncode == 0, same.stderr
    assert "checked 1 run: the code nerved runs now decides as every history says" in same.stdout
    assert daemon.rpc("workflow.replay", runId=run_id) == {
        "checked": 1, "diverged": [], "skipped": [],
    }  # fmt: skip

    change(daemon, second="c")
    done = daemon.ctl("--json", "workflow", "replay", run_id)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == {
        "checked": 1,
        "diverged": [{"runId": run_id, "step": 2,
                      "logged": {"role": "b", "prompt": {"n": 2, "gate": None}},
                      "now": {"role": "c", "prompt": {"n": 2, "gate": None}}}],
        "skipped": [],
    }  # fmt: skip
    table = daemon.ctl("workflow", "replay", run_id)
    assert table.returncode == 1
    assert 'b {"n":2,"gate":null}' in table.stdout and 'c {"n":2,"gate":null}' in table.stdout
    assert "checked 1 run: 1 diverged" in table.stdout

    change(daemon, second="b")  # back as it was: every history agrees again
    assert daemon.ctl("workflow", "replay", run_id).returncode == 0


def test_the_newest_runs_of_a_workflow_any_status(daemon: Nerved) -> None:
    runs = [run_to_end(daemon) for _ in range(3)]
    change(daemon, first="c")
    done = daemon.ctl("--json", "workflow", "replay", "--workflow", "w")
    assert done.returncode == 1, done.stderr
    everything = json.loads(done.stdout)
    assert everything["checked"] == 3
    assert [d["runId"] for d in everything["diverged"]] == runs[::-1]  # newest first
    assert {d["step"] for d in everything["diverged"]} == {1}
    assert everything["diverged"][0]["now"] == {"role": "c", "prompt": {"n": 1}}
    newest = daemon.rpc("workflow.replay", workflow="w", limit=2)
    assert newest["checked"] == 2 and [d["runId"] for d in newest["diverged"]] == runs[:0:-1]


def test_a_looping_moderator_fails_its_run_check_and_the_daemon_stays(daemon: Nerved) -> None:
    run_id = run_to_end(daemon)
    change(daemon, loop="python")
    answer = daemon.rpc("workflow.replay", runId=run_id)
    (diverged,) = answer["diverged"]
    assert diverged["step"] == 2 and diverged["logged"] == {
        "role": "b",
        "prompt": {"n": 2, "gate": None},
    }
    assert f"did not return within {MODERATOR_TIMEOUT:g}s" in diverged["now"]["error"]
    assert daemon.rpc("status")["state"] == "running"
    wait_until(lambda: "replay" not in {w["kind"] for w in daemon.rpc("status")["workers"]})


def test_a_moderator_stuck_in_c_ends_the_check_with_why(daemon: Nerved) -> None:
    run_id = run_to_end(daemon)
    change(daemon, loop="c")
    done = daemon.ctl("workflow", "replay", run_id)
    assert done.returncode == 1
    assert (
        f"the replay's process ended before it was done: a moderator ran past"
        f" {MODERATOR_KILL:g}s and could not be interrupted"
    ) in done.stderr
    assert daemon.rpc("status")["state"] == "running"
    change(daemon)
    assert daemon.rpc("workflow.replay", runId=run_id)["diverged"] == []


def test_a_reload_warns_of_an_active_run_its_new_moderator_would_change(
    daemon: Nerved, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = daemon.rpc("workflow.trigger", workflow="w", payload={"gate": str(gate)})["runId"]
    wait_until(lambda: daemon.rpc("workflow.inspect", runId=run_id)["steps"] == 1)
    change(daemon, first="c")
    warning = (
        f"run {run_id} of w: the new code's moderator decides differently at step 1: logged"
        ' {"role": "a", "prompt": {"n": 1}}, now {"role": "c", "prompt": {"n": 1}}'
    )
    wait_until(lambda: warning in daemon.log(), what="the warning")
    gate.touch()  # the run goes on under its old worker, which drains
    with daemon.client(timeout=30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "completed"


def test_refusals(daemon: Nerved) -> None:
    assert daemon.ctl("workflow", "replay", "--workflow", "nope").returncode == 4
    assert daemon.ctl("workflow", "replay", "0123456789abcdef").returncode == 4
    assert daemon.ctl("workflow", "replay").returncode == 2
    assert daemon.ctl("workflow", "replay", "abcdefgh", "--workflow", "w").returncode == 2
    assert daemon.ctl("workflow", "replay", "abcdefgh", "--limit", "3").returncode == 2
    with daemon.client() as client:
        for params in ({}, {"runId": "abcdefgh", "workflow": "w"}, {"workflow": "w", "limit": 0}):
            with pytest.raises(RemoteError, match=r"runId|limit"):
                client.call("workflow.replay", params)
    none = daemon.rpc("workflow.replay", workflow="w")
    assert none == {"checked": 0, "diverged": [], "skipped": []}


def test_a_run_whose_history_cannot_be_read_is_skipped(daemon: Nerved) -> None:
    broken, fine = run_to_end(daemon), run_to_end(daemon)
    assert daemon.stop() == 0
    conn = sqlite3.connect(daemon.state / "logs.db")
    with conn:
        conn.execute(
            "UPDATE logs SET payload = '{not json' WHERE ref_id = ? AND type = 'step_complete'",
            (broken,),
        )
    conn.close()
    daemon.start()
    change(daemon, second="c")
    answer = daemon.rpc("workflow.replay", workflow="w")
    assert answer["checked"] == 1 and [d["runId"] for d in answer["diverged"]] == [fine]
    ((skipped),) = answer["skipped"]
    assert skipped["runId"] == broken and "cannot be read back" in skipped["reason"]
    shown = daemon.ctl("workflow", "replay", "--workflow", "w")
    assert shown.returncode == 1 and f"run {broken} not checked" in shown.stderr


def test_nerved_stops_with_a_check_under_way(daemon: Nerved) -> None:
    run_id = run_to_end(daemon)
    change(daemon, loop="c")  # the check's child spins for seconds before its hard bound
    command = [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket)]
    with subprocess.Popen(
        [*command, "workflow", "replay", run_id], stderr=subprocess.PIPE, text=True
    ) as replay:
        wait_until(lambda: "replay" in {w["kind"] for w in daemon.rpc("status")["workers"]})
        pid = next(w["pid"] for w in daemon.rpc("status")["workers"] if w["kind"] == "replay")
        assert daemon.stop() == 0
        _, stderr = replay.communicate(timeout=10)
    assert replay.returncode == 1 and "nerved is shutting down" in stderr
    assert not pid_alive(pid)
