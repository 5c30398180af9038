"""A trigger is answered only once its run is on disk: the commit's fsync has returned.

nerved's state directory is on slowfs (tests/tools/slowfs.py), a FUSE file system whose
fsyncs the test holds. While the fsync of the trigger's commit is held, the client gets no
answer; released, the answer comes and the run completes. A store that answered from the
page cache (SQLite at ``synchronous=NORMAL`` or OFF, or an acknowledgement sent before the
commit) fails here, as it did when tried: that is the rule any speed work must keep
(issue 14: "a trigger is acknowledged only once durable").

The test holds a read transaction on logs.db meanwhile, so that the WAL is not begun
anew: SQLite at NORMAL syncs nothing at a commit but the header of a WAL it restarts, and
that sync alone would hold the answer too.
"""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import time
from pathlib import Path

from slowfs_support import SlowFs, slow_fs
from support import wait_until

WORKFLOW = """
    from nerved import WorkflowDefinition

    async def step(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        return {"role": "step", "prompt": None} if len(thread.events) == 1 else None

    workflow = WorkflowDefinition(roles={"step": step}, moderate=moderate)
"""
CONFIG = """
workflows:
  w: {concurrency: 2, idleTimeout: 1h}
"""


def _quiet(fs: SlowFs) -> None:
    """Until nothing has synced for 0.5 s: the last commit's and the idle checkpoint's
    syncs are done, and nothing else syncs before the next write."""
    last, since = fs.synced(), time.monotonic()
    while time.monotonic() - since < 0.5:
        time.sleep(0.05)
        if (now := fs.synced()) != last:
            last, since = now, time.monotonic()


def _read_line(sock: socket.socket, timeout: float) -> dict[str, object]:
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "nerved closed the connection"
        data += chunk
    answer: dict[str, object] = json.loads(data)
    return answer


def test_a_trigger_is_answered_only_once_its_fsync_returned(nerved_factory, tmp_path: Path):
    with slow_fs(tmp_path / "backing") as fs:
        daemon = nerved_factory(CONFIG, workflows={"w": WORKFLOW})
        daemon.state = fs.mount / "state"
        daemon.start()
        daemon.wait_run(daemon.trigger("w"))  # its worker is up: nothing is forked below
        db = daemon.state / "logs.db"
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM workflow_runs").fetchone()[0] == 1
        _quiet(fs)
        fs.hold()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.socket))
            request = {"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger",
                       "params": {"workflow": "w"}}  # fmt: skip
            sock.sendall(json.dumps(request).encode() + b"\n")
            fs.wait_waiting(1)  # the commit's fsync: held
            readable, _, _ = select.select([sock], [], [], 0.5)
            assert not readable, "the trigger was answered before its commit was on disk"
            assert fs.waiting() == 1
            fs.release()
            answer = _read_line(sock, 20)
        result = answer.get("result")
        assert isinstance(result, dict), answer
        run = daemon.wait_run(str(result["runId"]))
        assert run["status"] == "completed"
        wait_until(lambda: fs.waiting() == 0, what="no fsync held")
        reader.close()
        daemon.stop()
