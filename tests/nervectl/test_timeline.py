"""``workflow inspect``'s timeline: a bar per step scaled to its duration, failed tries and
waits marked; through a real nerved, and from histories written by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO, Nerved, wait_until

from nervectl import timeline

CONFIG = """
    workflows:
      steps:
        roles:
          flaky: {retry: {attempts: 3, delay: 100ms, factor: 1}}
"""
STEPS = """
    import os, time
    from nerved import WorkflowDefinition, wait_for

    def flaky(prompt, ctx):
        tries = prompt["dir"] + "/tries"
        with open(tries, "a") as file:
            file.write("x")
        if os.path.getsize(tries) < 3:
            raise RuntimeError("not yet")
        return {"type": "flaked"}

    def slow(prompt, ctx):
        time.sleep(1.0)
        return {"type": "slowed"}

    def quick(prompt, ctx):
        return {"type": "quickened"}

    def moderate(thread, event):
        dir = thread.events[0]["payload"]["dir"]
        kind = event["type"]
        if kind == "thread_start":
            return {"role": "flaky", "prompt": {"dir": dir}}
        if kind == "flaked":
            return wait_for("go", timeout="1h")
        if kind == "signal":
            return {"role": "slow", "prompt": {}}
        if kind == "slowed":
            return {"role": "quick", "prompt": {}}
        return None

    workflow = WorkflowDefinition(
        roles={"flaky": flaky, "slow": slow, "quick": quick}, moderate=moderate
    )
