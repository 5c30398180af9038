"""pytest's side of tests/tools/slowfs.py: a directory whose fsyncs a test holds and releases.

    with slow_fs(tmp_path / "backing") as fs:
        db = fs.mount / "state.db"       # use it as any directory: it mirrors the backing one
        fs.hold()                        # every fsync/fdatasync under fs.mount now waits...
        ...                              # (start the thing that syncs)
        fs.wait_waiting(1)               # ...one is waiting now: fs.waiting() == 1
        fs.release()                     # it goes on; fs.synced() counts it once done

Only syncs of files wait (a directory's fsync goes through at once, counted apart): reads,
writes, opens and closes of every file go on (the filesystem is multi-threaded). One limit is
the kernel's (see slowfs.py): Linux's FUSE client holds a file's inode lock during an fsync of
it, so what changes *that* file waits with it: a write(2), truncate, chmod/chown, unlink or
rename of it, and a second fsync of it. SQLite run as root fchown()s a -wal file as it opens
it, so a connection opened *while* its database's WAL sync is held waits for the release:
open (and read once) the connections a test needs before it holds. Reads and closes of the
held file go on.

slow_fs skips the test (pytest.skip, saying why) where FUSE cannot be had: no /dev/fuse, no
libfuse3 or fusermount3 (Debian: fuse3, libfuse3-3; `make test-deps` installs them), no
mfusepy (the `test` extra), or a mount the kernel refuses (an unprivileged container).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SLOWFS = Path(__file__).resolve().parent / "tools" / "slowfs.py"

MOUNT_TIMEOUT = 10.0
"""Seconds slow_fs waits for the mount (about 0.2 s here: Python's start and mfusepy's import)."""

_REFUSED = ("Permission denied", "Operation not permitted", "fuse: device not found")
"""What the FUSE process says when the kernel or the machine will not mount: a skip, not a
failure."""


def fuse_unavailable() -> str | None:
    """Why slowfs cannot run here, or None if it can (as far as can be seen without mounting)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (the kernel has no FUSE, or the container does not pass it through)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is not installed (Debian: libfuse3-3; `make test-deps`)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian: fuse3; `make test-deps`)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed (pip install -e '.[test]')"
    return None


class SlowFs:
    """A running slowfs: ``mount`` mirrors the backing directory; the rest is its control."""

    def __init__(self, mount: Path, control: Path, log: Path) -> None:
        self.mount = mount
        self.control = control
        self.log = log

    def _command(self, command: str) -> dict[str, int]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.control))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        text = answer.decode().strip()
        if not text or text.startswith("error"):
            raise RuntimeError(f"slowfs answered {command!r} with {text!r}")
        return {key: int(value) for key, value in (word.split("=") for word in text.split())}

    def hold(self) -> None:
        """Hold every sync from now on (those begun after this returns wait)."""
        self._command("hold")

    def release(self) -> None:
        """Let the held syncs go, and those to come."""
        self._command("release")

    def stats(self) -> dict[str, int]:
        """``{"held": 0|1, "synced": N, "waiting": K}``, read at one moment."""
        return self._command("stats")

    def synced(self) -> int:
        """Syncs completed so far (the real fsync/fdatasync returned)."""
        return self.stats()["synced"]

    def waiting(self) -> int:
        """Syncs blocked by the hold now."""
        return self.stats()["waiting"]

    def wait_waiting(self, count: int, timeout: float = 10.0) -> None:
        """Return once at least ``count`` syncs wait on the hold; AssertionError at timeout."""
        deadline = time.monotonic() + timeout
        while (now := self.stats())["waiting"] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} syncs never waited in {timeout} s: {now}")
            time.sleep(0.01)


def _mounted(mount: Path) -> bool:
    """Whether something is mounted at ``mount``; unlike os.path.ismount, true of a FUSE mount
    whose process is gone (stat there fails with ENOTCONN)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(mount) for line in mounts)


def _unmount(mount: Path) -> None:
    for command in (["fusermount3", "-u", "-q", str(mount)], ["umount", "-l", str(mount)]):
        if not _mounted(mount):
            return
        subprocess.run(command, check=False, capture_output=True, timeout=30)


@contextlib.contextmanager
def slow_fs(backing: Path) -> Iterator[SlowFs]:
    """Mount slowfs over ``backing`` (made if missing) at a fresh temporary directory.

    Waits until the mount is up (os.path.ismount and the control socket answering); skips the
    test where FUSE is not to be had. On exit: releases the holds, unmounts (fusermount3 -u, or
    lazily with umount -l if something still uses the mount), and ends the process (SIGTERM,
    then SIGKILL).
    """
    reason = fuse_unavailable()
    if reason is not None:
        pytest.skip(f"slowfs: {reason}")
    backing.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="nerve-slowfs-"))
    base.chmod(0o755)  # the mount is for other users too (a service's own), as is the backing
    mount, control, log = base / "mnt", base / "ctl", base / "slowfs.log"
    mount.mkdir()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SLOWFS), str(backing), str(mount), "--control", str(control)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    fs = SlowFs(mount, control, log)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while True:
            if proc.poll() is not None:
                said = log.read_text(errors="replace").strip()
                if any(refusal in said for refusal in _REFUSED):
                    pytest.skip(f"slowfs: FUSE refused the mount: {said}")
                raise RuntimeError(f"slowfs exited ({proc.returncode}) before mounting: {said}")
            if os.path.ismount(mount) and control.exists():
                with contextlib.suppress(OSError):
                    fs.stats()
                    break
            if time.monotonic() > deadline:
                said = log.read_text(errors="replace").strip()
                raise RuntimeError(f"slowfs did not mount in {MOUNT_TIMEOUT} s: {said}")
            time.sleep(0.01)
        yield fs
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                fs.release()
        _unmount(mount)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _unmount(mount)  # the process gone, a mount left behind reads ENOTCONN: detach it
        if not _mounted(mount):  # never delete through a mount into the backing directory
            shutil.rmtree(base, ignore_errors=True)
