"""Attacks on run control: timeouts, retries, cancel, retry from a step (fresh eyes)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
from support import Nerved, pid_alive, wait_until

from nervectl.client import RemoteError

HOSTILE = """
    import asyncio, os, subprocess, sys, time
    from nerved import WorkflowDefinition

    async def stubborn(prompt, ctx):
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    async def spins(prompt, ctx):
        while True:
            pass

    def spawns(prompt, ctx):
        p = subprocess.Popen(["sleep", "3600"])
        with open(prompt["pidfile"], "w") as f:
            f.write(str(p.pid))
        p.wait()

    def exits(prompt, ctx):
        raise SystemExit(3)

    def interrupts(prompt, ctx):
        raise KeyboardInterrupt()

    class Weird(BaseException):
        pass

    def base(prompt, ctx):
        raise Weird("weird")

    def os_exit(prompt, ctx):
        os._exit(0)

    async def _coro():
        await asyncio.sleep(3600)

    def coro(prompt, ctx):
        return _coro()

    def quick(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": event["payload"]["role"], "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(
        roles={"stubborn": stubborn, "spins": spins, "spawns": spawns, "exits": exits,
               "interrupts": interrupts, "base": base, "coro": coro, "quick": quick,
               "os_exit": os_exit},
        moderate=moderate,
    )
"""

HOSTILE_YAML = """\
  hostile:
    concurrency: 1
    drainTimeout: 2s
    roles:
      stubborn: {timeout: 1s}
      spins: {timeout: 1s}
      spawns: {timeout: 1s}
      exits: {timeout: 1s}
      interrupts: {timeout: 1s}
      base: {timeout: 1s}
      coro: {timeout: 1s}
      os_exit: {timeout: 1s}
"""

RETRYING = """
    import math
    from nerved import Retry, WorkflowDefinition

    VALUES = {"neg": -5, "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
              "huge": 1e308, "str": "5", "bool": True, "bigint": 10**400, "zero": 0,
              "list": [1]}

    def r(prompt, ctx):
        if ctx.attempt == 1:
            raise Retry("again", after=VALUES[prompt["after"]])
        return {"type": "ok", "attempt": ctx.attempt}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "r", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"r": r}, moderate=moderate)
"""

RETRYING_YAML = """\
  retrying:
    roles:
      r:
        retry: {attempts: 2, delay: 100ms}
"""

GATED = """
    import asyncio, os
    from nerved import WorkflowDefinition

    def count(prompt, name):
        with open(os.path.join(prompt["dir"], name), "a") as f:
            f.write("x")

    def one(prompt, ctx):
        count(prompt, "one")
        return {"type": "one", "dir": prompt["dir"]}

    async def work(prompt, ctx):
        count(prompt, "work")
        while not os.path.exists(os.path.join(prompt["dir"], "gate")):
            await asyncio.sleep(0.01)
        return {"type": "worked"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "one", "prompt": event["payload"]}
        if event["type"] == "one":
            return {"role": "work", "prompt": {"dir": event["dir"]}}
        return None

    workflow = WorkflowDefinition(roles={"one": one, "work": work}, moderate=moderate)
