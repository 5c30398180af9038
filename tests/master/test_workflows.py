"""Workflow threads through a real nerved: admission, queues, steps, failures, reflexes.

The scenarios of the original TypeScript tests, against the real engine (log-store-workflow's
are in store/test_contract.py):

workflow-manager                                   here
  forks a worker, sends start under the limit      test_three_step_thread_completes...
  reuses the same worker for a second thread       test_threads_share_one_worker_per_workflow
  logs 'started' for each dispatched thread        test_queue_is_fifo, ..._share_one_worker...
  drop overflow: no start, logs 'dropped'          test_overflow_drop_drops_while_busy
  queue overflow: queues, logs 'queued'            test_queue_is_fifo
  maxQueue drops the oldest                        test_max_queue_drops_the_oldest_queued_run
  completed / failed thread dequeues the next      test_queue_is_fifo, test_failed_thread_frees...
  stop() shuts every worker down                   test_status_counts_and_graceful_stop...
  ignores starts after stop()                      test_no_trigger_is_taken_once_stopping
  unknown workflow does nothing                    test_unknown_workflow_is_not_found
kernel-workflow
  a signal on a workflow reflex starts a thread    test_sense_signal_starts_a_thread_with_its_payload
  the signal's payload is the trigger payload      (same)
  a sense not in 'on' starts nothing               (same: 'other')
  reload adds / removes workflow reflexes          test_reload_adds_and_removes_workflow_reflexes
  shutdown stops workflow workers                  test_status_counts_and_graceful_stop...
  health includes activeWorkflows                  test_concurrency_limit_is_used_and_never_exceeded
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from support import Nerved, assert_runs_match_logs, pid_alive, wait_until

from nerved import wire
from nerved.worker.timebox import MODERATOR_KILL, MODERATOR_TIMEOUT

# A workflow of three steps whose events carry what each role saw.
THREE_STEPS = """
    from nerved import WorkflowDefinition

    def scan(prompt, ctx):
        ctx.log("scanning %s" % prompt["target"])
        return {"type": "scanned", "found": [1, 2, 3], "target": prompt["target"]}

    async def clean(prompt, ctx):
        return {"type": "cleaned", "count": len(prompt["found"])}

    def report(prompt, ctx):
        return {"type": "reported", "text": "cleaned %d" % prompt["count"]}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "scan", "prompt": {"target": (event["payload"] or {}).get("target", "/")}}
        if event["type"] == "scanned":
            return {"role": "clean", "prompt": {"found": event["found"]}}
        if event["type"] == "cleaned":
            return {"role": "report", "prompt": {"count": event["count"]}}
        return None

    workflow = WorkflowDefinition(
        roles={"scan": scan, "clean": clean, "report": report}, moderate=moderate
    )
"""

# One role that holds its slot until a gate file exists, counting how many run at once.
GATED = """
    import asyncio, os
    from nerved import WorkflowDefinition

    current = 0
    peak = 0

    async def work(prompt, ctx):
        global current, peak
        ctx.log("waiting for the gate")
        current += 1
        peak = max(peak, current)
        try:
            while not os.path.exists(prompt["gate"]):
                await asyncio.sleep(0.01)
        finally:
            current -= 1
        return {"type": "worked", "peak": peak, "n": prompt["n"]}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""


def start(nerved_factory, workflows_yaml: str, workflows: dict[str, str], senses_yaml: str = "",
          senses: dict[str, str] | None = None) -> Nerved:  # fmt: skip
    config = f"{senses_yaml}\nworkflows:\n{workflows_yaml}"
    return nerved_factory(config, senses, workflows).start()


def trigger(daemon: Nerved, workflow: str, payload=None) -> dict:
    return daemon.rpc("workflow.trigger", workflow=workflow, payload=payload)


def wait_run(daemon: Nerved, run_id: str, timeout: float = 20) -> dict:
    with daemon.client(timeout=timeout + 5) as client:
        return client.call("workflow.wait", {"runId": run_id, "timeout": timeout})


def db(daemon: Nerved):
    return daemon.state / "logs.db"


# -- the thread loop -------------------------------------------------------------------------


