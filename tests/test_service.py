"""nerved as an operator meets it outside systemd: who may connect, --daemon, a passed socket."""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sandbox import ensure_nerve_user
from support import REPO, Nerved, make_root, pid_alive, wait_until

CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\\n')
print(s.makefile().readline(), end="")
"""

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


def nerve_gid() -> int:
    """The ``nerve`` group, created as the package would (systemd-sysusers)."""
    try:
        return grp.getgrnam("nerve").gr_gid
    except KeyError:
        ensure_nerve_user()  # skips under NERVE_TEST_NO_SYSTEMD=1
        return grp.getgrnam("nerve").gr_gid


def ask_as(daemon: Nerved, uid: int, gid: int) -> dict:
    done = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         sys.executable, "-c", CLIENT, str(daemon.socket)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@root_only
def test_socket_access_is_checked_with_peer_credentials(nerved_factory, request):
    gid = nerve_gid()
    daemon = nerved_factory("senses: {}\n")
    public = Path(
        tempfile.mkdtemp(prefix="nerve-peer-")
    )  # pytest's tmp is 0700: others can't reach it
    public.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(public, ignore_errors=True))
    daemon.socket = public / "nerved.sock"
    daemon.start()
    stat = daemon.socket.stat()
    assert (stat.st_mode & 0o777, stat.st_gid) == (0o660, gid)
    # Even if someone loosens the socket's mode, SO_PEERCRED still says no.
    os.chmod(daemon.socket, 0o666)
    refused = ask_as(daemon, 65534, 65534)
    assert refused["error"]["code"] == -32003
    assert "uid 65534" in refused["error"]["message"]
    assert "refused control connection from uid 65534" in daemon.log()
    os.chmod(daemon.socket, 0o660)
    served = ask_as(daemon, 65534, gid)  # a member of nerve
    assert served["result"]["pid"] == daemon.pid


def test_daemon_mode_with_a_pidfile(tmp_path):
    root = make_root(
        tmp_path, "senses:\n  tick: {}\n", {"tick": "def compute(ctx):\n    return {}\n"}
    )
    pidfile = tmp_path / "run" / "nerved.pid"
    pidfile.parent.mkdir()
    sock = tmp_path / "run" / "nerved.sock"
    state = tmp_path / "state"
    # A pid file left by a daemon that died: the next one must not be put off by it.
    pidfile.write_text("999999\n")
    started = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "--state-dir", str(state),
         "--socket", str(sock), "--daemon", "--pidfile", str(pidfile)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr  # the parent returns once detached

    def read_pid() -> int | None:
        """The pid in the file once it is fully written (it is not written atomically)."""
        try:
            text = pidfile.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() and text != "999999" else None

    pid = wait_until(read_pid, what="the daemon's pid file")
    daemon = Nerved(root, tmp_path)
    daemon.socket = sock
    status = wait_until(lambda: sock.exists() and daemon.rpc("status"), what="the socket")
    assert status["pid"] == pid
    assert os.getsid(pid) != os.getsid(0)  # a session of its own: detached from ours
    assert Path(f"/proc/{pid}/cwd").resolve() == Path("/")
    again = subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "--state-dir", str(state),
         "--socket", str(sock), "--daemon", "--pidfile", str(pidfile)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert again.returncode == 75 and "already running" in again.stderr
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), what="the daemon to stop")
    assert not pidfile.exists()
    log = (state / "nerved.log").read_text()
    assert "ready" in log and "nerved stopped" in log


@pytest.mark.skipif(
    not Path("/usr/bin/systemd-socket-activate").exists(), reason="no systemd-socket-activate"
)
def test_a_passed_listening_socket_is_used(tmp_path):
    """Socket activation: nerved takes fd 3 from LISTEN_FDS and starts on the first call."""
    root = make_root(tmp_path, "senses: {}\n")
    sock = tmp_path / "activated.sock"
    activator = subprocess.Popen(
        ["/usr/bin/systemd-socket-activate", "-l", str(sock),
         sys.executable, "-m", "nerved", "--root", str(root), "--state-dir", str(tmp_path / "state"),
         "--socket", str(sock)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(sock.exists, what="the activator's socket")
        started = time.monotonic()
        daemon = Nerved(root, tmp_path)
        daemon.socket = sock
        status = daemon.rpc("status")  # waits in the backlog while nerved starts
        assert time.monotonic() - started < 20
        assert status["state"] == "running"
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(20)
    assert sock.exists(), "a passed socket belongs to whoever passed it: nerved leaves it"