"""


def start(nerved_factory, workflows_yaml: str, workflows: dict[str, str]) -> Nerved:
    return nerved_factory(f"workflows:\n{workflows_yaml}", None, workflows).start()


trigger = Nerved.trigger
history = entries = Nerved.entries
healthy = Nerved.healthy
_alive = pid_alive


def wait_run(daemon: Nerved, run_id: str, timeout: float = 12) -> dict:
    return daemon.wait_run(run_id, timeout)


# -- timeouts, whatever the role does ------------------------------------------------------


@pytest.mark.parametrize(
    "role", ["stubborn", "spins", "spawns", "exits", "interrupts", "base", "coro", "os_exit"]
)
def test_attack_timeout_holds_whatever_the_role_does(nerved_factory, tmp_path, role):
    daemon = start(nerved_factory, HOSTILE_YAML, {"hostile": HOSTILE})
    pidfile = str(tmp_path / "child.pid")
    hung = trigger(daemon, "hostile", {"role": role, "pidfile": pidfile})
    behind = trigger(daemon, "hostile", {"role": "quick"})
    t0 = time.time()
    run = wait_run(daemon, hung)
    assert run["status"] in ("failed", "crashed"), run
    began = entries(daemon, hung, "started")[0]["ts"]
    final = history(daemon, hung)[-1]["ts"]
    assert final - began <= 2000 + 500, (final - began, run)
    assert wait_run(daemon, behind)["status"] == "completed"
    assert time.time() - t0 < 10
    if role == "spawns":
        pid = int(Path(pidfile).read_text())
        wait_until(lambda: not _alive(pid), timeout=5)
    healthy(daemon)


# -- Retry(after=) with odd values ---------------------------------------------------------


@pytest.mark.parametrize(
    "after", ["neg", "nan", "inf", "ninf", "huge", "str", "bool", "bigint", "zero", "list"]
)
def test_attack_retry_after_odd_values_keep_the_daemon_sane(nerved_factory, after):
    daemon = start(nerved_factory, RETRYING_YAML, {"retrying": RETRYING})
    run_id = trigger(daemon, "retrying", {"after": after})
    wait_until(
        lambda: (
            entries(daemon, run_id, "step_failed")
            or daemon.rpc("workflow.inspect", runId=run_id)["status"] not in ("queued", "started")
        ),
        timeout=10,
    )
    info = daemon.rpc("workflow.inspect", runId=run_id)
    failed = entries(daemon, run_id, "step_failed")
    if failed:
        at = failed[0]["payload"]["retryAt"]
        # retryAt is a finite integer, never before the failure
        assert at is None or (isinstance(at, int) and at >= failed[0]["ts"]), failed
        # JSON from nervectl is parseable (no NaN/Infinity)
        proc = daemon.ctl("--json", "workflow", "inspect", run_id)
        assert proc.returncode == 0, proc.stderr
        json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
        if after in ("inf", "huge", "bigint"):
            # Out of range: the policy's delay applies instead, so on a slow host the next
            # try may have completed the run already; then a cancel is refused as for any
            # final run.
            try:
                daemon.rpc("workflow.cancel", runId=run_id)
            except RemoteError as refused:
                assert refused.code == -32004, refused
                assert wait_run(daemon, run_id)["status"] == "completed"
        elif info["status"] in ("queued", "started"):
            assert wait_run(daemon, run_id)["status"] in ("completed", "failed")
    lst = daemon.ctl("workflow", "list")
    assert lst.returncode == 0, lst.stderr
    healthy(daemon)
    daemon.kill()
    daemon.start()
    healthy(daemon)


# -- cancel --------------------------------------------------------------------------------


def test_attack_cancel_while_waiting_for_a_retry_never_runs_the_retry(nerved_factory, tmp_path):
    daemon = start(
        nerved_factory,
        "  retrying:\n    roles:\n      r:\n        retry: {attempts: 2, delay: 1s}\n",
        {"retrying": RETRYING.replace('VALUES[prompt["after"]]', "1")},
    )
    run_id = trigger(daemon, "retrying", {"after": "x"})
    wait_until(lambda: entries(daemon, run_id, "step_failed"), timeout=10)
    run = daemon.rpc("workflow.cancel", runId=run_id, reason="stop")
    assert run["status"] == "cancelled"
    assert run["retryAt"] is None if "retryAt" in run else True
    time.sleep(1.5)
    info = daemon.rpc("workflow.inspect", runId=run_id)
    assert info["status"] == "cancelled"
    assert not entries(daemon, run_id, "step_complete")
    daemon.kill()
    daemon.start()
    time.sleep(0.5)
    assert daemon.rpc("workflow.inspect", runId=run_id)["status"] == "cancelled"
    healthy(daemon)


def test_attack_cancel_odd_ids_and_reasons(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {concurrency: 1}\n", {"gated": GATED})
    ids = [trigger(daemon, "gated", {"dir": str(tmp_path)}) for _ in range(3)]
    # bad ids over the wire
    for bad in ["", "x", "zzzzzzzz", None, 5, ["a"], {"a": 1}, "\x00" * 8, "a" * 100000]:
        with daemon.client() as client, pytest.raises(RemoteError) as err:
            client.call("workflow.cancel", {"runId": bad})
        assert err.value.code in (-32602, -32001, -32002, -32003, -32004, -32005), (bad, err.value)
    for bad in [5, ["x"], {"a": 1}]:
        with daemon.client() as client, pytest.raises(RemoteError):
            client.call("workflow.cancel", {"runId": ids[2], "reason": bad})
    # control characters and a huge reason
    reason = "a\x00b\x1b[31mred\nnewline\u202e" + "y" * 10
    run = daemon.rpc("workflow.cancel", runId=ids[2], reason=reason)
    assert run["status"] == "cancelled"
    huge = "z" * 900_000
    with daemon.client() as client:
        try:
            client.call("workflow.cancel", {"runId": ids[1], "reason": huge})
        except RemoteError as e:
            assert e.code == -32602
    shown = daemon.ctl("workflow", "inspect", ids[2])
    assert shown.returncode == 0
    assert "\x1b" not in shown.stdout and "\x00" not in shown.stdout
    lst = daemon.ctl("workflow", "list")
    assert "\x1b" not in lst.stdout
    # many mixed ids through nervectl
    proc = daemon.ctl("workflow", "cancel", ids[0], ids[2], "nope", ids[0])
    assert proc.returncode != 0
    assert daemon.rpc("workflow.inspect", runId=ids[0])["status"] == "cancelled"
    healthy(daemon)


def test_attack_cancel_ambiguous_prefix_is_refused(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {concurrency: 1, maxQueue: 1000}\n", {"gated": GATED})
    ids = [trigger(daemon, "gated", {"dir": str(tmp_path)}) for _ in range(40)]
    firsts = {}
    for i in ids:
        firsts.setdefault(i[0], []).append(i)
    prefix = next(k for k, v in firsts.items() if len(v) > 1)
    with daemon.client() as client, pytest.raises(RemoteError):
        client.call("workflow.cancel", {"runId": prefix})
    assert all(
        daemon.rpc("workflow.inspect", runId=i)["status"] in ("queued", "started")
        for i in firsts[prefix]
    )
    healthy(daemon)


# -- retry from a step ---------------------------------------------------------------------


def _finished_run(daemon, tmp_path) -> str:
    (tmp_path / "gate").touch()
    run_id = trigger(daemon, "gated", {"dir": str(tmp_path)})
    assert wait_run(daemon, run_id)["status"] == "completed"
    (tmp_path / "gate").unlink()
    return run_id


def test_attack_retry_from_step_odd_values(nerved_factory, tmp_path):
    """Only None (every step) and a whole number from 0 to the run's steps make a retry;
    anything else is -32602 and makes nothing. One daemon, every value in turn."""
    daemon = start(nerved_factory, "  gated: {}\n", {"gated": GATED})
    old = _finished_run(daemon, tmp_path)
    (tmp_path / "gate").touch()
    for from_step in (-1, 1.5, True, False, 10**30, "1", None, 2.0, 3, 0, 2):
        before = len(daemon.rpc("workflow.list", all=True))
        with daemon.client() as client:
            try:
                new = client.call("workflow.retry", {"runId": old, "fromStep": from_step})
            except RemoteError as e:
                assert e.code == -32602, (from_step, e)
                assert type(from_step) is not int or from_step not in (0, 2), (from_step, e)
                assert len(daemon.rpc("workflow.list", all=True)) == before, from_step
                continue
        assert from_step is None or (type(from_step) is int and from_step in (0, 2)), from_step
        assert wait_run(daemon, new["runId"])["status"] == "completed"
    healthy(daemon)


def test_attack_retry_of_a_cancelled_queued_run_and_a_retry_of_a_retry(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {concurrency: 1}\n", {"gated": GATED})
    first = trigger(daemon, "gated", {"dir": str(tmp_path)})
    queued = trigger(daemon, "gated", {"dir": str(tmp_path)})
    # Its step 'one' recorded first: a step cancelled in flight is not kept, and runs again
    # in a retry (at-least-once), which is not what this test is about.
    wait_until(lambda: entries(daemon, first, "step_complete"), timeout=10)
    daemon.rpc("workflow.cancel", runId=queued)
    daemon.rpc("workflow.cancel", runId=first)
    r1 = daemon.rpc("workflow.retry", runId=queued)
    assert r1["retryOf"] == queued
    daemon.rpc("workflow.cancel", runId=r1["runId"])
    r2 = daemon.rpc("workflow.retry", runId=r1["runId"])
    (tmp_path / "gate").touch()
    assert wait_run(daemon, r2["runId"])["status"] == "completed"
    # retry the started-then-cancelled run: its completed step 'one' is copied
    ones = (tmp_path / "one").read_text()
    r3 = daemon.rpc("workflow.retry", runId=first)
    assert wait_run(daemon, r3["runId"])["status"] == "completed"
    assert (tmp_path / "one").read_text() == ones  # step one not run again
    healthy(daemon)


def test_attack_retry_of_a_run_whose_workflow_was_removed(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {}\n", {"gated": GATED})
    old = _finished_run(daemon, tmp_path)
    (daemon.root / "nerve.yaml").write_text("workflows: {}\n")
    import shutil

    shutil.rmtree(daemon.root / "workflows" / "gated")
    assert daemon.ctl("reload").returncode == 0, daemon.ctl("reload").stderr
    with daemon.client() as client, pytest.raises(RemoteError) as err:
        client.call("workflow.retry", {"runId": old})
    assert err.value.code in (-32001, -32002, -32003, -32004, -32602), err.value
    proc = daemon.ctl("workflow", "retry", old)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    healthy(daemon)


def test_attack_queued_retry_survives_kill_9_and_does_not_rerun_copied_steps(
    nerved_factory, tmp_path
):
    daemon = start(nerved_factory, "  gated: {concurrency: 1}\n", {"gated": GATED})
    old = _finished_run(daemon, tmp_path)
    (tmp_path / "b").mkdir()
    blocker = trigger(daemon, "gated", {"dir": str(tmp_path / "b")})
    wait_until(lambda: (tmp_path / "b" / "work").exists(), timeout=10)
    new = daemon.rpc("workflow.retry", runId=old, fromStep=1)
    assert daemon.rpc("workflow.inspect", runId=new["runId"])["status"] == "queued"
    ones = (tmp_path / "one").read_text()
    daemon.kill()
    daemon.start()
    healthy(daemon)
    daemon.rpc("workflow.cancel", runId=blocker)
    (tmp_path / "gate").touch()
    run = wait_run(daemon, new["runId"])
    assert run["status"] == "completed", run
    assert (tmp_path / "one").read_text() == ones
    assert run["steps"] == 2
    healthy(daemon)


def test_attack_retry_cli_from_step_values(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {}\n", {"gated": GATED})
    old = _finished_run(daemon, tmp_path)
    for bad in ["-1", "1.5", "abc", "99999999999999999999999"]:
        proc = daemon.ctl("workflow", "retry", old, "--from-step", bad)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (bad, proc.stderr)
    healthy(daemon)


# -- reload while a retry waits ------------------------------------------------------------


def test_attack_reload_changing_policy_while_a_retry_waits(nerved_factory, tmp_path):
    code = RETRYING.replace('VALUES[prompt["after"]]', "60")
    daemon = start(
        nerved_factory,
        "  retrying:\n    roles:\n      r:\n        retry: {attempts: 2, delay: 1s}\n",
        {"retrying": code},
    )
    run_id = trigger(daemon, "retrying", {})
    wait_until(lambda: entries(daemon, run_id, "step_failed"), timeout=10)
    # policy drops retries; code changes too
    (daemon.root / "nerve.yaml").write_text(
        "workflows:\n  retrying:\n    roles:\n      r: {timeout: 5s}\n"
    )
    init = daemon.root / "workflows" / "retrying" / "__init__.py"
    init.write_text(init.read_text().replace('"ok"', '"ok2"'))
    proc = daemon.ctl("reload")
    assert proc.returncode == 0, proc.stderr
    healthy(daemon)
    daemon.rpc("workflow.cancel", runId=run_id)
    healthy(daemon)


# -- replay over odd histories -------------------------------------------------------------


def test_attack_replay_over_step_failed_input_and_cancelled(nerved_factory, tmp_path):
    flaky = """
    from nerved import WorkflowDefinition
    def f(prompt, ctx):
        raise RuntimeError("no")
    def fb(prompt, ctx):
        return {"type": "fb"}
    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "f", "prompt": {}}
        if event["type"] == "role_failed":
            return {"role": "fb", "prompt": {}}
        return None
    workflow = WorkflowDefinition(roles={"f": f, "fb": fb}, moderate=moderate)
