"""Runs promised to a worker that is told to stop in the same turn (Flow.take_back), at
the edges: a workflow removed, and its code reloaded, while its triggers arrive.

Both reach one loop turn: a reload that only removes a workflow needs no import check, so
it applies in the turn that reads it, after a trigger pipelined before it on the same
connection; a reload that changes code applies when its probe answers, and nerved is held
(SIGSTOP) until both the probe's answer and the triggers wait for it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

from support import Nerved, wait_until

ONE_STEP = """
    import os
    from nerved import WorkflowDefinition

    def echo(prompt, ctx):
        return {"type": "echoed", "pid": os.getpid(), "code": CODE}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "echo", "prompt": event["payload"]}
        return None

    CODE = 1
    workflow = WorkflowDefinition(roles={"echo": echo}, moderate=moderate)
"""
CONFIG = "workflows:\n  w: {concurrency: 8, overflow: queue}\n"


def _pipelined(daemon: Nerved, requests: list[dict]) -> list[dict]:
    """Send every request in one write on one connection; their answers, in order."""
    lines = [
        json.dumps({"jsonrpc": "2.0", "id": i, "method": r.pop("method"), "params": r})
        for i, r in enumerate(requests)
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon.socket))
        sock.sendall(("\n".join(lines) + "\n").encode())
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    answers = {a["id"]: a for a in map(json.loads, data.splitlines())}
    return [answers[i] for i in range(len(lines))]


def test_a_run_started_in_the_turn_its_workflow_is_removed_is_finished_by_its_worker(
    nerved_factory,
) -> None:
    """On removal the worker drains: the runs it holds get drainTimeout to finish. A run
    triggered in the same turn is one of them; Flow.take_back crashed it at once ("its
    workflow was removed while it waited for a worker (None)"): its start goes after the
    commit, the stop went at once. Now the stop follows the start."""
    daemon: Nerved = nerved_factory(CONFIG, workflows={"w": ONE_STEP}, args=("--no-watch",))
    daemon.start()
    assert daemon.wait_run(daemon.trigger("w", {}))["status"] == "completed"  # a worker, warm
    (daemon.root / "nerve.yaml").write_text("{}\n")
    answers = _pipelined(
        daemon,
        [*({"method": "workflow.trigger", "workflow": "w", "payload": {"n": n}} for n in range(3)),
         {"method": "reload"}],
    )  # fmt: skip
    assert answers[-1]["result"] == {"changed": ["workflow w removed"]}, answers
    for trigger in answers[:-1]:
        assert trigger["result"]["status"] == "started", trigger
        run = daemon.wait_run(trigger["result"]["runId"])
        assert run["status"] == "completed", run
    assert "died under" not in daemon.log()
    daemon.healthy()


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def _exited(pid: int) -> bool:
    """``pid`` (a child of nerved, which is stopped) has exited: a zombie, not reaped."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_runs_triggered_in_the_turn_a_code_reload_applies_run_the_new_code(
    nerved_factory, tmp_path: Path
) -> None:
    daemon: Nerved = nerved_factory(CONFIG, workflows={"w": ONE_STEP}, args=("--no-watch",))
    daemon.start()
    first = daemon.wait_run(daemon.trigger("w", {}))
    assert first["status"] == "completed"
    old = daemon.worker_pids("workflow")["w"]
    package = daemon.root / "workflows" / "w" / "__init__.py"
    go = tmp_path / "go"
    # The new code's import waits for file ``go``: its probe answers when the test says.
    package.write_text(
        f"import time, pathlib\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        + package.read_text().replace("CODE = 1", "CODE = 2")
    )
    triggers = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    triggers.connect(str(daemon.socket))
    triggers.sendall(b'{"jsonrpc":"2.0","id":0,"method":"status"}\n')
    assert b"\n" in triggers.recv(65536)  # accepted: what it sends next is read at once
    reloading = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reloading.connect(str(daemon.socket))
    before = _children(daemon.pid)
    reloading.sendall(b'{"jsonrpc":"2.0","id":1,"method":"reload"}\n')
    [probe] = wait_until(lambda: _children(daemon.pid) - before, timeout=10, what="the probe")
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        params = [{"workflow": "w", "payload": {"n": i}} for i in range(1, 6)]
        lines = [
            json.dumps({"jsonrpc": "2.0", "id": i, "method": "workflow.trigger", "params": p})
            for i, p in enumerate(params, 1)
        ]
        triggers.sendall(("\n".join(lines) + "\n").encode())
        go.touch()  # the probe answers after the triggers were sent, and exits
        wait_until(lambda: _exited(probe), timeout=10, what="the probe's answer")
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    data = b""
    triggers.settimeout(30)
    while data.count(b"\n") < 5:
        data += triggers.recv(65536)
    reloading.settimeout(30)
    assert b"workflow w code" in reloading.recv(65536)
    ids = [json.loads(line)["result"]["runId"] for line in data.splitlines()]
    for run_id in ids:
        run = daemon.wait_run(run_id)
        assert run["status"] == "completed", run
        assert run["attempts"] == 0, run
        [step] = daemon.entries(run_id, "step_complete")
        assert step["payload"]["event"]["code"] == 2, step
        assert step["payload"]["event"]["pid"] != old
    assert "died under" not in daemon.log()
    triggers.close()
    reloading.close()
    daemon.healthy()


