"""Start-up: early signals never kill nerved.

Whatever nerved still holds a place's state directory at the end of a test is found through
its lock on ``<state>/nerved.lock`` (which names its pid) and stopped.

Some tests hold nerved at a known point of its start through its notify socket: a datagram
socket whose queue is full makes sd_notify block, so nerved cannot pass its first
``STATUS=starting`` (before logs.db and the loop's signal handlers) until the test drains
the queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import REPO, Nerved, make_root, pid_alive, wait_until

from nervectl.client import Client

TICK = "def compute(ctx):\n    return {}\n"
FILLER = b"filler"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path, "senses:\n  tick: {}\n", {"tick": TICK})


class Place:
    """Where one nerved keeps its state and socket (under ``base``)."""

    def __init__(self, base: Path) -> None:
        self.state = base / "state"
        self.socket = base / "run" / "nerved.sock"

    def args(self, root: Path) -> list[str]:
        return ["--root", str(root), "--state-dir", str(self.state), "--socket", str(self.socket)]

    def status(self) -> dict:
        with Client(self.socket, 30.0) as client:
            return client.call("status", {})

    def holder(self) -> int | None:
        """The pid of the nerved holding this state directory, or None if none does."""
        try:
            fd = os.open(self.state / "nerved.lock", os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode().strip()
            return int(text) if text.isdigit() else 0
        finally:
            os.close(fd)
        return None


@pytest.fixture
def places(tmp_path: Path) -> Iterator[Callable[[str], Place]]:
    """Make places; whatever nerved still holds one at the end is stopped."""
    made: list[Place] = []

    def make(name: str) -> Place:
        place = Place(tmp_path / name)
        made.append(place)
        return place

    yield make
    for place in made:
        wait_until(lambda p=place: p.holder() != 0, what="the holder to write its pid")
        pid = place.holder()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda p=pid: not pid_alive(p), what=f"pid {pid} to die")


def sighup_handled(pid: int) -> bool:
    """Whether SIGHUP is caught or ignored by ``pid``: no longer its default action, death."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    mask = int(fields["SigCgt"], 16) | int(fields["SigIgn"], 16)
    return bool(mask >> (signal.SIGHUP - 1) & 1)


def wait_for_sighup_handled(proc: subprocess.Popen[bytes]) -> None:
    """Until ``proc`` handles SIGHUP; fail if it exits first (it must not be reaped before)."""

    def handled_or_exited() -> bool:
        return proc.poll() is not None or sighup_handled(proc.pid)

    wait_until(handled_or_exited, what="nerved to handle SIGHUP")
    assert proc.poll() is None, f"nerved exited with {proc.returncode} before handling SIGHUP"


class HeldNotify:
    """A notify socket whose queue the test keeps full, so that nerved's sd_notify blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    filler.sendto(FILLER, str(path))

    def wait_for(self, needle: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
        """Drain the queue until nerved sends ``needle``; fail if it exits first."""
        self.sock.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"nerved exited with {proc.returncode}"
            try:
                message = self.sock.recv(65536)
            except TimeoutError:
                continue
            if needle.encode() in message:
                return
        raise AssertionError(f"no {needle!r} within {timeout}s")

    def close(self) -> None:
        """From now on nerved's notifications are refused (and ignored), never block it."""
        self.sock.close()
        self.path.unlink()


class Barrage:
    """SIGHUP every 2 ms to each pid ``targets()`` gives, until stopped or ``until()``."""

    def __init__(self, targets: Callable[[], list[int]], until: Callable[[], bool]) -> None:
        self.sent = 0
        self._targets = targets
        self._until = until
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and not self._until():
            for pid in self._targets():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
                    self.sent += 1
            self._stop.wait(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.sent


# -- early signals ----------------------------------------------------------------------------


def test_sighup_from_the_first_line_until_ready_never_kills_nerved(root, tmp_path):
    held = HeldNotify(tmp_path / "notify.sock")
    daemon = Nerved(root, tmp_path / "n", "--no-watch", env={"NOTIFY_SOCKET": str(held.path)})
    try:
        daemon.start(wait=False)
        proc = daemon.proc
        assert proc is not None
        wait_for_sighup_handled(proc)
        # Held before logs.db and the loop: this SIGHUP can only reach nerved.early's handler.
        daemon.signal(signal.SIGHUP)
        barrage = Barrage(lambda: [daemon.pid], lambda: proc.poll() is not None)
        held.wait_for("READY=1", proc)
        assert barrage.stop() > 1
        held.close()
        assert proc.poll() is None
        assert daemon.rpc("status")["pid"] == daemon.pid
        wait_until(lambda: "reload (SIGHUP during start-up)" in daemon.log(), what="the reload")
        daemon.signal(signal.SIGHUP)  # and the loop's own handling after that
        wait_until(lambda: "reload (SIGHUP)" in daemon.log(), what="a reload")
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
        with contextlib.suppress(OSError):
            held.close()


def test_a_sighup_the_supervisor_blocked_is_a_reload_once_nerved_handles_it(root, places, tmp_path):
    """Before nerve's first line runs, only a blocked SIGHUP is safe: nerved unblocks it."""
    place = places("d")
    with open(tmp_path / "nerved.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nerved", *place.args(root), "--log-level", "debug"],
            cwd=REPO, stdout=log, stderr=log, start_new_session=True,
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}),
        )  # fmt: skip
    try:
        os.kill(proc.pid, signal.SIGHUP)  # while the interpreter itself starts
        wait_until(lambda: place.socket.exists(), what="the socket")
        assert place.status()["pid"] == proc.pid
        wait_until(
            lambda: "reload (SIGHUP during start-up)" in (tmp_path / "nerved.log").read_text(),
            what="the reload",
        )
        os.kill(proc.pid, signal.SIGHUP)  # unblocked for good: the loop's, from now on
        wait_until(lambda: "reload (SIGHUP)" in (tmp_path / "nerved.log").read_text())
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(20)
