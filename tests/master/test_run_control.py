"""Runs an operator can steer, through a real nerved: role timeouts, retries, cancel, retry
from a step, and what inspect shows of them (SPEC §5, v2).

Each test synchronises on what nerved says (a run's status, its history) and measures time
from the entries nerved wrote: the role's start is its ``begin`` (the run's ``started`` or
previous step's entry), the end is the ``step_failed`` or final entry.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from support import Nerved, assert_runs_match_logs, pid_alive, wait_until

from nervectl.client import RemoteError

# A role that never returns, in each way a role can hang: waiting in asyncio, sleeping in a
# thread (a sync role), and blocking its worker's event loop (a sync sleep in an async def).
HANGS = """
    import asyncio, time
    from nerved import WorkflowDefinition

    async def awaits(prompt, ctx):
        await asyncio.sleep(3600)

    def sleeps(prompt, ctx):
        time.sleep(3600)

    async def blocks(prompt, ctx):
        time.sleep(3600)

    def quick(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": event["payload"]["role"], "prompt": {}}
        return None

    workflow = WorkflowDefinition(
        roles={"awaits": awaits, "sleeps": sleeps, "blocks": blocks, "quick": quick},
        moderate=moderate,
    )
"""

HANG_POLICIES = """\
  hang:
    concurrency: 1
    drainTimeout: 2s
    roles:
      awaits: {timeout: 1s}
      sleeps: {timeout: 1s}
      blocks: {timeout: 1s}
"""

# A role that fails as told by its prompt, counting its tries in a file (a retry may run in
# another worker process, so a module global would not do).
FLAKY = """
    import json, os, time
    from nerved import Fatal, Retry, WorkflowDefinition

    def flaky(prompt, ctx):
        path = prompt["counter"]
        tries = (int(open(path).read()) if os.path.exists(path) else 0) + 1
        with open(path, "w") as f:
            f.write(str(tries))
        with open(path + ".times", "a") as f:
            f.write("%d %f\\n" % (ctx.attempt, time.time()))
        if tries <= prompt.get("fail", 0):
            kind = prompt.get("how", "raise")
            if kind == "fatal":
                raise Fatal("no such resource")
            if kind == "retry":
                raise Retry("rate limited", after=prompt["after"])
            raise RuntimeError("transient %d" % tries)
        return {"type": "flaked", "tries": tries, "attempt": ctx.attempt}

    def fallback(prompt, ctx):
        return {"type": "fell_back", "failure": prompt}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "flaky", "prompt": event["payload"]}
        if event["type"] == "role_failed":
            return {"role": "fallback", "prompt": event}
        return None

    workflow = WorkflowDefinition(roles={"flaky": flaky, "fallback": fallback}, moderate=moderate)