def test_three_step_thread_completes_and_inspect_shows_what_roles_returned(nerved_factory):
    daemon = start(nerved_factory, "  cleanup: {}\n", {"cleanup": THREE_STEPS})
    answer = trigger(daemon, "cleanup", {"target": "/tmp"})
    assert answer["status"] == "started"
    run = wait_run(daemon, answer["runId"])
    assert run["status"] == "completed" and run["steps"] == 3 and run["error"] is None
    detail = daemon.rpc("workflow.inspect", runId=answer["runId"][:8])
    assert detail["triggerPayload"] == {"target": "/tmp"}
    types = [e["type"] for e in detail["events"]]
    assert types == [
        "started",
        "log",
        "step_complete",
        "step_complete",
        "step_complete",
        "completed",
    ]
    steps = [e["payload"] for e in detail["events"] if e["type"] == "step_complete"]
    assert steps == [
        {"role": "scan", "prompt": {"target": "/tmp"},
         "event": {"type": "scanned", "found": [1, 2, 3], "target": "/tmp"}},
        {"role": "clean", "prompt": {"found": [1, 2, 3]}, "event": {"type": "cleaned", "count": 3}},
        {"role": "report", "prompt": {"count": 3}, "event": {"type": "reported", "text": "cleaned 3"}},
    ]  # fmt: skip
    assert detail["events"][1]["payload"] == "scanning /tmp"
    assert_runs_match_logs(db(daemon))


def test_moderator_sees_every_event_in_order(nerved_factory):
    daemon = start(
        nerved_factory,
        "  echo: {}\n",
        {
            "echo": """
            from nerved import WorkflowDefinition

            def step(prompt, ctx):
                return {"type": "step", "i": prompt}

            def moderate(thread, event):
                assert thread.events[-1] == event
                assert thread.events[0] == {"type": "thread_start", "payload": "p"}
                i = len(thread.events) - 1
                if i == 4:
                    assert [e["i"] for e in thread.events[1:]] == [0, 1, 2, 3]
                    return None
                return {"role": "step", "prompt": i}

            workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
            """
        },
    )
    run = wait_run(daemon, trigger(daemon, "echo", "p")["runId"])
    assert run["status"] == "completed", run["error"]
    assert run["steps"] == 4


FAILING = """
    from nerved import WorkflowDefinition

    def moderate(thread, event):
        kind = thread.events[0]["payload"]
        if event["type"] != "thread_start":
            return None
        if kind == "raise":
            raise KeyError("no-such-key")
        if kind == "garbage":
            return 42
        if kind == "prompt":
            return {"role": "ok", "prompt": {1, 2}}
        if kind == "unknown":
            return {"role": "nobody", "prompt": None}
        return {"role": kind, "prompt": None}

    def ok(prompt, ctx):
        return {"type": "ok"}

    def boom(prompt, ctx):
        raise RuntimeError("the disk is on fire")

    async def notdict(prompt, ctx):
        return ["not", "a", "dict"]

    def notype(prompt, ctx):
        return {"kind": "no type"}

    def notjson(prompt, ctx):
        return {"type": "x", "value": object()}

    roles = {"ok": ok, "boom": boom, "notdict": notdict, "notype": notype, "notjson": notjson}
    workflow = WorkflowDefinition(roles=roles, moderate=moderate)
"""


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("boom", "role 'boom' raised RuntimeError: the disk is on fire"),
        ("unknown", "moderator chose unknown role 'nobody' (roles: boom, notdict, notjson, notype, ok)"),
        ("notdict", "role 'notdict' returned list, not an event"),
        ("notype", "role 'notype' returned an event without a string 'type'"),
        ("notjson", "the event role 'notjson' returned is not a JSON value nerve can keep: a object"),
        ("raise", "moderator raised KeyError: 'no-such-key'"),
        ("garbage", "moderator returned 42; expected None,"),
        ("prompt", "the moderator's prompt for role 'ok' is not a JSON value nerve can keep: a set"),
    ],
)  # fmt: skip
def test_every_failure_path_fails_the_thread_with_its_reason(nerved_factory, kind, message):
    daemon = start(nerved_factory, "  f: {}\n", {"f": FAILING})
    run = wait_run(daemon, trigger(daemon, "f", kind)["runId"])
    assert run["status"] == "failed"
    assert message in run["error"]
    assert daemon.rpc("status")["workers"], "the worker survives a failed thread"
    assert_runs_match_logs(db(daemon))


