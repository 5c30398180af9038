"""Fatal units at the edges: what an operator and an attacker can do to a unit that gave up.

Each test is a way someone found to break the supervisor's promise (nothing lost, nothing
forked until the fix, back on after it; a backoff that holds whatever the unit does),
through the supervisor alone or a real nerved. The rule itself is tested in
test_supervisor.py.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

from support import pid_alive, wait_until
from test_supervisor import (
    CRASHES,
    ROLE_CRASHES,
    Harness,
    _entry,
    dies_at_once,
    harness,
    never_ready,
)

from nerved.master import supervisor as supervisor_module
from nerved.master.supervisor import GIVE_UP_AFTER
from nerved.states import WorkerState

__all__ = ["harness"]  # the fixture, imported for the tests below

ROLE_DONE = textwrap.dedent(ROLE_CRASHES).replace("os._exit(3)", "return {'type': 'done'}")


# -- the supervisor alone ------------------------------------------------------------------


def test_failed_forks_do_not_count_towards_giving_up(harness: Harness, monkeypatch):
    """A fork that fails is the host's doing: it must never make a unit fatal, not even
    together with deaths of the code's. Four failed forks then one death is one death."""
    sup = harness.supervise(dies_at_once)
    real_spawn = harness.workers.spawn
    failing = {"left": GIVE_UP_AFTER - 1}

    def spawn(*args, **kwargs):
        if failing["left"]:
            failing["left"] -= 1
            raise OSError(11, "Resource temporarily unavailable")
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr(harness.workers, "spawn", spawn)
    while failing["left"]:
        assert sup.ensure() is None and sup.state is WorkerState.BACKOFF
        harness.run_until(lambda: sup.state is WorkerState.IDLE, timeout=15)
    worker = sup.ensure()
    assert worker is not None
    harness.run_until(lambda: worker.reaped)
    assert sup.state is not WorkerState.FATAL, sup.reason


# -- through a real nerved -----------------------------------------------------------------


def _fatal_workflow(nerved_factory, config: str = "workflows:\n  w: {maxAttempts: 100}\n"):
    daemon = nerved_factory(config, workflows={"w": ROLE_CRASHES}, args=("--no-watch",)).start()
    run = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    return daemon, run


def test_removing_a_fatal_workflow_ends_its_runs(nerved_factory):
    """Its runs have no worker, so no worker's exit will ever end them: the removal must,
    or they stay ``started`` (and a ``workflow.wait`` on them hangs) until nerved restarts."""
    daemon, run = _fatal_workflow(nerved_factory)
    (daemon.root / "nerve.yaml").write_text("{}\n")
    assert daemon.rpc("reload") == {"changed": ["workflow w removed"]}
    wait_until(lambda: daemon.rpc("workflow.wait", runId=run, timeout=1)["status"] != "started",
               timeout=5)  # fmt: skip
    assert daemon.rpc("workflow.list") == []


def test_a_fatal_workflow_removed_then_added_again_runs_once_its_code_is_fixed(nerved_factory):
    daemon, run = _fatal_workflow(nerved_factory)
    (daemon.root / "nerve.yaml").write_text("{}\n")
    daemon.rpc("reload")
    (daemon.root / "workflows" / "w" / "__init__.py").write_text(ROLE_DONE)
    (daemon.root / "nerve.yaml").write_text("workflows:\n  w: {maxAttempts: 100}\n")
    daemon.rpc("reload")
    new = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    assert daemon.rpc("workflow.wait", runId=new, timeout=10)["status"] == "completed"
    assert daemon.rpc("workflow.wait", runId=run, timeout=1)["status"] != "started"


def test_raising_memory_max_of_a_fatal_workflow_tries_it_again(nerved_factory):
    """A worker killed by memoryMax at every start is fixed by a setting, not by code."""
    hog = textwrap.dedent(ROLE_DONE).replace(
        "from nerved import WorkflowDefinition",
        "from nerved import WorkflowDefinition\nimport time\n"
        "_hog = bytearray(64 * 1024 * 1024)\nfor _i in range(0, len(_hog), 4096):\n"
        "    _hog[_i] = 1\ntime.sleep(2)",
    )
    daemon = nerved_factory(
        "workflows:\n  w: {maxAttempts: 100, memoryMax: 30M}\n",
        workflows={"w": hog},
        args=("--no-watch",),
    ).start()
    run = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=60)
    (daemon.root / "nerve.yaml").write_text("workflows:\n  w: {maxAttempts: 100, memoryMax: 1G}\n")
    assert daemon.rpc("reload") == {"changed": ["workflow w settings"]}
    assert daemon.rpc("workflow.wait", runId=run, timeout=20)["status"] == "completed"


