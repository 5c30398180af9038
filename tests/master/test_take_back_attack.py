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


def test_a_run_whose_workflow_is_removed_before_its_start_went_says_so(
    nerved_factory,
) -> None:
    daemon: Nerved = nerved_factory(CONFIG, workflows={"w": ONE_STEP}, args=("--no-watch",))
    daemon.start()
    assert daemon.wait_run(daemon.trigger("w", {}))["status"] == "completed"  # a worker, warm
    (daemon.root / "nerve.yaml").write_text("{}\n")
    trigger, reload = _pipelined(
        daemon, [{"method": "workflow.trigger", "workflow": "w"}, {"method": "reload"}]
    )
    assert reload["result"] == {"changed": ["workflow w removed"]}, reload
    assert trigger["result"]["status"] == "started", trigger
    run = daemon.wait_run(trigger["result"]["runId"])
    assert run["status"] == "crashed", run
    # Its worker never heard of it: no "worker" reason is left over from a past death.
    assert "None" not in run["error"], run
    assert "removed" in run["error"], run
    daemon.healthy()
