"""The signal loop through a real nerved: intervals, reflex chains, throttle, timeouts, respawn."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time

import pytest
from support import pid_alive, wait_until

from nerved import wire

COUNTER = """
    import itertools
    _n = itertools.count(1)

    def compute(ctx):
        return {"n": next(_n)}
"""


def signals(daemon, sense):
    return daemon.rpc("logs.query", source="sense", type="signal", refId=sense, limit=1000)


def test_interval_sense_signals_are_logged(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          tick: {}
        reflexes:
          - {kind: sense, sense: tick, interval: 100ms}
        """,
        {"tick": COUNTER},
    ).start()
    entries = wait_until(lambda: len(signals(daemon, "tick")) >= 3 and signals(daemon, "tick"))
    assert [e["payload"]["n"] for e in entries[:3]] == [1, 2, 3]
    assert all(e["source"] == "sense" and e["refId"] == "tick" for e in entries)
    assert daemon.sense("tick")["computes"] >= 3


def test_on_reflex_chains_two_senses(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          source: {group: a}
          follower: {group: b}
        reflexes:
          - {kind: sense, sense: source, interval: 1h}
          - {kind: sense, sense: follower, on: [source]}
        """,
        {
            "source": 'def compute(ctx):\n    return {"value": 41}\n',
            "follower": """
                def compute(ctx):
                    last = ctx.logs.query(source="sense", type="signal", ref_id="source", limit=1)
                    ctx.log("saw %d" % last[0].payload["value"])
                    return {"value": last[0].payload["value"] + 1}
            """,
        },
    ).start()
    entry = wait_until(lambda: signals(daemon, "follower"), what="follower's signal")[0]
    assert entry["payload"] == {"value": 42}
    lines = daemon.rpc("logs.query", source="sense", type="log", refId="follower")
    assert lines[0]["payload"] == "saw 41"
    assert set(daemon.worker_pids("sense")) == {"a", "b"}


def test_throttle_coalesces_a_burst_into_at_most_two_computes(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          slow: {throttle: 1s}
        """,
        {"slow": COUNTER},
    ).start()
    # READY comes before the sense worker has imported its senses: a burst before that
    # would be one pending trigger, one compute, and no trailing one.
    wait_until(lambda: "sense group default ready" in daemon.log(), what="the sense group")
    with daemon.client() as client:
        for _ in range(100):
            assert client.call("sense.trigger", {"sense": "slow"}) == {
                "accepted": True,
                "worker": "ready",
            }
    wait_until(lambda: daemon.sense("slow")["computes"] == 2, what="the trailing compute")
    # One more throttle window: nothing else may run.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert daemon.sense("slow")["computes"] == 2
        time.sleep(0.1)
    assert len(signals(daemon, "slow")) == 2


