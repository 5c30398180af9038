"""nervectl through a real nerved: output, --json, exit codes, following the logs.

Plain function tests at the end cover what needs no daemon: --since parsing, rendering.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Nerved, wait_until, write_package

from nervectl import render, times, workflows
from nervectl.client import RemoteError

CONFIG = """
    senses:
      tick: {group: clock}
      manual: {}
    reflexes:
      - {kind: sense, sense: tick, interval: 200ms}
    workflows:
      greet: {concurrency: 2, overflow: queue}
      broken: {}
      slow: {}
"""
TICK = """
    import itertools
    _n = itertools.count(1)

    def compute(ctx):
        return {"n": next(_n)}
"""
MANUAL = """
    def compute(ctx):
        ctx.log("manual computed")
        return {"hello": "world"}
"""
GREET = """
    from nerved import WorkflowDefinition

    def greeter(prompt, ctx):
        ctx.log("greeting " + prompt["name"])
        return {"type": "greeted", "text": "hello " + prompt["name"]}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            payload = event["payload"] or {}
            return {"role": "greeter", "prompt": {"name": payload.get("name", "world")}}
        return None

    workflow = WorkflowDefinition(roles={"greeter": greeter}, moderate=moderate)
"""
BROKEN = """
    from nerved import WorkflowDefinition

    def boom(prompt, ctx):
        raise RuntimeError("the role failed on purpose")

    def moderate(thread, event):
        return {"role": "boom", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"boom": boom}, moderate=moderate)
"""
SLOW = """
    import time
    from nerved import WorkflowDefinition

    def sleeper(prompt, ctx):
        time.sleep(3)
        return {"type": "slept"}

    def moderate(thread, event):
        return {"role": "sleeper", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"sleeper": sleeper}, moderate=moderate)
