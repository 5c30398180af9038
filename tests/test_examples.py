"""The bundled example root works as the README says, through a real nerved."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from support import REPO, Nerved, wait_until


def run_examples(tmp_path) -> Nerved:
    root = tmp_path / "examples"
    shutil.copytree(REPO / "examples", root)
    daemon = Nerved(root, tmp_path / "n")
    return daemon.start()


def test_example_root_runs_senses_and_both_workflows(tmp_path):
    daemon = run_examples(tmp_path)
    try:
        wait_until(
            lambda: daemon.rpc("logs.query", source="sense", type="signal", refId="disk-usage")
        )
        review = daemon.ctl_json("workflow", "trigger", "code-review", "--payload",
                                 '{"title": "big change", "lines": 120}', "--wait")  # fmt: skip
        assert review["status"] == "completed", review
        events = daemon.rpc("workflow.inspect", runId=review["runId"])["events"]
        roles = [e["payload"]["role"] for e in events if e["type"] == "step_complete"]
        assert roles == ["reviewer", "author", "reviewer", "author", "reviewer", "merger"]

        stuck = daemon.ctl_json("workflow", "trigger", "code-review", "--payload",
                                '{"lines": 100000}', "--wait")  # fmt: skip
        stuck_events = daemon.rpc("workflow.inspect", runId=stuck["runId"])["events"]
        assert stuck["status"] == "completed"
        assert not any(
            e["payload"]["role"] == "merger" for e in stuck_events if e["type"] == "step_complete"
        )

        scan_root = tmp_path / "scan"
        scan_root.mkdir()
        cleanup = daemon.ctl_json("workflow", "trigger", "cleanup", "--payload",
                                  json.dumps({"path": str(scan_root)}), "--wait")  # fmt: skip
        assert cleanup["status"] == "completed" and cleanup["steps"] == 1
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()


def _stale(path: Path) -> Path:
    path.write_text("old")
    os.utime(path, (time.time() - 40 * 86400,) * 2)  # past the example's 30 days
    return path


def test_example_cleanup_scans_the_path_its_docstring_and_the_disk_alert_name(tmp_path):
    """``path``, as the docstring, the guide and disk-alert's signal say (the scan once read
    ``scanRoot``, so that an alert scanned /tmp whatever it named); a string is the path."""
    daemon = run_examples(tmp_path)
    try:
        scanned = tmp_path / "scanned"
        scanned.mkdir()
        _stale(scanned / "old.log")
        elsewhere = tmp_path / "elsewhere"  # named by the key the scan read before
        elsewhere.mkdir()
        _stale(elsewhere / "a")
        _stale(elsewhere / "b")
        for payload in ({"path": str(scanned), "used": 0.95}, str(scanned)):
            run = daemon.trigger("cleanup", payload)
            assert daemon.wait_run(run)["status"] == "completed"
            assert _roles(daemon, run) == ["scanner", "cleaner"]
            done = daemon.entries(run, "step_complete")[-1]["payload"]["event"]
            assert done == {"type": "cleanup_done", "count": 1, "dryRun": True}

        refused = daemon.trigger("cleanup", [str(scanned)])
        run = daemon.wait_run(refused)
        assert run["status"] == "failed" and run["steps"] == 0
        assert 'cleanup takes a payload {"path": DIR} (or DIR as a string), not [' in run["error"]
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()


def test_example_code_review_says_what_it_takes_for_a_payload_that_is_no_change(tmp_path):
    """A string is the change's title, null an untitled change; a list, a number or lines
    that are not a count fail the run before any step, naming what it takes (not
    ``AttributeError: 'str' object has no attribute 'get'``)."""
    daemon = run_examples(tmp_path)
    try:
        titled = daemon.trigger("code-review", "fix typo")
        assert daemon.wait_run(titled)["status"] == "completed"
        merged = daemon.entries(titled, "step_complete")[-1]["payload"]["event"]
        assert merged == {"type": "merged", "title": "fix typo"}
        untitled = daemon.trigger("code-review", None)
        assert daemon.wait_run(untitled)["status"] == "completed"
        assert _roles(daemon, untitled) == ["reviewer", "merger"]

        for payload, said in (
            (["fix"], 'not ["fix"]'),
            (7, "not 7"),
            ({"lines": "many"}, 'lines must be a whole number of at least 1, not "many"'),
            ({"title": 3}, "its title is 3"),
        ):
            run = daemon.wait_run(daemon.trigger("code-review", payload))
            assert run["status"] == "failed" and run["steps"] == 0, run
            assert "moderator raised ValueError: code-review takes a payload" in run["error"]
            assert said in run["error"], run["error"]
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()


def _roles(daemon: Nerved, run_id: str) -> list[str]:
    return [e["payload"]["role"] for e in daemon.entries(run_id, "step_complete")]


def _status(daemon: Nerved, run_id: str) -> str:
    return str(daemon.rpc("workflow.inspect", runId=run_id)["status"])


def test_example_approval_waits_for_a_signal_or_escalates(tmp_path):
    daemon = run_examples(tmp_path)
    try:
        # Approved: the run parks after proposing, the signal sends it on to apply.
        run = daemon.ctl_json("workflow", "trigger", "approval", "--payload",
                              '{"change": "resize /var"}')["runId"]  # fmt: skip
        wait_until(lambda: _status(daemon, run) == "waiting", what="the run to wait")
        assert daemon.rpc("workflow.inspect", runId=run)["waitFor"] == "approve"
        signal = daemon.ctl("workflow", "signal", run, "approve", "--payload", '{"by": "ann"}')
        assert signal.returncode == 0, signal.stderr
        done = daemon.wait_run(run)
        assert done["status"] == "completed", done
        assert _roles(daemon, run) == ["propose", "apply"]
        applied = daemon.entries(run, "step_complete")[-1]["payload"]["event"]
        assert applied == {"type": "applied", "change": "resize /var", "by": "ann"}

        # Rejected: the same signal saying so ends the run without applying.
        rejected = daemon.trigger("approval", {"change": "drop the database"})
        wait_until(lambda: _status(daemon, rejected) == "waiting", what="the run to wait")
        daemon.rpc("workflow.signal", runId=rejected, name="approve",
                   payload={"by": "bob", "approved": False})  # fmt: skip
        assert daemon.wait_run(rejected)["status"] == "completed"
        assert _roles(daemon, rejected) == ["propose"]

        # Unanswered: the timeout (short, from the payload) escalates, then waits again (an
        # hour: the test need not race it); the escalation's approver answers.
        options = {"change": "rotate keys", "timeout": "100ms", "escalationTimeout": "1h"}
        late = daemon.trigger("approval", options)
        wait_until(lambda: "escalate" in _roles(daemon, late), what="the escalation")
        wait_until(lambda: _status(daemon, late) == "waiting", what="the second wait")
        daemon.rpc("workflow.signal", runId=late, name="approve", payload={"by": "oncall"})
        assert daemon.wait_run(late)["status"] == "completed"
        assert _roles(daemon, late) == ["propose", "escalate", "apply"]
        inputs = [e["payload"]["event"]["type"] for e in daemon.entries(late, "input")]
        assert inputs == ["wait_timeout", "signal"]

        # Nobody at all: the second timeout ends it unapplied.
        silent = daemon.trigger("approval", {"change": "reboot", "timeout": "100ms"})
        assert daemon.wait_run(silent)["status"] == "completed"
        assert _roles(daemon, silent) == ["propose", "escalate"]
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()
