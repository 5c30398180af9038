"""Nothing lost: real processes killed at random moments, code changed under running threads.

Every scenario ends with the same checks: each run is final, each completed run's logged
steps are exactly the ones its moderator asked for (no step lost, none recorded twice),
queued runs started in the order they were triggered, and ``workflow_runs`` agrees with
what the ``logs`` table implies.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, Nerved, assert_runs_match_logs, pid_alive, wait_until, write_package

# A thread of payload["steps"] steps; step n sleeps payload["sleeps"][n] ms. The moderator
# is a pure function of the events, so the expected history of a run follows from its payload.
CHAIN = """
    import asyncio, os, time
    from nerved import WorkflowDefinition

    async def work(prompt, ctx):
        await asyncio.sleep(prompt["sleep"] / 1000)
        return {"type": "did", "n": prompt["n"], "pid": os.getpid()}

    def blocking(prompt, ctx):
        time.sleep(prompt["sleep"] / 1000)
        return {"type": "did", "n": prompt["n"], "pid": os.getpid()}

    def moderate(thread, event):
        job = thread.events[0]["payload"]
        n = sum(1 for e in thread.events if e["type"] == "did")
        if n >= job["steps"]:
            return None
        role = "blocking" if n % 2 else "work"
        return {"role": role, "prompt": {"n": n, "sleep": job["sleeps"][n]}}

    workflow = WorkflowDefinition(roles={"work": work, "blocking": blocking}, moderate=moderate)
