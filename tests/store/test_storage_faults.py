"""logs.db under attack from the host: locked, read-only, damaged, deleted, full.

The rule (SPEC §5, "Bad input"): contention is waited out without blocking the loop and is
never fatal on its own; every storage error is one clear line and a documented exit code
(73 cannot be read or written at start, 75 a storage failure while running); nothing is
acknowledged that was not stored, and a restart recovers every run that was.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from support import GATED, Nerved, wait_until

from nervectl.client import Client, RemoteError, Unreachable

CONFIG = "workflows:\n  w: {concurrency: 4, overflow: queue}\n"
ONE_STEP = """
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        return {"role": "work", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def db(daemon: Nerved) -> Path:
    return daemon.state / "logs.db"


def runs(daemon: Nerved) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db(daemon)}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT run_id, status FROM workflow_runs"))
    finally:
        conn.close()


def fresh(nerved_factory, workflow: str = ONE_STEP) -> Nerved:
    """A nerved that has made its logs.db once and stopped."""
    daemon = nerved_factory(CONFIG, workflows={"w": workflow}).start()
    assert daemon.stop() == 0
    return daemon


def records(daemon: Nerved, min_level: str = "INFO") -> list[str]:
    """The log records at ``min_level`` or above, each with its continuation lines."""
    levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    wanted = set(levels[levels.index(min_level) :])
    out: list[str] = []
    keep = False
    for line in daemon.log().splitlines():
        if line.startswith(" ") and out and keep:
            out[-1] += "\n" + line
        elif not line.startswith(" "):
            parts = line.split()
            keep = len(parts) > 2 and parts[2] in wanted
            if keep:
                out.append(line)
    return out


def assert_one_line_reason(daemon: Nerved, *needles: str) -> None:
    """The reason is one record, and nothing above debug level carries a traceback."""
    logged = records(daemon)
    assert not any("Traceback" in r for r in logged), "\n".join(logged)
    assert any(all(n in r for n in needles) for r in logged), "\n".join(logged)


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction on logs.db (as an operator's sqlite3 shell)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.01)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# -- contention ---------------------------------------------------------------------------


def test_a_write_lock_held_at_start_is_waited_for_then_nerved_starts(nerved_factory):
    daemon = fresh(nerved_factory)
    with write_lock(db(daemon)):
        daemon.start(wait=False)
        daemon.wait_notify("waiting for the write lock")
        assert daemon.proc is not None and daemon.proc.poll() is None
    daemon.wait_notify("READY=1")
    run = daemon.rpc("workflow.trigger", workflow="w")
    assert daemon.rpc("workflow.wait", runId=run["runId"], timeout=10)["status"] == "completed"


SPINNER = """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError:
            pass
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
"""


def test_a_write_lock_taken_while_running_pauses_writes_and_never_kills(nerved_factory, tmp_path):
    """nerved holds the lock from one commit to the next; another writer can only slip in
    while it lets go (after a commit, to checkpoint). Then: no crash, no blocked loop,
    status answers, a trigger is refused with nothing changed, a running step waits, and
    everything goes on once the other process lets go."""
    gate = tmp_path / "gate"
    daemon = nerved_factory(CONFIG, workflows={"w": GATED}).start()
    running = daemon.rpc("workflow.trigger", workflow="w", payload={"gate": str(gate)})
    spinner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SPINNER), str(db(daemon))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert spinner.stdout is not None
        deadline = time.monotonic() + 30
        with Client(daemon.socket) as client:
            while time.monotonic() < deadline and not _readable(spinner.stdout):
                # Each completed run commits; the checkpoint after it lets go of the lock.
                # Refused, or not done in time: the lock was just taken.
                with contextlib.suppress(RemoteError):
                    run = {"workflow": "w", "payload": {"gate": "/"}}
                    done = client.call("workflow.trigger", run)
                    client.call("workflow.wait", {"runId": done["runId"], "timeout": 2})
        assert spinner.stdout.readline().strip() == "locked", "the other writer never got in"

        status = wait_until(lambda: "write lock" in (s := daemon.rpc("status"))["state"] and s)
        assert status["pid"] == daemon.pid
        before = runs(daemon)
        with pytest.raises(RemoteError) as refused:
            daemon.rpc("workflow.trigger", workflow="w")
        assert refused.value.code == -32002 and "locked by another process" in refused.value.message
        gate.touch()  # the running step returns; its commit must wait for the lock
        time.sleep(0.3)  # let the step's message arrive while the lock is held
        assert daemon.rpc("workflow.inspect", runId=running["runId"])["status"] == "started"
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        spinner.communicate("\n", timeout=10)
    assert runs(daemon).keys() >= before.keys()
    final = daemon.rpc("workflow.wait", runId=running["runId"], timeout=10)
    assert final["status"] == "completed"
    wait_until(lambda: daemon.rpc("status")["state"] == "running")
    after = daemon.rpc("workflow.trigger", workflow="w", payload={"gate": "/"})
    assert daemon.rpc("workflow.wait", runId=after["runId"], timeout=10)["status"] == "completed"
    assert "database is locked" not in daemon.log()


