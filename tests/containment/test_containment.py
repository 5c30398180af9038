"""Containment without systemd: each worker and all it starts is one process group, ended as
one however the worker ends, and held to memoryMax by the master's sampling.

What a test looks at is the kernel's view (/proc): which processes are left in the session
of the nerved it started (``start_new_session``: the session's id is the master's pid, and
every process user code starts is in it unless it calls ``setsid``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import FORKER, LEAKER, Nerved, pid_alive, wait_until, write_package

# A role whose forked copies return into the worker: four processes leave os.fork() twice
# and each carries on as the worker did (a sync role: in its thread pool, forever).
COPIER = """
    import os
    from nerved import WorkflowDefinition

    def copy(prompt, ctx):
        os.fork()
        os.fork()
        return {"type": "copied"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "copy", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"copy": copy}, moderate=moderate)
"""

# A role that takes 150 MiB once, says so, and waits for a gate.
HOLDER = """
    import os, time
    from nerved import WorkflowDefinition

    def hold(prompt, ctx):
        held = b"\\x01" * (150 << 20)
        open(prompt["held"], "w").close()
        while not os.path.exists(prompt["gate"]):
            time.sleep(0.01)
        return {"type": "held", "size": len(held)}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "hold", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"hold": hold}, moderate=moderate)
"""

QUICK = """
    from nerved import WorkflowDefinition

    def answer(prompt, ctx):
        return {"type": "answered"}

    def moderate(thread, event):
        return {"role": "answer", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"answer": answer}, moderate=moderate)
"""

SENSE_LEAK = """
    import time

    hoard = []

    def compute(ctx):
        while True:
            hoard.append(b"\\x01" * (20 << 20))
            time.sleep(0.05)
"""

SENSE_QUIET = """
    def compute(ctx):
        return None
"""

EXCEEDED = re.compile(
    r"memoryMax 100\.0 MiB exceeded by [0-9.]+ [KMG]?i?B: [0-9.]+ [KMG]iB in use, killed"
)


def stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, process group, session, name) of a process, None once it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    name = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
    fields = data.rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[2]), int(fields[3]), name


def session(sid: int) -> dict[int, tuple[int, str]]:
    """Every live (not zombie) process of session ``sid``: pid -> (process group, name)."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := stat(int(entry))) is not None:
            state, group, sid_of, name = info
            if sid_of == sid and state != "Z":
                found[int(entry)] = (group, name)
    return found


@pytest.fixture
def started(nerved_factory: Callable[..., Nerved]) -> Iterator[Callable[..., Nerved]]:
    """nerved_factory, then start; whatever a test leaves in its sessions is killed after."""
    made: list[Nerved] = []

    def start(config: str, **packages: dict[str, str]) -> Nerved:
        daemon = nerved_factory(config, packages.get("senses"), packages.get("workflows"))
        made.append(daemon.start())
        return daemon

    yield start
    for daemon in made:
        daemon.cleanup()
        for pid in session(daemon.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_run(daemon: Nerved, run_id: str, timeout: float = 30) -> dict:
    with daemon.client(timeout=timeout + 5) as client:
        return client.call("workflow.wait", {"runId": run_id, "timeout": timeout})


def pids_in(directory: Path, *names: str) -> list[int]:
    paths = [directory / name for name in names]
    wait_until(lambda: all(p.exists() for p in paths), what=f"{names} to be written")
    return [int(p.read_text()) for p in paths]


# -- ended as one ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "end", ["stop", "idle", "drain", "crash", "killed at stop", "storage failure"]
)
def test_what_a_role_starts_ends_with_its_worker(started, tmp_path: Path, end: str) -> None:
    busy = end == "killed at stop"
    daemon = started(
        "workflows:\n  f: {idleTimeout: 300ms, drainTimeout: 200ms}\n"
        if end == "idle"
        else "workflows:\n  f: {drainTimeout: 200ms}\n",
        workflows={"f": FORKER},
    )
    assert "containment: a process group per worker" in daemon.log()
    assert daemon.rpc("status")["containment"] == "process group"
    payload = {"dir": str(tmp_path)} | ({"gate": str(tmp_path / "never")} if busy else {})
    run = daemon.rpc("workflow.trigger", workflow="f", payload=payload)
    child, orphan = pids_in(tmp_path, "child", "daemon")
    worker = daemon.worker_pids("workflow")["f"]
    for pid in (worker, child, orphan):  # one process group, the worker's, not the master's
        assert stat(pid)[1:3] == (worker, daemon.pid)  # type: ignore[index]
    if not busy:
        assert wait_run(daemon, run["runId"])["status"] == "completed"
    assert pid_alive(child) and pid_alive(orphan)

    if end in ("stop", "killed at stop"):
        assert daemon.stop() == 0
    elif end == "idle":
        wait_until(lambda: "f" not in daemon.worker_pids("workflow"), what="the worker to idle")
    elif end == "drain":
        write_package(daemon.root, "workflows", "f", FORKER + "    # changed\n")
        daemon.rpc("reload")  # answered once the change is applied (by it, or by inotify)
    elif end == "crash":
        os.kill(worker, signal.SIGKILL)
    else:
        shutil.rmtree(daemon.state)  # nerved stops at once, killing its workers (exit 75)
        assert daemon.wait(10) == 75

    wait_until(
        lambda: not (pid_alive(child) or pid_alive(orphan) or pid_alive(worker)),
        what="the worker's whole unit to be gone",
    )
    if end in ("stop", "killed at stop", "storage failure"):
        assert session(daemon.pid) == {}
        assert "did not stop in time; killing it" in daemon.log() or not busy
    else:
        assert daemon.rpc("status")["state"] == "running"