"""


def expected_steps(job: dict) -> list[dict]:
    return [
        {"role": "blocking" if n % 2 else "work", "prompt": {"n": n, "sleep": job["sleeps"][n]}}
        for n in range(job["steps"])
    ]


def make_jobs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        steps = rng.randint(2, 5)
        jobs.append({"i": i, "steps": steps, "sleeps": [rng.randint(5, 60) for _ in range(steps)]})
    return jobs


def read_db(daemon: Nerved) -> tuple[dict[str, dict], dict[str, list[dict]], list[str]]:
    """(runs by id, logged steps by run, run ids in the order they first started)."""
    conn = sqlite3.connect(f"file:{daemon.state / 'logs.db'}?mode=ro", uri=True)
    try:
        runs = {
            r[0]: {"status": r[1], "payload": json.loads(r[2]), "seq": r[3], "error": r[4]}
            for r in conn.execute(
                "SELECT run_id, status, trigger_payload, seq, error FROM workflow_runs"
            )
        }
        steps: dict[str, list[dict]] = {run_id: [] for run_id in runs}
        first_started: list[str] = []
        for ref_id, type_, payload in conn.execute(
            "SELECT ref_id, type, payload FROM logs WHERE source = 'workflow' ORDER BY id"
        ):
            if type_ == "step_complete":
                record = json.loads(payload)
                steps[ref_id].append({"role": record["role"], "prompt": record["prompt"]})
            elif type_ == "started" and ref_id not in first_started:
                first_started.append(ref_id)
        return runs, steps, first_started
    finally:
        conn.close()


def check_nothing_lost(daemon: Nerved, triggered: list[str], *, completed: bool = True) -> None:
    runs, steps, first_started = read_db(daemon)
    assert set(triggered) <= set(runs)
    for run_id in triggered:
        run = runs[run_id]
        assert run["status"] in ("completed", "failed", "crashed", "dropped"), run
        if completed:
            assert run["status"] == "completed", (run_id, run)
        if run["status"] == "completed":
            assert steps[run_id] == expected_steps(run["payload"]), run_id
    by_seq = sorted(triggered, key=lambda r: runs[r]["seq"])
    started_in_order = [r for r in first_started if r in set(triggered)]
    assert started_in_order == by_seq[: len(started_in_order)], "queued runs left FIFO order"
    assert_runs_match_logs(daemon.state / "logs.db")


def trigger_all(daemon: Nerved, workflow: str, jobs: list[dict]) -> list[str]:
    with daemon.client() as client:
        return [client.call("workflow.trigger", {"workflow": workflow, "payload": j})["runId"]
                for j in jobs]  # fmt: skip


def wait_all_final(daemon: Nerved, timeout: float = 60) -> None:
    wait_until(
        lambda: (s := daemon.rpc("status"))["activeWorkflows"] + s["queuedWorkflows"] == 0,
        timeout=timeout,
        interval=0.1,
        what="every run to end",
    )


def test_daemon_killed_five_times_loses_nothing(nerved_factory):
    daemon = nerved_factory(
        "workflows:\n  chain: {concurrency: 8, overflow: queue, maxQueue: 500}\n",
        workflows={"chain": CHAIN},
    ).start()
    triggered = trigger_all(daemon, "chain", make_jobs(200, seed=1))
    rng = random.Random(2)
    for _ in range(5):
        time.sleep(rng.uniform(0.1, 0.6))  # let it get somewhere, then pull the plug
        daemon.kill()
        daemon.start()
    wait_all_final(daemon)
    check_nothing_lost(daemon, triggered)
    assert daemon.log().count("recovered") >= 5


def test_workflow_worker_killed_five_times_loses_nothing(nerved_factory):
    daemon = nerved_factory(
        "workflows:\n  chain: {concurrency: 8, overflow: queue, maxQueue: 500, maxAttempts: 10}\n",
        workflows={"chain": CHAIN},
    ).start()
    triggered = trigger_all(daemon, "chain", make_jobs(200, seed=3))
    rng = random.Random(4)
    killed = []
    for _ in range(5):
        time.sleep(rng.uniform(0.1, 0.5))
        pid = wait_until(lambda: daemon.worker_pids("workflow").get("chain"), what="a worker")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_until(lambda p=pid: daemon.worker_pids("workflow").get("chain") not in (None, p))
    wait_all_final(daemon)
    check_nothing_lost(daemon, triggered)
    assert not any(pid_alive(p) for p in killed)
    # Every resumed thread ran on in a successor: a step's pid is never a killed worker's
    # after that worker's death, and each step is recorded once.
    assert daemon.log().count("died (killed by SIGKILL)") == 5


POISON = """
    import os, signal
    from nerved import WorkflowDefinition

    def step(prompt, ctx):
        if prompt == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        return {"type": "ok"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "step", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""


def test_a_run_that_kills_its_worker_ends_crashed_and_the_others_go_on(nerved_factory):
    daemon = nerved_factory(
        "workflows:\n  p: {concurrency: 1, maxAttempts: 3}\n  other: {concurrency: 2}\n",
        workflows={"p": POISON, "other": POISON},
    ).start()
    poison = daemon.rpc("workflow.trigger", workflow="p", payload="poison")["runId"]
    behind = [daemon.rpc("workflow.trigger", workflow="p", payload=i)["runId"] for i in range(5)]
    elsewhere = [
        daemon.rpc("workflow.trigger", workflow="other", payload=i)["runId"] for i in range(5)
    ]
    with daemon.client(timeout=60) as client:
        run = client.call("workflow.wait", {"runId": poison, "timeout": 30})
        assert run["status"] == "crashed"
        assert run["error"].startswith("its worker died 3 times under it (last: killed by SIGKILL)")
        assert run["attempts"] == 3
        for run_id in behind + elsewhere:
            assert (
                client.call("workflow.wait", {"runId": run_id, "timeout": 30})["status"]
                == "completed"
            )
    assert_runs_match_logs(daemon.state / "logs.db")


VERSIONED = """
    import asyncio, os
    from nerved import WorkflowDefinition

    VERSION = {version}

    async def step(prompt, ctx):
        gate = (prompt or {{}}).get("gate")
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.01)
        return {{"type": "done", "version": VERSION, "pid": os.getpid()}}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {{"role": "step", "prompt": event["payload"]}}
        return None

    workflow = WorkflowDefinition(roles={{"step": step}}, moderate=moderate)
"""


def step_event(daemon: Nerved, run_id: str) -> dict:
    events = daemon.rpc("workflow.inspect", runId=run_id)["events"]
    return next(e["payload"]["event"] for e in events if e["type"] == "step_complete")


@pytest.mark.parametrize("how", ["inotify", "SIGHUP"])
def test_code_change_mid_run_drains_the_old_worker_and_new_runs_use_new_code(
    nerved_factory, tmp_path, how
):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  v: {concurrency: 4, drainTimeout: 30s}\n",
        workflows={"v": VERSIONED.format(version=1)},
        args=() if how == "inotify" else ("--no-watch",),
    ).start()
    old_run = daemon.rpc("workflow.trigger", workflow="v", payload={"gate": str(gate)})["runId"]
    old_pid = wait_until(lambda: daemon.worker_pids("workflow").get("v"))
    wait_until(lambda: f"worker pid {old_pid} ready" in daemon.log(), what="v1 to be imported")
    write_package(daemon.root, "workflows", "v", VERSIONED.format(version=2))
    if how == "SIGHUP":
        daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in daemon.log() and "workflow v code" in daemon.log())
    new_run = daemon.rpc("workflow.trigger", workflow="v", payload={})["runId"]
    new = daemon.rpc("workflow.wait", runId=new_run, timeout=10)
    assert new["status"] == "completed"
    assert step_event(daemon, new_run)["version"] == 2
    assert step_event(daemon, new_run)["pid"] != old_pid
    assert pid_alive(old_pid), "the old worker drains: it keeps its running thread"
    gate.touch()
    assert daemon.rpc("workflow.wait", runId=old_run, timeout=10)["status"] == "completed"
    assert step_event(daemon, old_run) == {"type": "done", "version": 1, "pid": old_pid}
    wait_until(lambda: not pid_alive(old_pid), what="the drained worker to exit")


