"""nerved.containment.cgroups and the kernel's side of memoryMax, against cgroup files faked in a directory.

Real delegated cgroups are exercised under systemd (test_service_systemd.py); this machine's
cgroup v2 has no memory controller, so the kernel's OOM path and the pre-5.14 kill (no
``cgroup.kill``) are checked here on regular files that stand in for the kernel's.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from nerved import containment as containment_module
from nerved import process
from nerved.containment import Containment, Unit, cgroups, exceeded

MiB = 1 << 20


def sleeper() -> subprocess.Popen[bytes]:
    """A process leading a group of its own, as a worker does."""
    return subprocess.Popen(["sleep", "60"], process_group=0)


def fake_cgroup(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_memory_files(tmp_path: Path) -> None:
    group = fake_cgroup(tmp_path / "workflow-w-1", {"memory.max": "max", "memory.oom.group": "0"})
    cgroups.set_memory_max(group, 100 * MiB)
    assert (group / "memory.max").read_text() == str(100 * MiB)
    assert (group / "memory.oom.group").read_text() == "1"  # the unit dies as a whole
    cgroups.set_memory_max(group, None)
    assert (group / "memory.max").read_text() == "max"
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert cgroups.memory_events(group)["oom_kill"] == 1
    assert cgroups.memory_peak(group) is None  # before Linux 5.19
    assert cgroups.memory_events(tmp_path / "gone") == {}


def test_kill_uses_cgroup_kill_where_the_kernel_has_it(tmp_path: Path) -> None:
    group = fake_cgroup(tmp_path / "g", {"cgroup.kill": "", "cgroup.procs": ""})
    cgroups.kill(group)
    assert (group / "cgroup.kill").read_text() == "1"


def test_kill_before_cgroup_kill_freezes_and_kills_every_process(tmp_path: Path) -> None:
    victims = [sleeper(), sleeper()]
    try:
        procs = "".join(f"{v.pid}\n" for v in victims)
        group = fake_cgroup(tmp_path / "g", {"cgroup.procs": procs, "cgroup.freeze": "0"})
        cgroups.kill(group)
        assert [v.wait(5) for v in victims] == [-9, -9]
        assert (group / "cgroup.freeze").read_text() == "0"  # thawed again
    finally:
        for victim in victims:
            victim.kill()
            victim.wait()
    cgroups.kill(tmp_path / "gone")  # nothing to kill, nothing raised


def test_remove_and_procs_of_a_cgroup_that_is_gone(tmp_path: Path) -> None:
    assert cgroups.remove(tmp_path / "gone") is True
    assert cgroups.procs(tmp_path / "gone") == []


def test_an_oom_kill_by_the_kernel_is_told_in_the_samplers_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = sleeper()
    try:
        files = {
            "cgroup.kill": "",
            "memory.events": "oom 1\noom_kill 1\n",
            "memory.peak": str(100 * MiB + 5 * MiB // 2),
        }
        group = fake_cgroup(tmp_path / f"workflow-w-{worker.pid}", files)
        containment = Containment(loop=None)  # type: ignore[arg-type]
        unit = Unit("workflow", "w", worker.pid, group, 100 * MiB, kernel_memory=True)
        containment.units[worker.pid] = unit
        with caplog.at_level(logging.INFO, "nerved.containment"):
            containment.ended(worker.pid)
        assert worker.wait(5) == -9  # what is left of the unit is killed
        assert (group / "cgroup.kill").read_text() == "1"
        assert unit.exceeded == exceeded(100 * MiB, 100 * MiB + 5 * MiB // 2)
        assert unit.exceeded == "memoryMax 100.0 MiB exceeded by 2.5 MiB: 102.5 MiB in use, killed"
        assert f"workflow w worker pid {worker.pid}: {unit.exceeded}" in caplog.text
    finally:
        worker.kill()
        worker.wait()


def test_exceeded_says_by_how_much_when_it_knows() -> None:
    assert exceeded(100 * MiB, 172 * MiB) == (
        "memoryMax 100.0 MiB exceeded by 72.0 MiB: 172.0 MiB in use, killed"
    )
    assert exceeded(MiB << 10, MiB << 10) == "memoryMax 1.0 GiB exceeded: 1.0 GiB in use, killed"


def test_a_start_without_delegation_uses_process_groups(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "find_delegated", lambda: "cgroup / is not delegated")
    with caplog.at_level(logging.INFO, "nerved.containment"):
        line = Containment(loop=None).start()  # type: ignore[arg-type]
    assert line == (
        "containment: a process group per worker; memoryMax sampled every 0.5s;"
        " no cgroups: cgroup / is not delegated"
    )
    assert caplog.messages == [line]


# -- what user code may do below nerved's cgroup (issue 9) ------------------------------------


def fake_delegated(path: Path) -> cgroups.Delegated:
    """A delegated cgroup of regular files: no controller, the master's leaf, systemd's."""
    fake_cgroup(path, {"cgroup.controllers": "", "cgroup.subtree_control": "", "cgroup.procs": ""})
    fake_cgroup(path / cgroups.MASTER, {"cgroup.procs": ""})
    (path / cgroups.SYSTEMD_CONTROL).mkdir()
    return cgroups.Delegated(path, "/nerved.service")


def test_a_start_sweeps_every_cgroup_but_the_masters_and_systemds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only those named like a worker's: user code may have made any (and below them,
    and below the master's), and moved processes there."""
    delegated = fake_delegated(tmp_path / "svc")
    monkeypatch.setattr(cgroups, "find_delegated", lambda: delegated)
    held = sleeper()
    try:
        for name in ("workflow-w-12", "anything", "x/nested/deeper", "master/below"):
            (delegated.path / name).mkdir(parents=True)  # empty: removable as a real cgroup is
        holding = fake_cgroup(delegated.path / "holding", {"cgroup.procs": f"{held.pid}\n"})
        with caplog.at_level(logging.WARNING, "nerved.containment"):
            Containment(loop=None).start()  # type: ignore[arg-type]
        assert held.wait(5) == -9  # killed (without cgroup.kill: one by one, from cgroup.procs)
        # (holding stays: a fake cgroup, whose files rmdir cannot remove)
        left = sorted(p.name for p in delegated.path.iterdir() if p.is_dir())
        assert left == [".control", "holding", "master"]
        assert [p.name for p in (delegated.path / "master").iterdir()] == ["cgroup.procs"]
        assert (delegated.path / "master/cgroup.procs").read_text() == str(os.getpid())
        for name in ("anything", "holding", "workflow-w-12", "x", "master/below"):
            assert f"cgroup {delegated.path / name}, left by an earlier nerved" in caplog.text
        assert holding.exists()
    finally:
        held.kill()
        held.wait()


