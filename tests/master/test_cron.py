"""Cron reflexes (issue 12) and reflex keys from the signal's payload, through a real nerved.

The wall clock cron reads is the tests' own (``NERVED_TEST_NOW``): each nerved starts a few
seconds before a firing, and the tests synchronise on the run or the compute appearing,
never on sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from support import QUICK, REPO, Nerved, make_root, wait_until

HOURLY = """\
workflows:
  backup: {}
reflexes:
  - kind: workflow
    workflow: backup
    cron: "30 * * * *"
    timezone: UTC
    catchUp: CATCH_UP
"""


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def nerved_at(nerved_factory: Any, config: str, now: str, **packages: Any) -> Nerved:
    daemon: Nerved = nerved_factory(config, packages.get("senses"), packages.get("workflows"))
    daemon.env = {"NERVED_TEST_NOW": now}
    return daemon


def runs_of(daemon: Nerved, workflow: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = daemon.rpc("workflow.list", workflow=workflow, all=True)
    return sorted(runs, key=lambda run: run["createdAt"])


def payload_of(daemon: Nerved, run_id: str) -> Any:
    return daemon.entries(run_id, "started")[0]["payload"]


def test_a_cron_workflow_fires_at_its_minute(nerved_factory):
    daemon = nerved_at(
        nerved_factory, HOURLY.replace("CATCH_UP", "false"), "2026-06-01T10:29:57+00:00",
        workflows={"backup": QUICK},
    ).start()  # fmt: skip
    assert "NERVED_TEST_NOW is set" in daemon.log()
    assert runs_of(daemon, "backup") == []  # not before its minute
    [listed] = daemon.rpc("schedule.list")
    firing = ms("2026-06-01T10:30:00+00:00")
    assert listed["next"] == firing and listed["last"] is None
    [run] = wait_until(lambda: runs_of(daemon, "backup"), what="the firing at 10:30")
    assert payload_of(daemon, run["runId"]) == {
        "cron": "30 * * * *", "timezone": "UTC", "scheduledAt": firing,
    }  # fmt: skip
    assert run["idempotencyKey"] == f"cron:30 * * * * UTC@{firing}"
    assert daemon.wait_run(run["runId"])["status"] == "completed"
    [listed] = daemon.rpc("schedule.list")
    assert listed == {
        "kind": "workflow", "target": "backup", "cron": "30 * * * *", "timezone": "UTC",
        "catchUp": False, "next": ms("2026-06-01T11:30:00+00:00"), "last": firing,
        "lastFiredAt": listed["lastFiredAt"], "lastRunId": run["runId"],
        "lastStatus": "completed",
    }  # fmt: skip
    assert firing <= listed["lastFiredAt"] < firing + 2000
    # nervectl workflow schedule: the table, and --json as the method answers.
    table = daemon.ctl("workflow", "schedule")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NEXT", "LEFT", "LAST", "PASSED", "REFLEX", "CRON", "OUTCOME"]
    assert "workflow backup" in rows[1] and "30 * * * * (UTC)" in rows[1]
    assert rows[1].rstrip().endswith("completed")
    assert daemon.ctl_json("workflow", "schedule") == daemon.rpc("schedule.list")


def test_catch_up_fires_once_after_a_downtime_over_two_firings(nerved_factory):
    daemon = nerved_at(
        nerved_factory, HOURLY.replace("CATCH_UP", "true"), "2026-06-01T10:29:58+00:00",
        workflows={"backup": QUICK},
    ).start()  # fmt: skip
    [first] = wait_until(lambda: runs_of(daemon, "backup"), what="the firing at 10:30")
    # Done before the downtime: a run still started at the stop (its worker was importing)
    # is resumed at the start, and the catch-up run queues behind it, not started yet.
    assert daemon.wait_run(first["runId"])["status"] == "completed"
    assert daemon.stop() == 0
    # Down over 11:30 and 12:30: one run at start, for the latest of them.
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T12:40:00+00:00"}
    daemon.start()
    runs = runs_of(daemon, "backup")
    assert len(runs) == 2 and runs[0]["runId"] == first["runId"]
    late = runs[1]
    assert payload_of(daemon, late["runId"]) == {
        "cron": "30 * * * *", "timezone": "UTC", "catchUp": True,
        "scheduledAt": ms("2026-06-01T12:30:00+00:00"),
    }  # fmt: skip
    [listed] = daemon.rpc("schedule.list")
    assert listed["last"] == ms("2026-06-01T12:30:00+00:00")
    assert listed["next"] == ms("2026-06-01T13:30:00+00:00")
    assert listed["lastRunId"] == late["runId"]
    # Started again at once: nothing more was missed, nothing more runs.
    assert daemon.stop() == 0
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T12:41:00+00:00"}
    daemon.start()
    assert len(runs_of(daemon, "backup")) == 2


def test_without_catch_up_a_missed_firing_is_recorded_and_nothing_runs(nerved_factory):
    daemon = nerved_at(
        nerved_factory, HOURLY.replace("CATCH_UP", "false"), "2026-06-01T10:29:58+00:00",
        workflows={"backup": QUICK},
    ).start()  # fmt: skip
    wait_until(lambda: runs_of(daemon, "backup"), what="the firing at 10:30")
    assert daemon.stop() == 0
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T12:40:00+00:00"}
    daemon.start()
    assert len(runs_of(daemon, "backup")) == 1
    [listed] = daemon.rpc("schedule.list")
    assert (listed["last"], listed["lastStatus"], listed["lastRunId"]) == (
        ms("2026-06-01T12:30:00+00:00"), "missed", None,
    )  # fmt: skip


def test_a_reflex_armed_then_down_over_a_firing_catches_up(nerved_factory):
    """It never fired before the downtime: when it was armed is its baseline."""
    daemon = nerved_at(
        nerved_factory, HOURLY.replace("CATCH_UP", "true"), "2026-06-01T10:00:00+00:00",
        workflows={"backup": QUICK},
    ).start()  # fmt: skip
    assert daemon.stop() == 0 and runs_of_stopped(daemon) == 0
    daemon.env = {"NERVED_TEST_NOW": "2026-06-01T10:45:00+00:00"}
    daemon.start()
    [run] = runs_of(daemon, "backup")
    assert payload_of(daemon, run["runId"])["scheduledAt"] == ms("2026-06-01T10:30:00+00:00")


def runs_of_stopped(daemon: Nerved) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{daemon.state / 'logs.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM workflow_runs").fetchone()[0])
    finally:
        conn.close()


TICK = """
    def compute(ctx):
        return {"tick": 1}
