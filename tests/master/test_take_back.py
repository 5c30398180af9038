"""A worker told to stop before a run's start reached it does not take the run with it.

A run's ``start`` goes to its worker after the turn's commit; a ``stop`` (the worker has a
role stuck in it, or its code was reloaded) goes at once. When both fall in one turn, the
worker heard ``stop`` first, exited with nothing running, and the run it was given crashed
with it ("its worker died (exit code 0)"): the fuzz test found it. Now the drained worker
gives back what it was promised and not sent, and the run starts in its successor.

The turn is made by hand: nerved is stopped (SIGSTOP) while a trigger waits on a
connection it has accepted and, after it, a worker's ``stuck`` arrives; when nerved goes on,
one turn reads both, in that order (epoll reports them as they became ready).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from support import Nerved, wait_until

# Role ``stick`` runs past its timeout in a thread that cannot be stopped, so its worker
# says ``stuck``; role ``quick`` ends its run once the test makes file ``go``: its step and
# the run's end are one message. Both are posted while nerved is stopped, in that order.
STUCK = """
    import os, time
    from pathlib import Path
    from nerved import WorkflowDefinition

    def stick(prompt, ctx):
        Path(prompt["mark"]).touch()
        time.sleep(60)

    def quick(prompt, ctx):
        if prompt:
            Path(prompt["mark"]).touch()
            while not Path(prompt["go"]).exists():
                time.sleep(0.005)
        return {"type": "done", "pid": os.getpid()}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            job = event["payload"]
            return {"role": job["role"], "prompt": job.get("prompt")}
        return None

    workflow = WorkflowDefinition(roles={"stick": stick, "quick": quick}, moderate=moderate)
"""
CONFIG = """
workflows:
  stuck:
    concurrency: 2
    overflow: queue
    drainTimeout: 1s
    roles:
      stick: {timeout: 2s, onError: fail}
"""


def _sockets(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def unread(reader: int, writer: int) -> int:
    """Bytes ``writer`` sent ``reader`` on Unix stream sockets that ``reader`` has not read
    (``ss``: each socket's receive queue, and the inode of its peer)."""
    theirs, mine = _sockets(writer), _sockets(reader)
    table = subprocess.run(["ss", "-xanH"], capture_output=True, text=True, check=True).stdout
    total = 0
    for line in table.splitlines():
        fields = line.split()
        if fields[0] == "u_str" and fields[-1].isdigit() and fields[-3].isdigit():
            local, peer = int(fields[-3]), int(fields[-1])
            if local in mine and peer in theirs:
                total += int(fields[2])
    return total


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2: make test-deps)")
def test_a_run_given_to_a_worker_told_to_stop_in_the_same_turn_starts_in_the_next(
    nerved_factory, tmp_path: Path
) -> None:
    daemon: Nerved = nerved_factory(CONFIG, workflows={"stuck": STUCK}).start()
    stuck, quick, go = tmp_path / "stuck", tmp_path / "quick", tmp_path / "go"
    first = daemon.trigger("stuck", {"role": "stick", "prompt": {"mark": str(stuck)}})
    ends = daemon.trigger("stuck", {"role": "quick", "prompt": {"mark": str(quick), "go": str(go)}})
    wait_until(lambda: stuck.exists() and quick.exists(), timeout=20, what="both roles run")
    queued = daemon.rpc("workflow.trigger", workflow="stuck", payload={"role": "quick"})
    assert queued["status"] == "queued"  # both slots are taken
    worker = daemon.worker_pids("workflow")["stuck"]
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        go.touch()  # ``quick`` returns: its run ends, and the queued run may start
        wait_until(lambda: unread(daemon.pid, worker) > 0, timeout=20, what="the last step")
        posted = unread(daemon.pid, worker)
        # ``stick`` passes its timeout: ``stuck``, and the failed try, come after.
        wait_until(
            lambda: unread(daemon.pid, worker) > posted, timeout=20, what="the worker's stuck"
        )
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    # One turn read all three: the end frees a slot, the queued run is given to the worker,
    # and then that worker is told to stop: it had not been sent the start.
    assert daemon.wait_run(ends)["status"] == "completed"
    run = daemon.wait_run(queued["runId"])
    assert run["status"] == "completed", run
    assert run["attempts"] == 0, run  # it never lost a worker
    assert daemon.wait_run(first)["status"] == "failed"
    assert "died under" not in daemon.log()
    [step] = daemon.entries(queued["runId"], "step_complete")
    assert step["payload"]["event"]["pid"] != worker  # it ran in the stuck one's successor
