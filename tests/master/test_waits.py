"""Runs that wait (issue 12), through a real nerved: ``nerved.wait_for`` and ``nerved.sleep``
park a run (``waiting``: its slot kept, no worker held), ``workflow.signal`` /
``nervectl workflow signal`` ends the wait, a deadline ends it without one, and all of it
holds across ``kill -9`` and restarts; replay sees the same decisions.

Each test synchronises on what nerved answers (a run's status, its entries, a worker's
pid); the only waits on the clock are those the test is about (a deadline passing).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import Nerved, inspect, status, wait_until, waiting

from nervectl.client import RemoteError

APPROVAL = """
    import os, time
    from nerved import WorkflowDefinition, wait_for, sleep

    def propose(prompt, ctx):
        gate = prompt.get("gate")
        if gate:
            open(gate + ".running", "w").close()
            while not os.path.exists(gate):
                time.sleep(0.01)
        return {"type": "proposed", "change": prompt.get("change")}

    def apply(prompt, ctx):
        return {"type": "applied", "by": prompt}

    def escalate(prompt, ctx):
        return {"type": "escalated"}

    def moderate(thread, event):
        kind = event["type"]
        options = thread.events[0]["payload"] or {}
        if kind == "thread_start":
            return {"role": "propose", "prompt": options}
        if kind == "proposed":
            if options.get("skip"):
                return None
            if options.get("sleep"):
                return sleep(options["sleep"])
            return wait_for("approve", timeout=options.get("timeout"))
        if kind == "wake":
            return wait_for("approve", timeout=options.get("timeout"))
        if kind == "signal":
            approvals = [e for e in thread.events if e["type"] == "signal"]
            if len(approvals) < options.get("approvals", 1):
                return wait_for("approve")
            return {"role": "apply", "prompt": [e["payload"] for e in approvals]}
        if kind == "wait_timeout":
            return {"role": "escalate", "prompt": None}
        return None

    workflow = WorkflowDefinition(
        roles={"propose": propose, "apply": apply, "escalate": escalate}, moderate=moderate
    )
"""

ASKS = """
    from nerved import WorkflowDefinition

    def moderate(thread, event):
        if thread.events[0]["payload"] == "loop":
            return {"sleep": 0}  # for ever: maxSteps ends it
        if event["type"] == "thread_start":
            return event["payload"]  # whatever the test says the moderator returns
        return None

    workflow = WorkflowDefinition(roles={"unused": lambda p, c: {}}, moderate=moderate)
"""
"""A moderator that returns its trigger payload as its first decision."""

CONFIG = """\
workflows:
  approval: {concurrency: 100, idleTimeout: 1s}
  single: {concurrency: 1}
  asks: {concurrency: 10, maxSteps: 3}
