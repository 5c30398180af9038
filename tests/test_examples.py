"""The bundled example root works as the README says, through a real nerved."""

from __future__ import annotations

import shutil

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
                                  f'{{"scanRoot": "{scan_root}"}}', "--wait")  # fmt: skip
        assert cleanup["status"] == "completed" and cleanup["steps"] == 1
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()
