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
    <own>/sense-<group>-<pid>        (``.<n>`` added in the rare case the name is still
    <own>/probe-reload-<pid>         taken: a name is never reused, nerved.containment)
    <own>/.control                   systemd's own, for ExecReload=: never touched

Anything else below ``<own>`` (and anything below ``master``) was not made by nerved: left
by an earlier one, or made by user code, which runs as nerved's user and so owns these
directories as much as nerved does. nerved.containment kills and removes it.

Every function here is one or a few system calls on small files: bounded, never blocking on
anything but the kernel. Errors are ``OSError``; callers decide what they mean.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MASTER: Final = "master"
SYSTEMD_CONTROL: Final = ".control"  # systemd's, for the unit's control processes
DELEGATE_XATTRS: Final = ("trusted.delegate", "user.delegate")
MAX_SUBTREE: Final = 1_000  # cgroups walked below one cgroup at most (one removal, one count)


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

    def children(self) -> list[Path]:
        """The cgroups below ours, but the master's and systemd's own (:data:`MASTER`,
        :data:`SYSTEMD_CONTROL`): the workers', and whatever else is there."""
        return [
            path for path in children(self.path)
            if path.name not in (MASTER, SYSTEMD_CONTROL)
        ]  # fmt: skip


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
    """Make a new cgroup; FileExistsError if the name is taken (it is never reused: a cgroup
    still there may hold what is left of another unit, nerved.containment)."""
    os.mkdir(path)


def children(path: Path) -> list[Path]:
    """The cgroups right below ``path`` (its subdirectories), in name order; none if it is
    gone."""
    try:
        with os.scandir(path) as entries:
            return sorted(
                Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def subtree(path: Path) -> list[Path]:
    """``path`` and the cgroups below it, the deepest first (the order they can be removed
    in): a worker's cgroup has none unless user code made some. At most
    :data:`MAX_SUBTREE` of them."""
    found = [path]
    pending = [path]
    while pending and len(found) < MAX_SUBTREE:
        below = children(pending.pop())
        below = below[: MAX_SUBTREE - len(found)]
        found += below
        pending += below
    return found[::-1]


def move(path: Path, pid: int) -> None:
    """Move process ``pid`` (all its threads) into the cgroup at ``path``."""
    _write(path / "cgroup.procs", str(pid))


def procs(path: Path, *, below: bool = True) -> list[int]:
    """The processes in a cgroup and, with ``below``, in the cgroups below it (user code
    may have made some)."""
    found: list[int] = []
    for where in subtree(path) if below else [path]:
        try:
            found += [int(line) for line in _read(where / "cgroup.procs").split()]
        except FileNotFoundError:
            continue
    return found


def kill_if_in(path: Path, pid: int) -> bool:
    """SIGKILL process ``pid`` if it is in the cgroup at ``path`` (not below it); whether it
    was.

    Through a pidfd (Linux 5.3), so that a pid reused meanwhile is never signalled: the
    pidfd names the process that had ``pid`` when it was opened, and if that process is
    still alive when signalled, it still had ``pid`` when the cgroup was read after.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone (ESRCH), or no pidfd in this kernel: nothing signalled
        return False
    try:
        if pid not in procs(path, below=False):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


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
    """Remove an emptied cgroup, and the cgroups user code made below it (the deepest
    first); False while processes (dying ones included) are still in one of them."""
    for where in subtree(path):
        try:
            os.rmdir(where)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
    return not os.path.lexists(path)


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