"""
    yaml = "  fl:\n    roles:\n      f:\n        retry: {attempts: 2, delay: 10ms}\n        onError: moderate\n"
    daemon = start(nerved_factory, yaml, {"fl": flaky})
    a = trigger(daemon, "fl")
    assert wait_run(daemon, a)["status"] == "completed"
    proc = daemon.ctl("--json", "workflow", "replay", "--workflow", "fl")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    init = daemon.root / "workflows" / "fl" / "__init__.py"
    init.write_text(init.read_text().replace('{"role": "fb", "prompt": {}}', "None"))
    assert daemon.ctl("reload").returncode == 0
    proc = daemon.ctl("--json", "workflow", "replay", a)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    healthy(daemon)


# -- round 2 -------------------------------------------------------------------------------

LOOPING = """
    from nerved import WorkflowDefinition
    def f(prompt, ctx):
        raise RuntimeError("always")
    def moderate(thread, event):
        if event["type"] in ("thread_start", "role_failed"):
            return {"role": "f", "prompt": {}}
        return None
    workflow = WorkflowDefinition(roles={"f": f}, moderate=moderate)
"""


def test_attack_on_error_moderate_that_asks_again_forever_is_bounded(nerved_factory):
    yaml = "  loop:\n    maxSteps: 5\n    roles:\n      f: {onError: moderate}\n"
    daemon = start(nerved_factory, yaml, {"loop": LOOPING})
    run_id = trigger(daemon, "loop")
    run = wait_run(daemon, run_id, timeout=8)
    assert run["status"] == "failed", (run["status"], len(history(daemon, run_id)))
    healthy(daemon)


@pytest.mark.parametrize(
    "role",
    [pytest.param("blocks"), "stubborn", pytest.param("spins"), "spawns"],
)
def test_attack_cancel_of_a_hung_role_without_timeout_frees_the_worker(
    nerved_factory, tmp_path, role
):
    code = HOSTILE.replace(
        '"os_exit": os_exit}',
        '"os_exit": os_exit, "blocks": blocks}',
    ).replace(
        "    def quick(prompt, ctx):",
        "    async def blocks(prompt, ctx):\n        time.sleep(3600)\n\n    def quick(prompt, ctx):",
    )
    daemon = start(
        nerved_factory, "  hostile: {concurrency: 2, drainTimeout: 2s}\n", {"hostile": code}
    )
    pidfile = str(tmp_path / "child.pid")
    hung = trigger(daemon, "hostile", {"role": role, "pidfile": pidfile})
    wait_until(lambda: daemon.worker_pids("workflow"), timeout=10)
    time.sleep(0.3)  # the role is in flight
    assert daemon.rpc("workflow.cancel", runId=hung)["status"] == "cancelled"
    behind = trigger(daemon, "hostile", {"role": "quick"})
    assert wait_run(daemon, behind, timeout=6)["status"] == "completed"
    if role == "spawns":
        pid = int(Path(pidfile).read_text())
        wait_until(lambda: not _alive(pid), timeout=5)
    healthy(daemon)


FLAKYMOD = """
    import os
    from nerved import WorkflowDefinition
    def f(prompt, ctx):
        with open(prompt["counter"], "a") as fh:
            fh.write("x")
        raise RuntimeError("no")
    def fb(prompt, ctx):
        return {"type": "fb"}
    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "f", "prompt": event["payload"]}
        if event["type"] == "role_failed":
            return {"role": "fb", "prompt": {}}
        return None
    workflow = WorkflowDefinition(roles={"f": f, "fb": fb}, moderate=moderate)