def _readable(stream: IO[str]) -> bool:
    return bool(select.select([stream], [], [], 0.05)[0])


# -- a file that cannot be read or written ------------------------------------------------


def test_a_read_only_logs_db_is_refused_before_ready_with_73(nerved_factory):
    daemon = fresh(nerved_factory)
    path = db(daemon)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        daemon.start(wait=False)
        assert daemon.wait(20) == 73
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert not any("READY=1" in n for n in daemon.notifications)
    assert_one_line_reason(daemon, "cannot use the store", "readonly")


def test_a_damaged_logs_db_exits_73_with_one_line(nerved_factory):
    daemon = fresh(nerved_factory)
    data = bytearray(db(daemon).read_bytes())
    page = 4 * int.from_bytes(data[16:18], "big")  # the header's page size; the schema's pages
    data[page:] = os.urandom(len(data) - page)  # every page but the header and schema
    db(daemon).write_bytes(bytes(data))
    daemon.start(wait=False)
    assert daemon.wait(20) == 73
    assert_one_line_reason(daemon, "malformed")


def damage_a_page_of_logs(daemon: Nerved, ts: int = 0) -> None:
    """4,000 sense entries (at ``ts``), then random bytes over a leaf page in their middle:
    one that start-up does not read."""
    conn = sqlite3.connect(db(daemon), isolation_level=None)
    conn.execute("BEGIN")
    for n in range(4000):
        conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('sense', 'signal',"
            " 's', ?, ?)",
            (json.dumps({"n": n, "pad": "x" * 400}), ts),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    leaves = [
        pageno
        for (pageno,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'logs' AND pagetype = 'leaf' ORDER BY pageno"
        )
    ]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    victim = leaves[len(leaves) // 2]
    with open(db(daemon), "r+b") as f:
        f.seek((victim - 1) * page_size)
        f.write(os.urandom(page_size))


def test_a_damaged_page_hit_by_a_read_fails_that_read_only(nerved_factory):
    """A page that start-up does not read, damaged: the daemon starts, a query that reaches
    the page is answered with the error (one line in the journal), and everything else
    (status, triggers: new pages) goes on."""
    daemon = fresh(nerved_factory)
    damage_a_page_of_logs(daemon)
    daemon.start()
    with pytest.raises(RemoteError) as failed:
        daemon.rpc("logs.query", source="sense", since=0, limit=10000)
    assert failed.value.code == -32603 and "malformed" in failed.value.message
    assert daemon.rpc("status")["state"] == "running"
    run = daemon.rpc("workflow.trigger", workflow="w")
    assert daemon.rpc("workflow.wait", runId=run["runId"], timeout=10)["status"] == "completed"
    assert_one_line_reason(daemon, "logs.query", "malformed")


QUERYING = """
    def compute(ctx):
        return {"seen": len(ctx.logs.query(source="sense", since=0, limit=10000))}
"""


def test_a_damaged_page_met_by_retention_or_a_sense_costs_that_alone(nerved_factory):
    """Retention scans every sense entry (they are recent: none is pruned), and a sense asks
    for them all: both meet the damaged page. Each fails alone, said in one line; the daemon
    keeps running (before, it stopped with 75 at every start)."""
    daemon = nerved_factory(CONFIG + "senses:\n  q: {}\n", {"q": QUERYING}, {"w": ONE_STEP})
    daemon.start()
    assert daemon.stop() == 0
    damage_a_page_of_logs(daemon, ts=int(time.time() * 1000))
    daemon.start()
    daemon.rpc("sense.trigger", sense="q")
    wait_until(lambda: "retention: cannot prune" in daemon.log(), what="the retention pass")
    wait_until(lambda: "malformed" in (daemon.sense("q")["lastError"] or ""), what="the query")
    assert daemon.rpc("status")["state"] == "running"
    run = daemon.rpc("workflow.trigger", workflow="w")
    assert daemon.rpc("workflow.wait", runId=run["runId"], timeout=10)["status"] == "completed"
    assert_one_line_reason(daemon, "retention: cannot prune", "malformed")


# -- a state directory that goes away -----------------------------------------------------


def test_a_deleted_state_directory_stops_nerved_with_75(nerved_factory):
    """Nothing is acknowledged into an unlinked file, and the daemon goes (so that no second
    nerved ever runs beside it on the same path)."""
    daemon = nerved_factory(CONFIG, workflows={"w": ONE_STEP}).start()
    first = daemon.rpc("workflow.trigger", workflow="w")
    assert daemon.rpc("workflow.wait", runId=first["runId"], timeout=10)["status"] == "completed"
    shutil.rmtree(daemon.state)
    assert daemon.wait(10) == 75
    assert_one_line_reason(daemon, "storage failure", "is gone from under nerved")


# -- a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_nerved_with_75_and_loses_no_acknowledged_run(
    nerved_factory, small_disk, tmp_path
):
    """At once: a step still running could not be recorded anyway, so nerved does not wait
    for it (nor keep clients waiting on a socket nobody serves); a restart resumes it."""
    config = CONFIG + "  slow: {drainTimeout: 60s}\n"
    daemon = nerved_factory(config, workflows={"w": ONE_STEP, "slow": GATED})
    daemon.state = small_disk / "state"
    daemon.start()
    gate = tmp_path / "gate"
    slow = daemon.rpc("workflow.trigger", workflow="slow", payload={"gate": str(gate)})
    acknowledged: list[str] = [slow["runId"]]
    payload = {"pad": "x" * 60_000}
    lost = (OSError, ValueError, RemoteError, Unreachable)
    with Client(daemon.socket, timeout=10) as client, contextlib.suppress(*lost):
        for _ in range(200):
            acknowledged.append(
                client.call("workflow.trigger", {"workflow": "w", "payload": payload})["runId"]
            )
    assert acknowledged, "the disk was full before the first trigger"
    started = time.monotonic()
    assert daemon.wait(10) == 75
    assert time.monotonic() - started < 5
    assert_one_line_reason(daemon, "storage failure")
    # A client arriving now fails at once: nothing is listening.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        probe.connect(str(daemon.socket))
    probe.close()

    # With room again, a restart recovers every run that was acknowledged.
    gate.touch()
    shutil.copytree(daemon.state, daemon.base / "state")
    daemon.state = daemon.base / "state"
    daemon.start()
    for run_id in acknowledged:
        run = daemon.rpc("workflow.wait", runId=run_id, timeout=20)
        assert run["status"] == "completed", run


# -- stopping -----------------------------------------------------------------------------


def test_while_stopping_new_clients_are_answered_at_once(nerved_factory, tmp_path):
    """A stop that waits for a running step still serves its socket: what would change
    something gets -32002 at once, status says it stops; nobody hangs on a backlog."""
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  slow: {drainTimeout: 30s}\n", workflows={"slow": GATED}
    ).start()
    run = daemon.rpc("workflow.trigger", workflow="slow", payload={"gate": str(gate)})
    wait_until(lambda: (tmp_path / "gate.running").exists())  # its step runs: the stop waits
    daemon.signal(signal.SIGTERM)
    daemon.wait_notify("STOPPING=1")
    started = time.monotonic()
    with Client(daemon.socket, timeout=5) as client:
        assert client.call("status")["state"] == "stopping"
        with pytest.raises(RemoteError) as refused:
            client.call("workflow.trigger", {"workflow": "slow"})
        assert refused.value.code == -32002
        assert client.call("workflow.inspect", {"runId": run["runId"]})["status"] == "started"
    assert time.monotonic() - started < 2
    gate.touch()
    assert daemon.wait(20) == 0