"""


def test_a_sense_cron_computes_the_sense(nerved_factory):
    config = """\
    senses:
      tick: {}
    reflexes:
      - {kind: sense, sense: tick, cron: "* * * * *", timezone: UTC}
    """
    daemon = nerved_at(
        nerved_factory, config, "2026-06-01T10:29:58+00:00", senses={"tick": TICK}
    ).start()
    assert daemon.sense("tick")["computes"] == 0
    assert daemon.sense("tick")["nextFiring"] == ms("2026-06-01T10:30:00+00:00")
    wait_until(lambda: daemon.sense("tick")["computes"] == 1, what="the compute at 10:30")
    sense = daemon.sense("tick")
    assert sense["lastFiring"] == ms("2026-06-01T10:30:00+00:00")
    assert sense["nextFiring"] == ms("2026-06-01T10:31:00+00:00")
    [listed] = daemon.rpc("schedule.list")
    assert (listed["kind"], listed["target"], listed["lastStatus"]) == (
        "sense",
        "tick",
        "triggered",
    )
    table = daemon.ctl("sense", "list")
    assert table.returncode == 0, table.stderr
    assert "NEXT FIRING" in table.stdout.splitlines()[0] and "LAST FIRING" in table.stdout


def test_a_reload_that_changes_the_cron_rearms_it(nerved_factory):
    config = HOURLY.replace("CATCH_UP", "false").replace("30 * * * *", "0 0 1 1 *")
    daemon = nerved_at(
        nerved_factory, config, "2026-06-01T10:29:50+00:00", workflows={"backup": QUICK}
    ).start()
    [listed] = daemon.rpc("schedule.list")
    assert listed["next"] == ms("2027-01-01T00:00:00+00:00")
    (daemon.root / "nerve.yaml").write_text(HOURLY.replace("CATCH_UP", "false"))
    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    [listed] = daemon.rpc("schedule.list")
    assert (listed["cron"], listed["next"]) == ("30 * * * *", ms("2026-06-01T10:30:00+00:00"))
    [run] = wait_until(lambda: runs_of(daemon, "backup"), what="the firing at 10:30")
    assert payload_of(daemon, run["runId"])["cron"] == "30 * * * *"
    # Removed: no schedule left, and its firings forgotten.
    (daemon.root / "nerve.yaml").write_text("workflows:\n  backup: {}\n")
    assert daemon.ctl("reload").returncode == 0
    assert daemon.rpc("schedule.list") == []


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root), "--no-strict-modes"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_bad_cron_keys_are_config_errors_with_their_lines(tmp_path):
    config = """\
    workflows:
      backup: {}
    reflexes:
      - kind: workflow
        workflow: backup
        cron: "30 25 * * *"
      - kind: workflow
        workflow: backup
        cron: "30 3 * * *"
        timezone: Europe/Berln
      - kind: workflow
        workflow: backup
        on: [backup]
        cron: "30 3 * * *"
    senses:
      backup: {}
    """
    root = make_root(tmp_path, config, {"backup": TICK}, {"backup": QUICK})
    done = check(root)
    assert done.returncode == 78, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert (
        "nerve.yaml:6: reflexes[0].cron: '30 25 * * *' is not a crontab expression: bad hour field"
        in out
    )
    assert "nerve.yaml:10: reflexes[1].timezone: unknown time zone 'Europe/Berln'" in out
    assert (
        "nerve.yaml:14: reflexes[2].cron: cron replaces on: a reflex fires on a clock or on signals, not both (on is on line 13)"
        in out
    )


# -- key: from the signal's payload ------------------------------------------------------

ALERTS = """
    PAYLOADS = [{"alert": "disk", "n": 1}, {"alert": "disk", "n": 2}, {"alert": "cpu"},
                {"alert": "disk", "n": 3}, {"no alert": True}]
    count = 0

    def compute(ctx):
        global count
        count += 1
        return PAYLOADS[count - 1]
