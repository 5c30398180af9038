"""A new user's re-attack on runs that wait (issue 12), through real nerved processes: stops
while runs wait and signals arrive, reloads that remove a workflow under runs in every state,
workers killed after a signal, the idle worker, cron runs that wait. Each test states what
the docs promise; a test that fails is a defect found."""

from __future__ import annotations

import os
import signal as signals
import time
from pathlib import Path
from typing import Any

from support import Nerved, inspect, status, wait_until, waiting
from test_waits_attack import SCRIPTED

HOLD = "{{'role': 'work', 'prompt': {{'gate': {gate!r}}}}}"


def run(daemon: Nerved, workflow: str, *script: str) -> str:
    return daemon.trigger(workflow, {"script": list(script)})


def signal(daemon: Nerved, run_id: str, name: str = "go", payload: Any = None) -> Any:
    return daemon.rpc("workflow.signal", runId=run_id, name=name, payload=payload)


def inputs(daemon: Nerved, run_id: str) -> list[dict[str, Any]]:
    return [e["payload"]["event"] for e in daemon.entries(run_id, "input")]


def types(daemon: Nerved, run_id: str) -> list[str]:
    return [e["type"] for e in daemon.entries(run_id)]


def test_signals_and_deadlines_across_a_stop_are_each_taken_once_at_the_next_start(
    nerved_factory, tmp_path: Path
) -> None:
    """SIGTERM while runs wait and a step holds the drain. A signal during the drain is
    refused (-32002, nothing logged) and taken once sent again after the restart; a signal
    sent before the stop to a run whose step was in flight is pending when that run parks
    during the drain, and delivered at the next start; a deadline that passed during the
    drain fires at start. Nothing lost or doubled."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 10, drainTimeout: 20s}\n", None, {"w": SCRIPTED}
    ).start()
    gate = str(tmp_path / "gate")
    then = "{'role': 'work', 'prompt': 'after'}"
    signalled = run(daemon, "w", "wait_for('go', timeout='1h')", then)
    timed = run(daemon, "w", "wait_for('go', timeout='2s')", then)
    parker = run(daemon, "w", HOLD.format(gate=gate), "wait_for('go', timeout='1s')", then)
    waiting(daemon, signalled)
    waiting(daemon, timed)
    wait_until(lambda: Path(gate + ".running").exists(), what="the step holding the drain")
    assert signal(daemon, parker, payload="p1")["delivered"] is False  # its step runs
    daemon.signal(signals.SIGTERM)
    wait_until(lambda: "stopping" in daemon.log(), what="the stop")
    refused = daemon.ctl("workflow", "signal", signalled, "go", "--payload", '"s0"')
    assert refused.returncode == 1 and "shutting down" in refused.stderr, refused
    time.sleep(2.5)  # timed's deadline passes during the drain
    Path(gate).touch()  # parker's step ends; its moderator waits, its signal pending
    assert daemon.wait() == 0
    time.sleep(1.2)  # parker's own deadline passes while nerved is down: its signal came first
    daemon.start()
    assert signal(daemon, signalled, payload="s1")["delivered"] is True
    for run_id in (signalled, timed, parker):
        final = daemon.wait_run(run_id)
        assert (final["status"], final["error"]) == ("completed", None), (run_id, final)
    assert inputs(daemon, signalled) == [{"type": "signal", "name": "go", "payload": "s1"}]
    assert inputs(daemon, parker) == [{"type": "signal", "name": "go", "payload": "p1"}]
    assert inputs(daemon, timed) == [{"type": "wait_timeout", "name": "go"}]
    assert len(daemon.entries(signalled, "signal")) == 1  # the refused one left nothing
    for run_id in (signalled, timed, parker):
        kinds = types(daemon, run_id)
        assert kinds.count("step_complete") == (2 if run_id == parker else 1), kinds
        assert kinds.count("waiting") == 1 and kinds.count("completed") == 1, kinds
        assert "crashed" not in kinds, kinds
        assert not inspect(daemon, run_id).get("pendingSignals")
    daemon.healthy()


def test_a_reload_removing_a_workflow_drops_its_runs_in_flight_waiting_and_queued(
    nerved_factory, tmp_path: Path
) -> None:
    """The guide: "a workflow removed by a reload drops its waiting runs (dropped)"; a run
    whose step is in flight and whose moderator then waits is dropped when it parks (the
    fix of 656dc1a); a queued run is dropped. None stays ``started`` or ``waiting``."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 2, drainTimeout: 30s}\n  keep: {}\n", None,
        {"w": SCRIPTED, "keep": SCRIPTED},
    ).start()  # fmt: skip
    gate = str(tmp_path / "gate")
    waiter = run(daemon, "w", "wait_for('go', timeout='1h')")
    waiting(daemon, waiter)
    mid = run(daemon, "w", HOLD.format(gate=gate), "wait_for('go', timeout='1s')", "None")
    wait_until(lambda: Path(gate + ".running").exists(), what="the step in flight")
    queued = run(daemon, "w", "None")
    assert status(daemon, queued) == "queued"
    assert signal(daemon, mid)["delivered"] is False  # pending for the wait to come
    (daemon.root / "nerve.yaml").write_text("workflows:\n  keep: {}\n")
    assert daemon.rpc("reload")["changed"] == ["workflow w removed"]
    Path(gate).touch()
    for run_id in (waiter, mid, queued):
        final = daemon.wait_run(run_id, timeout=15)
        assert final["status"] == "dropped", (run_id, final)
    # The pending signal was not taken by the removed flow's wait: the run did not go on.
    assert inputs(daemon, mid) == [], inputs(daemon, mid)
    daemon.healthy()
    assert daemon.stop() == 0
    daemon.start()
    for run_id in (waiter, mid, queued):
        assert status(daemon, run_id) == "dropped"
    daemon.healthy()