def test_a_process_moved_into_the_masters_cgroup_is_killed_when_a_worker_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """User code runs as nerved's user: it may move a process into the master's cgroup, or
    make one of its own. Each end of a worker looks for both (and the master stays)."""
    delegated = fake_delegated(tmp_path / "svc")
    containment = Containment(loop=None)  # type: ignore[arg-type]
    containment.delegated = delegated
    worker, moved = sleeper(), sleeper()
    try:
        group = fake_cgroup(delegated.path / f"workflow-w-{worker.pid}", {"cgroup.kill": ""})
        unit = Unit("workflow", "w", worker.pid, group, None, kernel_memory=False)
        containment.units[worker.pid] = unit
        (delegated.path / "master/cgroup.procs").write_text(f"{os.getpid()}\n{moved.pid}\n")
        (delegated.path / "made").mkdir()
        with caplog.at_level(logging.WARNING, "nerved.containment"):
            containment.ended(worker.pid)
        assert moved.wait(5) == -9
        assert f"killed process {moved.pid} found in the master's cgroup" in caplog.text
        assert "user code moved it there" in caplog.text
        assert not (delegated.path / "made").exists()
        assert f"{delegated.path / 'made'}, not made by nerved" in caplog.text
        assert (delegated.path / "master").exists() and (delegated.path / ".control").exists()
    finally:
        for process in (worker, moved):
            process.kill()
            process.wait()


def test_a_cgroup_name_still_taken_is_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid comes back in time; the cgroup of an ended unit of that pid may still be there
    (in the graveyard: a killed process stuck in the kernel). Reusing it would have the
    sweeper kill the new worker every 0.1 s: the new one gets a name of its own."""
    delegated = fake_delegated(tmp_path / "svc")
    containment = Containment(loop=None)  # type: ignore[arg-type]
    containment.delegated = delegated
    worker = sleeper()
    moved: list[tuple[Path, int]] = []
    monkeypatch.setattr(cgroups, "move", lambda path, pid: moved.append((path, pid)))

    def fake_spawn(title: str, child_main: object, contain: Callable[[int], None]) -> object:
        contain(worker.pid)
        return worker.pid, socket.socket()

    monkeypatch.setattr(containment_module, "spawn", fake_spawn)
    try:
        name = f"workflow-w-{worker.pid}"
        stuck = fake_cgroup(delegated.path / name, {"cgroup.kill": "", "cgroup.procs": "1\n"})
        containment._graveyard[stuck] = 0.0
        containment._graveyard[delegated.path / f"{name}.2"] = 0.0  # gone, but not yet seen so
        unit, sock = containment.spawn("workflow", "w", "t", lambda s: 0, None)
        sock.close()
        assert unit.cgroup == delegated.path / f"{name}.3"
        assert moved == [(unit.cgroup, worker.pid)]
        assert (stuck / "cgroup.kill").read_text() == ""  # not emptied to be reused either
    finally:
        worker.kill()
        worker.wait()


def test_cgroups_user_code_made_below_a_units_are_counted_and_removed(tmp_path: Path) -> None:
    group = tmp_path / "workflow-w-1"
    (group / "a" / "b").mkdir(parents=True)
    (group / "c").mkdir()
    (group / "cgroup.procs").write_text("1\n")
    (group / "a" / "b" / "cgroup.procs").write_text("2\n3\n")
    assert sorted(cgroups.procs(group)) == [1, 2, 3]
    assert cgroups.procs(group, below=False) == [1]
    for procs in (group / "cgroup.procs", group / "a" / "b" / "cgroup.procs"):
        procs.unlink()  # emptied: a real cgroup has files, but rmdir does not mind them
    assert cgroups.remove(group) is True
    assert not group.exists()


def test_a_child_runs_nothing_before_it_is_in_its_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding the C library by name (ctypes.util.find_library) runs ``ldconfig -p`` in a
    subprocess: in a child not yet moved, a process outside its unit (in the master's
    cgroup). The master has it loaded before it forks, without it."""
    import ctypes.util

    marker = tmp_path / "ran"

    def find_library(name: str) -> str | None:
        marker.touch()
        return None

    monkeypatch.setattr(process, "_libc", None)
    monkeypatch.setattr(ctypes.util, "find_library", find_library)
    pid, sock = process.spawn("nerve:test", lambda sock: 0, contain=lambda pid: None)
    sock.close()
    assert os.waitpid(pid, 0)[1] == 0
    assert not marker.exists()