def test_stop_while_fatal_and_in_backoff_is_prompt(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  bad: {group: g}\nworkflows:\n  w: {maxAttempts: 100}\n"
        "reflexes:\n  - {kind: sense, sense: bad, interval: 50ms}\n",
        {"bad": CRASHES},
        {"w": ROLE_CRASHES},
        args=("--no-watch",),
    ).start()
    wait_until(lambda: _entry(daemon, "sense", "g")["state"] == "fatal", timeout=30)
    daemon.rpc("workflow.trigger", workflow="w")
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "backoff", timeout=30)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 3


SLOW = """
    import time

    def compute(ctx):
        time.sleep(20)
        return {"ok": True}
"""


ONE_CRASHES = """
    import os

    def compute(ctx):
        os._exit(3)
"""
ONE_WORKS = """
    def compute(ctx):
        return {"ok": True}
"""


def test_one_sense_that_ends_its_worker_makes_its_whole_group_fatal(nerved_factory):
    """Deaths are the unit's (README, "Workers that keep dying"): a sense whose compute ends
    the worker takes its group's other senses down with it; a group of its own is the cure."""
    daemon = nerved_factory(
        "senses:\n  bad: {group: g}\n  good: {group: g}\n  alone: {group: h}\n"
        "reflexes:\n  - {kind: sense, sense: bad, interval: 50ms}\n"
        "  - {kind: sense, sense: good, interval: 50ms}\n"
        "  - {kind: sense, sense: alone, interval: 50ms}\n",
        {"bad": ONE_CRASHES, "good": ONE_WORKS, "alone": ONE_WORKS},
        args=("--no-watch",),
    ).start()
    wait_until(lambda: _entry(daemon, "sense", "g")["state"] == "fatal", timeout=30)
    workers = {row["name"]: row["worker"] for row in daemon.rpc("sense.list")}
    assert workers == {"bad": "fatal", "good": "fatal", "alone": "ready"}


def test_imports_that_hang_past_the_stable_time_still_make_a_unit_fatal(harness, monkeypatch):
    """``--import-timeout`` goes up to 30 s, and STABLE_AFTER is 30 s: a worker killed for a
    hung import must not count as a stable one, or a unit whose import always hangs is
    forked forever (each worker killed at the bound) and never becomes fatal."""
    monkeypatch.setattr(supervisor_module, "STABLE_AFTER", 0.2)
    sup = harness.supervise(never_ready, import_timeout=0.3)
    for _ in range(GIVE_UP_AFTER):
        harness.run_until(lambda: sup.state is WorkerState.IDLE, timeout=15)
        worker = sup.ensure()
        assert worker is not None
        harness.run_until(lambda worker=worker: worker.reaped)
        if sup.state is WorkerState.FATAL:
            break
    assert sup.state is WorkerState.FATAL


def _fix(daemon, name: str = "w") -> None:
    (daemon.root / "workflows" / name / "__init__.py").write_text(ROLE_DONE)
    assert daemon.rpc("reload") == {"changed": [f"workflow {name} code"]}


def test_runs_queued_behind_a_fatal_workflow_all_finish_after_the_fix(nerved_factory):
    daemon, first = _fatal_workflow(nerved_factory)
    queued = [daemon.rpc("workflow.trigger", workflow="w")["runId"] for _ in range(3)]
    rows = {r["runId"]: r for r in daemon.rpc("workflow.list")}
    assert rows[first]["status"] == "started" and rows[first]["worker"] == "fatal"
    assert {rows[q]["status"] for q in queued} == {"queued"}
    assert {rows[q]["worker"] for q in queued} == {"fatal"}
    assert "w" not in daemon.worker_pids("workflow")
    _fix(daemon)
    for run in [first, *queued]:
        assert daemon.rpc("workflow.wait", runId=run, timeout=20)["status"] == "completed"