# A moderator that does not return, in the ways one can fail to.
RUNAWAY = """
    import asyncio, collections.abc, itertools, os, signal
    from nerved import WorkflowDefinition

    # As a library using the sigwait-thread pattern would, at import: the bounds' signals
    # are blocked in the main thread, before any role thread exists to take them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGVTALRM})

    class Endless(collections.abc.Mapping):  # a decision whose reading never returns
        def __getitem__(self, key):
            spin()

        def __iter__(self):
            return iter(())

        def __len__(self):
            return 1

        def get(self, key, default=None):
            spin()

    async def wait(prompt, ctx):
        while not os.path.exists(prompt["gate"]):
            await asyncio.sleep(0.01)
        return {"type": "done"}

    def spin():
        while True:
            pass

    def moderate(thread, event):
        payload = thread.events[0]["payload"]
        if event["type"] != "thread_start":
            return None
        if payload["kind"] == "loop":
            spin()
        if payload["kind"] == "swallow":  # catches the first interruption, and loops on
            try:
                spin()
            except BaseException:
                pass
            spin()
        if payload["kind"] == "late":  # catches it and decides all the same, too late
            try:
                spin()
            except BaseException:
                return {"role": "wait", "prompt": payload}
        if payload["kind"] == "convert":  # makes it an exception of its own
            try:
                spin()
            except BaseException:
                raise ValueError("interrupted")
        if payload["kind"] == "mapping":
            return Endless()
        if payload["kind"] == "huge":  # one list shared a million times: seconds to encode
            row = [0] * 1000
            return {"role": "wait", "prompt": [[row] * 1000] * 80}
        if payload["kind"] == "stuck":  # in C code that holds the GIL and checks no signal
            any(itertools.repeat(False))
        if payload["kind"] == "blocks":  # blocks the bounds' signals itself, then spins
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGVTALRM})
            spin()
        return {"role": "wait", "prompt": payload}

    workflow = WorkflowDefinition(roles={"wait": wait}, moderate=moderate)
"""


@pytest.mark.parametrize("kind", ["loop", "swallow", "late", "convert", "mapping"])
def test_a_moderator_that_does_not_return_fails_its_run_alone(nerved_factory, tmp_path, kind):
    """The moderator runs on the worker's loop: one that loops would freeze every thread of
    its workflow. Past MODERATOR_TIMEOUT it is interrupted, whatever it catches, and its run
    fails with the reason; the worker serves on and its other thread completes."""
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  r: {concurrency: 4}\n", {"r": RUNAWAY})
    other = trigger(daemon, "r", {"kind": "ok", "gate": str(gate)})["runId"]
    pid = wait_until(lambda: daemon.worker_pids("workflow").get("r"))
    run = wait_run(daemon, trigger(daemon, "r", {"kind": kind, "gate": str(gate)})["runId"])
    assert run["status"] == "failed"
    assert run["error"].startswith(f"moderator did not return within {MODERATOR_TIMEOUT:g}s")
    assert "a moderator must be pure and quick" in run["error"]
    if kind in ("loop", "convert"):
        assert "(it was at " in run["error"] and "/workflows/r/__init__.py:" in run["error"]
    assert run["updatedAt"] - run["createdAt"] < MODERATOR_KILL * 1000
    assert daemon.worker_pids("workflow")["r"] == pid, "the worker was not killed"
    gate.touch()
    assert wait_run(daemon, other)["status"] == "completed"
    assert daemon.rpc("workflow.inspect", runId=other)["attempts"] == 0


@pytest.mark.parametrize(
    ("kind", "death"),
    [
        (
            "stuck",
            f"a moderator ran past {MODERATOR_KILL:g}s and could not be interrupted: killed by SIGVTALRM",
        ),
        (
            "huge",
            f"a moderator ran past {MODERATOR_KILL:g}s and could not be interrupted: killed by SIGVTALRM",
        ),
        ("blocks", "killed by SIGKILL"),
    ],
)
def test_a_moderator_stuck_in_c_code_ends_its_worker_and_its_run_crashes(
    nerved_factory, tmp_path, kind, death
):
    """A signal handler cannot interrupt a C loop that holds the GIL (nor the encoding of a
    prompt the moderator returned, which the bound covers too): past MODERATOR_KILL the
    worker ends (every thread's traceback in the log), the crash rules apply, the run ends
    crashed after maxAttempts and the workflow and the daemon serve on. A moderator that
    blocks the bound's signals itself is killed by the last resort, SIGKILL."""
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  r: {maxAttempts: 2}\n", {"r": RUNAWAY})
    run = wait_run(daemon, trigger(daemon, "r", {"kind": kind})["runId"], timeout=30)
    assert run["status"] == "crashed" and run["attempts"] == 2
    assert run["error"] == f"its worker died 2 times under it (last: {death})"
    if kind == "stuck":
        log = daemon.log()
        assert log.count("in moderate\n") >= 2 and "/workflows/r/__init__.py" in log
    gate.touch()
    ok = wait_run(daemon, trigger(daemon, "r", {"kind": "ok", "gate": str(gate)})["runId"])
    assert ok["status"] == "completed"
    assert_runs_match_logs(db(daemon))