"""


def test_attack_retry_from_step_0_of_a_moderated_failure_runs_the_role_again(
    nerved_factory, tmp_path
):
    yaml = "  fl:\n    roles:\n      f: {onError: moderate}\n"
    daemon = start(nerved_factory, yaml, {"fl": FLAKYMOD})
    counter = tmp_path / "c"
    old = trigger(daemon, "fl", {"counter": str(counter)})
    assert wait_run(daemon, old)["status"] == "completed"
    assert counter.read_text() == "x"
    new = daemon.rpc("workflow.retry", runId=old, fromStep=0)
    assert wait_run(daemon, new["runId"])["status"] == "completed"
    assert counter.read_text() == "xx", [e["type"] for e in history(daemon, new["runId"])]
    healthy(daemon)


def test_attack_workflow_removed_while_a_retry_waits(nerved_factory, tmp_path):
    import shutil

    code = RETRYING.replace('VALUES[prompt["after"]]', "2")
    daemon = start(
        nerved_factory,
        "  retrying:\n    drainTimeout: 1s\n    roles:\n      r:\n        retry: {attempts: 2, delay: 1s}\n",
        {"retrying": code},
    )
    run_id = trigger(daemon, "retrying", {})
    wait_until(lambda: entries(daemon, run_id, "step_failed"), timeout=10)
    (daemon.root / "nerve.yaml").write_text("workflows: {}\n")
    shutil.rmtree(daemon.root / "workflows" / "retrying")
    assert daemon.ctl("reload").returncode == 0
    run = wait_run(daemon, run_id, timeout=8)
    assert run["status"] not in ("queued", "started"), run
    healthy(daemon)
    daemon.kill()
    daemon.start()
    healthy(daemon)


def test_attack_retry_wait_then_kill_worker_during_next_try(nerved_factory, tmp_path):
    code = GATED
    yaml = "  gated:\n    roles:\n      work:\n        retry: {attempts: 3, delay: 100ms}\n"
    daemon = start(nerved_factory, yaml, {"gated": code})
    run_id = trigger(daemon, "gated", {"dir": str(tmp_path)})
    wait_until(lambda: (tmp_path / "work").exists(), timeout=10)
    import signal

    (pid,) = daemon.worker_pids("workflow").values()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: entries(daemon, run_id, "resumed"), timeout=10)
    (tmp_path / "gate").touch()
    assert wait_run(daemon, run_id)["status"] == "completed"
    assert (tmp_path / "one").read_text() == "x"
    healthy(daemon)


def test_attack_cancel_many_in_one_call_and_list_shapes(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {concurrency: 1}\n", {"gated": GATED})
    ids = [trigger(daemon, "gated", {"dir": str(tmp_path)}) for _ in range(5)]
    proc = daemon.ctl("--json", "workflow", "cancel", *ids, "--reason", "bulk")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out, out
    for i in ids:
        assert daemon.rpc("workflow.inspect", runId=i)["status"] == "cancelled"
    rows = daemon.ctl_json("workflow", "list")
    assert all("status" in r for r in rows)
    proc = daemon.ctl("workflow", "list")
    assert proc.returncode == 0
    healthy(daemon)


TWOSTEP = """
    import os
    from nerved import WorkflowDefinition
    def bump(prompt, name):
        with open(os.path.join(prompt["dir"], name), "a") as fh:
            fh.write("x")
    def one(prompt, ctx):
        bump(prompt, "one")
        if os.path.exists(os.path.join(prompt["dir"], "one_flaky")) and ctx.attempt == 1:
            raise RuntimeError("first try of one fails")
        return {"type": "one", "dir": prompt["dir"]}
    def two(prompt, ctx):
        bump(prompt, "two")
        if os.path.exists(os.path.join(prompt["dir"], "broken")):
            raise RuntimeError("broken")
        return {"type": "two"}
    async def hold(prompt, ctx):
        import asyncio
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "held"}
    def moderate(thread, event):
        if event["type"] == "thread_start":
            if "gate" in event["payload"]:
                return {"role": "hold", "prompt": event["payload"]}
            return {"role": "one", "prompt": event["payload"]}
        if event["type"] == "one":
            return {"role": "two", "prompt": {"dir": event["dir"]}}
        return None
    workflow = WorkflowDefinition(roles={"one": one, "two": two, "hold": hold},
                                  moderate=moderate)