def test_a_fatal_drop_workflow_keeps_one_run_and_finishes_it_after_the_fix(nerved_factory):
    daemon, _first = _fatal_workflow(
        nerved_factory, "workflows:\n  w: {overflow: drop, maxAttempts: 10}\n"
    )
    runs = daemon.rpc("workflow.list", all=True)
    statuses = sorted(r["status"] for r in runs)
    assert statuses.count("started") == 1, statuses
    assert statuses.count("crashed") == GIVE_UP_AFTER, statuses
    [active] = [r["runId"] for r in runs if r["status"] == "started"]
    _fix(daemon)
    assert daemon.rpc("workflow.wait", runId=active, timeout=20)["status"] == "completed"


def test_max_attempts_crashes_runs_before_their_workflow_gives_up(nerved_factory):
    daemon = nerved_factory(
        "workflows:\n  w: {maxAttempts: 3}\n", workflows={"w": ROLE_CRASHES}, args=("--no-watch",)
    ).start()
    runs = [daemon.rpc("workflow.trigger", workflow="w")["runId"] for _ in range(3)]
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    by_id = {r["runId"]: r["status"] for r in daemon.rpc("workflow.list", all=True)}
    assert by_id[runs[0]] == "crashed"  # 3 deaths under it
    assert by_id[runs[1]] == "started"  # 2 deaths under it: it waits for the fix
    assert by_id[runs[2]] == "queued"
    _fix(daemon)
    for run in runs[1:]:
        assert daemon.rpc("workflow.wait", runId=run, timeout=20)["status"] == "completed"


def _drain_notifications(daemon) -> None:
    assert daemon._notify is not None
    daemon._notify.setblocking(False)
    try:
        while daemon._notify.recv(65536):
            pass
    except BlockingIOError:
        pass
    finally:
        daemon._notify.setblocking(True)


def test_a_fatal_unit_survives_sighup_and_a_restart_resets_it(nerved_factory):
    daemon, run = _fatal_workflow(nerved_factory)
    daemon.signal(signal.SIGHUP)
    assert daemon.rpc("reload") == {"changed": []}  # served after the SIGHUP's, one at a time
    assert _entry(daemon, "workflow", "w")["state"] == "fatal"
    assert "w" not in daemon.worker_pids("workflow")
    daemon.kill()
    _drain_notifications(daemon)  # the READY=1 that ended the SIGHUP's reload
    daemon.start()
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    [row] = daemon.rpc("workflow.list")
    assert row["runId"] == run and row["status"] == "started"
    assert daemon.stop() == 0
    daemon.start()
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    _fix(daemon)
    assert daemon.rpc("workflow.wait", runId=run, timeout=20)["status"] == "completed"


def test_nervectl_json_for_a_fatal_workflow_and_group(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  bad: {group: g}\nworkflows:\n  w: {maxAttempts: 100}\n"
        "reflexes:\n  - {kind: sense, sense: bad, interval: 50ms}\n",
        {"bad": CRASHES},
        {"w": ROLE_CRASHES},
        args=("--no-watch",),
    ).start()
    run = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    wait_until(lambda: _entry(daemon, "sense", "g")["state"] == "fatal", timeout=30)
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    status = daemon.ctl_json("status")
    units = {(w["kind"], w["name"]): w for w in status["workers"]}
    assert units["sense", "g"]["state"] == "fatal" and units["sense", "g"]["pid"] is None
    assert units["workflow", "w"]["reason"] == "exit code 3"
    [sense] = daemon.ctl_json("sense", "list")
    assert sense["worker"] == "fatal"
    [row] = daemon.ctl_json("workflow", "list")
    assert row["runId"] == run and row["worker"] == "fatal"


def test_a_trigger_of_a_fatal_workflow_or_sense_says_it_is_fatal(nerved_factory):
    """The answer of workflow.trigger and sense.trigger carries ``worker``; nervectl notes a
    fatal one on stderr, so ``--wait`` does not wait its whole timeout in the dark."""
    daemon = nerved_factory(
        "senses:\n  s: {group: g}\nreflexes:\n  - {kind: sense, sense: s, interval: 50ms}\n"
        "workflows:\n  w: {maxAttempts: 100}\n",
        {"s": ONE_CRASHES}, {"w": ROLE_CRASHES}, args=("--no-watch",),
    ).start()  # fmt: skip
    daemon.rpc("workflow.trigger", workflow="w")
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    done = daemon.ctl("workflow", "trigger", "w", "--wait", "--timeout", "1s")
    assert done.returncode == 1
    assert "workflow w: its worker is fatal (see nervectl status)" in done.stderr
    assert daemon.rpc("workflow.trigger", workflow="w")["worker"] == "fatal"
    wait_until(lambda: _entry(daemon, "sense", "g")["state"] == "fatal", timeout=30)
    done = daemon.ctl("sense", "trigger", "s")
    assert done.returncode == 0 and "its group's worker is fatal" in done.stderr


