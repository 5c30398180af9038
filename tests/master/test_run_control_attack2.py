"""Second attack on run control: the replay check, role policies in nerve.yaml, and
nervectl's new commands (fresh eyes; see test_run_control_hostile.py for the first)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import (
    REPO,
    Nerved,
    make_root,
    pid_alive,
    wait_until,
    write_package,
)

from nervectl.client import RemoteError

# A workflow whose moderator's behaviour is the module constant MODE (rewritten and reloaded
# to stand for "a change to the moderator"). Its normal decisions: `step` n times (payload
# "steps", 2 by default), each prompt {"n", "pad"} (payload "pad"), or payload "role" first.
CODE = """
    import itertools, os, sys, time
    from nerved import WorkflowDefinition

    MODE = {mode!r}
    {prelude}

    def step(prompt, ctx):
        return {{"type": "stepped", "n": prompt["n"]}}

    def flaky(prompt, ctx):
        raise RuntimeError("flaky \\x1b[31mred\\x07")

    async def blocks(prompt, ctx):
        time.sleep(3600)

    def moderate(thread, event):
        payload = thread.events[0]["payload"] or {{}}
        n = sum(1 for e in thread.events if e["type"] == "stepped")
        mode = MODE
        if mode == "raise":
            raise ValueError("boom \\x1b[2J\\x07")
        if mode == "garbage":
            return 42
        if mode == "huge":
            return {{"role": "step", "prompt": {{"n": n + 1, "pad": "y" * 900_000}}}}
        if mode == "print":
            print("out" * 20000)
            print("err" * 20000, file=sys.stderr)
        if mode == "exit":
            os._exit(3)
        if mode == "sysexit":
            sys.exit(0)
        if mode == "fork":
            os.fork()  # both go on, as the moderator returns in each
        if mode in ("forksleep", "forkspin") and os.fork() == 0:
            with open(payload["pidfile"], "a") as f:
                f.write("%d\\n" % os.getpid())
            time.sleep(3600)
        if mode == "sleep":
            time.sleep(0.3)
        if mode in ("spin", "forkspin"):  # a loop in C: only the hard bound ends it
            any(itertools.repeat(False))
        if event["type"] == "thread_start":
            return {{"role": payload.get("role", "step"), "prompt": {{"n": 1, "pad": payload.get("pad", "")}}}}
        if event["type"] == "role_failed":
            return {{"role": "step", "prompt": {{"n": {after_failure}, "pad": ""}}}}
        if n < payload.get("steps", 2):
            return {{"role": "step", "prompt": {{"n": n + 1, "pad": payload.get("pad", "")}}}}
        return None

    workflow = WorkflowDefinition(
        roles={{"step": step, "flaky": flaky, "blocks": blocks}}, moderate=moderate
    )
"""


def code(mode: str = "same", prelude: str = "", after_failure: int = 1) -> str:
    return CODE.format(mode=mode, prelude=prelude, after_failure=after_failure)


YAML = """\
workflows:
  w:
    concurrency: 4
    drainTimeout: 1s
    roles:
      flaky:
        retry: {attempts: 3, delay: 10ms}
        onError: moderate
      blocks:
        timeout: 500ms
"""


def start(nerved_factory, mode: str = "same", yaml: str = YAML) -> Nerved:
    return nerved_factory(yaml, None, {"w": code(mode)}).start()


def trigger(daemon: Nerved, payload=None, workflow: str = "w") -> str:
    return daemon.trigger(workflow, payload)


wait_run = Nerved.wait_run


def run_done(daemon: Nerved, payload=None, status: str = "completed") -> str:
    run_id = trigger(daemon, payload)
    run = wait_run(daemon, run_id)
    assert run["status"] == status, run
    return run_id


def change(daemon: Nerved, **variant) -> None:
    write_package(daemon.root, "workflows", "w", code(**variant))
    daemon.rpc("reload")


def replay(daemon: Nerved, **params):
    with daemon.client(timeout=90) as client:
        return client.call("workflow.replay", params)


def quick_status(daemon: Nerved, bound: float = 1.0) -> None:
    began = time.monotonic()
    assert daemon.rpc("status")["state"] == "running"
    assert time.monotonic() - began < bound, time.monotonic() - began


healthy = Nerved.healthy


def session_processes(daemon: Nerved) -> set[int]:
    """Every live process of nerved's session (the test starts it as a session leader):
    the master, its workers and all they started that did not call setsid."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == daemon.pid:  # state, ppid, pgrp, session
            found.add(int(entry))
    return found


