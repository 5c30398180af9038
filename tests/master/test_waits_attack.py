"""Attacks on runs that wait (issue 12): malformed waits, signals a careless or hostile
client sends, kills at awkward moments. Each test is a defect found (or a guard that held)
and synchronises on what nerved answers."""

from __future__ import annotations

import signal as signals
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Nerved, wait_until, waiting

SCRIPTED = """
    import math, os, time
    from datetime import timedelta
    from nerved import WorkflowDefinition, wait_for, sleep

    def work(prompt, ctx):
        gate = (prompt or {}).get("gate") if isinstance(prompt, dict) else None
        if gate:
            open(gate + ".running", "w").close()
            while not os.path.exists(gate):
                time.sleep(0.01)
        if isinstance(prompt, dict) and "size" in prompt:
            return {"type": "worked", "pad": "x" * prompt["size"]}
        return {"type": "worked", "prompt": prompt}

    def moderate(thread, event):
        options = thread.events[0]["payload"] or {}
        i = len(thread.events) - 1
        script = options.get("script", [])
        if i < len(script):
            return eval(script[i])
        if "loop" in options:
            return eval(options["loop"])
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""

CONFIG = """\
workflows:
  w: {concurrency: 50, idleTimeout: 1s}
  one: {concurrency: 1, idleTimeout: 1s}
  short: {maxSteps: 5}
"""


@pytest.fixture
def daemon(nerved_factory) -> Nerved:
    return nerved_factory(CONFIG, None, {"w": SCRIPTED, "one": SCRIPTED, "short": SCRIPTED}).start()


def run(daemon: Nerved, workflow: str, *script: str, **options: Any) -> str:
    return daemon.trigger(workflow, {"script": list(script), **options})


def signal(daemon: Nerved, run_id: str, name: str = "go", payload: Any = None) -> Any:
    return daemon.rpc("workflow.signal", runId=run_id, name=name, payload=payload)


MIB = 1024 * 1024


def test_a_signal_that_would_overflow_the_history_fails_the_run_not_strands_it(
    daemon: Nerved,
) -> None:
    """A waiting run whose wake would take its history past 64 MiB must end ``failed``, as
    Waits._wake says. It calls end(run, Transition.FAIL, ...), but FAIL is allowed from
    ``started`` only: the transition is refused ("could not move to failed (it moved on
    already)"), yet the master has already dropped the run from its active set. The row
    stays ``waiting`` for ever, its slot is freed in memory but not in logs.db, and signals
    sent after it pile up as pending."""
    # 67 steps of 1,000,000 bytes: just under the 64 MiB a history may hold.
    grow = "{'role': 'work', 'prompt': {'size': 1_000_000}} if i < 67 else wait_for('go')"
    run_id = daemon.trigger("w", {"loop": grow})
    waiting(daemon, run_id, timeout=120)
    # A signal of 200 KB: its input entry would take the history past 64 MiB.
    assert signal(daemon, run_id, "go", "y" * 200_000)["accepted"] is True
    final = daemon.wait_run(run_id, timeout=10)  # still "waiting": workflow.wait times out
    assert final["status"] == "failed", final
    assert "history" in final["error"]
    daemon.healthy()


def test_a_deadline_passing_while_nerved_drains_to_stop_waits_for_the_next_start(
    nerved_factory, tmp_path: Path
) -> None:
    """A waiting run holds no thread, so a stop cannot interrupt it: the README says it
    waits on across a restart and a deadline that passed while nerved was down fires at
    start; recovery says a waiting run waits again "whatever its workflow's overflow".

    Here nerved is stopped (SIGTERM) while another run's role holds it draining, and the
    sleeping run's deadline passes during that drain. Waits._due still fires: it logs the
    ``wake`` input and moves the run to ``started``, though no worker will take it now.
    The next start finds a *started* run, which in an ``overflow: drop`` workflow is ended
    ``crashed`` ("nerved stopped while it ran") and started afresh from its payload, so
    the wait (and whatever preceded it) is done again. Expected: no wake while stopping
    (or a run woken then still resumed): the sleeper completes, nothing crashes."""
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 5, overflow: drop, drainTimeout: 10s}\n",
        None, {"w": SCRIPTED},
    ).start()  # fmt: skip
    gate = str(tmp_path / "gate")
    busy = daemon.trigger("w", {"script": [f"{{'role': 'work', 'prompt': {{'gate': {gate!r}}}}}"]})
    sleeper = run(daemon, "w", "sleep('1500ms')", "{'role': 'work', 'prompt': 1}")
    wake_at = waiting(daemon, sleeper)["wakeAt"]
    wait_until(lambda: Path(gate + ".running").exists(), what="the busy role")
    daemon.signal(signals.SIGTERM)  # it drains: the busy role holds it
    while time.time() * 1000 < wake_at + 500:  # the deadline passes during the drain
        time.sleep(0.1)
    Path(gate).touch()
    assert daemon.wait() == 0
    daemon.start()
    assert daemon.wait_run(busy)["status"] == "completed"
    final = daemon.wait_run(sleeper)
    assert (final["status"], final["error"]) == ("completed", None), final
    assert "crashed" not in [e["type"] for e in daemon.entries(sleeper)]
    afresh = [r for r in daemon.rpc("workflow.list", workflow="w", all=True) if r["retryOf"]]
    assert afresh == []
    daemon.healthy()


@pytest.mark.parametrize("name", ["x" * 257, "a\tb", "a\x1bb"])
def test_nervectl_refuses_a_signal_name_no_wait_can_have_before_it_connects(
    tmp_path: Path, name: str
) -> None:
    """README (Bad input): "nervectl refuses what the daemon would before it connects (exit
    2, one line naming the option)", as ``trigger --key`` does for a key past 256
    characters. ``workflow signal`` checks only that NAME is non-empty UTF-8: a name of 257
    characters or with a control character goes to the daemon, which answers -32602, and
    nervectl exits 1 (or 3 when no daemon is there, as here) instead of 2."""
    done = subprocess.run(
        [sys.executable, "-m", "nervectl", "--socket", str(tmp_path / "none.sock"),
         "workflow", "signal", "0123456789abcdef", name],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "NAME" in done.stderr or "name" in done.stderr


@pytest.mark.parametrize("call", ["sleep(1e308)", "wait_for('x', timeout=1e306)"])
def test_a_duration_too_large_to_count_in_milliseconds_is_a_value_error(call: str) -> None:
    """wait_for() and sleep() "raise ValueError for ... a timeout that is negative, over 100
    years"; nerved.waits.milliseconds checks ``math.isfinite(value)`` but then computes
    ``round(value * 1000)``: a finite number of seconds whose milliseconds overflow a float
    (1e306 and up) raises OverflowError ("cannot convert float infinity to integer")
    instead. A moderator that catches ValueError to fall back to a default is bypassed, and
    the run's error reads "moderator raised OverflowError" rather than the rule."""
    import nerved

    with pytest.raises(ValueError, match="100 years"):
        eval(call, {"sleep": nerved.sleep, "wait_for": nerved.wait_for})