"""

TWOSTEP_YAML = """\
  two:
    concurrency: 1
    roles:
      one:
        retry: {attempts: 2, delay: 10ms}
      two:
        retry: {attempts: 3, delay: 10ms}
"""


@pytest.mark.parametrize("restart", [False, True])
def test_attack_retry_gives_the_failed_step_fresh_tries(nerved_factory, tmp_path, restart):
    daemon = start(nerved_factory, TWOSTEP_YAML, {"two": TWOSTEP})
    d = tmp_path / "a"
    d.mkdir()
    (d / "broken").touch()
    (d / "one_flaky").touch()
    old = trigger(daemon, "two", {"dir": str(d)})
    run = wait_run(daemon, old)
    assert run["status"] == "failed" and "(try 3 of 3)" in run["error"], run
    assert (d / "one").read_text() == "xx" and (d / "two").read_text() == "xxx"
    blocker_dir = tmp_path / "b"
    blocker_dir.mkdir()
    gate = tmp_path / "gate"
    blocker = trigger(daemon, "two", {"gate": str(gate)})
    new = daemon.rpc("workflow.retry", runId=old)
    assert daemon.rpc("workflow.inspect", runId=new["runId"])["status"] == "queued"
    if restart:
        daemon.kill()
        daemon.start()
        healthy(daemon)
    gate.touch()
    assert wait_run(daemon, blocker)["status"] == "completed"
    run = wait_run(daemon, new["runId"])
    assert run["status"] == "failed", run
    assert "(try 3 of 3)" in run["error"], run
    assert (d / "one").read_text() == "xx"  # step one never runs again
    assert (d / "two").read_text() == "xxxxxx", (d / "two").read_text()
    healthy(daemon)


def test_attack_retry_of_a_run_ended_by_its_moderator_after_role_failed(nerved_factory, tmp_path):
    code = FLAKYMOD.replace('return {"role": "fb", "prompt": {}}', "return None")
    daemon = start(
        nerved_factory, "  fl:\n    roles:\n      f: {onError: moderate}\n", {"fl": code}
    )
    counter = tmp_path / "c"
    old = trigger(daemon, "fl", {"counter": str(counter)})
    assert wait_run(daemon, old)["status"] == "completed"
    new = daemon.rpc("workflow.retry", runId=old)
    assert wait_run(daemon, new["runId"])["status"] == "completed"
    # 0 steps completed: the role runs again (the copied role_failed of step 1 is not a step)
    assert counter.read_text() == "xx", [e["type"] for e in history(daemon, new["runId"])]
    healthy(daemon)


def test_attack_inspect_and_retry_of_a_dropped_run(nerved_factory, tmp_path):
    daemon = start(nerved_factory, "  gated: {concurrency: 1, overflow: drop}\n", {"gated": GATED})
    first = trigger(daemon, "gated", {"dir": str(tmp_path)})
    dropped = trigger(daemon, "gated", {"dir": str(tmp_path)})
    assert daemon.rpc("workflow.inspect", runId=dropped)["status"] == "dropped"
    shown = daemon.ctl("workflow", "inspect", dropped)
    assert shown.returncode == 0, shown.stderr
    new = daemon.rpc("workflow.retry", runId=dropped)  # dropped again: the slot is busy
    assert daemon.rpc("workflow.inspect", runId=new["runId"])["status"] == "dropped"
    daemon.rpc("workflow.cancel", runId=first)
    (tmp_path / "gate").touch()
    new = daemon.rpc("workflow.retry", runId=dropped)
    assert wait_run(daemon, new["runId"])["status"] == "completed"
    rows = daemon.ctl_json("workflow", "list")
    assert rows == [] or all(r["status"] in ("queued", "started") for r in rows)
    rows = daemon.ctl_json("workflow", "list", "--all")
    assert {r["status"] for r in rows} >= {"dropped", "cancelled", "completed"}
    healthy(daemon)


LATE = """
    import asyncio, os, time
    from nerved import WorkflowDefinition

    def bump(prompt, name):
        with open(os.path.join(prompt["dir"], name), "a") as fh:
            fh.write("x")

    async def sneaky(prompt, ctx):
        bump(prompt, "sneaky")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return {"type": "sneaked"}

    def late(prompt, ctx):
        bump(prompt, "late")
        if ctx.attempt == 1:
            time.sleep(1.4)
            return {"type": "late_result", "attempt": ctx.attempt}
        return {"type": "on_time", "attempt": ctx.attempt}

    async def blocks(prompt, ctx):
        time.sleep(3600)

    async def hold(prompt, ctx):
        while not os.path.exists(os.path.join(prompt["dir"], "gate")):
            await asyncio.sleep(0.01)
        bump(prompt, "held")
        return {"type": "held"}

    def after(prompt, ctx):
        bump(prompt, "after")
        return {"type": "after"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": event["payload"]["role"], "prompt": event["payload"]}
        if event["type"] in ("late_result", "on_time", "sneaked", "held"):
            return {"role": "after", "prompt": {"dir": thread.payload["dir"]}
                    if hasattr(thread, "payload") else {"dir": DIR[0]}}
        return None

    DIR = [None]

    def _moderate(thread, event):
        if event["type"] == "thread_start":
            DIR[0] = event["payload"]["dir"]
        return moderate(thread, event)

    workflow = WorkflowDefinition(
        roles={"sneaky": sneaky, "late": late, "blocks": blocks, "hold": hold, "after": after},
        moderate=_moderate,
    )
"""


def test_attack_async_role_that_returns_on_cancel_still_times_out(nerved_factory, tmp_path):
    yaml = "  late:\n    roles:\n      sneaky: {timeout: 1s}\n"
    daemon = start(nerved_factory, yaml, {"late": LATE})
    run_id = trigger(daemon, "late", {"role": "sneaky", "dir": str(tmp_path)})
    run = wait_run(daemon, run_id)
    assert run["status"] == "failed", (run, [e["type"] for e in history(daemon, run_id)])
    assert "timed out" in run["error"]
    assert not (tmp_path / "after").exists()
    healthy(daemon)


def test_attack_sync_role_finishing_after_its_timeout_while_a_retry_waits(nerved_factory, tmp_path):
    yaml = (
        "  late:\n    drainTimeout: 5s\n    roles:\n      late:\n        timeout: 1s\n"
        "        retry: {attempts: 2, delay: 1500ms}\n"
    )
    daemon = start(nerved_factory, yaml, {"late": LATE})
    run_id = trigger(daemon, "late", {"role": "late", "dir": str(tmp_path)})
    run = wait_run(daemon, run_id)
    kinds = [e["type"] for e in history(daemon, run_id)]
    assert run["status"] == "completed", (run, kinds)
    steps = entries(daemon, run_id, "step_complete")
    # one step 1, the retry's (the late result of the timed-out try is dropped), then 'after'
    assert [s["payload"]["event"]["type"] for s in steps] == ["on_time", "after"], kinds
    assert (tmp_path / "after").read_text() == "x"
    healthy(daemon)


def test_attack_a_run_sharing_a_worker_with_a_loop_blocker_still_finishes(nerved_factory, tmp_path):
    yaml = "  late:\n    concurrency: 2\n    drainTimeout: 1s\n    roles:\n      blocks: {timeout: 1s}\n"
    daemon = start(nerved_factory, yaml, {"late": LATE})
    holder = trigger(daemon, "late", {"role": "hold", "dir": str(tmp_path)})
    wait_until(lambda: daemon.worker_pids("workflow"), timeout=10)
    blocker = trigger(daemon, "late", {"role": "blocks", "dir": str(tmp_path)})
    assert wait_run(daemon, blocker)["status"] == "failed"
    (tmp_path / "gate").touch()
    run = wait_run(daemon, holder, timeout=8)
    assert run["status"] == "completed", run
    assert (tmp_path / "after").read_text() == "x"
    healthy(daemon)


def test_attack_replay_over_backstop_failures_copies_and_cancels(nerved_factory, tmp_path):
    yaml = (
        "  late:\n    concurrency: 3\n    drainTimeout: 1s\n    roles:\n      blocks:\n"
        "        timeout: 500ms\n        retry: {attempts: 2, delay: 10ms}\n"
    )
    daemon = start(nerved_factory, yaml, {"late": LATE})
    blocked = trigger(daemon, "late", {"role": "blocks", "dir": str(tmp_path)})
    run = wait_run(daemon, blocked)
    assert run["status"] == "failed", run
    failed = entries(daemon, blocked, "step_failed")
    assert len(failed) == 2
    held = trigger(daemon, "late", {"role": "hold", "dir": str(tmp_path)})
    daemon.rpc("workflow.cancel", runId=held, reason="r\x07")
    (tmp_path / "gate").touch()
    ok = trigger(daemon, "late", {"role": "hold", "dir": str(tmp_path)})
    assert wait_run(daemon, ok)["status"] == "completed"
    again = daemon.rpc("workflow.retry", runId=ok, fromStep=1)
    assert wait_run(daemon, again["runId"])["status"] == "completed"
    proc = daemon.ctl("--json", "workflow", "replay", "--workflow", "late")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = json.loads(proc.stdout)
    assert out, out
    for rid in (blocked, held, ok, again["runId"]):
        proc = daemon.ctl("workflow", "replay", rid)
        assert proc.returncode == 0, (rid, proc.stdout, proc.stderr)
    shown = daemon.ctl("workflow", "inspect", blocked)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr
    shown = daemon.ctl("workflow", "inspect", held)
    assert "\x07" not in shown.stdout
    healthy(daemon)


def test_attack_reload_changing_the_moderator_while_a_retry_waits(nerved_factory, tmp_path):
    yaml = "  fl:\n    roles:\n      f:\n        retry: {attempts: 2, delay: 1500ms}\n"
    daemon = start(nerved_factory, yaml, {"fl": FLAKYMOD})
    counter = tmp_path / "c"
    run_id = trigger(daemon, "fl", {"counter": str(counter)})
    wait_until(lambda: entries(daemon, run_id, "step_failed"), timeout=10)
    init = daemon.root / "workflows" / "fl" / "__init__.py"
    init.write_text(
        init.read_text().replace(
            'return {"role": "f", "prompt": event["payload"]}',
            'return {"role": "fb", "prompt": {}}',
        )
    )
    assert daemon.ctl("reload").returncode == 0
    run = wait_run(daemon, run_id)
    assert run["status"] == "completed", run
    assert counter.read_text() == "x"
    wait_until(lambda: "decides differently at step" in daemon.log(), timeout=5)
    (step,) = entries(daemon, run_id, "step_complete")
    assert step["payload"]["role"] == "fb"
    healthy(daemon)


@pytest.mark.parametrize("timeout", ["2s", None])
def test_attack_cancel_of_a_loop_blocker_with_a_timeout_frees_its_worker(
    nerved_factory, tmp_path, timeout
):
    roles = f"    roles:\n      blocks: {{timeout: {timeout}}}\n" if timeout else ""
    yaml = f"  late:\n    concurrency: 1\n    drainTimeout: 1s\n{roles}"
    daemon = start(nerved_factory, yaml, {"late": LATE})
    blocker = trigger(daemon, "late", {"role": "blocks", "dir": str(tmp_path)})
    wait_until(lambda: daemon.worker_pids("workflow"), timeout=10)
    time.sleep(0.3)
    assert daemon.rpc("workflow.cancel", runId=blocker)["status"] == "cancelled"
    (tmp_path / "gate").touch()
    nxt = trigger(daemon, "late", {"role": "hold", "dir": str(tmp_path)})
    run = wait_run(daemon, nxt, timeout=7)
    assert run["status"] == "completed", run
    healthy(daemon)


MUTATED = """
    from nerved import Retry, WorkflowDefinition

    VALUES = {"huge": 1e300, "inf": float("inf"), "nan": float("nan"), "str": "5",
              "list": [1], "dict": {"a": 1}, "bigint": 10**30, "neg": -1e300}

    def r(prompt, ctx):
        if ctx.attempt == 1:
            e = Retry("again")
            e.after = VALUES[prompt["after"]]
            raise e
        return {"type": "ok", "attempt": ctx.attempt}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "r", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"r": r}, moderate=moderate)
