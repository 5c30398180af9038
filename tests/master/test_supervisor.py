"""The supervisor of a unit's workers: its states and moves, with real forks and a real loop.

The first part drives :class:`nerved.master.supervisor.Supervisor` alone, in this process,
over nerve's own loop and registry of workers (real children, real SIGCHLD); the second goes
through a real nerved: a crash-looping sense group and workflow reach ``fatal``, are shown so
in ``status``, ``sense list`` and ``workflow list``, are not forked again, and come back once
their code is fixed and reloaded, with no run lost.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import wait_until

from nerved.channel import TO_MASTER, frame
from nerved.loop import Loop
from nerved.master import supervisor as supervisor_module
from nerved.master.supervisor import GIVE_UP_AFTER, Exit, IllegalMove, Supervisor, backoff
from nerved.master.workers import Worker, Workers
from nerved.states import WorkerMove, WorkerState

# -- the supervisor alone ------------------------------------------------------------------


class Harness:
    """A loop, a registry and one supervisor, with what its callbacks heard."""

    def __init__(self, loop: Loop, workers: Workers) -> None:
        self.loop = loop
        self.workers = workers
        self.exits: list[Exit] = []
        self.wakes = 0
        self.messages: list[dict[str, Any]] = []

    def supervise(
        self, child_main: Callable[[socket.socket], int], *, import_timeout: float = 10.0
    ) -> Supervisor:
        def on_message(worker: Worker, message: dict[str, Any]) -> None:
            self.messages.append(message)
            if message.get("t") == "ready":
                self.sup.ready(worker)
            elif message.get("t") == "result":  # what a manager says of a result or a step
                self.sup.progressed(worker)

        def on_wake() -> None:
            self.wakes += 1

        self.sup = Supervisor(
            self.workers, "sense", "g",
            child_main=child_main, on_message=on_message,
            on_exit=lambda worker, exit: self.exits.append(exit),
            on_wake=on_wake, importing=lambda: "senses/x", import_timeout=import_timeout,
        )  # fmt: skip
        return self.sup

    def run_until(self, condition: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            self.loop.run_once(0.05)
        raise AssertionError(f"not reached in {timeout}s")


@pytest.fixture
def harness() -> Iterator[Harness]:
    loop = Loop()
    workers = Workers(loop)
    loop.add_signal_handler(signal.SIGCHLD, lambda _signum: workers.reap())
    loop.install_signal_wakeup()
    try:
        yield Harness(loop, workers)
    finally:
        workers.kill_all()
        deadline = time.monotonic() + 5
        while len(workers) and time.monotonic() < deadline:
            loop.run_once(0.05)
        workers.close()
        loop.close()


def _say(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(frame(message, TO_MASTER))


def dies_at_once(sock: socket.socket) -> int:
    return 3


def works_then_dies(sock: socket.socket) -> int:
    _say(sock, {"t": "ready"})
    _say(sock, {"t": "result"})
    return 4


def ready_and_waits(sock: socket.socket) -> int:
    _say(sock, {"t": "ready"})
    sock.recv(1)  # until told anything (stop), or the channel closes
    return 0


def ignores_stop(sock: socket.socket) -> int:
    _say(sock, {"t": "ready"})
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    time.sleep(60)
    return 0


def never_ready(sock: socket.socket) -> int:
    time.sleep(60)
    return 0


def test_backoff_answers_the_first_death_at_once_then_doubles_to_its_cap():
    delays = [backoff(n) for n in range(1, 9)]
    assert delays[:4] == [0.0, 0.25, 0.5, 1.0]
    assert delays == sorted(delays) and max(delays) == supervisor_module.BACKOFF_MAX


def test_a_unit_whose_workers_die_before_any_work_becomes_fatal(harness):
    sup = harness.supervise(dies_at_once)
    forks = []
    while sup.state is not WorkerState.FATAL:
        assert sup.state is WorkerState.IDLE
        worker = sup.ensure()
        assert worker is not None and sup.state is WorkerState.SPAWNING
        forks.append(time.monotonic())
        harness.run_until(lambda: sup.state in (WorkerState.IDLE, WorkerState.FATAL))
        assert len(forks) <= GIVE_UP_AFTER
    assert len(forks) == GIVE_UP_AFTER and sup.restarts == GIVE_UP_AFTER
    # Each successor waited for its backoff: a worker is never forked while the unit backs off.
    gaps = [b - a for a, b in itertools.pairwise(forks)]
    assert all(gap >= backoff(n) for n, gap in enumerate(gaps, start=1))
    assert harness.wakes == GIVE_UP_AFTER - 1  # every backoff ended in a wake, but the last
    assert [e.ready for e in harness.exits] == [False] * GIVE_UP_AFTER
    assert sup.reason == "exit code 3"
    [entry] = sup.to_wire()
    assert entry == {
        "kind": "sense", "name": "g", "pid": None, "state": "fatal",
        "restarts": GIVE_UP_AFTER, "reason": "exit code 3",
    }  # fmt: skip
    # Fatal: nothing is forked, however often a worker is asked for, until the code changes.
    assert sup.ensure() is None and sup.ensure() is None and not len(harness.workers)
    sup.code_changed()
    assert sup.state is WorkerState.IDLE and harness.wakes == GIVE_UP_AFTER
    assert sup.ensure() is not None


def test_a_unit_whose_workers_do_work_between_deaths_never_becomes_fatal(harness, monkeypatch):
    monkeypatch.setattr(supervisor_module, "BACKOFF_FIRST", 0.01)
    sup = harness.supervise(works_then_dies)
    for n in range(1, GIVE_UP_AFTER + 3):
        worker = sup.ensure()
        assert worker is not None
        harness.run_until(lambda n=n: len(harness.exits) == n and sup.state is WorkerState.IDLE)
        assert sup.deaths == 1  # work starts a new count towards giving up
        assert sup.failures == n  # but not a new backoff: it dies as soon as it works
    assert sup.restarts == GIVE_UP_AFTER + 2 and all(e.ready for e in harness.exits)


def test_an_import_that_outlasts_its_bound_is_killed_and_says_so(harness):
    sup = harness.supervise(never_ready, import_timeout=0.3)
    worker = sup.ensure()
    assert worker is not None
    harness.run_until(lambda: harness.exits)
    [exit] = harness.exits
    assert exit == Exit(
        "importing senses/x took longer than 0.3s",
        current=True, ready=False, hung=True, retired=False,
    )  # fmt: skip
    assert sup.reason == exit.why and sup.failures == 1
    harness.run_until(lambda: sup.state is WorkerState.IDLE and harness.wakes == 1)


def test_a_worker_told_to_stop_drains_and_is_killed_at_its_deadline(harness, caplog):
    sup = harness.supervise(ignores_stop)
    old = sup.ensure()
    assert old is not None
    harness.run_until(lambda: sup.state is WorkerState.READY)
    assert sup.drain(0.3, "drainTimeout") is old
    assert sup.state is WorkerState.IDLE and old.state is WorkerState.DRAINING
    new = sup.ensure()  # new work goes to a new worker while the old one drains
    assert new is not None and new is not old
    states = {(e["pid"], e["state"]) for e in sup.to_wire()}
    assert states == {(old.pid, "draining"), (new.pid, "spawning")}
    with caplog.at_level("WARNING"):
        harness.run_until(lambda: old.reaped, timeout=5)
    assert "has not exited 0.3s (drainTimeout) after it was told to stop; killing it" in caplog.text
    assert harness.exits[0].current is False
    assert sup.restarts == 0 and sup.current is new  # a drained worker's end is no death


def test_a_retired_unit_forks_nothing_again(harness):
    sup = harness.supervise(ready_and_waits)
    worker = sup.ensure()
    assert worker is not None
    harness.run_until(lambda: sup.state is WorkerState.READY)
    sup.retire(deadline=5)
    harness.run_until(lambda: worker.reaped)
    assert sup.state is WorkerState.GONE and harness.exits[-1].retired
    assert sup.ensure() is None and harness.wakes == 0 and sup.to_wire() == []


def test_a_move_the_table_does_not_allow_is_refused(harness):
    sup = harness.supervise(ready_and_waits)
    with pytest.raises(IllegalMove):
        sup._move(WorkerMove.READY)  # IDLE -> READY: only a spawning unit becomes ready
    assert sup.state is WorkerState.IDLE


# -- through a real nerved -----------------------------------------------------------------

CRASHES = """
    import os

    def compute(ctx):
        os._exit(3)