STEP_THEN_CRASH = """
    import os
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        if prompt.get("crash"):
            os._exit(3)
        return {"type": "worked"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": {}}
        if event["type"] == "worked":
            return {"role": "work", "prompt": {"crash": True}}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def test_a_drop_workflow_that_crashes_after_a_step_backs_off(nerved_factory):
    """overflow: drop restarts a crashed run afresh; its worker did a step before each
    death, so it never becomes fatal, but its successors still wait longer and longer (it
    was forked again at once, for ever: 70 runs a second)."""
    daemon = nerved_factory(
        "workflows:\n  w: {overflow: drop, maxAttempts: 10}\n", workflows={"w": STEP_THEN_CRASH},
        args=("--no-watch",),
    ).start()  # fmt: skip
    daemon.rpc("workflow.trigger", workflow="w")
    wait_until(lambda: "died (exit code 3); respawning in 1.00s" in daemon.log(), timeout=30)
    log = daemon.log()
    delays = ["0.00s", "0.25s", "0.50s", "1.00s"]
    assert all(f"died (exit code 3); respawning in {d}" in log for d in delays)
    assert _entry(daemon, "workflow", "w")["state"] != "fatal"
    assert len(daemon.rpc("workflow.list", all=True, limit=10000)) <= 10


HANGS = """
    import time

    time.sleep(60)

    def compute(ctx):
        return {"ok": True}
"""
SENSE_HOG = """
    import time

    _hog = bytearray(64 * 1024 * 1024)
    for _i in range(0, len(_hog), 4096):
        _hog[_i] = 1
    time.sleep(2)

    def compute(ctx):
        return {"ok": True}
"""


def test_a_sense_whose_import_hangs_becomes_fatal_and_says_why(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  slow: {group: g}\n",
        {"slow": HANGS},
        args=("--no-watch", "--import-timeout", "0.3"),
    ).start()
    entry = wait_until(lambda: (e := _entry(daemon, "sense", "g"))["state"] == "fatal" and e,
                       timeout=30)  # fmt: skip
    assert entry["reason"] == "importing senses/slow took longer than 0.3s"
    assert daemon.sense("slow")["lastError"] == entry["reason"]
    time.sleep(1)
    assert "g" not in daemon.worker_pids("sense")


def test_raising_memory_max_of_a_fatal_sense_group_tries_it_again(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  hog: {group: g, memoryMax: 30M}\n"
        "reflexes:\n  - {kind: sense, sense: hog, interval: 1s}\n",
        {"hog": SENSE_HOG},
        args=("--no-watch",),
    ).start()
    wait_until(lambda: _entry(daemon, "sense", "g")["state"] == "fatal", timeout=60)
    (daemon.root / "nerve.yaml").write_text(
        "senses:\n  hog: {group: g, memoryMax: 1G}\n"
        "reflexes:\n  - {kind: sense, sense: hog, interval: 1s}\n"
    )
    assert daemon.rpc("reload") == {"changed": ["sense hog"]}
    wait_until(lambda: daemon.rpc("logs.query", source="sense", type="signal", refId="hog"),
               timeout=20)  # fmt: skip


STUBBORN = """
    import signal
    import time
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(SECONDS)
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def test_a_fatal_workflow_does_not_stretch_the_stop_of_the_others(nerved_factory):
    """nerved's stop waits for steps in flight up to their workflow's drainTimeout; a fatal
    workflow has none in flight, so its drainTimeout (60 s here) must not count."""
    daemon = nerved_factory(
        "workflows:\n  u: {drainTimeout: 1s}\n  v: {maxAttempts: 100}\n",
        workflows={"u": STUBBORN.replace("SECONDS", "120"), "v": ROLE_CRASHES},
        args=("--no-watch",),
    ).start()
    daemon.rpc("workflow.trigger", workflow="v")
    wait_until(lambda: _entry(daemon, "workflow", "v")["state"] == "fatal", timeout=30)
    daemon.rpc("workflow.trigger", workflow="u")
    pid = wait_until(lambda: daemon.worker_pids("workflow").get("u"))
    time.sleep(0.5)  # in its role, which ignores SIGTERM and the halt
    started = time.monotonic()
    assert daemon.stop(timeout=70) == 0
    assert time.monotonic() - started < 8
    assert not pid_alive(pid)