"""


AFTERS = ("huge", "inf", "nan", "str", "list", "dict", "bigint", "neg")


def test_attack_retry_after_mutated_past_its_check(nerved_factory):
    """Whatever a role sets ``Retry.after`` to after the constructor's check, its try fails
    and the next waits the policy's delay: never a worker's end (its runs would lose an
    attempt), and a kill -9 afterwards loses nothing. One daemon, every value in turn."""
    daemon = start(
        nerved_factory, RETRYING_YAML.replace("retrying", "mutated"), {"mutated": MUTATED}
    )
    runs = {after: trigger(daemon, "mutated", {"after": after}) for after in AFTERS}
    for after, run_id in runs.items():
        run = wait_run(daemon, run_id)
        assert run["status"] == "completed", (after, run)
        (failed,) = entries(daemon, run_id, "step_failed")
        assert failed["payload"]["retryAt"] - failed["ts"] < 1000, (after, failed)
        assert not entries(daemon, run_id, "resumed"), after
    assert "sent a malformed" not in daemon.log()
    healthy(daemon)
    daemon.kill()
    daemon.start()
    healthy(daemon)


def test_attack_concurrent_cancels_and_retries_keep_the_slots_right(nerved_factory, tmp_path):
    import random
    import threading

    daemon = start(nerved_factory, "  gated: {concurrency: 2}\n", {"gated": GATED})
    ids = [trigger(daemon, "gated", {"dir": str(tmp_path)}) for _ in range(30)]
    made: list[str] = []
    lock = threading.Lock()
    rng = random.Random(7)
    plan = ids[:]
    rng.shuffle(plan)

    def worker(chunk):
        for rid in chunk:
            with contextlib.suppress(RemoteError):
                daemon.rpc("workflow.cancel", runId=rid, reason="x")
            try:
                new = daemon.rpc("workflow.retry", runId=rid)
                with lock:
                    made.append(new["runId"])
            except RemoteError:
                pass

    threads = [threading.Thread(target=worker, args=(plan[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    (tmp_path / "gate").touch()
    for rid in made:
        assert wait_run(daemon, rid)["status"] in ("completed", "cancelled"), rid
    rows = daemon.ctl_json("workflow", "list")
    assert rows == [], rows
    healthy(daemon)


def test_attack_retry_under_a_moderator_that_now_decides_otherwise(nerved_factory, tmp_path):
    daemon = start(nerved_factory, TWOSTEP_YAML, {"two": TWOSTEP})
    d = tmp_path / "a"
    d.mkdir()
    (d / "broken").touch()
    old = trigger(daemon, "two", {"dir": str(d)})
    assert wait_run(daemon, old)["status"] == "failed"
    init = daemon.root / "workflows" / "two" / "__init__.py"
    init.write_text(
        init.read_text().replace(
            'return {"role": "one", "prompt": event["payload"]}',
            'return {"role": "hold", "prompt": {"gate": event["payload"]["dir"]}}',
        )
    )
    assert daemon.ctl("reload").returncode == 0
    new = daemon.rpc("workflow.retry", runId=old)
    run = wait_run(daemon, new["runId"])
    assert run["status"] in ("failed", "completed"), run
    assert (d / "one").read_text() == "x"
    healthy(daemon)


def test_attack_kill_9_after_role_failed_input_resumes_without_rerunning(nerved_factory, tmp_path):
    code = (
        FLAKYMOD.replace(
            'return {"role": "fb", "prompt": {}}', 'return {"role": "fb", "prompt": {"g": GATE}}'
        ).replace(
            '    def fb(prompt, ctx):\n        return {"type": "fb"}',
            "    def fb(prompt, ctx):\n        import time\n"
            '        while not os.path.exists(prompt["g"]):\n            time.sleep(0.01)\n'
            '        return {"type": "fb"}',
        )
        + f"\n    GATE = {str(tmp_path / 'gate')!r}\n"
    )
    yaml = "  fl:\n    roles:\n      f: {onError: moderate}\n"
    daemon = start(nerved_factory, yaml, {"fl": code})
    counter = tmp_path / "c"
    gate = tmp_path / "gate"
    run_id = trigger(daemon, "fl", {"counter": str(counter), "gate": str(gate)})
    wait_until(lambda: entries(daemon, run_id, "input"), timeout=10)
    daemon.kill()
    daemon.start()
    healthy(daemon)
    gate.touch()
    run = wait_run(daemon, run_id)
    assert run["status"] == "completed", run
    assert counter.read_text() == "x"
    assert len(entries(daemon, run_id, "input")) == 1
    healthy(daemon)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def test_attack_repeated_sync_timeouts_do_not_pile_up_workers(nerved_factory, tmp_path):
    yaml = (
        "  hostile:\n    drainTimeout: 60s\n    roles:\n      sleeps:\n        timeout: 200ms\n"
        "        retry: {attempts: 8, delay: 10ms}\n"
    )
    code = HOSTILE.replace('"os_exit": os_exit}', '"os_exit": os_exit, "sleeps": sleeps}').replace(
        "    def quick(prompt, ctx):",
        "    def sleeps(prompt, ctx):\n        time.sleep(3600)\n\n    def quick(prompt, ctx):",
    )
    daemon = start(nerved_factory, yaml, {"hostile": code})
    run_id = trigger(daemon, "hostile", {"role": "sleeps"})
    run = wait_run(daemon, run_id, timeout=12)
    assert run["status"] == "failed"
    kids = _children(daemon.pid)
    # one stuck worker per failed try, each kept for drainTimeout (60 s) though it has no run
    assert len(kids) <= 2, f"{len(kids)} worker processes alive after the run failed"
    healthy(daemon)


SLOWBLOCK = """
    import os, time
    from nerved import WorkflowDefinition

    def bump(prompt, name):
        with open(os.path.join(prompt["dir"], name), "a") as fh:
            fh.write("x")

    async def slowblock(prompt, ctx):
        bump(prompt, "slow")
        if ctx.attempt == 1:
            time.sleep(1.8)
            return {"type": "late", "attempt": ctx.attempt, "dir": prompt["dir"]}
        return {"type": "on_time", "attempt": ctx.attempt, "dir": prompt["dir"]}

    def after(prompt, ctx):
        bump(prompt, "after")
        return {"type": "after"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "slowblock", "prompt": event["payload"]}
        if event["type"] in ("late", "on_time"):
            return {"role": "after", "prompt": {"dir": event["dir"]}}
        return None

    workflow = WorkflowDefinition(roles={"slowblock": slowblock, "after": after},
                                  moderate=moderate)