# What a role hands back, and what it logs, is checked in the worker where it enters.
UNKEEPABLE = """
    from nerved import WorkflowDefinition

    def nest(depth):
        value = 1
        for _ in range(depth):
            value = [value]
        return value

    EVENTS = {
        "deep": lambda: {"type": "x", "v": nest(500)},
        "nan": lambda: {"type": "x", "v": float("nan")},
        "big": lambda: {"type": "x", "v": "x" * (2 << 20)},
        "set": lambda: {"type": "x", "v": {1, 2}},
        "deepest": lambda: {"type": "x", "v": nest(99)},  # 100 levels: as deep as may be
    }

    def role(prompt, ctx):
        if prompt == "surrogate":
            raise RuntimeError("bad \\ud800 byte")
        if prompt == "log":
            ctx.log("x" * (1 << 20))
            ctx.log("lone \\ud800 surrogate")
            return {"type": "logged"}
        return EVENTS[prompt]()

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "role", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"role": role}, moderate=moderate)
"""


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("deep", "is not a JSON value nerve can keep: nested deeper than 100 levels (at v[0]"),
        ("nan", "is not a JSON value nerve can keep: NaN is not JSON (at v)"),
        ("big", "is 2.0 MiB; at most 1.0 MiB is kept"),
        ("set", "is not a JSON value nerve can keep: a set is not a JSON value (at v)"),
    ],
)
def test_an_event_nerve_cannot_keep_fails_its_run_and_the_worker_serves_on(
    nerved_factory, kind, reason
):
    daemon = start(nerved_factory, "  u: {}\n", {"u": UNKEEPABLE})
    run = wait_run(daemon, trigger(daemon, "u", kind)["runId"], timeout=10)
    assert (run["status"], run["steps"], run["attempts"]) == ("failed", 0, 0)
    assert run["error"].startswith("the event role 'role' returned ")
    assert reason in run["error"]
    pid = daemon.worker_pids("workflow")["u"]
    assert wait_run(daemon, trigger(daemon, "u", "deepest")["runId"])["status"] == "completed"
    assert daemon.worker_pids("workflow")["u"] == pid


def test_an_exception_message_with_a_lone_surrogate_fails_the_run_readably(nerved_factory):
    daemon = start(nerved_factory, "  u: {}\n", {"u": UNKEEPABLE})
    run = wait_run(daemon, trigger(daemon, "u", "surrogate")["runId"], timeout=5)
    assert run["status"] == "failed"
    assert run["error"].startswith("role 'role' raised RuntimeError: bad \ufffd byte (at ")


def test_log_lines_are_kept_truncated_and_sanitised(nerved_factory):
    daemon = start(nerved_factory, "  u: {}\n", {"u": UNKEEPABLE})
    run_id = trigger(daemon, "u", "log")["runId"]
    assert wait_run(daemon, run_id, timeout=5)["status"] == "completed"
    events = daemon.rpc("workflow.inspect", runId=run_id)["events"]
    long, lone = [e["payload"] for e in events if e["type"] == "log"]
    assert long.startswith("xxx") and long.endswith("… [truncated: 1.0 MiB in all]")
    assert len(long.encode()) <= wire.MAX_LOG_LINE
    assert lone == "lone \ufffd surrogate"


HOARDER = """
    import os, time
    from nerved import WorkflowDefinition

    def hoard(prompt, ctx):
        gate = prompt.get("gate")
        while gate and not os.path.exists(gate):
            time.sleep(0.01)
        return {"type": "hoard", "data": "x" * prompt["size"]}

    def moderate(thread, event):
        job = thread.events[0]["payload"]
        n = len(thread.events) - 1
        if n >= job["steps"]:
            return None
        gate = job.get("gate") if n == job["steps"] - 1 else None
        return {"role": "hoard", "prompt": {"size": job["size"], "gate": gate}}

    workflow = WorkflowDefinition(roles={"hoard": hoard}, moderate=moderate)
"""


def test_a_step_past_the_history_limit_fails_the_run_and_is_not_recorded(nerved_factory):
    daemon = start(nerved_factory, "  h: {maxSteps: 100, idleTimeout: 300ms}\n", {"h": HOARDER})
    size = 1000 * 1024
    run = wait_run(daemon, trigger(daemon, "h", {"size": size, "steps": 80})["runId"], 60)
    assert run["status"] == "failed"
    assert f"would take its history past {wire.size_text(wire.MAX_HISTORY)}" in run["error"]
    assert run["steps"] == 65  # 65 steps of 1000 KiB (and a record around each) fit in 64 MiB
    # The worker dropped the thread: it serves the next run, then leaves when idle.
    assert (
        wait_run(daemon, trigger(daemon, "h", {"size": 1, "steps": 1})["runId"])["status"]
        == "completed"
    )
    wait_until(lambda: "h" not in daemon.worker_pids("workflow"), what="the idle worker to go")
    assert_runs_match_logs(db(daemon))


