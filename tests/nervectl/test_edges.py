"""The CLI's edges (issue 13): names that do not exist, run id prefixes, times never guessed,
lists that say what they leave out, waits that say what happened. Through a real nerved
wherever the daemon answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import QUICK, REPO, Nerved, wait_until

from nervectl import times

CONFIG = """
    senses:
      manual: {}
    workflows:
      quick: {concurrency: 10}
      fails: {}
"""
FAILS = """
    from nerved import WorkflowDefinition

    def boom(prompt, ctx):
        raise RuntimeError("a long reason " * 20)

    def moderate(thread, event):
        return {"role": "boom", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"boom": boom}, moderate=moderate)
"""
MANUAL = """
    def compute(ctx):
        ctx.log("computed")
        return {"ok": True}
"""


@pytest.fixture
def daemon(nerved_factory: Callable[..., Nerved]) -> Nerved:
    return nerved_factory(CONFIG, {"manual": MANUAL}, {"quick": QUICK, "fails": FAILS}).start()


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("nervectl: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""  # never an empty success
    return done.stderr


# -- names that do not exist: exit 4 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("logs", "--source", "bogus"), "no log source 'bogus' (sources: sense, workflow)"),
        (("logs", "--sense", "bogus"), "no sense named 'bogus'"),
        (("logs", "--run", "0123456789abcdef"), "no run '0123456789abcdef'"),
        (("logs", "--run", "tick"), "a sense's entries: --sense NAME"),
        (("workflow", "list", "--workflow", "nosuch"), "no workflow named 'nosuch'"),
        (("workflow", "list", "--all", "--workflow", "nosuch"), "no workflow named 'nosuch'"),
        (("sense", "trigger", "nosuch"), "no sense named 'nosuch'"),
        (("workflow", "trigger", "nosuch"), "nosuch"),
        (("workflow", "inspect", "0123456789abcdef"), "no run"),
        (("workflow", "replay", "--workflow", "nosuch"), "nosuch"),
    ],
)
def test_a_name_that_does_not_exist_exits_4(
    daemon: Nerved, args: tuple[str, ...], said: str
) -> None:
    for json_flag in ((), ("--json",)):
        assert said in one_line_error(daemon.ctl(*json_flag, *args), 4)


def test_names_that_exist_but_have_nothing_are_an_empty_success(daemon: Nerved) -> None:
    """A configured workflow with no runs, a sense that has not computed: nothing to show."""
    assert daemon.ctl_json("workflow", "list", "--workflow", "quick") == []
    assert daemon.ctl_json("logs", "--sense", "manual") == []
    assert daemon.ctl_json("logs", "--source", "workflow") == []


def test_a_workflow_removed_by_a_reload_is_known_while_its_runs_are_kept(
    daemon: Nerved,
) -> None:
    run_id = daemon.trigger("quick")
    daemon.wait_run(run_id)
    (daemon.root / "nerve.yaml").write_text("senses:\n  manual: {}\n")
    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    listed = daemon.ctl_json("workflow", "list", "--all", "--workflow", "quick")
    assert [run["runId"] for run in listed] == [run_id]
    assert daemon.ctl_json("workflow", "list", "--workflow", "quick") == []  # none active


def test_logs_run_takes_a_prefix_of_8(daemon: Nerved) -> None:
    run_id = daemon.trigger("quick")
    daemon.wait_run(run_id)
    whole = daemon.ctl_json("logs", "--run", run_id)
    assert [e["type"] for e in whole] == ["started", "step_complete", "completed"]
    assert daemon.ctl_json("logs", "--run", run_id[:8]) == whole
    assert all(e["refId"] == run_id for e in whole)
    too_short = one_line_error(daemon.ctl("logs", "--run", run_id[:7]), 4)
    assert "8+ characters" in too_short
    sense = daemon.ctl("logs", "--run", run_id[:8], "--sense", "manual")
    assert sense.returncode == 2  # one or the other


def test_logs_sense_of_a_sense_that_computed(daemon: Nerved) -> None:
    daemon.rpc("sense.trigger", sense="manual")
    wait_until(lambda: len(daemon.ctl_json("logs", "--sense", "manual")) == 2, what="2 entries")
    entries = daemon.ctl_json("logs", "--sense", "manual", "--source", "sense")
    assert {e["type"] for e in entries} == {"log", "signal"}
    clash = one_line_error(daemon.ctl("logs", "--sense", "manual", "--source", "workflow"), 1)
    assert "names entries of source 'sense' only" in clash


# -- --since: never a guess ---------------------------------------------------------------------


def test_since_takes_epoch_seconds_with_an_at_sign(daemon: Nerved) -> None:
    run_id = daemon.trigger("quick")
    daemon.wait_run(run_id)
    now = times.now_ms() // 1000
    assert daemon.ctl_json("logs", "--run", run_id, "--since", f"@{now - 3600}")
    assert daemon.ctl_json("logs", "--run", run_id, "--since", f"@{now + 3600}") == []
    # 1700000000 is November 2023 in seconds and January 1970 in milliseconds: refused.
    error = one_line_error(daemon.ctl("logs", "--since", str(now)), 2)
    assert f"write @{now} for seconds since the epoch" in error


# -- workflow list: short ids, age, what is left out, the terminal's width ----------------------


def test_workflow_list_says_how_many_more_there_are(daemon: Nerved) -> None:
    run_ids = [daemon.trigger("quick") for _ in range(5)]
    for run_id in run_ids:
        daemon.wait_run(run_id)
    done = daemon.ctl("workflow", "list", "--all", "--limit", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "STEPS", "AGE", "DURATION",
                                "IN", "FLIGHT", "ERROR"]  # fmt: skip
    shown = [line.split()[0] for line in lines[2:5]]
    assert shown == [run_id[:8] for run_id in reversed(run_ids[2:])]  # newest first
    assert lines[5] == "2 more (use --limit)"
    assert "more" not in daemon.ctl("workflow", "list", "--all", "--limit", "5").stdout
    assert len(daemon.ctl_json("workflow", "list", "--all", "--limit", "3")) == 3
    assert daemon.rpc("workflow.count", all=True) == {"count": 5}
    assert daemon.rpc("workflow.count") == {"count": 0}  # active ones, as workflow.list
    assert daemon.rpc("workflow.count", status="completed", workflow="quick") == {"count": 5}


def test_workflow_list_fits_the_terminal(daemon: Nerved) -> None:
    """The error is cut to fit $COLUMNS (or the terminal); piped, rows are whole."""
    run_id = daemon.trigger("fails")
    assert daemon.wait_run(run_id)["status"] == "failed"

    def listed(*args: str, columns: str | None) -> str:
        """stdout a terminal (a pty) $COLUMNS wide, or a pipe when ``columns`` is None."""
        import pty

        command = [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket),
                   "workflow", "list", "--all", *args]  # fmt: skip
        if columns is None:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
            assert done.returncode == 0, done.stderr
            return done.stdout
        main, tty = pty.openpty()
        try:
            env = {**os.environ, "COLUMNS": columns}
            proc = subprocess.run(command, stdout=tty, timeout=60, cwd=REPO, env=env)
            assert proc.returncode == 0
            os.close(tty)
            tty = -1
            chunks = []
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the terminal's other end is closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode().replace("\r\n", "\n")
        finally:
            os.close(main)
            if tty >= 0:
                os.close(tty)

    narrow = listed(columns="100")
    assert max(len(line) for line in narrow.splitlines()) <= 100, narrow
    assert "role 'boom' raised Runti..." in narrow
    whole = listed(columns=None)
    assert ("a long reason " * 3) in whole and max(len(line) for line in whole.splitlines()) > 100
    full = listed("--full", columns="100")
    assert run_id in full  # ids are never cut


# -- --wait while nerved stops, and when the time runs out --------------------------------------

TWO_STEPS = """
    import os, time
    from nerved import WorkflowDefinition

    def first(prompt, ctx):
        open(prompt["gate"] + ".running", "w").close()
        while not os.path.exists(prompt["gate"]):
            time.sleep(0.01)
        return {"type": "first"}

    def second(prompt, ctx):
        return {"type": "second"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "first", "prompt": event["payload"]}
        if event["type"] == "first" and thread.events[0]["payload"].get("steps") == 2:
            return {"role": "second", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"first": first, "second": second}, moderate=moderate)