"""


def _inspect(daemon: Nerved, run_id: str, encoding: str) -> str:
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    done = subprocess.run(
        [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket),
         "workflow", "inspect", run_id],
        capture_output=True, env=env, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.decode(encoding)


def _timeline(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("TIMELINE") + 1
    return lines[start : lines.index("", start)]


def test_a_retried_step_and_a_wait_on_the_timeline(
    nerved_factory: Callable[..., Nerved], tmp_path: Path
) -> None:
    daemon = nerved_factory(CONFIG, workflows={"steps": STEPS}).start()
    run_id = daemon.trigger("steps", {"dir": str(tmp_path)})
    wait_until(lambda: daemon.rpc("workflow.inspect", runId=run_id)["status"] == "waiting")
    daemon.rpc("workflow.signal", runId=run_id, name="go")
    assert daemon.wait_run(run_id)["status"] == "completed"

    lines = _timeline(_inspect(daemon, run_id, "utf-8"))
    assert len(lines) == 4, lines  # three steps and the wait between the first two
    flaky, wait, slow, quick = lines
    assert flaky.split()[:2] == ["1", "flaky"] and flaky.endswith(" ✗✗")  # two failed tries
    assert wait.strip().startswith("⏸ waited ") and wait.endswith(" for 'go'")
    assert slow.split()[:2] == ["2", "slow"] and quick.split()[:2] == ["3", "quick"]
    bars = {line.split()[1]: line.count("█") for line in (flaky, slow, quick)}
    assert bars["slow"] == timeline.BAR_WIDTH  # the longest step fills the width
    assert 1 <= bars["quick"] < bars["flaky"] < bars["slow"]  # two backoffs of 100ms at least
    assert "failed" not in slow and "✗" not in slow + quick

    ascii_lines = _timeline(_inspect(daemon, run_id, "ascii"))
    assert ascii_lines[2].count("#") == timeline.BAR_WIDTH and ascii_lines[0].endswith(" xx")
    assert ascii_lines[1].strip().startswith("|| waited ")


def test_json_inspect_has_no_timeline(
    nerved_factory: Callable[..., Nerved], tmp_path: Path
) -> None:
    daemon = nerved_factory(CONFIG, workflows={"steps": STEPS}).start()
    run_id = daemon.trigger("steps", {"dir": str(tmp_path)})
    assert "TIMELINE" not in daemon.ctl("--json", "workflow", "inspect", run_id).stdout


def _entry(kind: str, ts: int, **payload: object) -> dict[str, object]:
    return {"type": kind, "ts": ts, "payload": payload}


def test_a_step_in_flight_is_open_ended() -> None:
    run = {
        "status": "started",
        "progress": {"step": 2, "role": "writer", "since": 3_000},
        "events": [
            _entry("started", 1_000),
            _entry("step_complete", 3_000, role="reader"),
            _entry("step_failed", 4_000, role="writer", retryAt=4_500),
        ],
    }
    reader, writer = timeline.lines(run, now=7_000)
    assert reader.split()[:3] == ["1", "reader", "2s"]
    assert writer.split()[:3] == ["2", "writer", "4s+"]
    assert writer.count("█") == timeline.BAR_WIDTH and "▶ ✗ in flight" in writer
    assert reader.count("█") == timeline.BAR_WIDTH // 2


def test_a_step_whose_last_try_failed_and_a_wait_that_timed_out() -> None:
    run = {
        "status": "failed",
        "events": [
            _entry("started", 0),
            _entry("step_complete", 100, role="ask"),
            _entry("waiting", 100, wait="approve", timeout=60_000, until=60_100),
            _entry("input", 60_100, event={"type": "wait_timeout", "name": "approve"}),
            *(_entry("step_failed", 60_200 + i, role="escalate", retryAt=None) for i in (0, 1)),
        ],
    }
    ask, wait, escalate = timeline.lines(run, now=90_000, unicode=False)
    assert "|| waited 1m for 'approve' (timed out)" in wait
    assert escalate.split()[:3] == ["2", "escalate", "101ms"] and escalate.endswith(" xx failed")
    assert ask.count("#") == 40 and escalate.count("#") == 40  # 100ms and 101ms


def test_a_run_that_still_waits_and_many_failures() -> None:
    run = {
        "status": "waiting",
        "events": [
            _entry("started", 0),
            *(_entry("step_failed", i, role="r") for i in range(1, 8)),
            _entry("step_complete", 1_000, role="r"),
            _entry("waiting", 1_000, wait=None, sleep=5_000, until=6_000),
        ],
    }
    step, wait = timeline.lines(run, now=4_000)
    assert step.endswith("✗ 7 failed tries")
    assert wait.strip() == "⏸ sleeping, 3s so far"
    assert timeline.unicode_ok("utf-8") and not timeline.unicode_ok("ascii")
    assert not timeline.unicode_ok(None)


def test_the_newest_page_numbers_its_steps_as_the_run_does() -> None:
    """A page of the history (``earlier`` entries before it): its steps are numbered from the
    run's ``steps``; what befell the step before the page (a failed try, a wait begun on the
    page) is not laid on the next one."""
    run = {
        "status": "completed",
        "steps": 40,
        "earlier": 75,
        "more": False,
        "events": [
            _entry("step_failed", 900, role="a", retryAt=950),
            _entry("step_complete", 1_000, role="a"),  # step 38: where it began is not shown
            _entry("step_complete", 1_500, role="b"),
            _entry("waiting", 1_500, wait="go", timeout=None, until=None),
            _entry("input", 4_500, event={"type": "signal", "name": "go"}),
            _entry("step_complete", 5_000, role="c"),
            _entry("completed", 5_000),
        ],
    }
    b, wait, c = timeline.lines(run, now=9_000, unicode=False)
    assert b.split()[:3] == ["39", "b", "500ms"] and "x" not in b
    assert "|| waited 3s for 'go'" in wait
    assert c.split()[:3] == ["40", "c", "500ms"]
    waiting_at_start = {**run, "events": run["events"][4:]}  # the wait began before the page
    (c,) = timeline.lines(waiting_at_start, now=9_000)
    assert c.split()[:2] == ["40", "c"]
    wait, c = timeline.lines({**run, "events": run["events"][3:]}, now=9_000)  # begun on it
    assert "waited 3s for 'go'" in wait and c.split()[:2] == ["40", "c"]
    assert timeline.lines({**run, "more": True}, now=9_000) == []  # a page in the middle


@pytest.mark.parametrize(("locale", "blocks"), [("C", False), ("POSIX", False), ("C.UTF-8", True)])
def test_the_bars_follow_the_locale_not_pythons_utf8_mode(locale: str, blocks: bool) -> None:
    """LC_ALL=C turns on Python's UTF-8 mode (stdout is UTF-8), yet asks for ASCII."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from nervectl import timeline;"
         " print(sys.stdout.encoding, timeline.blocks_ok(sys.stdout))"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "LC_ALL": locale},
    )  # fmt: skip
    assert done.stdout.split() == ["utf-8", str(blocks)], done.stderr