"""


@pytest.mark.parametrize("delay", ["100ms", "1s"])
def test_attack_a_loop_blocker_s_late_result_after_the_backstop_is_dropped(
    nerved_factory, tmp_path, delay
):
    yaml = (
        "  sb:\n    drainTimeout: 5s\n    roles:\n      slowblock:\n        timeout: 1s\n"
        f"        retry: {{attempts: 2, delay: {delay}}}\n"
    )
    daemon = start(nerved_factory, yaml, {"sb": SLOWBLOCK})
    run_id = trigger(daemon, "sb", {"dir": str(tmp_path)})
    run = wait_run(daemon, run_id)
    time.sleep(1.0)  # the late result of the old worker, if any, has arrived by now
    kinds = [e["type"] for e in history(daemon, run_id)]
    assert run["status"] == "completed", (run, kinds)
    steps = [s["payload"]["event"]["type"] for s in entries(daemon, run_id, "step_complete")]
    assert steps == ["on_time", "after"], kinds
    assert (tmp_path / "after").read_text() == "x"
    healthy(daemon)


ASYNC_BASE = """
    import asyncio, os, signal
    from nerved import WorkflowDefinition

    class Weird(BaseException):
        pass

    EXC = {"exit": lambda: SystemExit(3), "kbd": lambda: KeyboardInterrupt(),
           "gen": lambda: GeneratorExit(), "weird": lambda: Weird("w"),
           "cancel": lambda: asyncio.CancelledError()}

    async def raiser(prompt, ctx):
        raise EXC[prompt["exc"]]()

    async def hold(prompt, ctx):
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "held"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            p = event["payload"]
            return {"role": "hold" if "gate" in p else "raiser", "prompt": p}
        return None

    workflow = WorkflowDefinition(roles={"raiser": raiser, "hold": hold}, moderate=moderate)