def test_drain_timeout_kills_the_old_worker_and_its_threads_resume(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  v: {concurrency: 4, drainTimeout: 300ms}\n",
        workflows={"v": VERSIONED.format(version=1)},
    ).start()
    run_id = daemon.rpc("workflow.trigger", workflow="v", payload={"gate": str(gate)})["runId"]
    old_pid = wait_until(lambda: daemon.worker_pids("workflow").get("v"))
    write_package(daemon.root, "workflows", "v", VERSIONED.format(version=2))
    wait_until(
        lambda: (
            "has not exited 0.3s (drainTimeout) after it was told to stop; killing it"
            in daemon.log()
        )
    )
    wait_until(lambda: not pid_alive(old_pid))
    gate.touch()
    run = daemon.rpc("workflow.wait", runId=run_id, timeout=10)
    assert run["status"] == "completed" and run["attempts"] == 1
    assert step_event(daemon, run_id)["version"] == 2  # the step ran again, in new code


def test_broken_code_change_keeps_the_old_code_running(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  s: {}\nworkflows:\n  v: {idleTimeout: 1h}\n",
        {"s": "def compute(ctx):\n    return {'version': 1}\n"},
        {"v": VERSIONED.format(version=1)},
    ).start()
    assert daemon.rpc("workflow.wait", runId=daemon.rpc("workflow.trigger", workflow="v")["runId"],
                      timeout=10)["status"] == "completed"  # fmt: skip
    workers = daemon.worker_pids()
    write_package(daemon.root, "workflows", "v", "def broken(:\n")
    wait_until(lambda: "configuration not reloaded (inotify)" in daemon.log())
    assert "workflows/v failed to import: SyntaxError" in daemon.log()
    write_package(daemon.root, "senses", "s", "raise RuntimeError('half-written')\n")
    wait_until(lambda: "RuntimeError: half-written" in daemon.log())
    # The import check's child logs its error before it exits and is reaped: gone, then
    # the workers are the same processes (nothing was respawned).
    wait_until(lambda: "reload" not in daemon.worker_pids(), what="the import check reaped")
    assert daemon.worker_pids() == workers
    run_id = daemon.rpc("workflow.trigger", workflow="v")["runId"]
    assert daemon.rpc("workflow.wait", runId=run_id, timeout=10)["status"] == "completed"
    assert step_event(daemon, run_id)["version"] == 1
    daemon.rpc("sense.trigger", sense="s")
    wait_until(lambda: daemon.rpc("logs.query", source="sense", type="signal"))
    with daemon.client() as client, pytest.raises(Exception, match="failed to import"):
        client.call("reload")


def test_removed_workflow_drains_and_its_queued_runs_are_dropped(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  v: {concurrency: 1}\n  keep: {}\n",
        workflows={"v": VERSIONED.format(version=1), "keep": VERSIONED.format(version=1)},
        args=("--no-watch",),
    ).start()
    running = daemon.rpc("workflow.trigger", workflow="v", payload={"gate": str(gate)})["runId"]
    queued = [daemon.rpc("workflow.trigger", workflow="v", payload={})["runId"] for _ in range(2)]
    (daemon.root / "nerve.yaml").write_text("workflows:\n  keep: {}\n")
    assert daemon.rpc("reload") == {"changed": ["workflow v removed"]}
    for run_id in queued:
        run = daemon.rpc("workflow.inspect", runId=run_id)
        assert run["status"] == "dropped" and run["error"] == "workflow v was removed"
    with daemon.client() as client, pytest.raises(Exception, match="no workflow named 'v'"):
        client.call("workflow.trigger", {"workflow": "v"})
    gate.touch()
    assert daemon.rpc("workflow.wait", runId=running, timeout=10)["status"] == "completed"
    wait_until(lambda: "v" not in daemon.worker_pids("workflow"))