"""


def test_a_reflex_key_starts_one_run_per_distinct_key(nerved_factory):
    config = """\
    senses:
      alerts: {}
    workflows:
      page: {concurrency: 4}
    reflexes:
      - {kind: workflow, workflow: page, on: [alerts], key: /alert}
    """
    daemon = nerved_factory(config, {"alerts": ALERTS}, {"page": QUICK}).start()
    for count in range(1, 6):
        daemon.rpc("sense.trigger", sense="alerts")
        wait_until(lambda n=count: daemon.sense("alerts")["computes"] == n, what=f"compute {count}")
    wait_until(lambda: len(runs_of(daemon, "page")) == 2, what="two runs")
    wait_until(lambda: "has nothing at the pointer" in daemon.log(), what="the warning")
    runs = runs_of(daemon, "page")
    assert [r["idempotencyKey"] for r in runs] == ["disk", "cpu"]
    assert payload_of(daemon, runs[0]["runId"]) == {"alert": "disk", "n": 1}
    shown = daemon.ctl("workflow", "inspect", runs[1]["runId"])
    assert shown.returncode == 0, shown.stderr
    assert any(line.split() == ["key:", "cpu"] for line in shown.stdout.splitlines()), shown.stdout
    assert "reflexes[0]" not in daemon.log() and "nerve.yaml:6, key: '/alert'" in daemon.log()
    assert len(runs_of(daemon, "page")) == 2
    assert json.dumps(runs)  # plain JSON all the way
