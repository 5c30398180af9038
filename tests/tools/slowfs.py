#!/usr/bin/env python3
"""slowfs: a FUSE passthrough filesystem whose fsync(2)/fdatasync(2) a test can hold.

    python3 tests/tools/slowfs.py BACKING MOUNT --control SOCKET

MOUNT mirrors the directory BACKING (every operation goes through to BACKING's files). Each
fsync or fdatasync of a file under MOUNT waits while a *hold* is on, then goes through to the
real ``os.fsync``/``os.fdatasync`` of the backing file. Nothing else ever waits: the filesystem
runs multi-threaded (libfuse3's worker threads), so reads, writes, lookups, opens and closes of
other files go on while syncs are held.

Two limits are the kernel's: Linux's FUSE client holds a file's inode lock for the whole of an
fsync of it, so what locks that same inode waits for the held fsync, as it does not on ext4:
a write(2), truncate, chmod, unlink or rename of *that* file. (Not its close(2): files are
opened with FOPEN_NOFLUSH, so the kernel sends no flush, and takes no lock for it.) Reads of
it, and everything on other files, go on. And since the same holds for a directory's inode,
an fsync of a directory is never held (it would stop every create, unlink and rename in the
directory); it goes through at once and is counted apart, as ``dirsynced``.

The kernel page cache stays on (no direct_io), so a shared writable mmap works: SQLite's WAL
index (the ``-shm`` file) lives under MOUNT like the rest.

Control: a Unix stream socket at SOCKET (outside MOUNT). A client writes one command a line,
and each gets one answer line, ``held=0|1 synced=N waiting=K dirsynced=D`` (the state after
the command):

    hold      hold every sync from now on (idempotent)
    release   let every held sync go, and those to come (idempotent)
    stats     nothing; just the answer

``synced`` counts the file syncs completed (the real fsync returned, successfully or not),
``waiting`` the file syncs blocked by the hold now, ``dirsynced`` the directory syncs done. The answer to ``hold`` comes once the hold is on,
so a sync begun after it is held. A close(2) never waits nor syncs.

The process prints ``ready`` on stdout once the filesystem serves. It exits once unmounted
(``fusermount3 -u MOUNT``); on SIGTERM or SIGHUP, or when its parent dies, it releases every
sync, holds no more, and unmounts itself (lazily if the mount is still in use). tests/slowfs_support.py runs it
for pytest (``slow_fs``). Needs /dev/fuse, libfuse3 (Debian: fuse3, libfuse3-3) and mfusepy.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import select
import signal
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

# mfusepy loads libfuse through ctypes at import: prefer libfuse3 (and its fusermount3) over a
# libfuse2 that may also be installed; mfusepy reads this variable.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # type: ignore[import-untyped]  # (untyped: used in this file alone)

STAT_KEYS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_blocks",
    "st_blksize",
    "st_rdev",
)


class SyncGate:
    """Where syncs wait while a hold is on, and what the control socket reads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.held = False
        self.synced = 0
        self.waiting = 0
        self.dirsynced = 0
        self.closed = False

    def hold(self) -> None:
        with self._cond:
            self.held = not self.closed

    def close(self) -> None:
        """Release, and hold no more (the filesystem is going away)."""
        with self._cond:
            self.closed = True
            self.held = False
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self.held = False
            self._cond.notify_all()

    def stats(self) -> str:
        with self._cond:
            return (
                f"held={int(self.held)} synced={self.synced} waiting={self.waiting}"
                f" dirsynced={self.dirsynced}"
            )

    def count_dirsync(self) -> None:
        with self._cond:
            self.dirsynced += 1

    @contextlib.contextmanager
    def sync(self) -> Iterator[None]:
        """Wait while held, then run the body (the real sync), then count it."""
        with self._cond:
            if self.held:  # (never once closed)
                self.waiting += 1
                try:
                    while self.held:
                        self._cond.wait()
                finally:
                    self.waiting -= 1
        try:
            yield
        finally:
            with self._cond:
                self.synced += 1


