"""The metrics through a real nerved (SPEC §3 ``metrics.textfile``, §6 ``metrics``, §7
``nervectl metrics``): runs, steps, failed tries, queues, senses, workers, the store, and
the textfile node_exporter reads, written whole every interval.

The method's text is read with prometheus_client's OpenMetrics parser, the textfile with
its Prometheus text parser: what Prometheus and node_exporter would read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus_text
from support import GATED, QUICK, Nerved, make_root, wait_until

FAILING = """
    from nerved import WorkflowDefinition

    def boom(prompt, ctx):
        raise ValueError("no")

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "boom", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"boom": boom}, moderate=moderate)
"""

SENSES = {
    "fine": "def compute(ctx):\n    return None\n",
    "broken": "def compute(ctx):\n    raise RuntimeError('broken')\n",
}

CONFIG = """\
senses:
  fine:
  broken:
workflows:
  quick:
  failing:
    roles:
      boom: {retry: {attempts: 2, delay: 100ms}}
  gated:
    concurrency: 1
metrics:
  textfile: %s
  interval: 1s
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(families: Any) -> Samples:
    """Every sample by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(found: Samples, metric: str, /, **labels: str) -> float:
    return found[(metric, tuple(sorted(labels.items())))]


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    textfile = tmp_path / "exporter" / "nerve.prom"
    textfile.parent.mkdir()
    root = make_root(tmp_path, CONFIG % textfile, senses=SENSES,
                     workflows={"quick": QUICK, "failing": FAILING, "gated": GATED})  # fmt: skip
    nerved = Nerved(root, tmp_path / "d").start()
    yield nerved, textfile
    nerved.cleanup()


def test_metrics_count_what_happened(daemon: Any, tmp_path: Path) -> None:
    nerved, textfile = daemon
    assert nerved.wait_run(nerved.trigger("quick", {}))["status"] == "completed"
    assert nerved.wait_run(nerved.trigger("failing", {}))["status"] == "failed"
    gate = str(tmp_path / "gate")
    first, second = (nerved.trigger("gated", {"gate": gate}) for _ in range(2))
    wait_until(lambda: Path(gate + ".running").exists(), what="the gated role runs")
    for sense in ("fine", "broken"):
        nerved.rpc("sense.trigger", sense=sense)
    wait_until(lambda: nerved.sense("broken")["errors"] >= 1, what="the sense's error")
    wait_until(lambda: nerved.sense("fine")["computes"] >= 1, what="the sense's compute")

    text = nerved.rpc("metrics")["text"]
    assert text.endswith("# EOF\n")
    found = samples(openmetrics(text))
    assert value(found, "nerve_runs_total", workflow="quick", status="completed") == 1
    assert value(found, "nerve_runs_total", workflow="quick", status="failed") == 0
    assert value(found, "nerve_runs_total", workflow="failing", status="failed") == 1
    assert value(found, "nerve_runs_active", workflow="gated", status="started") == 1
    assert value(found, "nerve_runs_active", workflow="gated", status="queued") == 1
    assert value(found, "nerve_runs_active", workflow="quick", status="waiting") == 0
    assert value(found, "nerve_queue_oldest_age_seconds", workflow="gated") >= 0
    assert value(found, "nerve_queue_oldest_age_seconds", workflow="quick") == 0
    step = {"workflow": "quick", "role": "work"}
    assert value(found, "nerve_step_duration_seconds_count", **step) == 1
    assert value(found, "nerve_step_duration_seconds_bucket", **step, le="+Inf") == 1
    assert value(found, "nerve_step_duration_seconds_bucket", **step, le="3600.0") == 1
    assert value(found, "nerve_step_failures_total", workflow="failing", role="boom") == 2
    assert value(found, "nerve_sense_errors_total", sense="broken") >= 1
    assert value(found, "nerve_sense_errors_total", sense="fine") == 0
    assert value(found, "nerve_sense_computes_total", sense="fine") >= 1
    assert value(found, "nerve_worker_restarts_total", kind="workflow", name="quick") == 0
    assert value(found, "nerve_worker_fatal", kind="sense", name="default") == 0
    assert value(found, "nerve_worker_resident_memory_bytes", kind="sense", name="default") > 0
    assert value(found, "nerve_store_commit_duration_seconds_count") > 0
    assert value(found, "nerve_store_size_bytes") > 0
    assert value(found, "nerve_process_resident_memory_bytes") > 0
    assert not any("run" in dict(labels) for _, labels in found)  # never a run id

    # The textfile: Prometheus's text format, whole, beside no temporary file.
    def written() -> Samples | None:
        found = samples(prometheus_text(textfile.read_text())) if textfile.exists() else {}
        key = ("nerve_runs_total", (("status", "failed"), ("workflow", "failing")))
        return found if found.get(key) == 1 else None

    found = wait_until(written, timeout=10, what="the textfile with the failed run")
    assert value(found, "nerve_runs_active", workflow="gated", status="queued") == 1
    assert os.listdir(textfile.parent) == ["nerve.prom"]
    assert textfile.stat().st_mode & 0o777 == 0o644

    Path(gate).touch()
    for run in (first, second):
        assert nerved.wait_run(run)["status"] == "completed"
    found = samples(openmetrics(nerved.rpc("metrics")["text"]))
    assert value(found, "nerve_runs_total", workflow="gated", status="completed") == 2
    assert value(found, "nerve_runs_active", workflow="gated", status="queued") == 0

    # nervectl metrics: the text; with --json, {text}.
    done = nerved.ctl("metrics")
    assert done.returncode == 0, done.stderr
    assert 'nerve_runs_total{status="completed",workflow="gated"} 2.0' in done.stdout
    assert done.stdout.endswith("# EOF\n")
    assert set(nerved.ctl_json("metrics")) == {"text"}


def test_a_textfile_that_cannot_be_written_is_a_warning_until_it_can(tmp_path: Path) -> None:
    textfile = tmp_path / "later" / "nerve.prom"
    config = f"workflows:\n  quick:\nmetrics: {{textfile: {textfile}, interval: 1s}}\n"
    root = make_root(tmp_path, config, workflows={"quick": QUICK})
    nerved = Nerved(root, tmp_path / "d").start()
    try:
        warning = f"metrics: cannot write {textfile}: No such file or directory"
        wait_until(lambda: warning in nerved.log(), what="the warning")
        assert nerved.rpc("metrics")["text"].endswith("# EOF\n")  # the method answers
        textfile.parent.mkdir()
        wait_until(textfile.exists, timeout=5, what="the textfile once it can be written")
        assert f"metrics: {textfile} written again" in nerved.log()
        assert nerved.log().count(warning) == 1  # once, not at every interval

        # A reload that drops the textfile removes the one nerve wrote.
        (root / "nerve.yaml").write_text("workflows:\n  quick:\n")
        assert nerved.rpc("reload")["changed"] in (["metrics"], [])  # [] if inotify was first
        wait_until(lambda: not textfile.exists(), timeout=5, what="the textfile removed")
        assert os.listdir(textfile.parent) == []
    finally:
        nerved.cleanup()