def test_a_worker_killed_right_after_a_signal_resumes_the_run_once(
    nerved_factory, tmp_path: Path
) -> None:
    """kill -9 of the worker while the step after a delivered signal runs: the run is
    resumed (an attempt) and completes once, the signal's input logged once."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 5, idleTimeout: 30s}\n", None, {"w": SCRIPTED}
    ).start()
    gate = str(tmp_path / "gate")
    run_id = run(daemon, "w", "wait_for('go', timeout='1h')", HOLD.format(gate=gate))
    waiting(daemon, run_id)
    assert signal(daemon, run_id, payload="once")["delivered"] is True
    wait_until(lambda: Path(gate + ".running").exists(), what="the step after the signal")
    os.kill(daemon.worker_pids("workflow")["w"], signals.SIGKILL)
    Path(gate).touch()
    final = daemon.wait_run(run_id)
    assert (final["status"], final["attempts"]) == ("completed", 1), final
    assert inputs(daemon, run_id) == [{"type": "signal", "name": "go", "payload": "once"}]
    kinds = types(daemon, run_id)
    assert kinds.count("completed") == 1 and kinds.count("step_complete") == 1, kinds
    daemon.healthy()


def test_a_worker_killed_at_once_after_a_signal_resumes_the_run_once(
    nerved_factory, tmp_path: Path
) -> None:
    """As above, but the kill comes as soon as the answer does, before the worker has the
    run (or as it takes it): same outcome, for several runs in turn."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 20, idleTimeout: 30s}\n", None, {"w": SCRIPTED}
    ).start()
    ids = [run(daemon, "w", "wait_for('go', timeout='1h')", "{'role': 'work', 'prompt': 2}")
           for _ in range(5)]  # fmt: skip
    for run_id in ids:
        waiting(daemon, run_id)
    for n, run_id in enumerate(ids):
        if "w" not in daemon.worker_pids("workflow"):
            # The run before completed before the kill: that worker died idle, and none is
            # forked until work comes. A run brings one up, to be killed in its turn.
            warm = run(daemon, "w", "{'role': 'work', 'prompt': 'warm'}")
            assert daemon.wait_run(warm)["status"] == "completed"
        pid = wait_until(lambda: daemon.worker_pids("workflow").get("w"), what="a worker")
        assert signal(daemon, run_id, payload=n)["delivered"] is True
        os.kill(pid, signals.SIGKILL)
        final = daemon.wait_run(run_id)
        assert final["status"] == "completed", final
        assert inputs(daemon, run_id) == [{"type": "signal", "name": "go", "payload": n}]
        assert types(daemon, run_id).count("completed") == 1
    daemon.healthy()


def test_after_the_idle_worker_exits_a_signal_gets_a_new_worker(nerved_factory) -> None:
    """Runs wait; another completes; the worker exits after idleTimeout; then a signal: a
    new worker takes the run. Then again, the signal coming just as the worker goes idle."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 10, idleTimeout: 1s, drainTimeout: 2s}\n", None,
        {"w": SCRIPTED},
    ).start()  # fmt: skip
    a = run(daemon, "w", "wait_for('go', timeout='1h')", "{'role': 'work', 'prompt': 'a'}")
    b = run(daemon, "w", "wait_for('go', timeout='1h')", "{'role': 'work', 'prompt': 'b'}")
    waiting(daemon, a)
    waiting(daemon, b)
    first = daemon.worker_pids("workflow").get("w")
    done = run(daemon, "w", "{'role': 'work', 'prompt': 'done'}")
    assert daemon.wait_run(done)["status"] == "completed"
    wait_until(lambda: "w" not in daemon.worker_pids("workflow"), what="the idle worker's exit")
    assert signal(daemon, a)["delivered"] is True
    assert daemon.wait_run(a)["status"] == "completed"
    second = daemon.worker_pids("workflow").get("w")
    assert second is not None and second != first
    # The worker is idle again now (b waits): signal b at about the moment it would exit.
    time.sleep(0.95)
    assert signal(daemon, b)["delivered"] is True
    assert daemon.wait_run(b, timeout=15)["status"] == "completed"
    daemon.healthy()


CRON_WAITS = """\
workflows:
  nightly: {concurrency: 1, idleTimeout: 1s}