class Passthrough:
    """mfusepy operations mirroring a backing directory; a file's fsync waits at the gate.

    Paths come as '/a/b' relative to the mount. A file handle (fuse_file_info's fh) is the
    backing file's own descriptor. Errors are OSErrors, which mfusepy returns to the kernel as
    their errno. No lock operations: the kernel keeps fcntl/flock locks itself, mount-wide.
    """

    use_ns = True  # times as integer nanoseconds (mfusepy's non-deprecated mode)

    def __init__(self, backing: str, gate: SyncGate) -> None:
        self.backing = os.path.realpath(backing)
        self.gate = gate

    def _full(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _own(self, full: str) -> None:
        """Give a new file to the caller (we run as root; the caller may not be)."""
        uid, gid, _pid = mfusepy.fuse_get_context()
        if uid != os.geteuid() or gid != os.getegid():
            os.lchown(full, uid, gid)

    # -- lifecycle
    def init(self, path: str) -> None:
        print("ready", flush=True)

    def destroy(self, path: str) -> None:
        self.gate.close()

    # -- metadata
    def getattr(self, path: str, fi: Any = None) -> dict[str, Any]:
        st = os.fstat(fi.fh) if fi is not None else os.lstat(self._full(path))
        attrs: dict[str, Any] = {key: getattr(st, key) for key in STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._full(path), amode):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._full(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._full(path), follow_symlinks=False)
        else:
            os.utime(self._full(path), ns=times, follow_symlinks=False)
        return 0

    def truncate(self, path: str, length: int, fi: Any = None) -> int:
        if fi is not None:
            os.ftruncate(fi.fh, length)
        else:
            os.truncate(self._full(path), length)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {key: getattr(sv, key) for key in (*keys, "f_flag", "f_frsize", "f_namemax")}

    # -- names
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def mknod(self, path: str, mode: int, dev: int) -> int:
        os.mknod(self._full(path), mode, dev)
        self._own(self._full(path))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._full(path), mode)
        self._own(self._full(path))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._full(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._full(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        """``target`` is the new link (in the mount), ``source`` what it points to."""
        os.symlink(source, self._full(target))
        self._own(self._full(target))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._full(source), self._full(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._full(old), self._full(new))
        return 0

    # -- files
    # File handles: mfusepy runs with raw_fi, so these get libfuse's struct fuse_file_info,
    # whose fh is the backing file's descriptor.
    @staticmethod
    def _opened(fi: Any, fd: int) -> int:
        fi.fh = fd
        # No FUSE_FLUSH at close(2): without it the kernel's flush takes the file's inode
        # lock (see above), so a close would wait behind a held fsync of the same file. There
        # is nothing to flush: writes go through at once (no writeback cache).
        fi.noflush = 1
        return 0

    def open(self, path: str, fi: Any) -> int:
        # The kernel gives the offset of every write, appends included: O_APPEND would make
        # pwrite(2) ignore it.
        return self._opened(fi, os.open(self._full(path), fi.flags & ~(os.O_CREAT | os.O_APPEND)))

    def create(self, path: str, mode: int, fi: Any) -> int:
        fd = os.open(self._full(path), (fi.flags | os.O_CREAT) & ~os.O_APPEND, mode)
        self._own(self._full(path))
        return self._opened(fi, fd)

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return os.pread(fi.fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path: str, fi: Any) -> int:
        # Should the kernel flush anyway: never a sync here, nor a wait.
        return 0

    def release(self, path: str, fi: Any) -> int:
        os.close(fi.fh)
        return 0

    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        with self.gate.sync():
            if datasync:
                os.fdatasync(fi.fh)
            else:
                os.fsync(fi.fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        # Never held: the kernel holds the directory's inode lock while this runs, so a held
        # directory sync would stop every create, unlink and rename in that directory.
        fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.gate.count_dirsync()
        return 0


class _Control(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        for raw in self.rfile:
            command = raw.decode(errors="replace").strip()
            gate = self.server.gate
            if command == "hold":
                gate.hold()
            elif command == "release":
                gate.release()
            elif command != "stats":
                self.wfile.write(f"error unknown command {command!r}\n".encode())
                continue
            self.wfile.write((gate.stats() + "\n").encode())


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, gate: SyncGate) -> None:
        self.gate = gate
        super().__init__(path, _Control)


def _stop_on_signal_or_orphaning(gate: SyncGate, mount: str) -> None:
    """On SIGTERM or SIGHUP, or once the parent is gone: release every sync and unmount (lazily,
    should the mount still be in use), after which libfuse's loop ends and main returns.

    Not libfuse's own SIGTERM handler: that ends the loop by cancelling its worker threads,
    held ones included, which are in Python then. Python's handlers cannot run either (the main
    thread stays in libfuse), so the signal reaches a thread through Python's wakeup fd.
    """
    parent = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)  # handled by the thread below

    def watch() -> None:
        while True:
            ready, _, _ = select.select([wake_r], [], [], 0.5)
            if ready or os.getppid() != parent:
                break
        gate.close()
        subprocess.run(["fusermount3", "-u", "-z", mount], check=False, capture_output=True)

    threading.Thread(target=watch, name="stopper", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("backing", help="the directory mirrored")
    parser.add_argument("mount", help="the mount point (an empty directory)")
    parser.add_argument("--control", required=True, help="the Unix socket to make for control")
    parser.add_argument(
        "--max-threads", type=int, default=64, help="libfuse worker threads at most (default 64)"
    )
    parser.add_argument("--debug", action="store_true", help="libfuse's debug output on stderr")
    args = parser.parse_args(argv)

    gate = SyncGate()
    _stop_on_signal_or_orphaning(gate, args.mount)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    server = _ControlServer(args.control, gate)
    serve = functools.partial(server.serve_forever, poll_interval=0.05)  # quick to shut down
    threading.Thread(target=serve, name="control", daemon=True).start()
    try:
        mfusepy.FUSE(
            Passthrough(args.backing, gate),
            args.mount,
            raw_fi=True,
            foreground=True,
            nothreads=False,
            debug=args.debug,
            fsname="slowfs",
            subtype="slowfs",
            # Others (the service's own user) may use the mount; the kernel checks their
            # permissions against the backing files' modes, as it would on the real disk.
            allow_other=True,
            default_permissions=True,
            max_threads=args.max_threads,
            max_idle_threads=8,  # libfuse 3.14 complains of its own default (unset) otherwise
        )
    finally:
        gate.close()
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
