"""nerved.cgroups and the kernel's side of memoryMax, against cgroup files faked in a directory.

Real delegated cgroups are exercised under systemd (test_service_systemd.py); this machine's
cgroup v2 has no memory controller, so the kernel's OOM path and the pre-5.14 kill (no
``cgroup.kill``) are checked here on regular files that stand in for the kernel's.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from nerved import cgroups
from nerved.containment import Containment, Unit, exceeded

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