def test_stop_gives_a_removed_workflows_step_its_drain_timeout(nerved_factory):
    daemon = nerved_factory(
        "workflows:\n  w: {drainTimeout: 10s}\n",
        workflows={"w": STUBBORN.replace("SECONDS", "2")},
        args=("--no-watch",),
    ).start()
    run = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    pid = wait_until(lambda: daemon.worker_pids("workflow").get("w"))
    time.sleep(0.3)  # in its role
    (daemon.root / "nerve.yaml").write_text("{}\n")
    assert daemon.rpc("reload") == {"changed": ["workflow w removed"]}
    assert daemon.stop(timeout=30) == 0
    assert "did not stop in time" not in daemon.log()
    assert not pid_alive(pid)
    _drain_notifications(daemon)  # the READY=1 that ended the reload
    daemon.start()
    entries = daemon.rpc("logs.query", source="workflow", refId=run)
    assert "step_complete" in [e["type"] for e in entries], entries  # it finished its step


def test_kill_9_of_an_idle_sense_worker_five_times_makes_its_group_fatal(nerved_factory):
    """What the README says: a worker killed before it did anything did no work."""
    daemon = nerved_factory("senses:\n  s: {group: g}\n", {"s": ONE_WORKS}, args=("--no-watch",))
    daemon.start()
    for _ in range(GIVE_UP_AFTER):
        pid = wait_until(lambda: _entry(daemon, "sense", "g")["state"] == "ready"
                         and daemon.worker_pids("sense").get("g"), timeout=15)  # fmt: skip
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda pid=pid: daemon.worker_pids("sense").get("g") != pid)
    entry = wait_until(lambda: (e := _entry(daemon, "sense", "g"))["state"] == "fatal" and e)
    assert entry["reason"] == "killed by SIGKILL", entry


STUCK = """
    import time

    def compute(ctx):
        time.sleep(30)  # a call that hangs, say on the network: sync, it cannot be cancelled
"""


def test_a_sense_whose_computes_time_out_is_not_fatal(nerved_factory):
    """README: a sync compute past its timeout "gets the sense's gracePeriod to return before
    its worker is killed and respawned (see Workers that keep dying for the backoff)"."""
    daemon = nerved_factory(
        "senses:\n  stuck: {group: g, timeout: 300ms, gracePeriod: 100ms}\n"
        "reflexes:\n  - {kind: sense, sense: stuck, interval: 50ms}\n",
        {"stuck": STUCK},
        args=("--no-watch",),
    ).start()
    time.sleep(10)
    entry = _entry(daemon, "sense", "g")
    assert entry["restarts"] >= GIVE_UP_AFTER and entry["state"] != "fatal", entry


def test_a_drop_workflow_stops_restarting_a_payload_that_keeps_ending_its_worker(nerved_factory):
    """Each run of the payload did a step, so the workflow never becomes fatal: without a
    bound, a new run would start at every backoff, for ever. At maxAttempts runs lost in a
    row, the payload is not restarted; a restart by a nerved that stopped does not count."""
    daemon = nerved_factory(
        "workflows:\n  w: {overflow: drop, maxAttempts: 3}\n", workflows={"w": STEP_THEN_CRASH},
        args=("--no-watch",),
    ).start()  # fmt: skip
    first = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    wait_until(lambda: "not restarted: runs of its payload lost their worker 3 times in a row"
               in daemon.log(), timeout=30)  # fmt: skip
    runs = daemon.rpc("workflow.list", all=True)
    assert [r["status"] for r in runs] == ["crashed"] * 3
    assert runs[-1]["runId"] == first and runs[0]["retryOf"] == runs[1]["runId"]
    assert all(r["error"].startswith("its worker died (exit code 3)") for r in runs)
    assert daemon.rpc("workflow.list") == []  # nothing active: no more restarts
