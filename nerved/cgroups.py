"""The cgroup v2 files nerve uses, in the subtree systemd delegated to it (``Delegate=yes``).

nerve only ever touches a cgroup tree that was *given* to it: the cgroup it runs in must carry
systemd's delegation mark (the extended attribute ``trusted.delegate`` or, for a service
that runs as a user other than root, ``user.delegate``, set to ``1``) and be writable by it.
Elsewhere (no systemd, a login session, a container without delegation, cgroup v1 alone) it
uses no cgroup at all, and :func:`find_delegated` says why.

The layout inside the delegated cgroup ``<own>`` (``/system.slice/nerved.service``)::

    <own>/master                     the master, moved there at start (cgroup v2 allows
                                     processes only in leaves once controllers are enabled)
    <own>/workflow-<name>-<pid>      one per worker, named so that systemd-cgtop reads well
    <own>/sense-<group>-<pid>
    <own>/probe-reload-<pid>
    <own>/.control                   systemd's own, for ExecReload=: never touched

Every function here is one or a few system calls on small files: bounded, never blocking on
anything but the kernel. Errors are ``OSError``; callers decide what they mean.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MASTER: Final = "master"
DELEGATE_XATTRS: Final = ("trusted.delegate", "user.delegate")
# The names of worker cgroups (see the layout above): what a start may sweep as left over.
WORKER_NAME: Final = re.compile(r"(?:workflow|sense|probe)-[A-Za-z0-9_.-]+-[0-9]+")


@dataclass(frozen=True, slots=True)
class Delegated:
    """The cgroup systemd delegated to us: ``path`` in the file system, ``name`` in the tree."""

    path: Path
    name: str

    def child(self, name: str) -> Path:
        return self.path / name

    def controllers(self) -> set[str]:
        """Controllers available to our subtree (none where the host keeps them on cgroup v1)."""
        return set(_read(self.path / "cgroup.controllers").split())

    def enable(self, controller: str) -> bool:
        """Enable ``controller`` for the cgroups below ours; True if it is enabled now.

        Needs our own cgroup to hold no process (the master moved to :data:`MASTER` first):
        the kernel refuses controllers in a cgroup that has processes *and* children.
        """
        with contextlib.suppress(OSError):
            _write(self.path / "cgroup.subtree_control", f"+{controller}")
        return controller in _read(self.path / "cgroup.subtree_control").split()

    def leftovers(self) -> list[Path]:
        """Worker cgroups of an earlier nerved in this cgroup (it died without removing them)."""
        return sorted(
            entry for entry in self.path.iterdir()
            if entry.is_dir() and WORKER_NAME.fullmatch(entry.name)
        )  # fmt: skip


def find_delegated() -> Delegated | str:
    """Our cgroup if it is delegated to us and writable, else why we will not use cgroups."""
    try:
        with open("/proc/self/cgroup") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup: {exc.strerror or exc}"
    name = next((line[3:] for line in lines if line.startswith("0::")), None)
    if name is None:
        return "no cgroup v2"
    mount = _cgroup2_mount()
    if mount is None:
        return "cgroup v2 is not mounted here"
    path = Path(mount) / name.lstrip("/")
    if not any(_xattr(path, attr) == b"1" for attr in DELEGATE_XATTRS):
        return f"cgroup {name} is not delegated to nerved (no Delegate=yes)"
    for needed in (path, path / "cgroup.procs", path / "cgroup.subtree_control"):
        if not os.access(needed, os.W_OK):
            return f"cgroup {name} is delegated but {needed.name} is not writable"
    return Delegated(path, name)


def _cgroup2_mount() -> str | None:
    """Where the cgroup2 hierarchy is mounted with its root at our namespace's root.

    /proc/self/mountinfo may list the same hierarchy twice (a host's /sys/fs/cgroup/unified
    seen from a cgroup namespace has root ``/../..``): only the mount of ``/`` maps names
    from /proc/self/cgroup to directories.
    """
    try:
        with open("/proc/self/mountinfo") as file:
            for line in file:
                fields = line.split()
                if "-" not in fields:
                    continue
                fstype = fields[fields.index("-") + 1]
                if fstype == "cgroup2" and fields[3] == "/":
                    return fields[4].replace("\\040", " ")
    except OSError:
        return None
    return None


def _xattr(path: Path, attr: str) -> bytes | None:
    try:
        return os.getxattr(path, attr)
    except OSError:  # ENODATA, EPERM (trusted.* unless root), ENOTSUP
        return None


def _read(path: Path) -> str:
    with open(path) as file:
        return file.read()


def _write(path: Path, text: str) -> None:
    """One write(2) of ``text``: a cgroup file takes each write as one command."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # as a shell's ">" does
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def create(path: Path) -> None:
    """Make a cgroup; one left by an earlier worker of the same pid is emptied and reused."""
    try:
        os.mkdir(path)
    except FileExistsError:
        kill(path)


def move(path: Path, pid: int) -> None:
    """Move process ``pid`` (all its threads) into the cgroup at ``path``."""
    _write(path / "cgroup.procs", str(pid))


def procs(path: Path) -> list[int]:
    """The processes in a cgroup (not in its children: worker cgroups have none)."""
    try:
        return [int(line) for line in _read(path / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def kill(path: Path) -> None:
    """SIGKILL every process in the cgroup, at once, forks in flight included.

    ``cgroup.kill`` (Linux 5.14) does it in the kernel. Before it, the cgroup is frozen
    (``cgroup.freeze``, Linux 5.2), so that no process listed can exit and have its pid taken
    by an unrelated process before it is signalled, and thawed once all were (a SIGKILLed
    process dies frozen or not). A cgroup that no longer exists has nothing to kill.
    """
    try:
        _write(path / "cgroup.kill", "1")
        return
    except FileNotFoundError:
        if not path.exists():
            return
    frozen = False
    with contextlib.suppress(OSError):
        _write(path / "cgroup.freeze", "1")
        frozen = True
    try:
        for pid in procs(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        if frozen:
            with contextlib.suppress(OSError):
                _write(path / "cgroup.freeze", "0")


def remove(path: Path) -> bool:
    """Remove an empty cgroup; False while processes (dying ones included) are still in it."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


def set_memory_max(path: Path, limit: int | None) -> None:
    """``memory.max`` (None: no limit), and ``memory.oom.group``: the kernel's OOM killer
    ends the whole unit, never one process of it, as a worker killed for memory must be."""
    _write(path / "memory.max", "max" if limit is None else str(limit))
    _write(path / "memory.oom.group", "1")


def memory_events(path: Path) -> dict[str, int]:
    """``memory.events`` as a dict (``oom_kill``: processes the OOM killer ended there)."""
    try:
        pairs = (line.split() for line in _read(path / "memory.events").splitlines())
        return {key: int(value) for key, value in pairs}
    except (OSError, ValueError):
        return {}


def memory_peak(path: Path) -> int | None:
    """The most memory the cgroup ever used (``memory.peak``, Linux 5.19), else None."""
    try:
        return int(_read(path / "memory.peak"))
    except (OSError, ValueError):
        return None