"""


@pytest.mark.parametrize(
    "exc,timeout",
    [
        pytest.param("exit", True),
        pytest.param("kbd", True),
        pytest.param("exit", False),
        pytest.param("kbd", False),
        pytest.param("gen", False),
        pytest.param("weird", False),
        pytest.param("gen", True),
        pytest.param("weird", True),
        ("cancel", True),
        ("cancel", False),
    ],
)
def test_attack_async_role_raising_base_exceptions_fails_its_run_alone(
    nerved_factory, tmp_path, exc, timeout
):
    roles = "    roles:\n      raiser: {timeout: 2s}\n" if timeout else ""
    daemon = start(nerved_factory, f"  ab:\n    concurrency: 2\n{roles}", {"ab": ASYNC_BASE})
    gate = tmp_path / "gate"
    holder = trigger(daemon, "ab", {"gate": str(gate)})
    wait_until(lambda: daemon.worker_pids("workflow"), timeout=10)
    run_id = trigger(daemon, "ab", {"exc": exc})
    run = wait_run(daemon, run_id, timeout=6)
    assert run["status"] == "failed", run
    assert "blocks its event loop" not in run["error"], run["error"]
    gate.touch()
    assert wait_run(daemon, holder)["status"] == "completed"
    assert not entries(daemon, holder, "resumed"), "the holder lost its worker"
    assert not entries(daemon, run_id, "resumed")
    healthy(daemon)


MOD_BASE = """
    import asyncio
    from nerved import WorkflowDefinition

    class Weird(BaseException):
        pass

    EXC = {"exit": lambda: SystemExit(3), "kbd": lambda: KeyboardInterrupt(),
           "gen": lambda: GeneratorExit(), "weird": lambda: Weird("w")}

    def quick(prompt, ctx):
        return {"type": "done", "exc": prompt.get("exc")}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "quick", "prompt": event["payload"]}
        if event["type"] == "done" and event["exc"]:
            raise EXC[event["exc"]]()
        return None

    workflow = WorkflowDefinition(roles={"quick": quick}, moderate=moderate)
"""


@pytest.mark.parametrize("exc", ["exit", "kbd", "gen", "weird"])
def test_attack_moderator_raising_base_exceptions_fails_its_run(nerved_factory, exc):
    daemon = start(nerved_factory, "  mb: {}\n", {"mb": MOD_BASE})
    run_id = trigger(daemon, "mb", {"exc": exc})
    run = wait_run(daemon, run_id, timeout=6)
    assert run["status"] == "failed", run
    assert not entries(daemon, run_id, "resumed")
    ok = trigger(daemon, "mb", {})
    assert wait_run(daemon, ok)["status"] == "completed"
    healthy(daemon)