"""
FIXED = """
    def compute(ctx):
        return {"fixed": True}
"""
ROLE_CRASHES = """
    import os
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        os._exit(3)

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def _entry(daemon, kind: str, name: str) -> dict[str, Any]:
    [entry] = [
        w
        for w in daemon.rpc("status")["workers"]
        if (w["kind"], w["name"]) == (kind, name) and w["state"] != "draining"
    ]
    return entry


def test_a_crash_looping_sense_group_becomes_fatal_and_comes_back_after_a_fix(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          bad: {group: g}
        reflexes:
          - {kind: sense, sense: bad, interval: 50ms}
        """,
        {"bad": CRASHES},
        args=("--no-watch",),
    ).start()
    entry = wait_until(lambda: (e := _entry(daemon, "sense", "g"))["state"] == "fatal" and e)
    assert entry["pid"] is None and entry["restarts"] == GIVE_UP_AFTER
    assert entry["reason"] == "exit code 3"
    assert daemon.sense("bad")["worker"] == "fatal"
    assert "sense group g: fatal (exit code 3)" in daemon.ctl("status").stdout
    assert "gave up: its workers died 5 times in a row before doing any work" in daemon.log()
    # Not forked again: a reload that changes nothing leaves it fatal.
    assert daemon.rpc("reload") == {"changed": []}
    assert _entry(daemon, "sense", "g")["state"] == "fatal"
    assert daemon.log().count("sense group g: worker pid") == GIVE_UP_AFTER
    # The fix: a reload that changes its code starts it afresh.
    (daemon.root / "senses" / "bad" / "__init__.py").write_text(
        "def compute(ctx):\n    return {'fixed': True}\n"
    )
    assert daemon.rpc("reload") == {"changed": ["group g"]}
    wait_until(lambda: daemon.rpc("logs.query", source="sense", type="signal", refId="bad"))
    assert _entry(daemon, "sense", "g")["state"] == "ready"
    assert daemon.sense("bad")["worker"] == "ready"


def test_a_crash_looping_workflow_becomes_fatal_keeps_its_runs_and_finishes_them_after_a_fix(
    nerved_factory,
):
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 2, maxAttempts: 100}\n",
        workflows={"w": ROLE_CRASHES},
        args=("--no-watch",),
    ).start()
    runs = [daemon.rpc("workflow.trigger", workflow="w")["runId"] for _ in range(2)]
    wait_until(lambda: _entry(daemon, "workflow", "w")["state"] == "fatal", timeout=30)
    listed = daemon.rpc("workflow.list")
    assert {r["runId"] for r in listed} == set(runs)
    assert {(r["status"], r["worker"]) for r in listed} == {("started", "fatal")}
    assert "w" not in daemon.worker_pids("workflow")  # and none is forked for it
    (daemon.root / "workflows" / "w" / "__init__.py").write_text(
        textwrap.dedent(ROLE_CRASHES.replace("os._exit(3)", "return {'type': 'done'}"))
    )
    assert daemon.rpc("reload") == {"changed": ["workflow w code"]}
    for run_id in runs:
        run = daemon.rpc("workflow.wait", runId=run_id, timeout=30)
        assert run["status"] == "completed"
    assert _entry(daemon, "workflow", "w")["state"] in ("ready", "idle")


def test_status_shows_every_unit_with_the_state_of_its_worker(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  s: {}\nworkflows:\n  w: {}\n",
        {"s": FIXED},
        {"w": ROLE_CRASHES},
    ).start()
    wait_until(lambda: _entry(daemon, "sense", "default")["state"] == "ready")
    entry = _entry(daemon, "workflow", "w")
    assert entry == {
        "kind": "workflow", "name": "w", "pid": None, "state": "idle",
        "restarts": 0, "reason": None, "rss": None,
    }  # fmt: skip
    assert os.getpid() not in {w["pid"] for w in daemon.rpc("status")["workers"]}