def test_hung_compute_is_abandoned_and_its_worker_replaced(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          hang: {timeout: 300ms, gracePeriod: 300ms}
        """,
        {"hang": "import time\n\ndef compute(ctx):\n    time.sleep(3600)\n"},
    ).start()
    old_pid = daemon.worker_pids("sense")["default"]
    daemon.rpc("sense.trigger", sense="hang")
    started = time.monotonic()
    # The daemon keeps answering while the compute hangs.
    while time.monotonic() - started < 0.2:
        assert daemon.rpc("status")["pid"] == daemon.pid
    errors = wait_until(
        lambda: daemon.rpc("logs.query", source="sense", type="error", refId="hang"),
        what="the timeout error",
    )
    assert "timed out after 0.3s" in errors[0]["payload"]
    new_pid = wait_until(
        lambda: (
            daemon.worker_pids("sense").get("default") not in (None, old_pid)
            and daemon.worker_pids("sense")["default"]
        ),
        what="a new worker",
    )
    assert not pid_alive(old_pid)
    assert new_pid != old_pid
    assert "did not come back from an abandoned compute" in daemon.log()


def test_killed_sense_worker_is_respawned(nerved_factory):
    daemon = nerved_factory("senses:\n  tick: {}\n", {"tick": COUNTER}).start()
    old_pid = daemon.worker_pids("sense")["default"]
    os.kill(old_pid, signal.SIGKILL)
    new_pid = wait_until(
        lambda: (
            daemon.worker_pids("sense").get("default") not in (None, old_pid)
            and daemon.worker_pids("sense")["default"]
        )
    )
    assert new_pid != old_pid
    daemon.rpc("sense.trigger", sense="tick")
    wait_until(lambda: signals(daemon, "tick"), what="a signal from the new worker")
    assert "respawning" in daemon.log()


def test_async_compute_and_errors(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  a: {}\n  boom: {}\n  notjson: {}\n",
        {
            "a": "import asyncio\n\nasync def compute(ctx):\n"
            "    await asyncio.sleep(0.01)\n    return {'async': True}\n",
            "boom": "def compute(ctx):\n    raise ValueError('no disk')\n",
            "notjson": "def compute(ctx):\n    return {'x': object()}\n",
        },
    ).start()
    for name in ("a", "boom", "notjson"):
        daemon.rpc("sense.trigger", sense=name)
    wait_until(lambda: signals(daemon, "a"))
    assert signals(daemon, "a")[0]["payload"] == {"async": True}
    boom = wait_until(lambda: daemon.sense("boom")["errors"] and daemon.sense("boom"))
    assert "ValueError: no disk" in boom["lastError"]
    bad = wait_until(lambda: daemon.sense("notjson")["errors"] and daemon.sense("notjson"))
    assert "not a JSON value" in bad["lastError"]


def test_broken_sense_package_does_not_stop_its_group(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  good: {}\n  broken: {}\n",
        {"good": COUNTER, "broken": "import nosuchmodule_xyz\n"},
    ).start()
    daemon.rpc("sense.trigger", sense="good")
    daemon.rpc("sense.trigger", sense="broken")
    wait_until(lambda: signals(daemon, "good"))
    broken = wait_until(lambda: daemon.sense("broken")["errors"] and daemon.sense("broken"))
    assert "No module named 'nosuchmodule_xyz'" in broken["lastError"]


NEST = """
    def nest(depth):
        value = 1
        for _ in range(depth):
            value = [value]
        return value
"""

UNKEEPABLE_RESULTS = {
    "deep": ("{'v': nest(500)}", "nested deeper than 100 levels (at v[0]"),
    "nan": ("{'v': float('nan')}", "NaN is not JSON (at v)"),
    "big": ("{'v': 'x' * (2 << 20)}", "the result is 2.0 MiB; at most 1.0 MiB is kept"),
    "aset": ("{'v': {1, 2}}", "a set is not a JSON value (at v)"),
}


@pytest.mark.parametrize("name", list(UNKEEPABLE_RESULTS))
def test_a_result_nerve_cannot_keep_is_an_error_for_that_compute(nerved_factory, name):
    result, reason = UNKEEPABLE_RESULTS[name]
    daemon = nerved_factory(
        f"senses:\n  {name}: {{}}\n  deepest: {{}}\n",
        {
            name: f"{NEST}\n    def compute(ctx):\n        return {result}\n",
            "deepest": f"{NEST}\n    def compute(ctx):\n        return {{'v': nest(99)}}\n",
        },
    ).start()
    pid = daemon.worker_pids("sense")["default"]
    daemon.rpc("sense.trigger", sense=name)
    state = wait_until(lambda: daemon.sense(name)["errors"] and daemon.sense(name), timeout=5)
    assert reason in state["lastError"]
    daemon.rpc("sense.trigger", sense="deepest")
    wait_until(lambda: signals(daemon, "deepest"), timeout=5, what="a signal 100 levels deep")
    assert signals(daemon, name) == []
    assert daemon.worker_pids("sense")["default"] == pid


def test_sense_log_lines_are_kept_truncated_and_sanitised(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  talk: {}\n",
        {"talk": "def compute(ctx):\n    ctx.log('x' * (1 << 20))\n    ctx.log('a \\ud800')\n"},
    ).start()
    daemon.rpc("sense.trigger", sense="talk")
    lines = wait_until(
        lambda: len(q := daemon.rpc("logs.query", source="sense", type="log")) == 2 and q,
        timeout=5,
    )
    long, lone = (entry["payload"] for entry in lines)
    assert long.endswith("… [truncated: 1.0 MiB in all]")
    assert len(long.encode()) <= wire.MAX_LOG_LINE
    assert lone == "a \ufffd"


def test_a_query_that_meets_an_unreadable_entry_costs_that_compute_only(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  reader: {}\n",
        {"reader": "def compute(ctx):\n    return {'n': len(ctx.logs.query(ref_id='x'))}\n"},
    ).start()
    assert daemon.stop() == 0  # nerved holds logs.db's write lock while it runs
    conn = sqlite3.connect(daemon.state / "logs.db", isolation_level=None)
    with contextlib.closing(conn):  # a row damaged on disk, or written by an older release
        conn.execute("INSERT INTO logs (source, type, ref_id, payload, ts)"
                     " VALUES ('sense', 'signal', 'x', '{broken', 0)")  # fmt: skip
    daemon.start()
    pid = daemon.worker_pids("sense")["default"]
    daemon.rpc("sense.trigger", sense="reader")
    wait_until(lambda: daemon.sense("reader")["computes"] == 1, timeout=5)
    assert daemon.worker_pids("sense")["default"] == pid
    assert "killing it" not in daemon.log()


def test_a_query_nerve_cannot_send_is_an_error_for_that_compute_at_once(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  asker: {}\n",
        {"asker": "def compute(ctx):\n    return ctx.logs.query(ref_id='\\ud800')\n"},
    ).start()
    daemon.rpc("sense.trigger", sense="asker")
    state = wait_until(lambda: daemon.sense("asker")["errors"] and daemon.sense("asker"), 5)
    # refused as the socket refuses it (nerved.store.query), before the worker sends it
    assert (
        "BadQuery: param 'refId' holds what JSON cannot carry: a string holds a lone UTF-16"
        " surrogate" in state["lastError"]
    )


DEEP_EVENT = """
    from nerved import WorkflowDefinition

    def deep(prompt, ctx):
        value = 1
        for _ in range(99):  # the event itself is one more level: 100 in all, the most allowed
            value = [value]
        return {"type": "deep", "value": value}

    def moderate(thread, event):
        return {"role": "deep", "prompt": None} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"deep": deep}, moderate=moderate)
"""
READS_STEPS = """
    def compute(ctx):
        steps = ctx.logs.query(source="workflow", type="step_complete")
        return {"steps": len(steps), "depth": steps[0].payload["event"]["type"]}
"""


def test_a_sense_reads_back_the_deepest_event_nerve_accepts(nerved_factory):
    """What nerve accepted can be read back from a sense too: a step holding an event 100
    levels deep sits a few levels further down in the query's answer frame."""
    daemon = nerved_factory(
        "senses:\n  reader: {}\nworkflows:\n  d: {}\n",
        {"reader": READS_STEPS},
        {"d": DEEP_EVENT},
    ).start()
    run = daemon.rpc("workflow.trigger", workflow="d")
    assert daemon.rpc("workflow.wait", runId=run["runId"], timeout=10)["status"] == "completed"
    daemon.rpc("sense.trigger", sense="reader")
    wait_until(lambda: signals(daemon, "reader"), what="the sense's signal")
    assert signals(daemon, "reader")[-1]["payload"] == {"steps": 1, "depth": "deep"}
