"""What the benchmarks share: a nerved on a scratch root, an RPC connection, percentiles."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ANCHORS = REPO / "bench" / "peers" / "w"
"""The peers' scripts of workload W, and the lock file of the venv they run in."""
ANCHORS_VENV = Path(os.environ.get("ANCHORS_VENV", "/tmp/anchors-venv"))


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile, as the anchors compute it."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99), "max": max(ms)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    """Resident bytes of one process (VmRSS, from /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += rss(current)
            for task in os.listdir(f"/proc/{current}/task"):
                children = f"/proc/{current}/task/{task}/children"
                with contextlib.suppress(OSError), open(children) as f:
                    todo += [int(c) for c in f.read().split()]
    return total


def voluntary_switches(pid: int) -> int:
    """Times a process gave up the CPU to wait (/proc/PID/status): its wake-ups."""
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("voluntary_ctxt_switches:"))
    return int(line.split()[1])


def idle(pid: int, window: float) -> dict[str, float]:
    """A process's CPU ms and voluntary context switches over ``window`` seconds, and its
    RSS (MB) at the end."""
    cpu0, switches0 = cpu_seconds(pid), voluntary_switches(pid)
    time.sleep(window)
    return {
        "cpu_ms": (cpu_seconds(pid) - cpu0) * 1000,
        "wakeups": voluntary_switches(pid) - switches0,
        "rss_mb": rss(pid) / 2**20,
    }


class Rpc:
    """A blocking JSON-RPC connection that can also pipeline (send many, read later)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        self.next_id = 0

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        self.next_id += 1
        request = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        return self.next_id

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("nerved closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.send(method, params)
        return self.read()["result"]

    def close(self) -> None:
        self.sock.close()


def scratch_root(base: Path, config: str, packages: dict[str, str]) -> Path:
    """A nerve root under ``base``: nerve.yaml and packages by path ("workflows/w": code)."""
    root = base / "root"
    root.mkdir(parents=True)
    (root / "nerve.yaml").write_text(textwrap.dedent(config))
    for path, code in packages.items():
        (root / path).mkdir(parents=True)
        (root / path / "__init__.py").write_text(textwrap.dedent(code))
    return root


class DaemonExited(RuntimeError):
    """nerved ended before it was ready: its exit status and its log (stderr)."""

    def __init__(self, code: int, log: str) -> None:
        super().__init__(f"nerved exited ({code}) before READY=1: {log.strip()[-1000:]}")
        self.code = code
        self.log = log


class Daemon:
    """nerved on a scratch root; ready when it says READY=1 on our notify socket.

    ``launcher``: the interpreter's arguments before nerved's own (:mod:`bench.profiled`
    wraps nerved to profile it). With ``watchdog_usec``, nerved feeds a watchdog
    (``WATCHDOG_USEC``) and the notify socket is read for as long as it runs, as systemd
    reads it (unread, its queue fills and nerved's pings wait in nerved, so their gaps would
    be the reader's): every message is kept in :attr:`notifications` with its time. Without,
    the socket is closed after READY=1.
    """

    def __init__(
        self,
        config: str,
        packages: dict[str, str],
        *,
        watchdog_usec: int = 0,
        launcher: tuple[str, ...] = ("-m", "nerved"),
        extra: tuple[str, ...] = (),
    ):
        self.dir = Path(tempfile.mkdtemp(prefix="nerve-bench-"))
        self.root = scratch_root(self.dir, config, packages)
        self.state = self.dir / "state"
        self.socket = self.dir / "nerved.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        self.watchdog_usec = watchdog_usec
        self.notifications: list[tuple[float, str]] = []  # (time.monotonic(), message)
        self.launcher = launcher  # what runs nerved: ``-m nerved``, or a bench wrapper of it
        self.extra = extra  # more of nerved's options (``--store URL``)
        self._reading = threading.Event()
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Daemon:
        notify_path = self.dir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {**self.env, "NOTIFY_SOCKET": str(notify_path)}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, "--root", str(self.root), "--state-dir",
             str(self.state), "--socket", str(self.socket), "--log-level", "warning",
             "--no-watch", *self.extra],
            env=env, cwd=REPO, stderr=open(self.dir / "nerved.log", "wb"),
        )  # fmt: skip
        self._wait_ready(notify)
        if self.watchdog_usec:
            self._reading.set()
            self._reader = threading.Thread(target=self._read_notify, args=(notify,), daemon=True)
            self._reader.start()
        else:
            notify.close()
        return self

    def _wait_ready(self, notify: socket.socket) -> None:
        """Wait for READY=1; :class:`DaemonExited` at once if nerved ends first (a refused
        configuration, a refused host), so that a caller can say why rather than wait out
        the 30 s."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        notify.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                if b"READY=1" in notify.recv(4096):
                    notify.settimeout(30)
                    return
            except TimeoutError:
                if (code := self.proc.poll()) is not None:
                    self.proc = None
                    notify.close()
                    log = (self.dir / "nerved.log").read_text(errors="replace")
                    shutil.rmtree(self.dir, ignore_errors=True)
                    raise DaemonExited(code, log) from None
        raise TimeoutError(f"nerved not ready in 30 s (log: {self.dir / 'nerved.log'})")

    def _read_notify(self, notify: socket.socket) -> None:
        notify.settimeout(0.1)
        with notify:
            while self._reading.is_set():
                with contextlib.suppress(TimeoutError):
                    message = notify.recv(4096).decode()
                    self.notifications.append((time.monotonic(), message))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        if self._reader is not None:
            self._reading.clear()
            self._reader.join()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rpc(self) -> Rpc:
        return Rpc(self.socket)


def anchors_python() -> Path:
    """The peers' Python: their venv (``$ANCHORS_VENV``), made from their lock file on first
    use, so that Huey and DBOS run at the versions their reference figures were taken with."""
    python = ANCHORS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {ANCHORS_VENV} for the peers (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(ANCHORS_VENV)], check=True)
        subprocess.run(
            [str(ANCHORS_VENV / "bin" / "pip"), "install", "-q", "-r",
             str(ANCHORS / "requirements.lock.txt")],
            check=True,
        )  # fmt: skip
    return python


def run_anchor(
    script: str | Path, *args: str, n: int, iso: int, conc: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a peer's script (a name in :data:`ANCHORS`, or a path) in the peers' venv; its
    ``RESULT {json}`` line. ``ANCHORS_N``, ``ANCHORS_ISO`` and ``ANCHORS_CONC`` size W for it;
    ``env`` adds to its environment (what a script takes besides: a database's URL)."""
    env = {**os.environ, "ANCHORS_N": str(n), "ANCHORS_ISO": str(iso), "ANCHORS_CONC": str(conc),
           **(env or {})}  # fmt: skip
    done = subprocess.run(
        [str(anchors_python()), str(ANCHORS / script), *args],
        capture_output=True, text=True, env=env, cwd=ANCHORS, timeout=1800,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{script} {' '.join(args)} gave no result:\n{done.stderr[-2000:]}")


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - started:.2f}s", file=sys.stderr)