def test_settings_apply_live(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  v: {concurrency: 1}\n",
        workflows={"v": VERSIONED.format(version=1)},
        args=("--no-watch",),
    ).start()
    pid = None
    for _ in range(4):
        daemon.rpc("workflow.trigger", workflow="v", payload={"gate": str(gate)})
    pid = wait_until(lambda: daemon.worker_pids("workflow").get("v"))
    assert daemon.rpc("status")["activeWorkflows"] == 1
    (daemon.root / "nerve.yaml").write_text("workflows:\n  v: {concurrency: 3}\n")
    assert daemon.rpc("reload") == {"changed": ["workflow v settings"]}
    status = daemon.rpc("status")
    assert (status["activeWorkflows"], status["queuedWorkflows"]) == (3, 1)
    assert daemon.worker_pids("workflow")["v"] == pid  # no restart for settings
    gate.touch()
    wait_all_final(daemon)


def test_overflow_drop_run_whose_worker_dies_is_crashed_and_started_afresh(
    nerved_factory, tmp_path
):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  d: {concurrency: 1, overflow: drop}\n",
        workflows={"d": VERSIONED.format(version=1)},
    ).start()
    first = daemon.rpc("workflow.trigger", workflow="d", payload={"gate": str(gate)})["runId"]
    pid = wait_until(lambda: daemon.worker_pids("workflow").get("d"))
    os.kill(pid, signal.SIGKILL)
    crashed = wait_until(
        lambda: (r := daemon.rpc("workflow.inspect", runId=first))["status"] == "crashed" and r
    )
    assert crashed["error"] == "its worker died (killed by SIGKILL)"
    again = wait_until(lambda: [r for r in daemon.rpc("workflow.list") if r["retryOf"] == first])
    gate.touch()
    run = daemon.rpc("workflow.wait", runId=again[0]["runId"], timeout=10)
    assert run["status"] == "completed"
    assert daemon.rpc("workflow.inspect", runId=run["runId"])["triggerPayload"] == {
        "gate": str(gate)
    }


def test_a_restart_sends_each_run_to_a_worker_once(nerved_factory, tmp_path):
    """After a kill -9, an ``overflow: drop`` run is crashed and restarted afresh once, a
    ``queue`` run resumed once: no worker is told of a run it already holds (it would say
    "already running here", an ERROR), and both complete."""
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  d: {concurrency: 1, overflow: drop}\n  q: {concurrency: 1}\n",
        workflows={"d": PARKED, "q": PARKED},
    ).start()
    runs = {w: daemon.rpc("workflow.trigger", workflow=w, payload={"gate": str(gate)})["runId"]
            for w in ("d", "q")}  # fmt: skip
    wait_until(
        lambda: all(daemon.rpc("workflow.inspect", runId=r)["steps"] == 1 for r in runs.values()),
        what="both runs parked after their first step",
    )
    daemon.kill()
    daemon.start()
    crashed = daemon.rpc("workflow.inspect", runId=runs["d"])
    assert (crashed["status"], crashed["error"]) == ("crashed", "nerved stopped while it ran")
    again = [r for r in daemon.rpc("workflow.list", all=True) if r["retryOf"] == runs["d"]]
    assert len(again) == 1
    gate.touch()
    for run_id in (again[0]["runId"], runs["q"]):
        assert daemon.rpc("workflow.wait", runId=run_id, timeout=20)["status"] == "completed"
    assert daemon.rpc("workflow.inspect", runId=runs["q"])["steps"] == 2
    log = daemon.log()
    assert "already running" not in log
    assert " ERROR " not in log, log
    assert_runs_match_logs(daemon.state / "logs.db")


SABOTEUR = """
    import json, os, socket, stat, struct
    from nerved import WorkflowDefinition

    def sabotage(prompt, ctx):
        if not os.path.exists(prompt["flag"]):
            open(prompt["flag"], "w").close()
            frame = json.dumps({"t": "step", "run": ctx.run_id, "n": "not a number"}).encode()
            if prompt["kind"] == "garbage":
                frame = b"{not json"
            elif prompt["kind"] == "overflow":  # decodes to infinity: int() of it overflows
                frame = b'{"t": "step", "run": "%s", "n": 1e400}' % ctx.run_id.encode()
            for fd in range(3, 64):
                try:
                    if stat.S_ISSOCK(os.fstat(fd).st_mode):
                        os.write(fd, struct.pack(">I", len(frame)) + frame)
                except OSError:
                    pass
            import time
            time.sleep(5)  # the master should have ended this worker by now
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "sabotage", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"sabotage": sabotage}, moderate=moderate)
"""