reflexes:
  - kind: workflow
    workflow: nightly
    cron: "30 * * * *"
    timezone: UTC
    catchUp: true
"""

NIGHTLY = """
    from nerved import WorkflowDefinition, wait_for

    def work(prompt, ctx):
        return {"type": "worked"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": event["payload"]}
        if event["type"] == "worked":
            return wait_for("go", timeout="1h")
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def test_a_cron_run_that_waits_holds_its_slot_and_catch_up_queues_behind_it(
    nerved_factory,
) -> None:
    """A cron run waits for a signal across a downtime over two firings: catchUp fires once
    at start; with concurrency 1 the made-up run queues behind the waiting one, and both
    complete once signalled. schedule.list shows the made-up firing's run."""
    daemon = nerved_factory(CRON_WAITS, None, {"nightly": NIGHTLY})
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T10:29:58+00:00"}
    daemon.start()
    [first] = wait_until(
        lambda: daemon.rpc("workflow.list", workflow="nightly", all=True), what="the firing"
    )
    waiting(daemon, first["runId"])
    assert daemon.stop() == 0
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T12:45:00+00:00"}  # 11:30 and 12:30 missed
    daemon.start()
    runs = wait_until(
        lambda: [r for r in daemon.rpc("workflow.list", workflow="nightly", all=True)
                 if r["runId"] != first["runId"]],
        what="the catch-up",
    )  # fmt: skip
    [made_up] = runs
    assert status(daemon, made_up["runId"]) == "queued"
    payload = daemon.entries(made_up["runId"])[0]["payload"]
    assert payload["catchUp"] is True and payload["scheduledAt"] == 1780317000000  # 12:30
    [listed] = daemon.rpc("schedule.list")
    assert (listed["lastRunId"], listed["lastStatus"]) == (made_up["runId"], "queued")
    assert signal(daemon, made_up["runId"], payload="early")["delivered"] is False
    assert signal(daemon, first["runId"])["delivered"] is True
    assert daemon.wait_run(first["runId"])["status"] == "completed"
    assert daemon.wait_run(made_up["runId"])["status"] == "completed"
    assert inputs(daemon, made_up["runId"]) == [
        {"type": "signal", "name": "go", "payload": "early"}
    ]
    daemon.healthy()


def test_a_signal_during_a_code_change_drain_is_taken_by_the_new_code_once(
    nerved_factory, tmp_path: Path
) -> None:
    """The guide: "a code change applies to a waiting run when it goes on, in a worker of
    the new code". A run waits while another's step holds the old worker draining; the
    signal comes during that drain: the run goes on once, in the new worker."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 5, drainTimeout: 20s}\n", None, {"w": SCRIPTED}
    ).start()
    gate = str(tmp_path / "gate")
    waiter = run(daemon, "w", "wait_for('go', timeout='1h')", "{'role': 'work', 'prompt': 'w'}")
    waiting(daemon, waiter)
    busy = run(daemon, "w", HOLD.format(gate=gate))
    wait_until(lambda: Path(gate + ".running").exists(), what="the busy step")
    old = daemon.worker_pids("workflow")["w"]
    code = daemon.root / "workflows" / "w" / "__init__.py"
    code.write_text(code.read_text().replace('"worked"', '"worked2"'))
    daemon.rpc("reload")
    assert signal(daemon, waiter, payload=1)["delivered"] is True
    final = daemon.wait_run(waiter)
    assert final["status"] == "completed", final
    [step] = daemon.entries(waiter, "step_complete")
    assert step["payload"]["event"]["type"] == "worked2", step
    Path(gate).touch()
    assert daemon.wait_run(busy)["status"] == "completed"
    assert daemon.worker_pids("workflow").get("w") != old
    daemon.healthy()


def test_kill_9_of_the_master_right_after_a_signal_is_answered_loses_nothing(
    nerved_factory,
) -> None:
    """A signal is durable before its answer: kill -9 of the master as soon as the answer
    comes; at the next start the run goes on with that signal, once."""
    daemon = nerved_factory("workflows:\n  w: {concurrency: 10}\n", None, {"w": SCRIPTED}).start()
    ids = [run(daemon, "w", "wait_for('go', timeout='1h')", "{'role': 'work', 'prompt': 2}")
           for _ in range(3)]  # fmt: skip
    for run_id in ids:
        waiting(daemon, run_id)
    assert signal(daemon, ids[0], payload="a")["delivered"] is True
    assert signal(daemon, ids[1], "other", payload="b")["delivered"] is False
    daemon.kill()
    daemon.start()
    final = daemon.wait_run(ids[0])
    assert final["status"] == "completed", final
    assert inputs(daemon, ids[0]) == [{"type": "signal", "name": "go", "payload": "a"}]
    assert [s["name"] for s in inspect(daemon, ids[1])["pendingSignals"]] == ["other"]
    assert status(daemon, ids[1]) == "waiting" and status(daemon, ids[2]) == "waiting"
    daemon.healthy()


def test_retry_of_a_run_that_failed_after_its_signal_keeps_the_signal(nerved_factory) -> None:
    """The guide: ``nervectl workflow retry RUN`` "runs a final run again from where it
    stopped"; protocol.md: the copy keeps "the inputs its moderator got among them", "a run
    that failed at step 9 continues at step 9". A run that took its signal (an approval) and
    then failed is retried (default fromStep: every step it completed): Storage.copy_history
    copies the step_complete entries and the inputs *before* the last one, so the signal's
    input, after step 1, is left out; fromStep cannot go past ``steps`` (1), so no retry
    keeps it. The new run waits for the approval again, with a fresh deadline (and in the
    approval example escalates if nobody re-approves). Expected: the retry continues after
    the signal, as the failed run stopped (or the docs to say a retry waits again)."""
    daemon = nerved_factory("workflows:\n  w: {concurrency: 5}\n", None, {"w": SCRIPTED}).start()
    run_id = run(daemon, "w", "{'role': 'work', 'prompt': 1}", "wait_for('go', timeout='1h')",
                 "{'role': 'nobody', 'prompt': 2}" )  # fmt: skip
    waiting(daemon, run_id)
    assert signal(daemon, run_id, payload="s")["delivered"] is True
    failed = daemon.wait_run(run_id)
    assert failed["status"] == "failed", failed
    again = daemon.rpc("workflow.retry", runId=run_id)
    final = daemon.wait_run(again["runId"], timeout=5)  # today: it waits for 'go' again
    assert final["status"] == "failed", final  # the same role again, not a new wait
    assert "waiting" not in types(daemon, again["runId"])[-3:], types(daemon, again["runId"])
    assert inputs(daemon, again["runId"]) == [{"type": "signal", "name": "go", "payload": "s"}]
    daemon.healthy()


def test_signals_as_the_idle_worker_exits_are_each_taken(nerved_factory) -> None:
    """idleTimeout short: signals at many offsets around the idle worker's exit; each run
    goes on and completes once."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 30, idleTimeout: 300ms, drainTimeout: 2s}\n", None,
        {"w": SCRIPTED},
    ).start()  # fmt: skip
    ids = [run(daemon, "w", "wait_for('go', timeout='1h')", "{'role': 'work', 'prompt': 2}")
           for _ in range(12)]  # fmt: skip
    for run_id in ids:
        waiting(daemon, run_id)
    for n, run_id in enumerate(ids):
        time.sleep(0.05 * n)  # 0 to 550 ms after the last run let go of the worker
        assert signal(daemon, run_id)["delivered"] is True
        final = daemon.wait_run(run_id, timeout=15)
        assert final["status"] == "completed", (n, final)
        assert types(daemon, run_id).count("completed") == 1
    daemon.healthy()


def test_a_cron_firing_dropped_behind_a_waiting_cron_run_says_so(nerved_factory) -> None:
    """overflow: drop, concurrency 1: the first cron run waits, the next firing's run is
    dropped; schedule.list's lastStatus says so, and the waiting run goes on at its signal."""
    config = CRON_WAITS.replace("concurrency: 1,", "concurrency: 1, overflow: drop,").replace(
        '"30 * * * *"', '"* * * * *"'
    )
    daemon = nerved_factory(config, None, {"nightly": NIGHTLY})
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T10:29:58+00:00"}
    daemon.start()
    [first] = wait_until(
        lambda: daemon.rpc("workflow.list", workflow="nightly", all=True), what="the firing"
    )
    waiting(daemon, first["runId"])
    [listed] = wait_until(
        lambda: [s for s in daemon.rpc("schedule.list") if s["lastRunId"] != first["runId"]],
        timeout=70, what="the next firing",
    )  # fmt: skip
    assert listed["lastStatus"] == "dropped", listed
    assert status(daemon, first["runId"]) == "waiting"
    assert signal(daemon, first["runId"])["delivered"] is True
    assert daemon.wait_run(first["runId"])["status"] == "completed"
    daemon.healthy()