"""


@pytest.fixture
def daemon(nerved_factory: Callable[..., Nerved]) -> Nerved:
    return nerved_factory(
        CONFIG,
        {"tick": TICK, "manual": MANUAL},
        {"greet": GREET, "broken": BROKEN, "slow": SLOW},
    ).start()


def nervectl(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    """nervectl without --socket: for the tests where the socket is the point."""
    return subprocess.run(
        [sys.executable, "-m", "nervectl", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, input=input,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("nervectl: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def signals(daemon: Nerved, sense: str) -> list[dict[str, Any]]:
    return daemon.rpc("logs.query", source="sense", type="signal", refId=sense, limit=1000)


# -- status -------------------------------------------------------------------------------------


def test_status_human(daemon: Nerved) -> None:
    done = daemon.ctl("status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(rf"^pid: +{daemon.pid}$", out, re.M), out
    for label in ("version:", "uptime:", "senses:", "groups:", "active runs:", "rss:"):
        assert label in out
    assert re.search(r"^containment: +process group$", out, re.M), out
    assert "MiB" in out
    assert "KIND" in out and "PID" in out
    for pid in daemon.worker_pids("sense").values():
        assert str(pid) in out


def test_status_json(daemon: Nerved) -> None:
    status = daemon.ctl_json("status")
    assert status["pid"] == daemon.pid
    assert status["senses"] == 2
    assert {w["name"] for w in status["workers"] if w["kind"] == "sense"} == {"clock", "default"}
    # --json may also follow the command
    done = daemon.ctl("status", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["pid"] == daemon.pid


def test_socket_is_resolved_like_nerved_does(daemon: Nerved) -> None:
    done = nervectl("--json", "status", env={"NERVE_SOCKET": str(daemon.socket)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pid"] == daemon.pid
    runtime = daemon.socket.parent
    done = nervectl("--json", "status", env={"NERVE_SOCKET": "", "RUNTIME_DIRECTORY": str(runtime)})
    assert done.returncode == 0, done.stderr


# -- senses -------------------------------------------------------------------------------------


def test_sense_list(daemon: Nerved) -> None:
    wait_until(lambda: daemon.sense("tick")["computes"] > 0, what="a tick")
    done = daemon.ctl("sense", "list")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"tick", "manual"}
    assert "clock" in rows["tick"]
    assert "ago" in rows["tick"] or "just now" in rows["tick"]
    assert "never" in rows["manual"]
    listed = daemon.ctl_json("sense", "list")
    assert {s["name"] for s in listed} == {"tick", "manual"}


def test_sense_trigger(daemon: Nerved) -> None:
    done = daemon.ctl("sense", "trigger", "manual")
    assert done.returncode == 0, done.stderr
    assert "manual" in done.stdout
    wait_until(lambda: daemon.sense("manual")["computes"] == 1, what="manual's compute")
    row = next(line for line in daemon.ctl("sense", "list").stdout.splitlines() if "manual" in line)
    assert "ago" in row or "just now" in row
    assert daemon.ctl_json("sense", "trigger", "manual") == {"accepted": True, "worker": "ready"}


def test_sense_trigger_unknown_is_not_found(daemon: Nerved) -> None:
    error = assert_one_line_error(daemon.ctl("sense", "trigger", "nosuch"), 4)
    assert "nosuch" in error


# -- logs ---------------------------------------------------------------------------------------


def test_logs_filters(daemon: Nerved) -> None:
    daemon.ctl("sense", "trigger", "manual")
    wait_until(lambda: len(signals(daemon, "tick")) >= 3, what="three ticks")
    wait_until(lambda: signals(daemon, "manual"), what="manual's signal")

    entries = daemon.ctl_json("logs", "--source", "sense", "--type", "signal", "--sense", "tick")
    assert len(entries) >= 3
    assert all((e["source"], e["type"], e["refId"]) == ("sense", "signal", "tick") for e in entries)
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert "n" in entries[0]["payload"]

    last = daemon.ctl_json("logs", "--sense", "tick", "--limit", "1")
    assert len(last) == 1 and last[0]["id"] >= entries[-1]["id"]

    logged = daemon.ctl_json("logs", "--type", "log", "--sense", "manual")
    assert [e["payload"] for e in logged] == ["manual computed"]

    human = daemon.ctl("logs", "--sense", "manual")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == 2
    assert "manual computed" in lines[0] and "log" in lines[0]
    assert '{"hello":"world"}' in lines[1] and "signal" in lines[1]


def test_logs_since(daemon: Nerved) -> None:
    wait_until(lambda: signals(daemon, "tick"), what="a tick")
    assert daemon.ctl_json("logs", "--since", "1h", "--sense", "tick")
    future = f"@{times.now_ms() // 1000 + 3_600}"
    assert daemon.ctl_json("logs", "--since", future) == []
    assert daemon.ctl_json("logs", "--since", "2000-01-01", "--sense", "tick")
    assert daemon.ctl("logs", "--since", future).stdout.strip() == "no log entries"


def test_logs_bad_since_is_a_usage_error(daemon: Nerved) -> None:
    error = assert_one_line_error(daemon.ctl("logs", "--since", "yesterday-ish"), 2)
    assert "--since" in error


class Lines:
    """A child's stdout, read line by line on a thread so that reads can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.queue.put(line)
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 10.0) -> str | None:
        return self.queue.get(timeout=timeout)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(daemon: Nerved, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_logs_follow_json(daemon: Nerved, spawn: Callable[..., subprocess.Popen[str]]) -> None:
    daemon.ctl("sense", "trigger", "manual")
    first = wait_until(lambda: signals(daemon, "manual"), what="manual's signal")[0]
    proc = spawn(daemon, "--json", "logs", "--follow", "--type", "signal", "--sense", "manual")
    lines = Lines(proc)
    tail = json.loads(lines.next() or "null")
    assert tail["id"] == first["id"]  # the current tail first

    daemon.ctl("sense", "trigger", "manual")
    entry = json.loads(lines.next() or "null")
    assert entry["refId"] == "manual" and entry["type"] == "signal"
    assert entry["payload"] == {"hello": "world"} and entry["id"] > first["id"]

    daemon.ctl("sense", "trigger", "manual")
    again = json.loads(lines.next() or "null")
    assert again["id"] > entry["id"]  # nothing printed twice
    proc.terminate()
    proc.wait(10)


def test_logs_follow_human_sees_new_ticks(
    daemon: Nerved, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn(daemon, "logs", "-f", "--sense", "tick", "--limit", "1")
    lines = Lines(proc)
    seen = [lines.next(), lines.next(), lines.next()]
    assert all(line and "tick" in line and '{"n":' in line for line in seen), seen
    numbers = [json.loads(line.split("  ")[-1])["n"] for line in seen if line]
    assert numbers == sorted(set(numbers))


def test_logs_follow_ends_with_0_on_interrupt(
    daemon: Nerved, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn(daemon, "logs", "--follow", "--sense", "tick")
    lines = Lines(proc)
    assert lines.next()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_logs_follow_ends_with_3_when_the_daemon_goes(
    daemon: Nerved, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn(daemon, "logs", "--follow", "--sense", "tick")
    lines = Lines(proc)
    assert lines.next()
    daemon.stop()  # its exit code is not what this test is about
    assert proc.wait(10) == 3
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert stderr.startswith("nervectl: ") and stderr.count("\n") == 1, stderr


# -- reload -------------------------------------------------------------------------------------


@pytest.fixture
def unwatched(nerved_factory: Callable[..., Nerved]) -> Nerved:
    """No file watcher: the reload under test is the one nervectl asks for."""
    config = "senses:\n  tick: {}\n  manual: {}\n"
    return nerved_factory(config, {"tick": TICK, "manual": MANUAL}, args=("--no-watch",)).start()


def test_reload_reports_what_changed(unwatched: Nerved) -> None:
    assert unwatched.ctl("reload").stdout.strip() == "nothing changed"
    write_package(unwatched.root, "senses", "extra", "def compute(ctx):\n    return None\n")
    config = unwatched.root / "nerve.yaml"
    config.write_text(config.read_text().replace("senses:\n", "senses:\n  extra: {}\n", 1))
    done = unwatched.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert "sense extra added" in done.stdout
    assert {s["name"] for s in unwatched.rpc("sense.list")} == {"tick", "manual", "extra"}
    assert unwatched.ctl_json("reload") == {"changed": []}


def test_reload_of_a_bad_config_is_an_error(unwatched: Nerved) -> None:
    config = unwatched.root / "nerve.yaml"
    config.write_text(config.read_text() + "\nbogus: 1\n")
    error = assert_one_line_error(unwatched.ctl("reload"), 1)
    assert "bogus" in error


# -- workflows ----------------------------------------------------------------------------------


def test_workflow_trigger_and_wait(daemon: Nerved) -> None:
    done = daemon.ctl("workflow", "trigger", "greet", "--payload", '{"name": "ops"}', "--wait")
    assert done.returncode == 0, done.stderr
    assert "status:    completed" in done.stdout
    run = daemon.ctl_json("workflow", "trigger", "greet", "--wait", "--timeout", "30")
    assert run["status"] == "completed" and run["steps"] == 1 and run["error"] is None


def test_workflow_trigger_json_is_run_id_and_status(daemon: Nerved) -> None:
    accepted = daemon.ctl_json("workflow", "trigger", "greet")
    assert set(accepted) == {"runId", "status", "deduplicated"}
    assert accepted["status"] in ("queued", "started")
    assert accepted["deduplicated"] is False
    run = daemon.rpc("workflow.wait", runId=accepted["runId"], timeout=30)
    assert run["status"] == "completed"


def test_workflow_trigger_with_a_key_twice_is_one_run(daemon: Nerved) -> None:
    """``--key``: the second trigger shows the first one's run, as it is now."""
    key = "nightly 2026-11-29"
    first = daemon.ctl("workflow", "trigger", "greet", "--key", key, "--wait")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.split()[1].rstrip(":")
    assert "earlier trigger" not in first.stdout
    again = daemon.ctl("workflow", "trigger", "greet", "--key", key)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"run {run_id}: completed (an earlier trigger with key {key})\n"
    shown = daemon.ctl_json("workflow", "trigger", "greet", "--key", key)
    assert shown == {"runId": run_id, "status": "completed", "deduplicated": True}
    waited = daemon.ctl("workflow", "trigger", "greet", "--key", key, "--wait")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.startswith(
        f"run {run_id}: completed (an earlier trigger with key {key}); waiting for it to finish\n"
    )
    other = daemon.ctl_json("workflow", "trigger", "greet", "--key", key + "-other")
    assert other["runId"] != run_id and other["deduplicated"] is False
    daemon.wait_run(other["runId"])


def test_workflow_trigger_payload_file_and_stdin(daemon: Nerved, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"name": "file"}')
    run = daemon.ctl_json("workflow", "trigger", "greet", "--payload-file", str(payload), "--wait")
    events = daemon.rpc("workflow.inspect", runId=run["runId"])["events"]
    assert any(e["type"] == "log" and e["payload"] == "greeting file" for e in events)
    done = daemon.ctl(
        "--json", "workflow", "trigger", "greet", "--payload-file", "-", "--wait",
        input='{"name": "stdin"}',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = daemon.rpc("workflow.inspect", runId=json.loads(done.stdout)["runId"])["events"]
    assert any(e["type"] == "log" and e["payload"] == "greeting stdin" for e in events)


def test_workflow_run_that_fails_exits_1(daemon: Nerved) -> None:
    done = daemon.ctl("--json", "workflow", "trigger", "broken", "--wait")
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "failed" and "on purpose" in run["error"]


@pytest.mark.parametrize("timeout", ["0.5", "500ms"])
def test_workflow_wait_timeout_exits_1(daemon: Nerved, timeout: str) -> None:
    error = assert_one_line_error(
        daemon.ctl("workflow", "trigger", "slow", "--wait", "--timeout", timeout), 1
    )
    assert "goes on" in error


def test_workflow_list_and_inspect(daemon: Nerved) -> None:
    run = daemon.ctl_json("workflow", "trigger", "greet", "--payload", '{"name": "x"}', "--wait")
    run_id = run["runId"]
    assert daemon.ctl("workflow", "list").stdout.startswith("no active runs")
    listed = daemon.ctl_json("workflow", "list", "--all")
    assert [r["runId"] for r in listed] == [run_id]
    assert daemon.ctl_json("workflow", "list", "--status", "completed", "--workflow", "greet")
    assert daemon.ctl_json("workflow", "list", "--status", "failed") == []
    assert daemon.ctl_json("workflow", "list", "--status", "cancelled") == []
    several = daemon.ctl_json("workflow", "list", "--status", "failed", "--status", "completed")
    assert [r["runId"] for r in several] == [run_id]
    table = daemon.ctl("workflow", "list", "--all", "--limit", "5").stdout
    assert run_id[:8] in table and run_id not in table and "completed" in table
    assert run_id in daemon.ctl("workflow", "list", "--all", "--full").stdout

    inspected = daemon.ctl_json("workflow", "inspect", run_id[:8])
    assert inspected["runId"] == run_id
    assert [e["type"] for e in inspected["events"]][-1] == "completed"
    human = daemon.ctl("workflow", "inspect", run_id).stdout
    assert "status:" in human and "completed" in human
    assert "failed tries" not in human and "in flight" not in human  # a final run: none
    step = next(line for line in human.splitlines() if "step_complete" in line)
    assert 'greeter -> greeted {"type":"greeted","text":"hello x"}' in step


def test_with_sqlite_the_fleet_view_changes_nothing_and_no_run_has_a_host(
    daemon: Nerved,
) -> None:
    """Issue 15's fleet view on a store one host holds: runs have no host, so the table has
    no HOST column and inspect no host or placement line, as before there were hosts; a
    ``--host`` filter selects no run (an empty list, not "not found": a host is a run's
    field's value, not a configured name), and ``workflow.count`` counts what it lists."""
    run_id = daemon.ctl_json("workflow", "trigger", "greet", "--payload", '{"name": "x"}',
                             "--wait")["runId"]  # fmt: skip
    shown = daemon.ctl("workflow", "list", "--all")
    assert shown.returncode == 0, shown.stderr
    header = shown.stdout.splitlines()[0].split()
    assert header[:3] == ["RUN", "WORKFLOW", "STATUS"] and "HOST" not in header
    assert daemon.ctl_json("workflow", "list", "--all")[0]["host"] is None
    human = daemon.ctl("workflow", "inspect", run_id).stdout
    assert not re.search(r"^\s*(host|placement):", human, re.M), human
    for args in (("--all", "--host", "x"), ("--host", "x")):
        none = daemon.ctl("workflow", "list", *args)
        assert none.returncode == 0, none.stderr
        assert none.stdout.startswith(("no runs of host x", "no active runs of host x"))
        assert daemon.ctl_json("workflow", "list", *args) == []
    assert daemon.rpc("workflow.list", all=True, host="x") == []
    assert daemon.rpc("workflow.count", all=True, host="x") == {"count": 0}
    assert daemon.rpc("workflow.count", all=True) == {"count": 1}


def test_workflow_not_found_exits_4(daemon: Nerved) -> None:
    assert_one_line_error(daemon.ctl("workflow", "inspect", "0123456789abcdef"), 4)
    assert_one_line_error(daemon.ctl("workflow", "trigger", "nosuch"), 4)


# -- reading back what is big or broken ---------------------------------------------------------

STEPS = 40
CHUNK = 1_000_000  # bytes of each event's data: 40 of them are past any single answer
BIG = f"""
    from nerved import WorkflowDefinition

    def chunker(prompt, ctx):
        n = prompt["n"]
        return {{"type": "chunk", "n": n, "data": str(n % 10) * {CHUNK}}}

    def moderate(thread, event):
        done = len(thread.events) - 1
        return {{"role": "chunker", "prompt": {{"n": done + 1}}}} if done < {STEPS} else None

    workflow = WorkflowDefinition(roles={{"chunker": chunker}}, moderate=moderate)
"""


@pytest.fixture
def bulky(nerved_factory: Callable[..., Nerved]) -> Nerved:
    """Only a workflow whose runs hold 40 MB: no sense adds entries to count around."""
    return nerved_factory("workflows:\n  big: {}\n", workflows={"big": BIG}).start()


class Pinger:
    """Another client asking ``status`` over and over: the daemon must keep answering it."""

    def __init__(self, daemon: Nerved) -> None:
        self.daemon = daemon
        self.slowest = 0.0
        self.answers = 0
        self.error: Exception | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.daemon.client(timeout=10) as client:
                while not self.stopped.wait(0.02):
                    start = time.monotonic()
                    client.call("status")
                    self.slowest = max(self.slowest, time.monotonic() - start)
                    self.answers += 1
        except Exception as exc:
            self.error = exc

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(15)


def assert_all_chunks(entries: list[dict[str, Any]]) -> None:
    steps = [e["payload"]["event"] for e in entries if e["type"] == "step_complete"]
    assert [event["n"] for event in steps] == list(range(1, STEPS + 1))
    assert all(event["data"] == str(event["n"] % 10) * CHUNK for event in steps)


def follow_until(proc: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    """Entries printed by ``--json logs --follow`` until ``count`` of them; then stop it."""
    lines = Lines(proc)
    entries = []
    while len(entries) < count:
        line = lines.next(timeout=30)
        assert line is not None, proc.stderr.read() if proc.stderr else ""
        entries.append(json.loads(line))
    proc.terminate()
    proc.wait(10)
    return entries


def test_a_run_of_40_megabytes_reads_back_whole(
    bulky: Nerved, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    pinger = Pinger(bulky)
    # Started with the run, it reads part of it as its tail and the rest as it is written.
    during = spawn(bulky, "--json", "logs", "--follow", "--source", "workflow")
    run = bulky.ctl_json("workflow", "trigger", "big", "--wait")
    assert run["status"] == "completed" and run["steps"] == STEPS
    run_id = run["runId"]
    entries = STEPS + 2  # started, the steps, completed

    human = bulky.ctl("workflow", "inspect", run_id[:8])
    assert human.returncode == 0, human.stderr
    assert human.stdout.count("chunker -> chunk") == STEPS

    inspected = bulky.ctl_json("workflow", "inspect", run_id)
    assert inspected["runId"] == run_id and inspected["steps"] == STEPS
    assert "more" not in inspected
    assert [e["type"] for e in inspected["events"]] == (
        ["started"] + ["step_complete"] * STEPS + ["completed"]
    )
    assert_all_chunks(inspected["events"])

    listed = bulky.ctl("logs")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == entries
    logged = bulky.ctl_json("logs", "--run", run_id)
    assert [e["id"] for e in logged] == [e["id"] for e in inspected["events"]]
    assert_all_chunks(logged)
    newest = bulky.ctl_json("logs", "--limit", "5")
    assert [e["id"] for e in newest] == [e["id"] for e in logged[-5:]]
    since = bulky.ctl_json("logs", "--since", "1h", "--limit", "7")
    assert [e["id"] for e in since] == [e["id"] for e in logged[:7]]

    assert_all_chunks(follow_until(during, entries))
    after = spawn(bulky, "logs", "--follow")
    human_lines = Lines(after)
    followed = [human_lines.next(timeout=30) for _ in range(entries)]
    assert all(line and run_id in line for line in followed), followed[-1]
    after.terminate()

    pinger.stop()
    assert pinger.error is None and pinger.answers > 0
    assert pinger.slowest < 5, pinger.slowest
    assert bulky.rpc("status")["pid"] == bulky.pid


def test_stored_entries_that_do_not_decode_read_back_as_unreadable(daemon: Nerved) -> None:
    run_id = daemon.ctl_json("workflow", "trigger", "greet", "--wait")["runId"]
    assert daemon.stop() == 0
    with sqlite3.connect(daemon.state / "logs.db") as conn:
        conn.execute(
            "UPDATE logs SET payload = '{\"cut' WHERE ref_id = ? AND type = 'step_complete'",
            (run_id,),
        )
        conn.execute("UPDATE workflow_runs SET trigger_payload = '[' WHERE run_id = ?", (run_id,))
    conn.close()
    daemon.start()

    inspected = daemon.ctl_json("workflow", "inspect", run_id)
    step = next(e for e in inspected["events"] if e["type"] == "step_complete")
    assert step["payload"] is None and step["unreadable"].startswith("not readable as JSON")
    assert inspected["triggerPayload"] is None
    assert inspected["triggerPayloadUnreadable"].startswith("not readable as JSON")
    assert inspected["events"][-1]["type"] == "completed"

    human = daemon.ctl("workflow", "inspect", run_id)
    assert human.returncode == 0, human.stderr
    line = next(line for line in human.stdout.splitlines() if "step_complete" in line)
    assert "[unreadable: not readable as JSON" in line

    logged = daemon.ctl_json("logs", "--run", run_id, "--type", "step_complete")
    assert [e["unreadable"][:20] for e in logged] == ["not readable as JSON"]
    listed = daemon.ctl("logs", "--run", run_id)
    assert listed.returncode == 0, listed.stderr
    assert "[unreadable: not readable as JSON" in listed.stdout
    assert "greeting" in listed.stdout  # the run's other entries are still there


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"afterId": 2**63}, "afterId"),
        ({"beforeId": -1}, "beforeId"),
        ({"beforeId": 2**64}, "beforeId"),
        ({"beforeId": "1"}, "beforeId"),
    ],
)
def test_log_paging_params_are_bounded(daemon: Nerved, params: dict[str, Any], name: str) -> None:
    with pytest.raises(RemoteError) as caught:
        daemon.rpc("logs.query", **params)
    assert caught.value.code == -32602 and repr(name) in caught.value.message


def test_logs_query_pages_back_with_before_id(daemon: Nerved) -> None:
    wait_until(lambda: len(signals(daemon, "tick")) >= 4, what="four ticks")
    query = {"type": "signal", "refId": "tick", "limit": 2}
    newest = daemon.rpc("logs.query", **query)
    older = daemon.rpc("logs.query", **query, beforeId=newest[0]["id"])
    ticks = [e["id"] for e in signals(daemon, "tick") if e["id"] <= newest[-1]["id"]]
    assert [e["id"] for e in older + newest] == ticks[-4:]
    assert daemon.rpc("logs.query", beforeId=1) == []


def test_inspect_after_id_is_bounded(daemon: Nerved) -> None:
    run_id = daemon.ctl_json("workflow", "trigger", "greet", "--wait")["runId"]
    with pytest.raises(RemoteError) as caught:
        daemon.rpc("workflow.inspect", runId=run_id, afterId=2**63)
    assert caught.value.code == -32602 and "'afterId'" in caught.value.message
    first = daemon.rpc("workflow.inspect", runId=run_id)
    assert first["more"] is False
    rest = daemon.rpc("workflow.inspect", runId=run_id, afterId=first["events"][0]["id"])
    assert rest["events"] == first["events"][1:] and rest["more"] is False


# -- failures without a daemon --------------------------------------------------------------------


def test_unreachable_socket_exits_3(tmp_path: Path) -> None:
    error = assert_one_line_error(nervectl("--socket", str(tmp_path / "none.sock"), "status"), 3)
    assert "none.sock" in error


def serve_once(path: Path, answer: bytes | None) -> threading.Thread:
    """A fake daemon that reads one request, then answers ``answer`` or hangs up."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.recv(65536)
            if answer is not None:
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("answer", [None, b"this is not json\n"])
def test_connection_lost_or_garbled_exits_3(tmp_path: Path, answer: bytes | None) -> None:
    path = tmp_path / "fake.sock"
    serve_once(path, answer)
    assert_one_line_error(nervectl("--socket", str(path), "status"), 3)


def test_bad_payload_is_a_usage_error(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    error = assert_one_line_error(
        nervectl("--socket", sock, "workflow", "trigger", "w", "--payload", "{nope"), 2
    )
    assert "JSON" in error
    missing = str(tmp_path / "missing.json")
    assert_one_line_error(
        nervectl("--socket", sock, "workflow", "trigger", "w", "--payload-file", missing), 2
    )
    assert_one_line_error(
        nervectl("--socket", sock, "workflow", "trigger", "w", "--payload-file", "-", input="{"),
        2,
    )
    assert_one_line_error(
        nervectl("--socket", sock, "workflow", "trigger", "w", "--timeout", "5"), 2
    )


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ('{"x": NaN}', "NaN is not JSON (at x)"),
        ("[1, Infinity]", "Infinity is not JSON (at [1])"),
        ('{"x": -Infinity}', "-Infinity is not JSON (at x)"),
        ('{"x": [1e400]}', "overflows to infinity) (at x[0])"),
        ('{"x": "\\ud800"}', "lone UTF-16 surrogate"),
        ("[" * 101 + "]" * 101, "nested deeper than 100 levels"),
        ("[" * 100 + "]" * 100, None),
        ('"' + "x" * 2 * 1024 * 1024 + '"', "2.0 MiB; at most 1.0 MiB"),
        ('"' + "é" * (512 * 1024) + '"', "1.0 MiB; at most 1.0 MiB"),
        # Within the value limit, but not within one request line with its envelope.
        ('"' + "x" * (1024 * 1024 - 16) + '"', "the daemon takes at most 1,048,576 bytes"),
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "1e400",
        "surrogate",
        "deep",
        "100-deep",
        "2MiB",
        "2-byte-chars",
        "line",
    ],
)
def test_payloads_json_cannot_carry_are_refused_before_sending(
    tmp_path: Path, payload: str, problem: str | None
) -> None:
    """Exit 2 with the problem named, not 3: the (missing) daemon is never asked."""
    sock = str(tmp_path / "none.sock")
    file = tmp_path / "payload.json"
    file.write_text(payload)
    runs = [("--payload-file", str(file)), ("--payload-file", "-")]
    if len(payload) < 100_000:  # argv holds at most 128 KiB in one argument
        runs.append(("--payload", payload))
    for args in runs:
        done = nervectl("--socket", sock, "workflow", "trigger", "w", *args, input=payload)
        if problem is None:  # the control: accepted, so it is the daemon that is missing
            assert_one_line_error(done, 3)
        else:
            assert problem in assert_one_line_error(done, 2), args


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("sense",),
        ("nosuch",),
        ("logs", "--limit", "0"),
        ("workflow", "list", "--status", "sleeping"),
        ("workflow", "trigger", "w", "--payload", "{}", "--payload-file", "x"),
    ],
)
def test_usage_errors_exit_2_on_one_line(args: tuple[str, ...]) -> None:
    assert_one_line_error(nervectl(*args), 2)


MAX_INTEGER = 2**63 - 1  # the daemon's bound on every integer param (nerved.wire)
HUGE = "99999999999999999999"  # past it


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("logs", "--since", HUGE), "--since"),
        (("logs", "--since", "0"), "--since"),  # a bare number is never guessed
        (("logs", "--since", "1700000000"), "--since"),  # seconds? milliseconds? refused
        (("logs", "--since", "@" + HUGE), "--since"),
        (("logs", "--since", "1" * 5000), "--since"),
        (("logs", "--limit", HUGE), "--limit"),
        (("logs", "--limit", "9" * 5000), "--limit"),
        (("workflow", "list", "--limit", HUGE), "--limit"),
        (("workflow", "list", "--limit", "10001"), "--limit"),  # past what the daemon lists
        (("workflow", "inspect", ""), "RUN_ID"),
        (("sense", "trigger", ""), "NAME"),
        (("workflow", "trigger", ""), "NAME"),
        (("workflow", "trigger", "w", "--key", ""), "--key"),
        (("workflow", "trigger", "w", "--key", "k" * 257), "--key"),
        (("workflow", "trigger", "w", "--key", os.fsdecode(b"k\xff")), "--key"),
        (("logs", "--run", ""), "--run"),
        (("logs", "--source", ""), "--source"),
        (("logs", "--type", ""), "--type"),
        (("workflow", "list", "--workflow", ""), "--workflow"),
        (("sense", "trigger", os.fsdecode(b"caf\xe9")), "NAME"),  # argv that is not UTF-8
        (("workflow", "inspect", os.fsdecode(b"\xff" * 8)), "RUN_ID"),
    ],
    ids=lambda value: " ".join(value)[:40] if isinstance(value, tuple) else value,
)
def test_what_the_daemon_would_refuse_is_a_usage_error_before_sending(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    """Exit 2 naming the option, not 3: the (missing) daemon is never asked."""
    error = assert_one_line_error(nervectl("--socket", str(tmp_path / "none.sock"), *args), 2)
    assert f"argument {named}: " in error


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "--since", "@0"),
        ("logs", "--since", f"@{MAX_INTEGER // 1000}"),
        ("logs", "--since", "1969-12-31"),  # before the epoch: from the first entry
        ("logs", "--since", "0001-01-01"),
        ("logs", "--since", "0001-01-01T00:00+14:00"),
        ("logs", "--since", "9999-12-31T23:59:59"),
        ("logs", "--since", "9" * 400 + "w"),  # longer ago than a double holds
        ("logs", "--since", "1h30m"),  # nerve.yaml's duration grammar, compound
        ("logs", "--limit", str(MAX_INTEGER)),  # read 10,000 at a time
        ("workflow", "list", "--limit", "10000"),
    ],
)
def test_the_bounds_of_each_option_are_what_the_daemon_takes(
    daemon: Nerved, args: tuple[str, ...]
) -> None:
    done = daemon.ctl(*args)
    assert done.returncode == 0, done.stderr


def test_the_help_of_since_says_what_it_takes() -> None:
    help_text = " ".join(nervectl("logs", "--help").stdout.split())
    assert "seconds since the epoch as journalctl takes them (@1700000000)" in help_text
    assert "a bare number is refused, never guessed" in help_text
    assert "a time before 1970 means from the first entry" in help_text
    assert times.parse_since("@0", now=NOW) == 0
    with pytest.raises(ValueError, match="write @0 for seconds since the epoch"):
        times.parse_since("0", now=NOW)


def test_version_and_help() -> None:
    from nerved import _version

    done = nervectl("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"nervectl {_version.__version__}"
    for args in (
        (),
        ("status",),
        ("sense",),
        ("sense", "trigger"),
        ("logs",),
        ("workflow", "trigger"),
        ("workflow", "replay"),
        ("init",),
    ):
        done = nervectl(*args, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout, args


@pytest.mark.parametrize(
    ("args", "whole"),
    [
        (("--he", "status"), ("--help",)),
        (("--json", "--hel", "status"), ("--help",)),
        (("sense", "-h", "list"), ("sense", "--help")),
        (("sense", "--help", "trigger"), ("sense", "--help")),
        (("workflow", "-h", "list"), ("workflow", "--help")),
        (("workflow", "--he", "trigger"), ("workflow", "--help")),
    ],
)
def test_help_asked_before_the_command_lists_every_command(
    args: tuple[str, ...], whole: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """A help option before the command is named is the help of nervectl or of the group,
    with every command in it, not just the one that follows (a parser built for it alone)."""
    from nervectl.cli import main

    assert main(list(whole)) == 0
    expected = capsys.readouterr().out
    assert main(list(args)) == 0
    assert capsys.readouterr().out == expected


def test_a_payload_file_is_read_within_bounds(tmp_path: Path) -> None:
    """``--payload-file ""`` is no file (it sent no payload), an endless file or pipe is
    refused after 16 MiB (it was read until memory ran out), a closed stdin is a usage error
    (it was a traceback)."""
    sock = str(tmp_path / "none.sock")
    trigger = ("--socket", sock, "workflow", "trigger", "w", "--payload-file")
    assert_one_line_error(nervectl(*trigger, ""), 2)
    error = assert_one_line_error(nervectl(*trigger, "/dev/zero"), 2)
    assert "over 16 MiB; at most 1.0 MiB" in error
    assert_one_line_error(nervectl(*trigger, "-", input="1" * (17 << 20)), 2)
    closed = subprocess.run(
        [sys.executable, "-m", "nervectl", *trigger, "-"],
        capture_output=True, text=True,
        timeout=60, cwd=REPO, preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert "stdin" in assert_one_line_error(closed, 2)


def test_a_socket_path_is_taken_as_before(daemon: Nerved) -> None:
    """--socket and $NERVE_SOCKET as pathlib read them (1f947ba): a trailing slash, ``//`` and
    ``/./`` name the same socket."""
    from nerved.paths import socket_path

    odd = f"{daemon.socket.parent}//./{daemon.socket.name}/"
    assert socket_path(odd) == str(daemon.socket)
    done = nervectl("--socket", odd, "--json", "status")
    assert done.returncode == 0, done.stderr
    done = nervectl("--json", "status", env={"NERVE_SOCKET": odd})
    assert done.returncode == 0, done.stderr


# -- pure logic ---------------------------------------------------------------------------------

NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - 30_000),
        ("10m", NOW - 600_000),
        ("2h", NOW - 7_200_000),
        ("1d", NOW - 86_400_000),
        ("1h30m", NOW - 5_400_000),
        ("1h 30m", NOW - 5_400_000),
        ("1.5h", NOW - 5_400_000),
        ("1d12h", NOW - 129_600_000),
        ("2w", NOW - 14 * 86_400_000),
        ("500ms", NOW - 500),
        ("@1699999999", 1_699_999_999_000),
        ("@1699999999.5", 1_699_999_999_500),
        ("@1699999999.1239", 1_699_999_999_123),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
    ],
)
def test_parse_since(text: str, expected: int) -> None:
    assert times.parse_since(text, now=NOW) == expected


def test_parse_since_local_forms() -> None:
    import datetime

    local = datetime.datetime(2024, 5, 1, 12, 30).astimezone()
    assert times.parse_since("2024-05-01T12:30", now=NOW) == int(local.timestamp() * 1000)
    midnight = datetime.datetime(2024, 5, 1).astimezone()
    assert times.parse_since("2024-05-01", now=NOW) == int(midnight.timestamp() * 1000)
    today = datetime.datetime.fromtimestamp(NOW / 1000).date()
    clock = datetime.datetime.combine(today, datetime.time(8, 15)).astimezone()
    assert times.parse_since("08:15", now=NOW) == int(clock.timestamp() * 1000)


@pytest.mark.parametrize("text", ["", "yesterday", "5x", "-5m", "2024-13-01", "1h 3", "@", "@-5"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        times.parse_since(text, now=NOW)


@pytest.mark.parametrize("text", ["10", "1700000000", "1700000000000", "1.5"])
def test_parse_since_never_guesses_a_bare_number(text: str) -> None:
    """``--since 1700000000`` was read as milliseconds (January 1970: every entry)."""
    with pytest.raises(ValueError, match=f"write @{text} for seconds since the epoch"):
        times.parse_since(text, now=NOW)


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [("90", 90.0), ("0.5", 0.5), ("1m30s", 90.0), ("1h 30m", 5400.0), ("250ms", 0.25)],
)
def test_timeout_takes_seconds_or_a_duration(timeout: str, seconds: float) -> None:
    from nervectl import cli

    args = ["workflow", "trigger", "w", "--wait", "--timeout", timeout]
    assert cli.build_parser().parse_args(args).timeout == seconds


def test_since_takes_a_compound_duration() -> None:
    from nervectl import cli

    before = times.now_ms()
    since = cli.build_parser().parse_args(["logs", "--since", "1h30m"]).since
    assert before - 5_400_000 <= since <= times.now_ms() - 5_400_000


@pytest.mark.parametrize(
    ("timeout", "problem"),
    [
        ("1h30", "expected a number of seconds or a duration such as 1m30s, got '1h30'"),
        ("soon", "expected a number of seconds or a duration such as 1m30s, got 'soon'"),
        ("0s", "must be a positive number of seconds, got '0s'"),
        ("9" * 400 + "w", "must be a positive number of seconds"),
    ],
)
def test_timeout_refuses_what_is_no_duration(
    timeout: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nervectl import cli

    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["workflow", "trigger", "w", "--wait", "--timeout", timeout])
    assert caught.value.code == 2
    assert problem in capsys.readouterr().err


def test_time_formats() -> None:
    assert times.format_ago(None) == "never"
    assert times.format_ago(NOW - 3_000, now=NOW) == "3s ago"
    assert times.format_ago(NOW - 300_000, now=NOW) == "5m ago"
    assert times.format_ago(NOW - 7_200_000, now=NOW) == "2h ago"
    assert times.format_ago(NOW - 3 * 86_400_000, now=NOW) == "3d ago"
    assert times.format_ago(NOW + 5_000, now=NOW) == "in 5s"
    assert times.format_ago(NOW - 200, now=NOW) == "just now"
    assert times.format_duration(42) == "42s"
    assert times.format_duration(2.5) == "2.5s"
    assert times.format_duration(125) == "2m 5s"
    assert times.format_duration(3600) == "1h"
    assert times.format_duration(90061) == "1d 1h"
    assert times.format_local(None) == "-"
    assert len(times.format_local(NOW, millis=True)) == len("2023-11-14 22:13:20.000")


def test_render_cells() -> None:
    assert render.cell(None) == "-"
    assert render.cell("x" * 100, 20) == "x" * 17 + "..."
    traceback = 'Traceback (most recent call last):\n  File "x", line 1\nValueError: bad'
    assert render.cell(traceback) == "ValueError: bad"
    assert render.cell("first\nsecond") == "first ..."
    assert render.cell({"a": [1, 2]}) == '{"a":[1,2]}'
    assert render.compact("plain words") == "plain words"
    assert render.compact("two\nlines") == '"two\\nlines"'
    assert render.mib(3 * 1024 * 1024) == "3.0 MiB"


def test_log_lines_stay_aligned() -> None:
    import io

    lines = render.LogLines(io.StringIO())
    short = {"id": 1, "source": "sense", "type": "signal", "refId": "a", "payload": {}, "ts": NOW}
    long = {**short, "id": 2, "refId": "a-much-longer-name", "payload": "text"}
    lines.widen([short, long])
    first, second = lines.format(short), lines.format(long)
    assert first.index("{}") == second.index("text")
    assert first.startswith(times.format_local(NOW, millis=True))


def test_step_summary() -> None:
    payload = {"role": "scanner", "prompt": {}, "event": {"type": "scan_complete", "n": 3}}
    step = {"type": "step_complete", "payload": payload}
    summary = workflows.summarise(step)
    assert summary == 'scanner -> scan_complete {"type":"scan_complete","n":3}'
    assert workflows.summarise({"type": "started", "payload": {"x": 1}}) == '{"x":1}'
    assert workflows.summarise({"type": "completed", "payload": None}) == "-"
    long = {**step, "payload": {**payload, "event": {"type": "t" * 500}}}
    assert len(workflows.summarise(long)) == 100
    broken = {"type": "step_complete", "payload": None, "unreadable": "not readable as JSON: x"}
    assert workflows.summarise(broken) == "[unreadable: not readable as JSON: x]"


ESCAPES = """
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        ctx.log("log \\x1b]0;owned\\x07 line")
        raise RuntimeError("\\x1b[2J\\x1b[31mred \\x9b31m alert")

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def test_text_from_user_code_never_reaches_the_terminal_as_control_sequences(
    nerved_factory: Callable[..., Nerved],
) -> None:
    """A run's error and a run's log are user code's text: printed for people, an escape in
    them would be obeyed by the operator's terminal. nervectl shows them as \\x1b."""
    daemon = nerved_factory(
        "workflows:\n  w: {}\n", workflows={"w": ESCAPES}, args=("--no-watch",)
    ).start()
    done = daemon.ctl("workflow", "trigger", "w", "--wait")
    assert done.returncode == 1
    run_id = daemon.rpc("workflow.list", all=True)[0]["runId"]
    outputs = [
        done,
        daemon.ctl("workflow", "list", "--all"),
        daemon.ctl("workflow", "inspect", run_id),
        daemon.ctl("logs", "--run", run_id),
    ]
    for out in outputs:
        text = out.stdout + out.stderr
        assert not any(c in text for c in "\x1b\x07\x9b"), repr(text)
    assert "\\x1b[31mred \\x9b31m alert" in outputs[2].stdout
    assert "\\x1b]0;owned\\x07" in outputs[2].stdout + outputs[3].stdout
    # --json is for programs: the value as it is (JSON escapes what it must).
    assert "\x1b[31mred" in daemon.ctl_json("workflow", "inspect", run_id)["error"]