"""


@pytest.fixture
def daemon(nerved_factory) -> Nerved:
    workflows = {"approval": APPROVAL, "single": APPROVAL, "asks": ASKS}
    return nerved_factory(CONFIG, None, workflows).start()


def types(daemon: Nerved, run_id: str) -> list[str]:
    return [e["type"] for e in daemon.entries(run_id)]


def signal(daemon: Nerved, run_id: str, name: str = "approve", payload: Any = None) -> Any:
    return daemon.rpc("workflow.signal", runId=run_id, name=name, payload=payload)


def test_an_approval_waits_holding_no_worker_and_goes_on_at_the_signal(daemon: Nerved) -> None:
    run_id = daemon.trigger("approval", {"change": "resize /var"})
    run = waiting(daemon, run_id)
    assert (run["waitFor"], run["wakeAt"], run["steps"]) == ("approve", None, 1)
    waited = daemon.entries(run_id, "waiting")[0]["payload"]
    assert waited == {"wait": "approve", "timeout": None, "until": None}
    listed = daemon.ctl("workflow", "list")
    assert listed.returncode == 0 and "signal 'approve'" in listed.stdout, listed.stdout
    shown = daemon.ctl("workflow", "inspect", run_id)
    assert "waits for signal 'approve', no deadline" in shown.stdout, shown.stdout
    # It holds no worker: with nothing else to run, the workflow's worker exits when idle.
    wait_until(lambda: "approval" not in daemon.worker_pids("workflow"), what="an idle worker")

    done = daemon.ctl("workflow", "signal", run_id[:8], "approve", "--payload", '{"by": "ann"}')
    assert done.returncode == 0, done.stderr
    assert "delivered" in done.stdout
    final = daemon.wait_run(run_id)
    assert (final["status"], final["steps"]) == ("completed", 2)
    assert types(daemon, run_id) == [
        "started", "step_complete", "waiting", "signal", "input", "step_complete", "completed",
    ]  # fmt: skip
    signal_entry, delivered = daemon.entries(run_id, "signal")[0], daemon.entries(run_id, "input")
    assert signal_entry["payload"] == {"name": "approve", "payload": {"by": "ann"}}
    assert delivered[0]["payload"] == {
        "event": {"type": "signal", "name": "approve", "payload": {"by": "ann"}},
        "signal": signal_entry["id"],
    }
    applied = daemon.entries(run_id, "step_complete")[1]["payload"]
    assert applied["event"] == {"type": "applied", "by": [{"by": "ann"}]}
    # The inputs are logged: replaying the history gives the same decisions.
    assert daemon.rpc("workflow.replay", runId=run_id) == {
        "checked": 1,
        "diverged": [],
        "skipped": [],
    }
    daemon.healthy()


def test_a_waiting_run_survives_kill_9_and_takes_its_signal_after(daemon: Nerved) -> None:
    run_id = daemon.trigger("approval", {"timeout": "1h"})
    before = waiting(daemon, run_id)
    daemon.kill()
    daemon.start()
    after = inspect(daemon, run_id)
    assert (after["status"], after["waitFor"], after["wakeAt"]) == (
        "waiting", "approve", before["wakeAt"],
    )  # fmt: skip
    assert "resumed" not in types(daemon, run_id)  # nothing was running: nothing to resume
    assert signal(daemon, run_id, payload="bob") == {"accepted": True, "delivered": True}
    assert daemon.wait_run(run_id)["status"] == "completed"
    assert daemon.rpc("workflow.replay", runId=run_id)["diverged"] == []
    daemon.healthy()


def test_a_deadline_that_passed_while_nerved_was_down_fires_at_start(daemon: Nerved) -> None:
    first = daemon.trigger("approval", {"timeout": "2s"})
    second = daemon.trigger("approval", {"timeout": "1s"})
    wake_at = {run_id: waiting(daemon, run_id)["wakeAt"] for run_id in (first, second)}
    assert daemon.stop() == 0
    while time.time() * 1000 < max(wake_at.values()) + 200:  # what this test is about
        time.sleep(0.1)
    daemon.start()
    for run_id in (first, second):
        assert daemon.wait_run(run_id)["status"] == "completed"
        (timed_out,) = daemon.entries(run_id, "input")
        assert timed_out["payload"] == {"event": {"type": "wait_timeout", "name": "approve"}}
        assert timed_out["ts"] >= wake_at[run_id]
        assert daemon.entries(run_id, "step_complete")[-1]["payload"]["role"] == "escalate"
    # In the order of their deadlines: the second run's came first.
    ids = {run_id: daemon.entries(run_id, "input")[0]["id"] for run_id in (first, second)}
    assert ids[second] < ids[first]
    daemon.healthy()


def test_a_deadline_fires_on_time_while_nerved_runs(daemon: Nerved) -> None:
    run_id = daemon.trigger("approval", {"timeout": "1500ms"})
    wake_at = waiting(daemon, run_id)["wakeAt"]
    assert daemon.wait_run(run_id)["status"] == "completed"
    (timed_out,) = daemon.entries(run_id, "input")
    assert wake_at <= timed_out["ts"] <= wake_at + 1000


def test_a_sleep_wakes_the_run(daemon: Nerved) -> None:
    run_id = daemon.trigger("approval", {"sleep": "1s"})
    run = waiting(daemon, run_id)
    assert run["waitFor"] is None and run["wakeAt"] is not None
    assert daemon.entries(run_id, "waiting")[0]["payload"] == {
        "wait": None, "sleep": 1000, "until": run["wakeAt"],
    }  # fmt: skip
    # After the wake, it waits for the approval.
    wait_until(lambda: inspect(daemon, run_id)["waitFor"] == "approve", what="the next wait")
    assert signal(daemon, run_id)["delivered"] is True
    assert daemon.wait_run(run_id)["status"] == "completed"
    inputs = [e["payload"]["event"]["type"] for e in daemon.entries(run_id, "input")]
    assert inputs == ["wake", "signal"]
    assert daemon.rpc("workflow.replay", runId=run_id)["diverged"] == []


def test_a_signal_sent_before_the_wait_is_pending_then_delivered(
    daemon: Nerved, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = daemon.trigger("approval", {"gate": str(gate), "approvals": 2})
    wait_until(lambda: Path(f"{gate}.running").exists(), what="the first role")
    assert signal(daemon, run_id, payload="ann") == {"accepted": True, "delivered": False}
    assert signal(daemon, run_id, "other", 1)["delivered"] is False
    assert signal(daemon, run_id, payload="bob")["delivered"] is False
    pending = inspect(daemon, run_id)["pendingSignals"]
    assert [(p["name"], p["payload"]) for p in pending] == [
        ("approve", "ann"), ("other", 1), ("approve", "bob"),
    ]  # fmt: skip
    gate.touch()
    # Both approvals are taken in arrival order, one per wait; "other" stays pending.
    assert daemon.wait_run(run_id)["status"] == "completed"
    applied = daemon.entries(run_id, "step_complete")[-1]["payload"]
    assert applied["event"]["by"] == ["ann", "bob"]
    left = inspect(daemon, run_id)["pendingSignals"]
    assert [(p["name"], p["payload"]) for p in left] == [("other", 1)]
    text = daemon.ctl("workflow", "inspect", run_id)
    assert text.returncode == 0 and "other" in text.stdout
    daemon.healthy()


def test_signals_a_run_cannot_take_are_refused(daemon: Nerved, tmp_path: Path) -> None:
    run_id = daemon.trigger("approval", {"timeout": "0s"})
    assert daemon.wait_run(run_id)["status"] == "completed"
    with pytest.raises(RemoteError) as final:
        signal(daemon, run_id)
    assert final.value.code == -32004 and final.value.data == {"status": "completed"}
    done = daemon.ctl("workflow", "signal", run_id, "approve")
    assert done.returncode == 1 and "final" in done.stderr
    with pytest.raises(RemoteError) as missing:
        signal(daemon, "f" * 32)
    assert missing.value.code == -32001
    assert daemon.ctl("workflow", "signal", "f" * 32, "approve").returncode == 4
    live = daemon.trigger("approval", {"timeout": "1h"})
    waiting(daemon, live)
    for name in ("", "x" * 257, "a\nb", 7):
        with pytest.raises(RemoteError) as bad:
            daemon.rpc("workflow.signal", runId=live, name=name)
        assert bad.value.code == -32602, name
    assert status(daemon, live) == "waiting" and inspect(daemon, live)["pendingSignals"] == []
    daemon.healthy()


def test_cancel_stops_a_wait_and_its_deadline(daemon: Nerved) -> None:
    run_id = daemon.trigger("single", {"timeout": "1500ms"})
    waiting(daemon, run_id)
    # Concurrency 1: the waiting run holds the slot, so the next one queues behind it.
    queued = daemon.trigger("single", {"timeout": "1h"})
    assert status(daemon, queued) == "queued"
    # A queued run takes signals too: pending until it waits for them.
    assert signal(daemon, queued, payload="early")["delivered"] is False
    cancelled = daemon.rpc("workflow.cancel", runId=run_id, reason="not needed")
    assert cancelled["status"] == "cancelled"
    # Its slot went to the queued run, whose wait took the pending signal at once.
    assert daemon.wait_run(queued)["status"] == "completed"
    assert daemon.entries(queued, "step_complete")[-1]["payload"]["event"]["by"] == ["early"]
    time.sleep(2)  # past the cancelled run's deadline: nothing more happens to it
    assert types(daemon, run_id)[-1] == "cancelled"
    daemon.healthy()


def test_a_removed_workflow_drops_its_waiting_runs(daemon: Nerved) -> None:
    run_id = daemon.trigger("single", {"timeout": "1h"})
    waiting(daemon, run_id)
    config = daemon.root / "nerve.yaml"
    config.write_text(CONFIG.replace("  single: {concurrency: 1}\n", ""))
    daemon.rpc("reload")
    run = daemon.wait_run(run_id)
    assert run["status"] == "dropped" and "removed" in run["error"]
    daemon.healthy()


def _master_counters(pid: int) -> tuple[int, float]:
    """(voluntary context switches, CPU seconds) of a process: each wake-up of a process
    that sleeps in a select() is one voluntary switch."""
    status = Path(f"/proc/{pid}/status").read_text()
    switches = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("voluntary_ctxt_switches")))  # fmt: skip
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return switches, cpu


def _idle_window(daemon: Nerved, seconds: float) -> tuple[int, float]:
    before = _master_counters(daemon.pid)
    time.sleep(seconds)  # the window measured
    after = _master_counters(daemon.pid)
    return after[0] - before[0], after[1] - before[1]


def test_a_hundred_sleeping_runs_leave_the_master_idle(daemon: Nerved) -> None:
    """No wake-up between deadlines: the master's wake-ups over a window are the same with
    100 runs sleeping for an hour as with none (its loop's own tick), and its CPU time is
    nil. A timer or poll per run would show as 100 more wake-ups each second."""
    wait_until(lambda: not daemon.worker_pids("workflow"), what="no worker")
    baseline, _ = _idle_window(daemon, 3)
    runs = [daemon.trigger("approval", {"sleep": "1h"}) for _ in range(100)]
    wait_until(
        lambda: (
            {r["status"] for r in daemon.rpc("workflow.list", workflow="approval")} == {"waiting"}
        ),
        what="100 waiting runs",
    )
    wait_until(lambda: not daemon.worker_pids("workflow"), what="the idle worker to exit")
    switches, cpu = _idle_window(daemon, 3)
    print(f"master over 3 s: {baseline} wake-ups with no run, {switches} with 100 sleeping;"
          f" {cpu * 1000:.0f} ms CPU")  # fmt: skip
    assert switches <= baseline + 3
    assert cpu <= 0.05
    assert len(daemon.rpc("workflow.list", workflow="approval")) == len(runs)


@pytest.mark.parametrize(
    ("decision", "error"),
    [({"wait": ""}, "the name of a wait must not be empty"),
     ({"wait": "x" * 300}, "at most 256"),
     ({"wait": "x", "timeout": -1}, "'timeout' is -1 ms"),
     ({"sleep": True}, "'sleep' is milliseconds (a number), not True"),
     ({"sleep": 1e300}, "it must be 0 to"),
     ({"wait": "x", "role": "unused"}, "a wait has the keys"),
     ({"sleep": "1h"}, "'sleep' is milliseconds")],
)  # fmt: skip
def test_a_wait_nerve_refuses_fails_its_run_alone(
    daemon: Nerved, decision: dict[str, Any], error: str
) -> None:
    run = daemon.wait_run(daemon.trigger("asks", decision))
    assert run["status"] == "failed" and "moderator returned" in run["error"], run
    assert error in run["error"], run["error"]
    daemon.healthy()


def test_waits_count_against_max_steps(daemon: Nerved) -> None:
    """A moderator that sleeps in a loop ends at maxSteps, as one that loops over roles."""
    run = daemon.wait_run(daemon.trigger("asks", "loop"))
    assert run["status"] == "failed"
    assert run["error"] == ("exceeded maxSteps (3): the moderator asked for step 4 (a wait)"), run[
        "error"
    ]
    assert [e["payload"]["event"] for e in daemon.entries(run["runId"], "input")] == [
        {"type": "wake"}
    ] * 3
    daemon.healthy()


def test_the_worker_goes_idle_once_the_last_run_on_it_ends_beside_a_waiting_one(
    daemon: Nerved, tmp_path: Path
) -> None:
    """A run waits while another still runs on the worker; when that one ends, no run is on
    the worker and it exits after idleTimeout, though a run (waiting) is active."""
    waiter = daemon.trigger("approval", {"timeout": "1h"})
    waiting(daemon, waiter)
    gate = tmp_path / "gate"
    busy = daemon.trigger("approval", {"gate": str(gate), "skip": True})
    wait_until(lambda: Path(f"{gate}.running").exists(), what="the second run's role")
    gate.touch()
    assert daemon.wait_run(busy)["status"] == "completed"  # no run is on the worker now
    wait_until(lambda: "approval" not in daemon.worker_pids("workflow"), what="an idle worker")
    assert signal(daemon, waiter)["delivered"] is True  # a new worker takes it on
    assert daemon.wait_run(waiter)["status"] == "completed"