def test_a_run_that_parks_after_its_workflow_was_removed_is_dropped(
    nerved_factory, tmp_path: Path
) -> None:
    """README: "a workflow removed by a reload drops its waiting runs (dropped)".
    WorkflowManager._remove drops the runs that wait *at the reload*; a run whose step was in
    flight goes on in its draining worker, and when its moderator then waits, Waits.parked
    parks it in the removed flow: ``waiting``, signals accepted (and "delivered"), its
    deadline armed. When the wait ends, _assign asks the retired supervisor for a worker,
    gets none, and the run stays ``started`` with no worker for as long as nerved runs (at
    the next start it is ended ``crashed``). Expected: it is dropped when it parks (or when
    its worker lets go of it), like the runs that waited at the reload."""
    daemon = nerved_factory(
        "workflows:\n  w: {drainTimeout: 30s}\n  keep: {}\n", None,
        {"w": SCRIPTED, "keep": SCRIPTED},
    ).start()  # fmt: skip
    gate = str(tmp_path / "gate")
    run_id = run(
        daemon, "w", f"{{'role': 'work', 'prompt': {{'gate': {gate!r}}}}}",
        "wait_for('go', timeout='1s')", "{'role': 'work', 'prompt': 2}",
    )  # fmt: skip
    wait_until(lambda: Path(gate + ".running").exists(), what="the step in flight")
    (daemon.root / "nerve.yaml").write_text("workflows:\n  keep: {}\n")
    assert daemon.rpc("reload")["changed"] == ["workflow w removed"]
    Path(gate).touch()  # the step completes in the draining worker; the moderator waits
    final = daemon.wait_run(run_id, timeout=10)  # today: waiting, then started for ever
    assert final["status"] == "dropped", final
    daemon.healthy()
