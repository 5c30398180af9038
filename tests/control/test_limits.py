"""No client, query or number of connections can stall the master or grow it without bound.

The master serves the control socket from the same single-threaded loop that feeds systemd's
watchdog, so these tests watch the watchdog itself (``WATCHDOG=1`` on the notify socket) and
``status`` while clients misbehave: many heavy queries at once, pipelines that are never
read, more connections than the process has file descriptors.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import resource
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sandbox import ensure_nerve_user
from support import GATED, Nerved, wait_until

from nerved.control.limits import ROOT_RESERVE

CONFIG = "senses:\n  tick: {}\n"
TICK = "def compute(ctx):\n    return None\n"
HEAVY = b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"limit": 10000}}\n'


def fill_logs(daemon: Nerved, count: int, pad: int) -> None:
    """Stop the daemon, give logs.db ``count`` sense entries of ``pad`` bytes, start it."""
    if daemon.proc is not None:
        assert daemon.stop() == 0
    else:
        daemon.start()
        assert daemon.stop() == 0
    conn = sqlite3.connect(daemon.state / "logs.db", isolation_level=None)
    conn.execute("BEGIN")
    now = int(time.time() * 1000)  # recent: retention must not prune them during the test
    conn.executemany(
        "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('sense', 'signal', ?, ?, ?)",
        ((f"s{n % 7}", json.dumps({"n": n, "pad": "x" * pad}), now) for n in range(count)),
    )
    conn.execute("COMMIT")
    conn.close()


@contextlib.contextmanager
def notifications(daemon: Nerved) -> Iterator[list[tuple[float, str]]]:
    """Everything nerved tells systemd while the block runs, with when it arrived."""
    assert daemon._notify is not None
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def read() -> None:
        assert daemon._notify is not None
        daemon._notify.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                seen.append((time.monotonic(), daemon._notify.recv(65536).decode()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        stop.set()
        reader.join()


def status_latency(daemon: Nerved) -> float:
    started = time.monotonic()
    assert daemon.rpc("status")["pid"] == daemon.pid
    return time.monotonic() - started


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def connect(daemon: Nerved) -> socket.socket:
    """A connection; when the listen backlog is full (EAGAIN), try again shortly."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)  # a hang guard only: the test's bounds are on status and WATCHDOG
        try:
            sock.connect(str(daemon.socket))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_heavy_queries_of_many_clients_never_stall_the_watchdog_or_status(nerved_factory):
    """60 clients each pipeline 2 ``logs.query {limit: 10000}`` (each answer ~2 MB): all of
    them are answered, while ``WATCHDOG=1`` keeps its beat and ``status`` its latency."""
    daemon = nerved_factory(CONFIG, {"tick": TICK})
    daemon.env["WATCHDOG_USEC"] = "1000000"  # a ping every 0.5 s
    fill_logs(daemon, 10_000, 150)
    daemon.start()
    clients = [connect(daemon) for _ in range(60)]
    answered = [0] * len(clients)

    def drain(i: int) -> None:
        buf = b""
        while answered[i] < 2:
            chunk = clients[i].recv(1 << 20)
            assert chunk, "the daemon closed a heavy client"
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                answer = json.loads(line)
                assert len(answer["result"]) == 10_000, answer.get("error")
                answered[i] += 1

    readers = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(60)]
    latencies: list[float] = []
    with notifications(daemon) as seen:
        for sock, reader in zip(clients, readers, strict=True):
            sock.sendall(HEAVY * 2)
            reader.start()
        while any(r.is_alive() for r in readers):
            latencies.append(status_latency(daemon))
            time.sleep(0.05)
    assert answered == [2] * 60
    pings = [t for t, message in seen if "WATCHDOG=1" in message]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 3 and max(gaps) < 1.5, f"watchdog gaps: {gaps}"
    assert max(latencies) < 1.0, f"status took up to {max(latencies):.2f}s"
    for sock in clients:
        sock.close()


def test_clients_that_never_read_cannot_grow_the_master(nerved_factory):
    """200 clients pipeline heavy queries and never read an answer: the master stays within
    its output and input budgets (tens of MB, not GB), and ``status`` keeps answering."""
    daemon = nerved_factory(CONFIG, {"tick": TICK})
    fill_logs(daemon, 3000, 1000)  # each answer ~3 MB
    daemon.start()
    baseline = rss(daemon.pid)
    greedy = [connect(daemon) for _ in range(200)]
    for sock in greedy:
        sock.setblocking(False)
    deadline = time.monotonic() + 6
    peak = 0
    while time.monotonic() < deadline:
        for sock in greedy:
            with contextlib.suppress(BlockingIOError):
                sock.send(HEAVY * 64)
        assert status_latency(daemon) < 2.0
        peak = max(peak, rss(daemon.pid))
        time.sleep(0.1)
    grown = peak - baseline
    assert grown < 200 * 1024 * 1024, f"the master grew by {grown / 2**20:.0f} MiB"
    for sock in greedy:
        sock.close()
    wait_until(lambda: daemon.rpc("status")["pid"] == daemon.pid)


def test_out_of_file_descriptors_the_accept_loop_backs_off_and_logs_once(nerved_factory):
    """At the fd limit, accept() fails with EMFILE while the socket stays readable: the loop
    must pause accepting (not spin), say so once, and take connections again once fds free."""
    daemon = nerved_factory(CONFIG, {"tick": TICK}).start()
    in_use = len(list(Path(f"/proc/{daemon.pid}/fd").iterdir()))
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (in_use + 10, hard))
    held = [connect(daemon) for _ in range(40)]  # the kernel's backlog takes what nerved cannot
    wait_until(lambda: "cannot accept control connections" in daemon.log(), timeout=10)
    before = cpu_seconds(daemon.pid)
    time.sleep(2)
    spent = cpu_seconds(daemon.pid) - before
    assert spent < 0.5, f"the master used {spent:.2f}s of CPU in 2s: it spins"
    assert daemon.log().count("cannot accept control connections") == 1
    for sock in held:
        sock.close()
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert daemon.rpc("status")["pid"] == daemon.pid  # waits in the backlog for the pause
    assert daemon.log().count("cannot accept control connections") == 1  # one episode