"""


def start(nerved_factory, workflows_yaml: str, workflows: dict[str, str]) -> Nerved:
    return nerved_factory(f"workflows:\n{workflows_yaml}", None, workflows).start()


trigger = Nerved.trigger
wait_run = Nerved.wait_run
history = entries = Nerved.entries


def db(daemon: Nerved):
    return daemon.state / "logs.db"


# -- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["awaits", "sleeps", "blocks"])
def test_a_hung_role_ends_its_step_at_its_timeout_and_the_queue_moves(nerved_factory, role):
    """However the role hangs, its try ends at the timeout (measured from the role's start,
    the run's ``started`` entry) plus at most a second; the slot goes to the next run."""
    daemon = start(nerved_factory, HANG_POLICIES, {"hang": HANGS})
    hung = trigger(daemon, "hang", {"role": role})
    behind = trigger(daemon, "hang", {"role": "quick"})
    run = wait_run(daemon, hung)
    assert run["status"] == "failed"
    assert run["error"].startswith(f"role '{role}' timed out after 1s"), run["error"]
    began = entries(daemon, hung, "started")[0]["ts"]
    failed = entries(daemon, hung, "step_failed")
    assert len(failed) == 1 and failed[0]["payload"]["try"] == 1
    assert failed[0]["payload"]["retryAt"] is None
    assert 1000 <= failed[0]["ts"] - began <= 2000, failed[0]["ts"] - began
    assert wait_run(daemon, behind)["status"] == "completed"
    assert_runs_match_logs(db(daemon))


def test_a_sync_role_past_its_timeout_has_its_worker_replaced(nerved_factory):
    """Its thread cannot be stopped: the worker takes no new runs (the next run goes to a
    new worker) and is gone by its drain deadline."""
    daemon = start(nerved_factory, HANG_POLICIES, {"hang": HANGS})
    hung = trigger(daemon, "hang", {"role": "sleeps"})
    wait_until(lambda: daemon.worker_pids("workflow"), timeout=10)
    (old_pid,) = daemon.worker_pids("workflow").values()
    wait_run(daemon, hung)
    behind = trigger(daemon, "hang", {"role": "quick"})
    assert wait_run(daemon, behind)["status"] == "completed"
    wait_until(lambda: not _alive(old_pid), timeout=10)
    assert "could not be stopped" in daemon.log()


_alive = pid_alive


def test_a_timeout_set_by_a_reload_holds_in_the_running_worker(nerved_factory):
    """Settings apply without a restart: the worker forked before the reload gets the role's
    new timeout (it is the one that runs the next try), and so does the master's bound."""
    daemon = nerved_factory(
        "workflows:\n  hang: {idleTimeout: 1h}\n", None, {"hang": HANGS}, args=("--no-watch",)
    ).start()
    assert wait_run(daemon, trigger(daemon, "hang", {"role": "quick"}))["status"] == "completed"
    (pid,) = daemon.worker_pids("workflow").values()
    (daemon.root / "nerve.yaml").write_text(
        "workflows:\n  hang:\n    idleTimeout: 1h\n    roles:\n      awaits: {timeout: 1s}\n"
    )
    assert daemon.rpc("reload") == {"changed": ["workflow hang settings"]}
    run = wait_run(daemon, trigger(daemon, "hang", {"role": "awaits"}))
    assert run["error"] == "role 'awaits' timed out after 1s", run
    assert daemon.worker_pids("workflow") == {"hang": pid}  # an async role: no replacement


# -- retries -------------------------------------------------------------------------------

RETRY_POLICIES = """\
  flaky:
    roles:
      flaky:
        retry: {attempts: 3, delay: 200ms, factor: 2}
"""


def test_a_role_failing_twice_then_succeeding_completes_after_its_policy_s_delays(
    nerved_factory, tmp_path
):
    daemon = start(nerved_factory, RETRY_POLICIES, {"flaky": FLAKY})
    counter = tmp_path / "count"
    run_id = trigger(daemon, "flaky", {"counter": str(counter), "fail": 2})
    run = wait_run(daemon, run_id)
    assert run["status"] == "completed", run
    assert run["steps"] == 1 and run["tries"] == 0 and run["retryAt"] is None
    failed = entries(daemon, run_id, "step_failed")
    assert [f["payload"]["try"] for f in failed] == [1, 2]
    assert all(f["payload"]["error"].startswith("raised RuntimeError: transient") for f in failed)
    delays = [f["payload"]["retryAt"] - f["ts"] for f in failed]
    assert 190 <= delays[0] <= 260 and 390 <= delays[1] <= 460, delays
    # Each try ran no earlier than its retryAt, and the role saw its try number.
    times = [line.split() for line in (tmp_path / "count.times").read_text().splitlines()]
    assert [int(attempt) for attempt, _ in times] == [1, 2, 3]
    for (_, at), f in zip(times[1:], failed, strict=True):
        assert float(at) * 1000 >= f["payload"]["retryAt"] - 5
    step = entries(daemon, run_id, "step_complete")
    assert [s["payload"]["event"]["attempt"] for s in step] == [3]
    assert_runs_match_logs(db(daemon))


def test_fatal_stops_the_retries(nerved_factory, tmp_path):
    yaml = "  flaky:\n    roles:\n      flaky:\n        retry: {attempts: 5, delay: 10ms}\n"
    daemon = start(nerved_factory, yaml, {"flaky": FLAKY})
    payload = {"counter": str(tmp_path / "c"), "fail": 5, "how": "fatal"}
    run = wait_run(daemon, trigger(daemon, "flaky", payload))
    assert run["status"] == "failed"
    assert run["error"] == "role 'flaky' gave up: no such resource (try 1 of 5)"
    assert (tmp_path / "c").read_text() == "1"
    assert_runs_match_logs(db(daemon))


def test_retry_after_overrides_the_policy_s_delay(nerved_factory, tmp_path):
    yaml = "  flaky:\n    roles:\n      flaky:\n        retry: {attempts: 2, delay: 1h, maxDelay: 1h}\n"
    daemon = start(nerved_factory, yaml, {"flaky": FLAKY})
    payload = {"counter": str(tmp_path / "c"), "fail": 1, "how": "retry", "after": 0.3}
    run_id = trigger(daemon, "flaky", payload)
    assert wait_run(daemon, run_id)["status"] == "completed"
    (failed,) = entries(daemon, run_id, "step_failed")
    assert failed["payload"]["error"] == "asked to retry: rate limited"
    assert 290 <= failed["payload"]["retryAt"] - failed["ts"] <= 360


def test_on_error_moderate_hands_role_failed_to_the_moderator(nerved_factory, tmp_path):
    yaml = (
        "  flaky:\n    roles:\n      flaky:\n"
        "        retry: {attempts: 2, delay: 10ms}\n        onError: moderate\n"
    )
    daemon = start(nerved_factory, yaml, {"flaky": FLAKY})
    run_id = trigger(daemon, "flaky", {"counter": str(tmp_path / "c"), "fail": 9})
    run = wait_run(daemon, run_id)
    assert run["status"] == "completed", run
    kinds = [e["type"] for e in history(daemon, run_id)]
    assert kinds == ["started", "step_failed", "step_failed", "input", "step_complete",
                     "completed"]  # fmt: skip
    (given,) = entries(daemon, run_id, "input")
    assert given["payload"]["event"] == {
        "type": "role_failed",
        "role": "flaky",
        "error": "raised RuntimeError: transient 2 (at workflows/flaky/__init__.py:19)",
        "attempts": 2,
    } or given["payload"]["event"]["error"].startswith("raised RuntimeError: transient 2")
    (step,) = entries(daemon, run_id, "step_complete")
    assert step["payload"]["role"] == "fallback"
    assert step["payload"]["event"]["failure"]["type"] == "role_failed"
    assert_runs_match_logs(db(daemon))


def test_a_retry_pending_across_a_kill_9_runs_at_its_time_after_restart(nerved_factory, tmp_path):
    yaml = "  flaky:\n    roles:\n      flaky:\n        retry: {attempts: 2, delay: 3s}\n"
    daemon = start(nerved_factory, yaml, {"flaky": FLAKY})
    counter = tmp_path / "c"
    run_id = trigger(daemon, "flaky", {"counter": str(counter), "fail": 1})
    wait_until(lambda: entries(daemon, run_id, "step_failed"), timeout=10)
    (failed,) = entries(daemon, run_id, "step_failed")
    daemon.kill()
    daemon.start()
    run = wait_run(daemon, run_id)
    assert run["status"] == "completed"
    times = [line.split() for line in (tmp_path / "c.times").read_text().splitlines()]
    assert len(times) == 2
    assert float(times[1][1]) * 1000 >= failed["payload"]["retryAt"] - 5
    assert_runs_match_logs(db(daemon))


def test_a_retry_due_while_nerved_was_down_runs_at_start(nerved_factory, tmp_path):
    yaml = "  flaky:\n    roles:\n      flaky:\n        retry: {attempts: 2, delay: 1s}\n"
    daemon = start(nerved_factory, yaml, {"flaky": FLAKY})
    run_id = trigger(daemon, "flaky", {"counter": str(tmp_path / "c"), "fail": 1})
    wait_until(lambda: entries(daemon, run_id, "step_failed"), timeout=10)
    (failed,) = entries(daemon, run_id, "step_failed")
    daemon.kill()
    time.sleep(max(0.0, failed["payload"]["retryAt"] / 1000 - time.time()) + 0.2)
    daemon.start()
    assert wait_run(daemon, run_id)["status"] == "completed"
    resumed = entries(daemon, run_id, "resumed")
    assert resumed and resumed[-1]["payload"]["reason"] == "nerved restarted"


# -- cancel --------------------------------------------------------------------------------

GATED = """
    import asyncio, os
    from nerved import WorkflowDefinition

    async def work(prompt, ctx):
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "worked"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def test_cancel_of_a_started_and_a_queued_run_frees_the_slot_at_once(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {concurrency: 1}\n", {"gated": GATED})
    gate = str(tmp_path / "gate")
    started = trigger(daemon, "gated", {"gate": gate})
    queued = trigger(daemon, "gated", {"gate": gate})
    last = trigger(daemon, "gated", {"gate": str(tmp_path / "open")})
    (tmp_path / "open").touch()
    assert daemon.rpc("workflow.list")[0]["status"] == "queued"

    run = daemon.rpc("workflow.cancel", runId=queued, reason="not needed")
    assert run["status"] == "cancelled"
    assert run["error"] == f"cancelled by uid {os.getuid()}: not needed"
    (entry,) = entries(daemon, queued, "cancelled")
    assert entry["payload"] == {"reason": "not needed", "uid": os.getuid()}

    run = daemon.rpc("workflow.cancel", runId=started[:8])
    assert run["status"] == "cancelled" and run["error"] == f"cancelled by uid {os.getuid()}"
    assert wait_run(daemon, last)["status"] == "completed"  # the slot went on
    assert not entries(daemon, queued, "started")
    assert_runs_match_logs(db(daemon))


def test_cancel_of_a_hung_sync_role_replaces_its_worker(nerved_factory):
    """Its thread runs on: the worker takes no new run, and is gone once drained. (The
    role's timeout, an hour, is there for its ``begin``: the cancel must come once the role
    runs; a run cancelled before its role began leaves nothing behind to replace.)"""
    yaml = "  hang:\n    drainTimeout: 2s\n    roles:\n      sleeps: {timeout: 1h}\n"
    daemon = start(nerved_factory, yaml, {"hang": HANGS})
    hung = trigger(daemon, "hang", {"role": "sleeps"})
    wait_until(
        lambda: (daemon.rpc("workflow.inspect", runId=hung)["progress"] or {}).get("role"),
        timeout=10,
    )
    (old_pid,) = daemon.worker_pids("workflow").values()
    assert daemon.rpc("workflow.cancel", runId=hung)["status"] == "cancelled"
    behind = trigger(daemon, "hang", {"role": "quick"})
    assert wait_run(daemon, behind)["status"] == "completed"
    wait_until(lambda: not _alive(old_pid), timeout=10)


def test_cancel_of_a_final_run_is_refused_and_changes_nothing(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  hang: {}\n", {"hang": HANGS})
    done = trigger(daemon, "hang", {"role": "quick"})
    wait_run(daemon, done)
    with daemon.client() as client, pytest.raises(RemoteError) as refused:
        client.call("workflow.cancel", {"runId": done})
    assert refused.value.code == -32004
    assert refused.value.data == {"status": "completed"}
    assert daemon.rpc("workflow.inspect", runId=done)["status"] == "completed"
    proc = daemon.ctl("workflow", "cancel", done, "no-such-run-id")
    assert proc.returncode == 4
    assert "is completed already" in proc.stderr and "no run" in proc.stderr


# -- retry from a step ---------------------------------------------------------------------

# Three steps; each role counts its calls in a file, and the third fails while a flag exists.
STEPS = """
    import os
    from nerved import WorkflowDefinition

    def count(prompt, name):
        path = os.path.join(prompt["dir"], name)
        with open(path, "a") as f:
            f.write("x")

    def one(prompt, ctx):
        count(prompt, "one")
        return {"type": "one", "dir": prompt["dir"]}

    def two(prompt, ctx):
        count(prompt, "two")
        return {"type": "two", "dir": prompt["dir"]}

    def three(prompt, ctx):
        count(prompt, "three")
        if os.path.exists(os.path.join(prompt["dir"], "broken")):
            raise RuntimeError("broken")
        return {"type": "three"}

    def moderate(thread, event):
        step = {"thread_start": "one", "one": "two", "two": "three"}.get(event["type"])
        if step is None:
            return None
        d = event["payload"]["dir"] if event["type"] == "thread_start" else event["dir"]
        return {"role": step, "prompt": {"dir": d}}

    workflow = WorkflowDefinition(roles={"one": one, "two": two, "three": three},
                                  moderate=moderate)
"""


def test_retry_from_the_failed_step_copies_the_earlier_steps_and_never_reruns_them(
    nerved_factory, tmp_path
):
    daemon = start(nerved_factory, "  steps: {}\n", {"steps": STEPS})
    (tmp_path / "broken").touch()
    old = trigger(daemon, "steps", {"dir": str(tmp_path)})
    assert wait_run(daemon, old)["status"] == "failed"
    (tmp_path / "broken").unlink()
    with daemon.client() as client, pytest.raises(RemoteError) as refused:
        client.call("workflow.retry", {"runId": old, "fromStep": 3})
    assert refused.value.code == -32602

    proc = daemon.ctl("--json", "workflow", "retry", old[:8], "--wait")
    assert proc.returncode == 0, proc.stderr
    new = json.loads(proc.stdout)
    assert new["status"] == "completed" and new["retryOf"] == old and new["steps"] == 3
    assert {n: (tmp_path / n).read_text() for n in ("one", "two", "three")} == {
        "one": "x", "two": "x", "three": "xx"
    }  # fmt: skip
    old_steps = [e["payload"] for e in entries(daemon, old, "step_complete")]
    new_steps = [e["payload"] for e in entries(daemon, new["runId"], "step_complete")]
    assert new_steps[:2] == old_steps
    kinds = [e["type"] for e in entries(daemon, new["runId"])]
    assert kinds[:4] == ["started", "copied", "step_complete", "step_complete"], kinds
    (note,) = entries(daemon, new["runId"], "copied")
    assert note["payload"] == {"from": old, "steps": 2}
    shown = daemon.ctl("workflow", "inspect", new["runId"]).stdout
    assert f"the next 2 steps are run {old}'s, kept, not run again" in shown

    again = daemon.rpc("workflow.retry", runId=new["runId"], fromStep=1)
    assert wait_run(daemon, again["runId"])["status"] == "completed"
    assert (tmp_path / "one").read_text() == "x" and (tmp_path / "two").read_text() == "xx"
    assert_runs_match_logs(db(daemon))


def test_retry_of_an_active_run_is_refused(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {}\n", {"gated": GATED})
    run_id = trigger(daemon, "gated", {"gate": str(tmp_path / "gate")})
    with daemon.client() as client, pytest.raises(RemoteError) as refused:
        client.call("workflow.retry", {"runId": run_id})
    assert refused.value.code == -32004
    proc = daemon.ctl("workflow", "retry", run_id)
    assert proc.returncode == 1 and "still started" in proc.stderr


# -- what inspect and list show --------------------------------------------------------------


def test_inspect_and_list_show_the_step_in_flight_and_a_retry_s_wait(nerved_factory, tmp_path):
    yaml = (
        "  flaky:\n    roles:\n      flaky:\n        retry: {attempts: 2, delay: 1h, maxDelay: 1h}\n"
        "  hang:\n    roles:\n      awaits: {timeout: 1h}\n"
    )
    daemon = start(nerved_factory, yaml, {"flaky": FLAKY, "hang": HANGS})
    waiting = trigger(daemon, "flaky", {"counter": str(tmp_path / "c"), "fail": 1})
    hung = trigger(daemon, "hang", {"role": "awaits"})
    wait_until(lambda: entries(daemon, waiting, "step_failed"), timeout=10)
    wait_until(
        lambda: daemon.rpc("workflow.inspect", runId=hung)["progress"]["role"] == "awaits",
        timeout=10,
    )
    progress = daemon.rpc("workflow.inspect", runId=hung)["progress"]
    assert progress["step"] == 1 and progress["try"] == 1 and progress["retryAt"] is None
    assert time.time() * 1000 - progress["since"] < 10_000
    progress = daemon.rpc("workflow.inspect", runId=waiting)["progress"]
    assert progress["try"] == 2 and progress["retryAt"] > time.time() * 1000 + 3_000_000
    table = daemon.ctl("workflow", "list").stdout
    assert "IN FLIGHT" in table and "step 1 (role awaits) for" in table
    assert "step 1 (role flaky), try 2 due in" in table
    shown = daemon.ctl("workflow", "inspect", waiting).stdout
    assert "flaky try 1, next try after 1h: raised RuntimeError: transient 1" in shown
    daemon.rpc("workflow.cancel", runId=waiting)
    daemon.rpc("workflow.cancel", runId=hung)


AFTER_A_RETRY = """
    import asyncio, os
    from nerved import Retry, WorkflowDefinition

    def flaky(prompt, ctx):
        if ctx.attempt == 1:
            raise Retry("once")
        return {"type": "flaked", "gate": prompt["gate"]}

    async def hold(prompt, ctx):
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "held"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "flaky", "prompt": event["payload"]}
        if event["type"] == "flaked":
            return {"role": "hold", "prompt": {"gate": event["gate"]}}
        return None

    workflow = WorkflowDefinition(roles={"flaky": flaky, "hold": hold}, moderate=moderate)