def test_a_run_with_a_large_history_resumes_after_its_worker_is_killed(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  h: {maxAttempts: 2}\n", {"h": HOARDER})
    job = {"size": 1000 * 1024, "steps": 21, "gate": str(gate)}
    run_id = trigger(daemon, "h", job)["runId"]
    wait_until(lambda: daemon.rpc("workflow.list")[0]["steps"] == 20, timeout=30)
    os.kill(daemon.worker_pids("workflow")["h"], signal.SIGKILL)
    wait_until(lambda: "died under 1 run (" in daemon.log())
    gate.touch()
    run = wait_run(daemon, run_id, 30)
    assert (run["status"], run["steps"], run["attempts"]) == ("completed", 21, 1)


def test_max_steps_fails_a_thread_that_loops(nerved_factory):
    loop = """
        from nerved import WorkflowDefinition
        def again(prompt, ctx):
            return {"type": "again"}
        def moderate(thread, event):
            return {"role": "again", "prompt": None}
        workflow = WorkflowDefinition(roles={"again": again}, moderate=moderate)
    """
    daemon = start(nerved_factory, "  loop: {maxSteps: 5}\n", {"loop": loop})
    run = wait_run(daemon, trigger(daemon, "loop")["runId"])
    assert run["status"] == "failed" and run["steps"] == 5
    assert "exceeded maxSteps (5)" in run["error"]


def test_package_that_does_not_import_fails_its_threads_and_the_daemon_stays(nerved_factory):
    daemon = start(
        nerved_factory,
        "  broken: {}\n  fine: {}\n",
        {"broken": "import no_such_module_qq\n", "fine": THREE_STEPS},
    )
    runs = [trigger(daemon, "broken")["runId"] for _ in range(3)]
    for run_id in runs:
        run = wait_run(daemon, run_id)
        assert run["status"] == "failed"
        assert "No module named 'no_such_module_qq'" in run["error"]
    assert daemon.log().count("workflow broken: workflows/broken failed to import") == 1
    assert wait_run(daemon, trigger(daemon, "fine")["runId"])["status"] == "completed"


# -- admission -------------------------------------------------------------------------------


def test_concurrency_limit_is_used_and_never_exceeded(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  g: {concurrency: 3, overflow: queue}\n", {"g": GATED})
    runs = [trigger(daemon, "g", {"gate": str(gate), "n": i})["runId"] for i in range(10)]
    status = wait_until(lambda: (s := daemon.rpc("status"))["activeWorkflows"] == 3 and s)
    assert status["queuedWorkflows"] == 7
    # The three roles are running (not merely started) before the gate opens.
    wait_until(lambda: len(daemon.rpc("logs.query", source="workflow", type="log")) == 3)
    gate.touch()
    peaks = []
    for run_id in runs:
        assert wait_run(daemon, run_id)["status"] == "completed"
        events = daemon.rpc("workflow.inspect", runId=run_id)["events"]
        peaks += [e["payload"]["event"]["peak"] for e in events if e["type"] == "step_complete"]
    assert max(peaks) == 3
    assert_runs_match_logs(db(daemon))


def test_queue_is_fifo(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  g: {concurrency: 1, overflow: queue}\n", {"g": GATED})
    runs = [trigger(daemon, "g", {"gate": str(gate), "n": i}) for i in range(8)]
    assert [r["status"] for r in runs] == ["started"] + ["queued"] * 7
    gate.touch()
    for run in runs:
        wait_run(daemon, run["runId"])
    started = daemon.rpc("logs.query", source="workflow", type="started", limit=100)
    assert [e["payload"]["n"] for e in started] == list(range(8))


def test_max_queue_drops_the_oldest_queued_run(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(
        nerved_factory, "  g: {concurrency: 1, overflow: queue, maxQueue: 2}\n", {"g": GATED}
    )
    runs = [trigger(daemon, "g", {"gate": str(gate), "n": i})["runId"] for i in range(5)]
    # 0 runs; 1 and 2 queue; 3 evicts 1; 4 evicts 2.
    for evicted in runs[1:3]:
        run = daemon.rpc("workflow.inspect", runId=evicted)
        assert run["status"] == "dropped"
        assert "queue of g was full (maxQueue 2) and this was its oldest run" in run["error"]
    assert daemon.rpc("status")["queuedWorkflows"] == 2
    gate.touch()
    finals = {r: wait_run(daemon, r)["status"] for r in runs}
    assert [finals[r] for r in runs] == [
        "completed",
        "dropped",
        "dropped",
        "completed",
        "completed",
    ]
    assert_runs_match_logs(db(daemon))


def test_overflow_drop_drops_while_busy(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  g: {concurrency: 1, overflow: drop}\n", {"g": GATED})
    first = trigger(daemon, "g", {"gate": str(gate), "n": 0})
    others = [trigger(daemon, "g", {"gate": str(gate), "n": i}) for i in (1, 2)]
    assert first["status"] == "started"
    assert [o["status"] for o in others] == ["dropped", "dropped"]
    dropped = daemon.rpc("workflow.inspect", runId=others[0]["runId"])
    assert "concurrency limit (1) with overflow: drop" in dropped["error"]
    assert dropped["triggerPayload"] == {"gate": str(gate), "n": 1}
    gate.touch()
    assert wait_run(daemon, first["runId"])["status"] == "completed"
    assert daemon.rpc("workflow.list", status="dropped") != []
    assert_runs_match_logs(db(daemon))


def test_failed_thread_frees_its_slot_for_the_next_queued(nerved_factory):
    daemon = start(nerved_factory, "  f: {concurrency: 1, overflow: queue}\n", {"f": FAILING})
    runs = [trigger(daemon, "f", kind)["runId"] for kind in ("boom", "ok", "boom", "ok")]
    assert [wait_run(daemon, r)["status"] for r in runs] == ["failed", "completed"] * 2


def test_a_refused_trigger_changes_nothing_even_with_a_full_queue(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(
        nerved_factory, "  g: {concurrency: 1, overflow: queue, maxQueue: 2}\n", {"g": GATED}
    )
    runs = [trigger(daemon, "g", {"gate": str(gate), "n": i}) for i in range(3)]
    assert [r["status"] for r in runs] == ["started", "queued", "queued"]
    line = b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger",'
    line += b' "params": {"workflow": "g", "payload": {"n": NaN}}}\n'
    with socket.socket(socket.AF_UNIX) as sock:  # nervectl would refuse to send it
        sock.settimeout(10)
        sock.connect(str(daemon.socket))
        sock.sendall(line)
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["error"]["code"] == -32602
    assert "param 'payload'" in answer["error"]["message"]
    assert [r["status"] for r in daemon.rpc("workflow.list")] == ["queued", "queued", "started"]
    assert daemon.rpc("workflow.list", status="dropped") == []
    gate.touch()
    assert [wait_run(daemon, r["runId"])["status"] for r in runs] == ["completed"] * 3


def test_unknown_workflow_is_not_found(nerved_factory):
    daemon = start(nerved_factory, "  f: {}\n", {"f": FAILING})
    with daemon.client() as client, pytest.raises(Exception) as info:
        client.call("workflow.trigger", {"workflow": "nope"})
    assert getattr(info.value, "code", None) == -32001
    assert daemon.rpc("workflow.list", all=True) == []


def test_one_worker_serves_many_threads_and_leaves_when_idle(nerved_factory):
    daemon = start(
        nerved_factory, "  w: {concurrency: 4, idleTimeout: 300ms}\n", {"w": THREE_STEPS}
    )
    runs = [trigger(daemon, "w")["runId"] for _ in range(6)]
    pid = daemon.worker_pids("workflow")["w"]
    for run_id in runs:
        assert wait_run(daemon, run_id)["status"] == "completed"
    wait_until(lambda: "w" not in daemon.worker_pids("workflow"), what="the idle worker to leave")
    assert not pid_alive(pid)
    assert wait_run(daemon, trigger(daemon, "w")["runId"])["status"] == "completed"


# -- listing, waiting ------------------------------------------------------------------------


def test_list_filters_and_wait_timeout(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(
        nerved_factory, "  g: {concurrency: 1}\n  t: {}\n", {"g": GATED, "t": THREE_STEPS}
    )
    done = trigger(daemon, "t")["runId"]
    wait_run(daemon, done)
    held = trigger(daemon, "g", {"gate": str(gate), "n": 0})["runId"]
    waiting = trigger(daemon, "g", {"gate": str(gate), "n": 1})["runId"]
    active = daemon.rpc("workflow.list")
    assert [r["runId"] for r in active] == [waiting, held]
    assert [r["status"] for r in active] == ["queued", "started"]
    assert [r["runId"] for r in daemon.rpc("workflow.list", all=True)] == [waiting, held, done]
    assert [r["runId"] for r in daemon.rpc("workflow.list", status="completed")] == [done]
    assert [r["runId"] for r in daemon.rpc("workflow.list", workflow="t", all=True)] == [done]
    assert len(daemon.rpc("workflow.list", all=True, limit=1)) == 1
    with daemon.client() as client, pytest.raises(Exception) as info:
        client.call("workflow.wait", {"runId": held, "timeout": 0.2})
    assert "timed out after 0.2s" in str(info.value)
    gate.touch()
    assert wait_run(daemon, waiting)["status"] == "completed"


# -- the signal loop starts threads ---------------------------------------------------------


def test_sense_signal_starts_a_thread_with_its_payload(nerved_factory):
    daemon = nerved_factory(
        """
        senses:
          disk: {}
          other: {}
        reflexes:
          - {kind: workflow, workflow: cleanup, on: [disk]}
        workflows:
          cleanup: {overflow: queue}
        """,
        {
            "disk": "def compute(ctx):\n    return {'target': '/var'}\n",
            "other": "def compute(ctx):\n    return {'target': '/other'}\n",
        },
        {"cleanup": THREE_STEPS},
    ).start()
    daemon.rpc("sense.trigger", sense="other")
    daemon.rpc("sense.trigger", sense="disk")
    run = wait_until(lambda: daemon.rpc("workflow.list", all=True))
    assert len(run) == 1
    final = wait_run(daemon, run[0]["runId"])
    assert final["status"] == "completed"
    detail = daemon.rpc("workflow.inspect", runId=final["runId"])
    assert detail["triggerPayload"] == {"target": "/var"}
    # other's signal started nothing.
    assert len(daemon.rpc("workflow.list", all=True)) == 1


def test_thread_logs_never_reach_the_bus(nerved_factory):
    """Only sense signals enter the bus: runs of a workflow never trigger the reflexes."""
    daemon = nerved_factory(
        """
        senses:
          starter: {}
          listener: {}
        reflexes:
          - {kind: workflow, workflow: cleanup, on: [starter]}
          - {kind: sense, sense: listener, on: [starter]}
        workflows:
          cleanup: {}
        """,
        {"starter": "def compute(ctx):\n    return {}\n",
         "listener": "def compute(ctx):\n    return None\n"},
        {"cleanup": THREE_STEPS},
    ).start()  # fmt: skip
    daemon.rpc("sense.trigger", sense="starter")
    run = wait_until(lambda: daemon.rpc("workflow.list", all=True))[0]
    wait_run(daemon, run["runId"])
    for _ in range(5):
        wait_run(daemon, trigger(daemon, "cleanup")["runId"])
    assert daemon.sense("listener")["computes"] == 1  # from the one signal of starter
    assert len(daemon.rpc("workflow.list", all=True)) == 6


def test_reload_adds_and_removes_workflow_reflexes(nerved_factory):
    daemon = nerved_factory(
        "senses:\n  s: {}\nworkflows:\n  a: {}\n  b: {}\n"
        "reflexes:\n  - {kind: workflow, workflow: a, on: [s]}\n",
        {"s": "def compute(ctx):\n    return {'from': 's'}\n"},
        {"a": THREE_STEPS, "b": THREE_STEPS},
        args=("--no-watch",),
    ).start()
    daemon.rpc("sense.trigger", sense="s")
    wait_until(lambda: daemon.rpc("workflow.list", workflow="a", all=True))
    (daemon.root / "nerve.yaml").write_text(
        "senses:\n  s: {}\nworkflows:\n  a: {}\n  b: {}\n"
        "reflexes:\n  - {kind: workflow, workflow: b, on: [s]}\n"
    )
    assert daemon.rpc("reload") == {"changed": ["reflexes"]}
    daemon.rpc("sense.trigger", sense="s")
    wait_until(lambda: daemon.rpc("workflow.list", workflow="b", all=True))
    assert len(daemon.rpc("workflow.list", workflow="a", all=True)) == 1


def test_status_counts_and_graceful_stop_of_workflow_workers(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  g: {concurrency: 2, drainTimeout: 1s}\n", {"g": GATED})
    for i in range(3):
        trigger(daemon, "g", {"gate": str(gate), "n": i})
    status = wait_until(lambda: (s := daemon.rpc("status"))["activeWorkflows"] == 2 and s)
    assert status["queuedWorkflows"] == 1
    workers = daemon.worker_pids("workflow")
    assert list(workers) == ["g"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert not pid_alive(workers["g"])
    # Unfinished threads stay started (and queued stays queued) for the next start.
    with_rows = {r["status"] for r in _rows(daemon)}
    assert with_rows == {"started", "queued"}


def _rows(daemon: Nerved) -> list[dict]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db(daemon)}?mode=ro", uri=True)
    try:
        return [
            {"runId": r[0], "status": r[1], "payload": json.loads(r[2])}
            for r in conn.execute("SELECT run_id, status, trigger_payload FROM workflow_runs")
        ]
    finally:
        conn.close()


def test_runs_resume_after_a_restart(nerved_factory, tmp_path):
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  g: {concurrency: 1, drainTimeout: 500ms}\n", {"g": GATED})
    runs = [trigger(daemon, "g", {"gate": str(gate), "n": i})["runId"] for i in range(3)]
    assert daemon.stop() == 0
    gate.touch()
    daemon.start()
    assert [wait_run(daemon, r)["status"] for r in runs] == ["completed"] * 3
    started = daemon.rpc("logs.query", source="workflow", type="started", limit=100)
    assert [e["refId"] for e in started] == runs  # FIFO kept across the restart
    assert "recovered 1 started, 0 waiting and 2 queued runs" in daemon.log()
    assert os.path.exists(db(daemon))
    assert_runs_match_logs(db(daemon))


PIDS = """
    import os
    from nerved import WorkflowDefinition

    def who(prompt, ctx):
        return {"type": "who", "pid": os.getpid()}

    def moderate(thread, event):
        return {"role": "who", "prompt": None} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"who": who}, moderate=moderate)
"""


def test_threads_share_one_worker_per_workflow(nerved_factory):
    """workflow-manager: 'reuses the same worker for a second thread under the limit'."""
    daemon = start(nerved_factory, "  a: {concurrency: 2}\n  b: {}\n", {"a": PIDS, "b": PIDS})
    pids = {}
    for workflow in ("a", "a", "b"):
        run = wait_run(daemon, trigger(daemon, workflow)["runId"])
        events = daemon.rpc("workflow.inspect", runId=run["runId"])["events"]
        assert events[0]["type"] == "started"  # 'logs a started event for each thread'
        pid = next(e["payload"]["event"]["pid"] for e in events if e["type"] == "step_complete")
        pids.setdefault(workflow, set()).add(pid)
    assert len(pids["a"]) == 1 and len(pids["b"]) == 1 and pids["a"] != pids["b"]
    assert daemon.worker_pids("workflow") == {"a": pids["a"].pop(), "b": pids["b"].pop()}


def test_no_trigger_is_taken_once_stopping(nerved_factory, tmp_path):
    """workflow-manager: 'ignores startWorkflow calls after stop()' (here: -32002)."""
    gate = tmp_path / "gate"
    daemon = start(nerved_factory, "  g: {drainTimeout: 10s}\n", {"g": GATED})
    run_id = trigger(daemon, "g", {"gate": str(gate), "n": 0})["runId"]
    wait_until(lambda: len(daemon.rpc("workflow.inspect", runId=run_id)["events"]) > 1,
               what="the role to be running")  # fmt: skip
    with daemon.client() as client:  # connected before the listener closes
        client.call("status")
        daemon.signal(signal.SIGTERM)
        daemon.wait_notify("STOPPING=1")
        with pytest.raises(Exception) as info:
            client.call("workflow.trigger", {"workflow": "g"})
        assert getattr(info.value, "code", None) == -32002
    gate.touch()  # the running step finishes; it was the last one, so the thread completes
    assert daemon.wait(15) == 0
    assert {r["runId"]: r["status"] for r in _rows(daemon)} == {run_id: "completed"}


def test_the_moderator_sees_events_and_roles_see_prompts_as_they_are_kept(nerved_factory):
    """Through JSON and back, the first time as on every replay: a tuple is a list and an
    integer key a string, so that a resumed run's moderator decides exactly as the first."""
    kept = """
        from nerved import WorkflowDefinition

        def pair(prompt, ctx):
            assert prompt == {"seen": [1, 2], "keys": ["1"]}, prompt
            return {"type": "paired", "pair": (1, 2), "by": {1: "a"}}

        def moderate(thread, event):
            if event["type"] == "thread_start":
                return {"role": "pair", "prompt": {"seen": (1, 2), "keys": ("1",)}}
            assert event == {"type": "paired", "pair": [1, 2], "by": {"1": "a"}}, event
            return None

        workflow = WorkflowDefinition(roles={"pair": pair}, moderate=moderate)
    """
    daemon = start(nerved_factory, "  kept: {}\n", {"kept": kept})
    run = wait_run(daemon, trigger(daemon, "kept")["runId"])
    assert run["status"] == "completed", run["error"]


def test_sync_roles_run_as_many_at_once_as_the_concurrency_allows(nerved_factory, tmp_path):
    """Ten runs whose sync role blocks until all ten are in it: with threads capped at the
    default pool size (cpus + 4: 6 here) they would wait forever."""
    barrier = """
        import os, time
        from nerved import WorkflowDefinition

        def meet(prompt, ctx):
            open(os.path.join(prompt["dir"], ctx.run_id), "w").close()
            while len(os.listdir(prompt["dir"])) < 10:
                time.sleep(0.01)
            return {"type": "met"}

        def moderate(thread, event):
            if event["type"] == "thread_start":
                return {"role": "meet", "prompt": event["payload"]}
            return None

        workflow = WorkflowDefinition(roles={"meet": meet}, moderate=moderate)
    """
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    daemon = start(nerved_factory, "  m: {concurrency: 10}\n", {"m": barrier})
    runs = [trigger(daemon, "m", {"dir": str(meeting)})["runId"] for _ in range(10)]
    for run_id in runs:
        assert wait_run(daemon, run_id, timeout=15)["status"] == "completed"