def test_forked_copies_that_return_into_the_worker_end_with_it(started) -> None:
    daemon = started("workflows:\n  copier: {idleTimeout: 500ms}\n", workflows={"copier": COPIER})
    run = daemon.rpc("workflow.trigger", workflow="copier")
    assert wait_run(daemon, run["runId"])["status"] == "completed"
    worker = daemon.worker_pids("workflow")["copier"]
    copies = wait_until(
        lambda: (
            len(found := [p for p, (g, _) in session(daemon.pid).items() if g == worker]) == 4
            and found
        ),
        what="the worker and its three copies",
    )
    assert {session(daemon.pid)[pid][1] for pid in copies} == {"nerve:w:copier"}
    wait_until(
        lambda: not any(pid_alive(pid) for pid in copies), what="the idle worker's unit to end"
    )
    run = daemon.rpc("workflow.trigger", workflow="copier")  # once more, then a clean stop
    assert wait_run(daemon, run["runId"])["status"] == "completed"
    assert daemon.stop() == 0
    wait_until(lambda: session(daemon.pid) == {}, what="no process of nerved's session left")


# -- memoryMax -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["worker", "child"])
def test_a_role_past_memory_max_is_killed_and_its_run_follows_the_crash_rules(
    started, where: str
) -> None:
    daemon = started(
        "workflows:\n  hog: {memoryMax: 100M, maxAttempts: 2}\n  ok: {}\n",
        workflows={"hog": LEAKER, "ok": QUICK},
    )
    assert "memoryMax sampled every 0.5s" in daemon.log()
    run = daemon.rpc("workflow.trigger", workflow="hog", payload={"in_child": where == "child"})
    ended = wait_run(daemon, run["runId"], timeout=60)
    assert ended["status"] == "crashed"
    assert "its worker died 2 times under it" in ended["error"]
    assert EXCEEDED.search(ended["error"]), ended["error"]
    kills = re.findall(r"ERROR .*: workflow hog worker pid [0-9]+: (memoryMax .*)", daemon.log())
    assert len(kills) == 2 and all(EXCEEDED.fullmatch(kill) for kill in kills), kills
    quick = daemon.rpc("workflow.trigger", workflow="ok")  # the daemon serves on
    assert wait_run(daemon, quick["runId"])["status"] == "completed"
    assert daemon.stop() == 0
    wait_until(lambda: session(daemon.pid) == {}, what="no process of nerved's session left")


def test_a_sense_group_past_the_largest_memory_max_of_its_senses_is_killed(started) -> None:
    daemon = started(
        "senses:\n"
        "  hog: {group: g, memoryMax: 100M, timeout: 60s}\n"
        "  quiet: {group: g, memoryMax: 50M}\n",
        senses={"hog": SENSE_LEAK, "quiet": SENSE_QUIET},
    )
    wait_until(lambda: "g" in daemon.worker_pids("sense"), what="the sense worker")
    worker = daemon.worker_pids("sense")["g"]
    assert daemon.rpc("sense.trigger", sense="hog")
    wait_until(lambda: daemon.sense("hog")["lastError"], timeout=30, what="the compute to end")
    error = daemon.sense("hog")["lastError"]
    assert error.startswith("its worker died during the compute (memoryMax 100.0 MiB"), error
    assert EXCEEDED.search(error), error
    assert f"sense g worker pid {worker}: memoryMax 100.0 MiB exceeded" in daemon.log()
    wait_until(
        lambda: daemon.worker_pids("sense").get("g") not in (None, worker),
        what="the group's worker to be respawned",
    )
    assert daemon.rpc("status")["state"] == "running"


def test_a_memory_max_set_by_a_reload_applies_to_the_running_worker(
    started, tmp_path: Path
) -> None:
    daemon = started("workflows:\n  h: {maxAttempts: 1}\n", workflows={"h": HOLDER})
    payload = {"held": str(tmp_path / "held"), "gate": str(tmp_path / "gate")}
    run = daemon.rpc("workflow.trigger", workflow="h", payload=payload)
    wait_until((tmp_path / "held").exists, what="the role to take its 150 MiB")
    (daemon.root / "nerve.yaml").write_text("workflows:\n  h: {maxAttempts: 1, memoryMax: 100M}\n")
    daemon.rpc("reload")
    ended = wait_run(daemon, run["runId"])
    assert ended["status"] == "crashed"
    assert re.search(r"memoryMax 100\.0 MiB exceeded by [0-9.]+ MiB", ended["error"]), ended