@pytest.mark.parametrize("kind", ["malformed", "garbage", "overflow"])
def test_a_worker_that_sends_nonsense_is_ended_and_its_run_resumed(nerved_factory, tmp_path, kind):
    daemon = nerved_factory("workflows:\n  s: {}\n", workflows={"s": SABOTEUR}).start()
    payload = {"flag": str(tmp_path / "flag"), "kind": kind}
    run_id = daemon.rpc("workflow.trigger", workflow="s", payload=payload)["runId"]
    run = daemon.rpc("workflow.wait", runId=run_id, timeout=20)
    assert run["status"] == "completed" and run["attempts"] == 1
    assert "killing it" in daemon.log()
    assert daemon.rpc("status")["pid"] == daemon.pid


# -- a store nerve did not write, a host that cannot fork ----------------------------------

PARKED = """
    import asyncio, os
    from nerved import WorkflowDefinition

    async def first(prompt, ctx):
        return {"type": "first"}

    async def park(prompt, ctx):
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "parked"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "first", "prompt": None}
        if event["type"] == "first":
            return {"role": "park", "prompt": {"gate": thread.events[0]["payload"]["gate"]}}
        return None

    workflow = WorkflowDefinition(roles={"first": first, "park": park}, moderate=moderate)
"""


def test_runs_whose_stored_history_cannot_be_resumed_fail_alone(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  p: {concurrency: 5, overflow: queue, drainTimeout: 100ms}\n",
        workflows={"p": PARKED},
    ).start()
    runs = trigger_all(daemon, "p", [{"gate": str(gate), "n": i} for i in range(7)])
    wait_until(lambda: sum(r["steps"] for r in daemon.rpc("workflow.list")) == 5)
    assert daemon.stop() == 0
    unreadable, deep, huge, started, also_started, nan, queued = runs  # five started
    conn = sqlite3.connect(daemon.state / "logs.db", isolation_level=None)
    with contextlib.closing(conn):
        conn.execute("UPDATE workflow_runs SET trigger_payload = '{broken' WHERE run_id = ?",
                     (unreadable,))  # fmt: skip
        nested = '{"role":"first","prompt":null,"event":' + "[" * 980 + "]" * 980 + "}"
        conn.execute("UPDATE logs SET payload = ? WHERE ref_id = ? AND type = 'step_complete'",
                     (nested, deep))  # fmt: skip
        big = json.dumps({"role": "first", "prompt": None, "event": {"type": "x" * (65 << 20)}})
        conn.execute("INSERT INTO logs (source, type, ref_id, payload, ts)"
                     " VALUES ('workflow', 'step_complete', ?, ?, 0)", (huge, big))  # fmt: skip
        conn.execute("UPDATE workflow_runs SET steps = 2 WHERE run_id = ?", (huge,))
        conn.execute("UPDATE workflow_runs SET trigger_payload = '[1, NaN]' WHERE run_id = ?",
                     (nan,))  # fmt: skip
    daemon.start()
    reasons = {
        unreadable: "its trigger payload cannot be read back: not readable as JSON",
        deep: "nested",  # too deeply to read back, or to send: whichever the decoder meets
        huge: "its history is 65.0 MiB; a resume carries at most 64.0 MiB",
        nan: "its trigger payload cannot be sent: NaN is not JSON (at [1])",
    }
    for run_id, reason in reasons.items():
        run = daemon.rpc("workflow.wait", runId=run_id, timeout=10)
        assert run["status"] == "failed", run
        assert run["error"].startswith("its stored history can no longer be resumed: ")
        assert reason in run["error"]
    gate.touch()
    for run_id in (started, also_started, queued):
        assert daemon.rpc("workflow.wait", runId=run_id, timeout=10)["status"] == "completed"


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A new group under the cgroup v1 pids controller; its processes go back at the end."""
    if os.geteuid() != 0 or not (PIDS_CGROUP / "cgroup.procs").exists():
        pytest.skip("needs root and the cgroup v1 pids controller")
    group = PIDS_CGROUP / f"nerve-test-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (PIDS_CGROUP / "cgroup.procs").write_text(pid)
        group.rmdir()


def test_nothing_is_lost_while_no_process_can_be_forked(nerved_factory, pids_cgroup):
    daemon = nerved_factory(
        "senses:\n  tick: {}\nworkflows:\n  w: {}\n",
        {"tick": "def compute(ctx):\n    return {'ok': True}\n"},
        {"w": POISON},
        args=("--no-watch",),
    ).start()
    sense_pid = daemon.worker_pids("sense")["default"]
    (pids_cgroup / "cgroup.procs").write_text(str(daemon.pid))
    (pids_cgroup / "pids.max").write_text((pids_cgroup / "pids.current").read_text())

    answer = daemon.rpc("workflow.trigger", workflow="w", payload=1)
    assert answer["status"] == "started"  # durable: its worker comes when forks work again
    os.kill(sense_pid, signal.SIGKILL)
    write_package(daemon.root, "senses", "tick", "def compute(ctx):\n    return {'ok': 2}\n")
    with daemon.client() as client, pytest.raises(Exception, match="cannot fork a process"):
        client.call("reload")
    wait_until(lambda: "sense group default: cannot fork its worker" in daemon.log())
    time.sleep(0.5)  # a few more tries, each without a line of its own
    log = daemon.log()
    assert log.count("workflow w: cannot fork its worker") == 1
    assert log.count("sense group default: cannot fork its worker") == 1
    assert daemon.rpc("workflow.inspect", runId=answer["runId"])["status"] == "started"

    (pids_cgroup / "pids.max").write_text("max")
    run = daemon.rpc("workflow.wait", runId=answer["runId"], timeout=15)
    assert (run["status"], run["attempts"]) == ("completed", 0)
    daemon.rpc("sense.trigger", sense="tick")
    wait_until(lambda: daemon.rpc("logs.query", source="sense", type="signal"), timeout=15)
    assert daemon.rpc("reload") == {"changed": ["group default"]}


def test_check_says_why_when_it_cannot_fork(nerved_factory, pids_cgroup):
    root = nerved_factory("workflows:\n  w: {}\n", workflows={"w": POISON}).root
    (pids_cgroup / "pids.max").write_text("1")
    procs = pids_cgroup / "cgroup.procs"
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root)],
        preexec_fn=lambda: procs.write_text(str(os.getpid())),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 71, done.stderr
    assert "cannot fork a process to import the packages in" in done.stderr
    assert "Traceback" not in done.stderr


BIG_STEPS = """
    import asyncio, os
    from nerved import WorkflowDefinition

    async def big(prompt, ctx):
        return {"type": "big", "pad": "x" * 1_000_000}

    async def park(prompt, ctx):
        ctx.log("parked")
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "parked"}

    def moderate(thread, event):
        job = thread.events[0]["payload"]
        if event["type"] == "parked":
            return None
        if sum(1 for e in thread.events if e["type"] == "big") < job["steps"]:
            return {"role": "big", "prompt": None}
        return {"role": "park", "prompt": {"gate": job["gate"]}}

    workflow = WorkflowDefinition(roles={"big": big, "park": park}, moderate=moderate)
