"""nervectl through a real nerved: output, --json, exit codes, following the logs.

Plain function tests at the end cover what needs no daemon: --since parsing, rendering.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Nerved, wait_until, write_package

from nervectl import render, times, workflows

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
    assert f"pid:               {daemon.pid}" in out
    for label in ("version:", "uptime:", "senses:", "groups:", "active workflows:", "rss:"):
        assert label in out
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
    assert daemon.ctl_json("sense", "trigger", "manual") == {"accepted": True}


def test_sense_trigger_unknown_is_not_found(daemon: Nerved) -> None:
    error = assert_one_line_error(daemon.ctl("sense", "trigger", "nosuch"), 4)
    assert "nosuch" in error


# -- logs ---------------------------------------------------------------------------------------


def test_logs_filters(daemon: Nerved) -> None:
    daemon.ctl("sense", "trigger", "manual")
    wait_until(lambda: len(signals(daemon, "tick")) >= 3, what="three ticks")
    wait_until(lambda: signals(daemon, "manual"), what="manual's signal")

    entries = daemon.ctl_json("logs", "--source", "sense", "--type", "signal", "--run", "tick")
    assert len(entries) >= 3
    assert all((e["source"], e["type"], e["refId"]) == ("sense", "signal", "tick") for e in entries)
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert "n" in entries[0]["payload"]

    last = daemon.ctl_json("logs", "--run", "tick", "--limit", "1")
    assert len(last) == 1 and last[0]["id"] >= entries[-1]["id"]

    logged = daemon.ctl_json("logs", "--type", "log", "--run", "manual")
    assert [e["payload"] for e in logged] == ["manual computed"]

    human = daemon.ctl("logs", "--run", "manual")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == 2
    assert "manual computed" in lines[0] and "log" in lines[0]
    assert '{"hello":"world"}' in lines[1] and "signal" in lines[1]


def test_logs_since(daemon: Nerved) -> None:
    wait_until(lambda: signals(daemon, "tick"), what="a tick")
    assert daemon.ctl_json("logs", "--since", "1h", "--run", "tick")
    future = str(times.now_ms() + 3_600_000)
    assert daemon.ctl_json("logs", "--since", future) == []
    assert daemon.ctl_json("logs", "--since", "2000-01-01", "--run", "tick")
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
    proc = spawn(daemon, "--json", "logs", "--follow", "--type", "signal", "--run", "manual")
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
    proc = spawn(daemon, "logs", "-f", "--run", "tick", "--limit", "1")
    lines = Lines(proc)
    seen = [lines.next(), lines.next(), lines.next()]
    assert all(line and "tick" in line and '{"n":' in line for line in seen), seen
    numbers = [json.loads(line.split("  ")[-1])["n"] for line in seen if line]
    assert numbers == sorted(set(numbers))


def test_logs_follow_ends_with_0_on_interrupt(
    daemon: Nerved, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn(daemon, "logs", "--follow", "--run", "tick")
    lines = Lines(proc)
    assert lines.next()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_logs_follow_ends_with_3_when_the_daemon_goes(
    daemon: Nerved, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn(daemon, "logs", "--follow", "--run", "tick")
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
    assert set(accepted) == {"runId", "status"}
    assert accepted["status"] in ("queued", "started")
    run = daemon.rpc("workflow.wait", runId=accepted["runId"], timeout=30)
    assert run["status"] == "completed"


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


def test_workflow_wait_timeout_exits_1(daemon: Nerved) -> None:
    error = assert_one_line_error(
        daemon.ctl("workflow", "trigger", "slow", "--wait", "--timeout", "0.5"), 1
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
    several = daemon.ctl_json("workflow", "list", "--status", "failed", "--status", "completed")
    assert [r["runId"] for r in several] == [run_id]
    table = daemon.ctl("workflow", "list", "--all", "--limit", "5").stdout
    assert run_id in table and "completed" in table

    inspected = daemon.ctl_json("workflow", "inspect", run_id[:8])
    assert inspected["runId"] == run_id
    assert [e["type"] for e in inspected["events"]][-1] == "completed"
    human = daemon.ctl("workflow", "inspect", run_id).stdout
    assert "status:" in human and "completed" in human
    step = next(line for line in human.splitlines() if "step_complete" in line)
    assert 'greeter -> greeted {"type":"greeted","text":"hello x"}' in step


def test_workflow_not_found_exits_4(daemon: Nerved) -> None:
    assert_one_line_error(daemon.ctl("workflow", "inspect", "0123456789abcdef"), 4)
    assert_one_line_error(daemon.ctl("workflow", "trigger", "nosuch"), 4)


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
        ("init",),
    ):
        done = nervectl(*args, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout, args


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
        ("500ms", NOW - 500),
        ("1699999999000", 1_699_999_999_000),
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


@pytest.mark.parametrize("text", ["", "yesterday", "10", "5x", "-5m", "2024-13-01", "1h 3"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        times.parse_since(text, now=NOW)


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
    summary = workflows.summarise("step_complete", payload)
    assert summary == 'scanner -> scan_complete {"type":"scan_complete","n":3}'
    assert workflows.summarise("started", {"x": 1}) == '{"x":1}'
    assert workflows.summarise("completed", None) == "-"
    assert (
        len(workflows.summarise("step_complete", {**payload, "event": {"type": "t" * 500}})) == 100
    )