def raw_call(daemon: Nerved, line: str) -> dict:
    """One request line as it is (params the client would never send), its answer."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon.socket))
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def replay_pids(daemon: Nerved) -> list[int]:
    return [w["pid"] for w in daemon.rpc("status")["workers"] if w["kind"] == "replay"]


# -- 1. the replay check: params -----------------------------------------------------------


BAD_PARAMS = [
    {},
    {"runId": None, "workflow": None},
    {"runId": 5},
    {"runId": ["abcdefgh"]},
    {"runId": {"id": "x"}},
    {"runId": ""},
    {"runId": "abc"},
    {"runId": "abcdefgh", "workflow": "w"},
    {"workflow": 5},
    {"workflow": ""},
    {"workflow": ["w"]},
    {"workflow": "w", "limit": "5"},
    {"workflow": "w", "limit": True},
    {"workflow": "w", "limit": -1},
    {"workflow": "w", "limit": 0},
    {"workflow": "w", "limit": 1.5},
    {"workflow": "w", "limit": 2**63},
    {"workflow": "w", "limit": 2**64},
    {"workflow": "w", "limit": None, "extra": 1},
]


def test_attack2_replay_params_of_every_wrong_shape_are_refused(nerved_factory):
    daemon = start(nerved_factory)
    run_id = run_done(daemon)
    for params in [*BAD_PARAMS, [run_id], run_id, None, 5]:
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "workflow.replay",
                           "params": params})  # fmt: skip
        answer = raw_call(daemon, line)
        assert "error" in answer, (params, answer)
        assert answer["error"]["code"] in (-32600, -32602, -32001), (params, answer)
    with daemon.client() as client:
        # what is right is answered: a prefix of 8, the largest limit, a null limit
        assert client.call("workflow.replay", {"runId": run_id[:8]})["checked"] == 1
        # ids are lower-case hex; a prefix in upper case finds its run too (find_run)
        assert client.call("workflow.replay", {"runId": run_id.upper()[:10]})["checked"] == 1
        assert client.call("workflow.replay", {"workflow": "w", "limit": 2**63 - 1})["checked"] == 1
        assert client.call("workflow.replay", {"workflow": "w", "limit": None})["checked"] == 1
    quick_status(daemon)
    healthy(daemon)


def test_attack2_replay_cli_exit_codes_and_one_line_errors(nerved_factory, tmp_path):
    daemon = start(nerved_factory)
    run_id = run_done(daemon)
    cases = [
        (("workflow", "replay", run_id[:8]), 0),
        (("workflow", "replay", run_id[:7]), 4),  # "a prefix must have 8+ characters"
        (("workflow", "replay", "--workflow", "w"), 0),
        (("workflow", "replay", "--workflow", "w", "--limit", "0"), 2),
        (("workflow", "replay", "--workflow", "w", "--limit", "1001"), 2),  # help: at most 1,000
        (("workflow", "replay", "--workflow", "w", "--limit", "x"), 2),
        (("workflow", "replay", "--workflow", ""), 2),
        (("workflow", "replay", "--workflow", "nope"), 4),
        (("workflow", "replay", "f" * 32), 4),
        (("workflow", "replay"), 2),
    ]
    for args, code_ in cases:
        done = daemon.ctl(*args)
        assert done.returncode == code_, (args, done.returncode, done.stderr)
        if code_ not in (0, 2):
            assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
            assert "Traceback" not in done.stderr
    down = subprocess.run(
        [sys.executable, "-m", "nervectl", "--socket", str(tmp_path / "nobody.sock"),
         "workflow", "replay", run_id],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert down.returncode == 3 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    healthy(daemon)


# -- 1. the replay check: odd histories ----------------------------------------------------


def test_attack2_replay_of_a_backstop_timeout_compares_the_role_alone(nerved_factory):
    """An async role blocking its loop past its timeout is failed by the master, whose
    step_failed has no prompt: the run must still be checked (its role compared)."""
    daemon = start(nerved_factory)
    run_id = run_done(daemon, {"role": "blocks"}, status="failed")
    (failed,) = [
        e for e in daemon.rpc("workflow.inspect", runId=run_id)["events"]
        if e["type"] == "step_failed"
    ]  # fmt: skip
    assert "prompt" not in failed["payload"]  # the case at hand
    answer = replay(daemon, runId=run_id)
    assert answer == {"checked": 1, "diverged": [], "skipped": []}, answer
    healthy(daemon)


def test_attack2_replay_over_step_failed_role_failed_and_a_retried_copy(nerved_factory):
    daemon = start(nerved_factory)
    first = run_done(daemon, {"role": "flaky"})  # 3 failed tries, role_failed, step, step
    types = [e["type"] for e in daemon.rpc("workflow.inspect", runId=first)["events"]]
    assert types.count("step_failed") == 3 and types.count("input") == 1, types
    again = daemon.rpc("workflow.retry", runId=first, fromStep=1)["runId"]
    assert wait_run(daemon, again)["status"] == "completed"
    cancelled = trigger(daemon, {"role": "flaky"})
    daemon.rpc("workflow.cancel", runId=cancelled, reason="stop \x1b[2J")
    answer = replay(daemon, workflow="w")
    assert answer["checked"] == 3 and answer["diverged"] == [] and answer["skipped"] == [], answer
    change(daemon, after_failure=7)  # the call after role_failed now decides otherwise
    answer = replay(daemon, workflow="w")
    diverged = {d["runId"]: d for d in answer["diverged"]}
    assert set(diverged) == {first, again}, answer
    for d in diverged.values():
        assert d["step"] == 1
        assert d["logged"] == {"role": "step", "prompt": {"n": 1, "pad": ""}}
        assert d["now"] == {"role": "step", "prompt": {"n": 7, "pad": ""}}
    healthy(daemon)


def test_attack2_replay_skips_entries_that_do_not_hold_what_their_type_says(nerved_factory):
    daemon = start(nerved_factory)
    no_role, string_step, fine = run_done(daemon), run_done(daemon), run_done(daemon)
    assert daemon.stop() == 0
    conn = sqlite3.connect(daemon.state / "logs.db")
    with conn:
        conn.execute(
            "UPDATE logs SET payload = '{\"prompt\": 1, \"event\": {\"type\": \"stepped\"}}'"
            " WHERE ref_id = ? AND type = 'step_complete'", (no_role,),
        )  # fmt: skip
        conn.execute(
            "UPDATE logs SET payload = '\"just a string\"' WHERE ref_id = ? AND"
            " type = 'step_complete'", (string_step,),
        )  # fmt: skip
    conn.close()
    daemon.start()
    answer = replay(daemon, workflow="w")
    assert answer["checked"] == 1 and answer["diverged"] == [], answer
    assert {s["runId"] for s in answer["skipped"]} == {no_role, string_step}, answer
    shown = daemon.ctl("workflow", "replay", "--workflow", "w")
    assert f"run {no_role} not checked" in shown.stderr
    quick_status(daemon)
    assert fine


def test_attack2_replay_of_a_long_history_of_big_prompts(nerved_factory):
    """40 steps of 700 KB prompts (28 MB of history): checked whole, then a change at the
    last step is found there, shown cut."""
    daemon = start(nerved_factory)
    run_id = trigger(daemon, {"steps": 40, "pad": "p" * 700_000})
    assert wait_run(daemon, run_id, timeout=60)["status"] == "completed"
    began = time.monotonic()
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.update(a=replay(daemon, runId=run_id)))
    thread.start()
    while thread.is_alive():
        quick_status(daemon)
        time.sleep(0.05)
    thread.join()
    assert holder["a"] == {"checked": 1, "diverged": [], "skipped": []}, holder
    assert time.monotonic() - began < 20
    change(daemon, mode="huge")
    (diverged,) = replay(daemon, runId=run_id)["diverged"]
    assert diverged["step"] == 1 and diverged["now"]["cut"] is True
    assert len(diverged["now"]["prompt"].encode()) <= 4096 + 64
    assert diverged["logged"]["cut"] is True
    healthy(daemon)


# -- 1. the replay check: hostile moderators -----------------------------------------------

HOSTILE = {
    # mode: (exit code of nervectl, what the JSON answer or stderr holds)
    "raise": (1, "moderator raised ValueError"),
    "garbage": (1, "moderator returned 42"),
    "huge": (1, '"cut": true'),
    "print": (0, "decides as every history says"),
    "sysexit": (1, "moderator raised SystemExit"),
    "exit": (1, "the replay's process ended before it was done"),
}


@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_attack2_replay_under_a_hostile_moderator(nerved_factory, mode):
    daemon = start(nerved_factory)
    runs = [run_done(daemon) for _ in range(3)]
    before = session_processes(daemon)
    change(daemon, mode=mode)
    want_code, want_text = HOSTILE[mode]
    done = daemon.ctl("workflow", "replay", "--workflow", "w")
    assert done.returncode == want_code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout + done.stderr
    as_json = daemon.ctl("--json", "workflow", "replay", "--workflow", "w")
    assert as_json.returncode == want_code
    text = as_json.stdout + as_json.stderr + done.stdout
    assert want_text in text or want_text in json.dumps(json.loads(as_json.stdout or "{}")), text[
        :2000
    ]
    if want_code == 1 and as_json.stdout:
        assert {d["runId"] for d in json.loads(as_json.stdout)["diverged"]} == set(runs)
    quick_status(daemon)
    wait_until(lambda: not replay_pids(daemon), timeout=5)
    # nothing the check started is left (the workers that ran the runs may still be idle)
    wait_until(lambda: session_processes(daemon) <= before, timeout=5, what="leftovers")
    healthy(daemon)


def test_attack2_replay_under_a_moderator_that_forks_and_returns_in_both(nerved_factory):
    """Both processes go on with the check on the one channel: the answer must still be
    right (or an error that says so), the daemon healthy, and nothing left behind."""
    daemon = start(nerved_factory)
    runs = [run_done(daemon) for _ in range(3)]
    before = session_processes(daemon)
    change(daemon, mode="fork")
    try:
        answer = replay(daemon, workflow="w")
    except RemoteError as exc:
        assert exc.code == -32603, exc
    else:
        assert answer == {"checked": 3, "diverged": [], "skipped": []}, answer
    assert runs
    quick_status(daemon)
    wait_until(lambda: session_processes(daemon) <= before, timeout=5, what="leftovers")
    healthy(daemon)


def test_attack2_kill_9_of_nerved_during_a_replay_leaves_no_process(nerved_factory, tmp_path):
    daemon = start(nerved_factory)
    run_id = run_done(daemon, {"pidfile": str(tmp_path / "pids")})
    change(daemon, mode="spin")
    holder: dict = {}

    def ask() -> None:
        try:
            holder["answer"] = replay(daemon, runId=run_id)
        except Exception as exc:
            holder["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    wait_until(lambda: replay_pids(daemon), timeout=5)
    (child,) = replay_pids(daemon)
    everything = session_processes(daemon)
    daemon.kill()
    thread.join(10)
    assert "error" in holder
    wait_until(lambda: not pid_alive(child), timeout=5, what="the replay's child to die")
    wait_until(lambda: not any(pid_alive(p) for p in everything), timeout=5, what="workers")
    daemon.start()
    healthy(daemon)
    change(daemon)
    assert replay(daemon, runId=run_id)["diverged"] == []


def test_attack2_kill_9_during_a_replay_whose_moderator_forked(nerved_factory, tmp_path):
    """A moderator that forks a sleeper, then spins: nerved is killed meanwhile. README:
    without systemd, what a worker started outlives a kill -9 of the master; a replay's
    child is 'contained like a worker', so this documents what is left."""
    daemon = start(nerved_factory)
    pidfile = tmp_path / "pids"
    run_id = run_done(daemon, {"pidfile": str(pidfile)})
    change(daemon, mode="forksleep")
    done = daemon.ctl("workflow", "replay", run_id)  # the sleeper is forked, the check ends
    assert done.returncode == 0, done.stderr
    sleepers = [int(p) for p in pidfile.read_text().split()]
    wait_until(lambda: not any(pid_alive(p) for p in sleepers), timeout=5, what="sleepers")
    healthy(daemon)


def test_attack2_kill_9_during_a_replay_whose_moderator_forked_then_spun(nerved_factory, tmp_path):
    """What a replay's moderator forked, when nerved is killed while the check runs. The
    README holds this to the workers' rule without systemd: the child dies
    (PR_SET_PDEATHSIG), what it started stays in its process group."""
    daemon = start(nerved_factory)
    pidfile = tmp_path / "pids"
    run_id = run_done(daemon, {"pidfile": str(pidfile)})
    change(daemon, mode="forkspin")
    command = [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket)]
    with subprocess.Popen([*command, "workflow", "replay", run_id], stderr=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as asked:  # fmt: skip
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=5)
        (child,) = replay_pids(daemon)
        daemon.kill()
        _, stderr = asked.communicate(timeout=10)
    assert asked.returncode == 3, stderr
    wait_until(lambda: not pid_alive(child), timeout=5, what="the replay's child to die")
    sleepers = [int(p) for p in pidfile.read_text().split()]
    try:
        alive = [p for p in sleepers if pid_alive(p)]
        assert all(os.getpgid(p) == child for p in alive)  # in the unit: kill -9 -- -<pid>
    finally:
        for pid in sleepers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_attack2_many_replays_at_once_and_status_stays_prompt(nerved_factory):
    daemon = start(nerved_factory)
    for _ in range(3):
        run_done(daemon)
    change(daemon, mode="sleep")  # 0.3 s a call: a check of 3 runs takes about 2.7 s
    results: list = []

    def ask() -> None:
        try:
            results.append(replay(daemon, workflow="w"))
        except RemoteError as exc:
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        quick_status(daemon, 0.5)
        time.sleep(0.05)
    answers = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, RemoteError)]
    assert len(answers) == 4 and len(refused) == 4, results
    assert all(r.code == -32002 for r in refused)
    assert all(a == {"checked": 3, "diverged": [], "skipped": []} for a in answers), answers
    assert replay(daemon, workflow="w")["checked"] == 3  # a slot is free again
    healthy(daemon)


def test_attack2_replay_while_a_reload_removes_the_workflow(nerved_factory):
    daemon = start(nerved_factory)
    runs = [run_done(daemon) for _ in range(3)]
    change(daemon, mode="sleep")
    holder: dict = {}

    def ask() -> None:
        try:
            holder["answer"] = replay(daemon, workflow="w")
        except RemoteError as exc:
            holder["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    wait_until(lambda: replay_pids(daemon), timeout=5)
    (daemon.root / "nerve.yaml").write_text("workflows: {}\n")
    daemon.rpc("reload")
    quick_status(daemon)
    thread.join(30)
    assert not thread.is_alive()
    # the check began with the accepted code: it finishes with it, or says why not
    if "answer" in holder:
        assert holder["answer"] == {"checked": 3, "diverged": [], "skipped": []}, holder
    else:
        assert holder["error"].code in (-32001, -32603), holder
    with pytest.raises(RemoteError) as gone:
        replay(daemon, runId=runs[0])
    assert gone.value.code == -32001
    assert daemon.ctl("workflow", "replay", runs[0]).returncode == 4
    healthy(daemon)


def test_attack2_replay_after_a_refused_reload_uses_the_accepted_code(nerved_factory):
    daemon = start(nerved_factory)
    run_id = run_done(daemon)
    write_package(daemon.root, "workflows", "w", code(mode="raise", prelude="import no_such_mod"))
    done = daemon.ctl("reload")
    assert done.returncode == 1, done.stderr
    answer = replay(daemon, runId=run_id)
    assert answer == {"checked": 1, "diverged": [], "skipped": []}, answer
    healthy(daemon)


def test_attack2_replay_of_a_package_whose_import_is_slow(nerved_factory):
    """Its import takes 2 s (within the import bound); the check pays it, the daemon not."""
    daemon = start(nerved_factory)
    run_id = run_done(daemon)
    write_package(daemon.root, "workflows", "w", code(prelude="time.sleep(2)"))
    with daemon.client(timeout=60) as client:
        client.call("reload", {})
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.update(a=replay(daemon, runId=run_id)))
    thread.start()
    while thread.is_alive():
        quick_status(daemon, 0.5)
        time.sleep(0.05)
    assert holder["a"] == {"checked": 1, "diverged": [], "skipped": []}
    healthy(daemon)


def test_attack2_failed_tries_of_a_big_prompt_keep_a_run_s_history_bounded(nerved_factory):
    yaml = "workflows:\n  w:\n    roles:\n      flaky:\n        retry: {attempts: 90, delay: 0}\n"
    daemon = start(nerved_factory, yaml=yaml)
    run_id = run_done(daemon, {"role": "flaky", "pad": "p" * 900_000}, status="failed")
    assert replay(daemon, runId=run_id)["skipped"] == []
    conn = sqlite3.connect(f"file:{daemon.state / 'logs.db'}?mode=ro", uri=True)
    (stored,) = conn.execute(
        "SELECT SUM(LENGTH(payload)) FROM logs WHERE ref_id = ?", (run_id,)
    ).fetchone()
    conn.close()
    healthy(daemon)
    assert stored <= 65 * 1024 * 1024, f"{stored:,} bytes stored for one run"


# -- 2. role policies in nerve.yaml ----------------------------------------------------------


def nerved_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "check"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


POLICY_ERRORS = [
    ("roles: [step]", "workflows.w.roles: expected a mapping of role names, got a list"),
    ("roles: {step: 5}", "workflows.w.roles.step: expected a mapping of role settings"),
    ("roles: {step: {timeout: 0}}", "workflows.w.roles.step.timeout: must be longer than 0"),
    ("roles: {step: {timeout: 1e400}}", "workflows.w.roles.step.timeout: expected a duration"),
    ("roles: {step: {timeout: 100000w}}", "cannot exceed 36500d"),
    ("roles: {step: {timeout: 1y}}", "workflows.w.roles.step.timeout: expected a duration"),
    ("roles: {step: {timeout: -1s}}", "cannot be negative"),
    ("roles: {step: {timeout: 1s, timeout: 2s}}", "duplicate key"),
    ("roles: {step: {retry: 3}}", "workflows.w.roles.step.retry: expected a mapping"),
    ("roles: {step: {retry: {delay: 1s}}}", "retry.attempts: required key is missing"),
    ("roles: {step: {retry: {attempts: 1001}}}", "must be at most 1000"),
    ("roles: {step: {retry: {attempts: true}}}", "got a boolean"),
    ("roles: {step: {retry: {attempts: 2, factor: .inf}}}", "expected a finite number"),
    ("roles: {step: {retry: {attempts: 2, delay: 10m}}}", "must be at most maxDelay"),
    ("roles: {step: {retry: {attempts: 2, jitter: 1}}}", "retry.jitter: unknown key"),
    ("roles: {step: {onError: Moderate}}", "expected fail or moderate"),
    ("roles: {step: {<<: 5}}", "'<<' expects a mapping to merge"),
    ('roles: {"a b": {timeout: 1s}}', "is not a valid role name"),
    ("roles: {stepp: {timeout: 1s}}", "workflows/w defines no role 'stepp'"),
]


@pytest.mark.parametrize(("roles", "message"), POLICY_ERRORS)
def test_attack2_nerved_check_names_file_line_and_key_path(tmp_path, roles, message):
    root = make_root(tmp_path, f"workflows:\n  w:\n    {roles}\n", workflows={"w": code()})
    done = nerved_check(root)
    assert done.returncode == 78, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("nerve.yaml:3: workflows.w.roles") and message in line, line


@pytest.mark.parametrize(
    "roles",
    ["roles:", "roles: null", "roles: {}", "roles: {step: null}", "roles: {step: {}}",
     "roles: {step: {retry: null}}", "roles: {step: {retry: {}}}",
     "roles: {step: {timeout: 1h 30m 5ms}}",
     "roles: {step: {<<: [{timeout: 1s}, {timeout: 2s}]}}"],
)  # fmt: skip
def test_attack2_empty_and_null_policies_are_the_defaults(tmp_path, roles):
    root = make_root(tmp_path, f"workflows:\n  w:\n    {roles}\n", workflows={"w": code()})
    done = nerved_check(root)
    assert done.returncode == 0, done.stderr


def test_attack2_nerved_check_escapes_control_characters_in_key_paths(tmp_path):
    root = make_root(
        tmp_path, 'workflows:\n  w:\n    roles: {"\\e[2Jx": {timeout: 1s}}\n',
        workflows={"w": code()},
    )  # fmt: skip
    done = nerved_check(root)
    assert done.returncode == 78
    assert "\x1b" not in done.stderr, repr(done.stderr)


def test_attack2_a_policy_for_a_missing_role_at_start_check_and_reload(nerved_factory):
    """A start takes it (no code is imported); check refuses it; a reload that changes the
    code is refused for it, and the running code stays."""
    yaml = "workflows:\n  w:\n    roles:\n      stepp: {timeout: 1s}\n"
    daemon = start(nerved_factory, yaml=yaml)
    run_done(daemon)
    assert nerved_check(daemon.root).returncode == 78
    write_package(daemon.root, "workflows", "w", code(after_failure=3))
    done = daemon.ctl("reload")
    assert done.returncode == 1 and "defines no role 'stepp'" in done.stderr, done.stderr
    run_done(daemon)
    healthy(daemon)


def test_attack2_replay_of_an_active_run_waiting_for_its_next_try(nerved_factory):
    yaml = "workflows:\n  w:\n    roles:\n      flaky:\n        retry: {attempts: 3, delay: 30s}\n"
    daemon = start(nerved_factory, yaml=yaml)
    run_id = trigger(daemon, {"role": "flaky"})
    wait_until(lambda: daemon.rpc("workflow.inspect", runId=run_id)["retryAt"], timeout=10)
    assert replay(daemon, runId=run_id) == {"checked": 1, "diverged": [], "skipped": []}
    change(daemon, mode="garbage")
    (diverged,) = replay(daemon, runId=run_id)["diverged"]
    assert diverged["step"] == 1
    assert diverged["logged"] == {"role": "flaky", "prompt": {"n": 1, "pad": ""}}
    assert "moderator returned 42" in diverged["now"]["error"]
    listed = daemon.ctl("workflow", "list")
    assert "step 1 (role flaky), try 2 due in" in listed.stdout, listed.stdout
    daemon.rpc("workflow.cancel", runId=run_id)
    assert daemon.ctl("workflow", "replay", run_id).returncode == 1
    healthy(daemon)


def test_attack2_stop_during_four_replays_and_a_reload_check_leaves_nothing(
    nerved_factory, tmp_path
):
    """Four client checks whose moderators forked a sleeper and spin, and a reload's check of
    an active run: a clean stop ends every check's child and all they started."""
    daemon = start(nerved_factory)
    pidfile = tmp_path / "pids"
    runs = [run_done(daemon, {"pidfile": str(pidfile)}) for _ in range(4)]
    active = trigger(daemon, {"role": "blocks"})
    change(daemon, mode="forkspin")
    command = [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket)]
    asked = [
        subprocess.Popen(
            [*command, "workflow", "replay", run_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in runs
    ]
    wait_until(lambda: len(replay_pids(daemon)) >= 4, timeout=5)
    wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) >= 4, timeout=5)
    everything = session_processes(daemon)
    assert daemon.stop() == 0
    for proc in asked:
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 1 and "shutting down" in stderr, stderr
    sleepers = [int(p) for p in pidfile.read_text().split()]
    try:
        wait_until(lambda: not any(pid_alive(p) for p in everything | set(sleepers)),
                   timeout=5, what="every process of nerved's to end")  # fmt: skip
    finally:
        for pid in sleepers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    daemon.start()
    assert wait_run(daemon, active, timeout=10)["status"] in ("failed", "started")
    healthy(daemon)