BIG = """
    import os, pathlib, time
    from nerved import WorkflowDefinition

    while not pathlib.Path(IMPORT_OK).exists():  # a successor of old code waits here
        time.sleep(0.005)

    def big(prompt, ctx):
        return {"type": "big", "blob": "x" * 700_000}

    def last(prompt, ctx):
        while not pathlib.Path(GO).exists():
            time.sleep(0.005)
        return {"type": "done", "pid": os.getpid(), "code": CODE}

    def moderate(thread, event):
        bigs = sum(1 for e in thread.events if e["type"] == "big")
        if event["type"] in ("thread_start", "big") and bigs < 12:
            return {"role": "big", "prompt": None}
        if event["type"] == "big":
            return {"role": "last", "prompt": None}
        return None

    CODE = 1
    workflow = WorkflowDefinition(roles={"big": big, "last": last}, moderate=moderate)
"""


def big_runs(nerved_factory, tmp_path: Path) -> tuple[Nerved, list[str], int, Path, Path]:
    """nerved with three runs of :data:`BIG` at their last role (histories of 8 MiB), the
    pid of their worker, and the files ``import-ok`` (there: a new worker may import) and
    ``go`` (there: the last role returns)."""
    import_ok, go = tmp_path / "import-ok", tmp_path / "go"
    import_ok.touch()
    code = BIG.replace("IMPORT_OK", repr(str(import_ok))).replace("GO", repr(str(go)))
    daemon: Nerved = nerved_factory(CONFIG, workflows={"w": code}, args=("--no-watch",))
    daemon.start()
    ids = [daemon.trigger("w", {"n": n}) for n in range(3)]
    wait_until(
        lambda: all(daemon.rpc("workflow.inspect", runId=r)["steps"] == 12 for r in ids),
        timeout=30,
        what="twelve big steps each",
    )
    return daemon, ids, daemon.worker_pids("workflow")["w"], import_ok, go


def kill_into_a_successor(daemon: Nerved, first: int) -> None:
    """kill -9 of the worker ``first``; back once a successor was forked (it imports)."""
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: daemon.worker_pids("workflow").get("w") not in (None, first),
        timeout=20,
        what="a successor, importing",
    )


def test_resumes_under_way_when_the_successor_of_a_killed_worker_is_drained(
    nerved_factory, tmp_path: Path
) -> None:
    """kill -9 of a worker holding runs of 8 MiB histories (a page is 4 MiB): they are resumed in a successor,
    page by page; that successor is still importing (it reads nothing) when a reload of the
    code drains it. Every resume is taken back and goes whole to the next worker, which
    runs the new code; none loses a second worker."""
    daemon, ids, first, import_ok, go = big_runs(nerved_factory, tmp_path)
    import_ok.unlink()
    package = daemon.root / "workflows" / "w" / "__init__.py"
    package.write_text(package.read_text().replace("CODE = 1", "CODE = 2")
                       .replace("while not pathlib", "while False and not pathlib"))  # fmt: skip
    kill_into_a_successor(daemon, first)
    assert daemon.rpc("reload") == {"changed": ["workflow w code"]}
    go.touch()
    import_ok.touch()  # the drained successor may go on: it holds no run
    for run_id in ids:
        run = daemon.wait_run(run_id, timeout=30)
        assert run["status"] == "completed", run
        assert run["attempts"] == 1, run  # the kill -9; not the drained successor
        assert run["steps"] == 13, run
        [done] = daemon.rpc("logs.query", runId=run_id, type="step_complete", limit=1)
        assert done["payload"]["event"]["code"] == 2, done
    daemon.healthy()


def test_resumes_under_way_when_their_workflow_is_removed_end_saying_so(
    nerved_factory, tmp_path: Path
) -> None:
    """As above, but the reload removes the workflow: the resumes under way are taken back
    and crash, saying their workflow was removed before they were sent; none waits for a
    worker that will never come, and the drained successor exits."""
    daemon, ids, first, import_ok, _go = big_runs(nerved_factory, tmp_path)
    import_ok.unlink()
    kill_into_a_successor(daemon, first)
    successor = daemon.worker_pids("workflow")["w"]
    (daemon.root / "nerve.yaml").write_text("{}\n")
    assert daemon.rpc("reload") == {"changed": ["workflow w removed"]}
    crashed = [daemon.wait_run(run_id) for run_id in ids]
    assert {run["status"] for run in crashed} == {"crashed"}, crashed
    # Each resume was under way (8 MiB, and the successor reads nothing): none was sent.
    assert {r["error"] for r in crashed} == {"its workflow was removed before it was sent"}
    import_ok.touch()
    wait_until(lambda: not os.path.exists(f"/proc/{successor}"), timeout=20, what="its exit")
    daemon.healthy()