"""


def test_the_step_after_a_retried_one_is_shown_in_flight_not_due(nerved_factory, tmp_path):
    """Once the retry ran, no try is due: the next step shows its role and age."""
    yaml = (
        "  w:\n    roles:\n      flaky:\n        retry: {attempts: 2, delay: 10ms}\n"
        "      hold: {timeout: 1h}\n"
    )
    daemon = start(nerved_factory, yaml, {"w": AFTER_A_RETRY})
    run_id = trigger(daemon, "w", {"gate": str(tmp_path / "gate")})
    wait_until(
        lambda: (
            (daemon.rpc("workflow.inspect", runId=run_id)["progress"] or {}).get("role") == "hold"
        ),
        timeout=10,
    )
    progress = daemon.rpc("workflow.inspect", runId=run_id)["progress"]
    assert (progress["step"], progress["try"], progress["retryAt"]) == (2, 1, None)
    assert "step 2 (role hold) for" in daemon.ctl("workflow", "list").stdout
    (tmp_path / "gate").touch()
    assert wait_run(daemon, run_id)["status"] == "completed"


def test_each_resume_after_a_worker_crash_is_in_the_history(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {}\n", {"gated": GATED})
    gate = tmp_path / "gate"
    run_id = trigger(daemon, "gated", {"gate": str(gate)})
    wait_until(lambda: daemon.worker_pids("workflow"), timeout=10)
    (pid,) = daemon.worker_pids("workflow").values()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: entries(daemon, run_id, "resumed"), timeout=10)
    gate.touch()
    assert wait_run(daemon, run_id)["status"] == "completed"
    (resumed,) = entries(daemon, run_id, "resumed")
    assert resumed["payload"]["attempt"] == 1
    assert resumed["payload"]["reason"].startswith("its worker died (")