"""


def test_resuming_big_histories_never_holds_the_loop(nerved_factory, tmp_path):
    """A worker lost under 8 runs of 25 MB of history each: they are read and sent to the
    new worker page by page across loop turns, so status keeps answering meanwhile (before,
    the master read all 200 MB in one turn), and every run ends."""
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  b: {concurrency: 8}\n", workflows={"b": BIG_STEPS}
    ).start()
    runs = trigger_all(daemon, "b", [{"gate": str(gate), "steps": 25} for _ in range(8)])

    def parked() -> int:
        return len(daemon.rpc("logs.query", source="workflow", type="log", limit=100))

    wait_until(lambda: parked() == 8, timeout=60, what="every run to park")
    os.kill(daemon.worker_pids("workflow")["b"], signal.SIGKILL)
    slowest = 0.0
    deadline = time.monotonic() + 60
    while parked() < 16 and time.monotonic() < deadline:
        started = time.monotonic()
        assert daemon.rpc("status")["pid"] == daemon.pid
        slowest = max(slowest, time.monotonic() - started)
    assert parked() == 16, "the runs did not all resume"
    assert slowest < 1.0, f"status took {slowest:.2f}s while the runs resumed"
    gate.touch()
    for run_id in runs:
        run = daemon.rpc("workflow.wait", runId=run_id, timeout=30)
        assert run["status"] == "completed" and run["steps"] == 26, run