SYSTEM_PYTHON = "/usr/bin/python3"  # the test's own may live under /root, which nobody can read
TENANT = """
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
served, refused, held = 0, 0, []
for _ in range(count):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    try:  # a refusal may be written, and the connection closed, before the request goes
        sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\\n')
    except BrokenPipeError:
        pass
    answer = json.loads(sock.makefile().readline())
    if "result" in answer:
        served += 1
        held.append(sock)
    else:
        assert answer["error"]["code"] == -32002, answer
        refused += 1
print(served, refused, flush=True)
sys.stdin.readline()  # hold them until told
closed = sum(1 for sock in held if sock.recv(1) == b"")
print(closed, flush=True)
"""


def test_a_full_connection_table_keeps_room_for_root_and_idle_clients_go(nerved_factory):
    """Another user fills every connection it may have: it is told so, root still gets in,
    and once idle for ``control.idleTimeout`` its connections are closed."""
    ensure_nerve_user()
    daemon = nerved_factory(
        "control: {maxConnections: 32, idleTimeout: 3s}\n" + CONFIG, {"tick": TICK}
    )
    sockets = Path(tempfile.mkdtemp(prefix="nerve-sock-"))
    sockets.chmod(0o755)  # the tenant (uid nobody) must reach the socket, mode 0660 group nerve
    daemon.socket = sockets / "nerved.sock"
    daemon.start()
    tenant = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", TENANT, str(daemon.socket), "40"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        user="nobody", group="nerve",
    )  # fmt: skip
    try:
        assert tenant.stdout is not None and tenant.stdin is not None
        served, refused = map(int, tenant.stdout.readline().split())
        assert (served, refused) == (32 - ROOT_RESERVE, 40 - 32 + ROOT_RESERVE)
        for _ in range(ROOT_RESERVE):  # root gets every place kept for it
            assert status_latency(daemon) < 1
        started = time.monotonic()
        tenant.stdin.write("\n")
        tenant.stdin.flush()
        assert int(tenant.stdout.readline()) == served  # each closed by the daemon
        assert time.monotonic() - started < 3 + 3  # idleTimeout, a sweep, and slack
    finally:
        tenant.kill()
        tenant.wait()
        shutil.rmtree(sockets, ignore_errors=True)
    assert "refused" in daemon.log() and "kept for root" in daemon.log()


def test_requests_answered_later_are_bounded_per_client(nerved_factory, tmp_path):
    """One client pipelines 100,000 ``workflow.wait`` on a run that does not end: only
    MAX_PENDING of them are held open (the rest wait in the kernel), so the master does not
    grow; when the run ends every one is answered, and ``status`` answered throughout."""
    gate = tmp_path / "gate"
    daemon = nerved_factory("workflows:\n  w: {}\n", workflows={"w": GATED}).start()
    run_id = daemon.rpc("workflow.trigger", workflow="w", payload={"gate": str(gate)})["runId"]
    baseline = rss(daemon.pid)
    waiter = connect(daemon)
    waiter.setblocking(False)
    wait = b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.wait", "params": {"runId": "%s"}}\n'
    lines = wait % run_id.encode() * 100_000
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < len(lines):
        with contextlib.suppress(BlockingIOError):
            sent += waiter.send(lines[sent : sent + 65536])
        assert status_latency(daemon) < 1.0
    assert sent < len(lines), "the daemon read every request although it answered none"
    grown = rss(daemon.pid) - baseline
    assert grown < 30 * 1024 * 1024, f"the master grew by {grown / 2**20:.0f} MiB"
    gate.touch()
    waiter.setblocking(True)
    waiter.settimeout(30)
    answers: list[bytes] = []
    buf = b""
    while len(answers) < 100_000:
        if sent < len(lines):
            waiter.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sent += waiter.send(lines[sent : sent + 65536])
            waiter.settimeout(30)
        chunk = waiter.recv(1 << 20)
        assert chunk, "the daemon closed the waiting client"
        *complete, buf = (buf + chunk).split(b"\n")
        answers += complete
    assert {json.loads(a)["result"]["status"] for a in answers} == {"completed"}
    waiter.close()


def test_queued_payloads_cost_the_master_their_size_not_their_objects(nerved_factory, tmp_path):
    """20 runs queued behind a busy one, each with a 1 MB payload of 240,000 empty objects:
    the master keeps them as their stored text (20 MB), not as Python objects (a hundred
    times that); restarted, the same."""
    gate = tmp_path / "gate"
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 1, overflow: queue, drainTimeout: 100ms}\n",
        workflows={"w": GATED},
    ).start()
    daemon.rpc("workflow.trigger", workflow="w", payload={"gate": str(gate)})
    baseline = rss(daemon.pid)
    objects = {"gate": str(gate), "many": [{}] * 240_000}
    with daemon.client() as client:
        for _ in range(20):
            client.call("workflow.trigger", {"workflow": "w", "payload": objects})
    grown = rss(daemon.pid) - baseline
    assert grown < 100 * 1024 * 1024, f"the master grew by {grown / 2**20:.0f} MiB"
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.rpc("status")["queuedWorkflows"] == 20
    assert rss(daemon.pid) - baseline < 100 * 1024 * 1024