def test_attack2_kill_9_mid_replay_loses_no_acknowledged_run(nerved_factory, tmp_path):
    from support import GATED

    yaml = YAML + "  g:\n    concurrency: 2\n"
    daemon = nerved_factory(yaml, None, {"w": code(), "g": GATED}).start()
    done = run_done(daemon)
    gate = tmp_path / "gate"
    held = [trigger(daemon, {"gate": str(gate)}, workflow="g") for _ in range(6)]
    change(daemon, mode="spin")
    command = [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket)]
    with subprocess.Popen([*command, "workflow", "replay", done], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as asked:  # fmt: skip
        wait_until(lambda: replay_pids(daemon), timeout=5)
        everything = session_processes(daemon)
        daemon.kill()
        asked.communicate(timeout=10)
    wait_until(lambda: not any(pid_alive(p) for p in everything), timeout=5, what="workers")
    daemon.start()
    gate.touch()
    for run_id in held:
        assert wait_run(daemon, run_id)["status"] == "completed"
    healthy(daemon)


def test_attack2_replay_of_a_retried_copy_notices_a_broken_moderator(nerved_factory):
    daemon = start(nerved_factory)
    first = run_done(daemon, {"role": "flaky"})
    again = daemon.rpc("workflow.retry", runId=first, fromStep=1)["runId"]
    assert wait_run(daemon, again)["status"] == "completed"
    change(daemon, mode="garbage")
    assert daemon.ctl("workflow", "replay", first).returncode == 1
    done = daemon.ctl("workflow", "replay", again)
    assert done.returncode == 1, done.stdout