"""


@pytest.mark.parametrize(("steps", "code", "said"), [
    (1, 0, "status:    completed"),
    (2, 1, "it stays started and resumes at the next start"),
])  # fmt: skip
def test_wait_while_nerved_stops_says_what_happens(
    nerved_factory: Callable[..., Nerved], tmp_path: Path, steps: int, code: int, said: str
) -> None:
    """A run whose step finishes during the drain and that its moderator then ends completes:
    --wait shows it (it said "will resume"). One with a step still to run stays started."""
    import signal

    daemon = nerved_factory("workflows:\n  two: {}\n", workflows={"two": TWO_STEPS}).start()
    gate = tmp_path / "gate"
    payload = json.dumps({"gate": str(gate), "steps": steps})
    waiting = subprocess.Popen(
        [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket), "workflow",
         "trigger", "two", "--payload", payload, "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        wait_until(lambda: Path(f"{gate}.running").exists(), what="the first step")
        daemon.signal(signal.SIGTERM)
        daemon.wait_notify("STOPPING=1")
        gate.touch()
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == code, (out, err)
    assert said in (out if code == 0 else err), (out, err)
    assert daemon.wait() == 0


def test_json_wait_that_times_out_prints_the_run_as_it_is(
    nerved_factory: Callable[..., Nerved], tmp_path: Path
) -> None:
    daemon = nerved_factory("workflows:\n  two: {}\n", workflows={"two": TWO_STEPS}).start()
    gate = tmp_path / "gate"
    done = daemon.ctl(
        "--json", "workflow", "trigger", "two", "--payload", json.dumps({"gate": str(gate)}),
        "--wait", "--timeout", "0.5",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    assert run["timedOut"] is True and run["status"] == "started" and "events" not in run
    assert "did not finish in time" in done.stderr
    gate.touch()
    assert daemon.wait_run(run["runId"])["status"] == "completed"
