"""nervectl's one client of the control socket (nervectl/client.py), and what it renders of
the fields a newer daemon adds to ``status``, ``sense.list`` and ``workflow.list``.

Each failure of a call is one of three exceptions with the operator's message; every command
goes through the one class. The worker fields (``state``, ``restarts``, ``reason``, a sense's
and an active run's ``worker``) come from a newer nerved: they are shown when sent and
their absence (an older nerved) renders as before, so both are tested, the new shape
through a stand-in daemon that answers canned results.
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Nerved

from nervectl import client as client_module
from nervectl.client import FOREVER, Client, RemoteError, RequestTooLarge, Unreachable

SENSE = "def compute(ctx):\n    return {'ok': True}\n"


@pytest.fixture
def daemon(nerved_factory: Callable[..., Nerved]) -> Nerved:
    return nerved_factory("senses:\n  probe: {group: clock}\n", {"probe": SENSE}).start()


# -- one client ---------------------------------------------------------------------------------


def test_only_the_client_module_talks_to_the_socket() -> None:
    """One class, one module: no other module of nervectl imports socket or opens one."""
    talking = []
    for path in sorted((REPO / "nervectl").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if "socket" in names:
                talking.append(path.name)
    assert talking == ["client.py"]
    assert not (REPO / "nervectl" / "remote.py").exists()


def test_calls_on_one_connection_and_a_remote_error_keeps_it(daemon: Nerved) -> None:
    with Client(daemon.socket) as client:
        assert client.call("status")["pid"] == daemon.pid
        first = client._sock
        with pytest.raises(RemoteError) as refused:
            client.call("sense.trigger", {"sense": "nosuch"})
        assert refused.value.code == -32001 and "nosuch" in refused.value.message
        assert str(refused.value) == refused.value.message
        # None params are not sent: the daemon sees a call with no filter.
        assert client.call("workflow.list", {"all": None, "workflow": None}) == []
        assert client._sock is first
    assert client._sock is None


def test_workflow_wait_timeout_is_a_remote_error_with_its_data(
    nerved_factory: Callable[..., Nerved], tmp_path: Path
) -> None:
    gated = """
        import os, time
        from nerved import WorkflowDefinition

        def hold(prompt, ctx):
            while not os.path.exists(prompt["gate"]):
                time.sleep(0.05)
            return {"type": "done"}

        def moderate(thread, event):
            if event["type"] == "thread_start":
                return {"role": "hold", "prompt": event["payload"]}
            return None

        workflow = WorkflowDefinition(roles={"hold": hold}, moderate=moderate)
    """
    daemon = nerved_factory("workflows:\n  w: {}\n", workflows={"w": gated}).start()
    gate = tmp_path / "gate"
    with Client(daemon.socket, timeout=FOREVER) as client:
        run = client.call("workflow.trigger", {"workflow": "w", "payload": {"gate": str(gate)}})
        with pytest.raises(RemoteError) as waited:
            client.call("workflow.wait", {"runId": run["runId"], "timeout": 0.2})
        assert waited.value.data == {"timeout": True, "status": "started"}
        gate.touch()
        done = client.call("workflow.wait", {"runId": run["runId"]}, timeout=FOREVER)
        assert done["status"] == "completed"


def test_cannot_connect_is_unreachable_naming_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    with Client(path) as client, pytest.raises(Unreachable) as caught:
        client.call("status")
    assert str(caught.value).startswith(f"cannot connect to {path}: No such file")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_a_request_over_the_line_cap_is_not_sent(tmp_path: Path) -> None:
    with Client(tmp_path / "none.sock") as client, pytest.raises(RequestTooLarge) as caught:
        client.call("workflow.trigger", {"workflow": "w", "payload": "x" * (1 << 20)})
    assert "the daemon takes at most 1,048,576 bytes (1.0 MiB) in one request" in str(caught.value)
    assert client._sock is None  # refused before connecting


def test_the_client_limits_are_the_daemons() -> None:
    from nervectl import limits
    from nerved import wire

    assert (
        limits.MAX_LINE,
        limits.MAX_INTEGER,
        limits.MAX_QUERY_LIMIT,
        limits.MAX_REPLAY_RUNS,
        limits.MAX_KEY,
    ) == (wire.MAX_LINE, wire.MAX_INTEGER, wire.MAX_QUERY_LIMIT, wire.MAX_REPLAY_RUNS, wire.MAX_KEY)


# -- a stand-in daemon ----------------------------------------------------------------------------


class FakeDaemon:
    """Answers each request on a Unix socket from ``answers``: method -> result, or method ->
    raw bytes sent as they are (None: hang up; b"": never answer)."""

    def __init__(self, path: Path, answers: dict[str, Any]) -> None:
        self.path = path
        self.answers = answers
        self.methods: list[str] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.server.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while not self.stop.is_set():
                while b"\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                self.methods.append(request["method"])
                answer = self.answers[request["method"]]
                if answer is None:
                    return
                if answer == b"":
                    self.stop.wait(30)
                    return
                if not isinstance(answer, bytes):
                    reply = {"jsonrpc": "2.0", "id": request["id"], "result": answer}
                    answer = json.dumps(reply).encode() + b"\n"
                try:
                    conn.sendall(answer)
                except BrokenPipeError:  # the client gave up on an endless line
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(answers: dict[str, Any]) -> FakeDaemon:
        made.append(FakeDaemon(tmp_path / f"fake{len(made)}.sock", answers))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "connection to {path} lost: the daemon closed the connection"),
        (b"not json\n", "{path} answered something that is not JSON-RPC"),
        (b"[1, 2]\n", "connection to {path} lost: the daemon sent something that is not"),
        (b'{"id": 1, "error": "no object"}\n', "{path} answered something that is not JSON-RPC"),
        (
            b'{"id": 1, "error": {"code": 1e400, "message": "m"}}\n',
            "{path} answered something that is not JSON-RPC",
        ),
        (b"[" * 100_000 + b"\n", "{path} answered something that is not JSON-RPC"),
        (b"x" * (3 << 20), "{path} answered something that is not JSON-RPC"),  # see below
    ],
    ids=[
        "hung up",
        "not json",
        "not an object",
        "error not an object",
        "code overflows",
        "nested too deep",
        "endless line",
    ],
)
def test_what_is_no_answer_is_unreachable(
    fake: Callable[[dict[str, Any]], FakeDaemon],
    answer: bytes | None,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An endless line is cut at MAX_ANSWER (256 MiB): here at 2 MiB, to spare the test's memory.
    monkeypatch.setattr(client_module, "MAX_ANSWER", 2 << 20, raising=False)
    daemon = fake({"status": answer})
    with Client(daemon.path) as client:
        with pytest.raises(Unreachable) as caught:
            client.call("status")
        assert str(caught.value).startswith(message.format(path=daemon.path))
        assert client._sock is None  # closed: the next call connects anew


def test_no_answer_in_time_is_unreachable_with_the_timeout(
    fake: Callable[[dict[str, Any]], FakeDaemon],
) -> None:
    daemon = fake({"status": b"", "sense.list": []})
    with Client(daemon.path, timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(Unreachable) as caught:
            client.call("status", timeout=0.3)
        assert time.monotonic() - started < 3
        assert str(caught.value) == f"no answer from {daemon.path} within 0.3s"
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert client.call("sense.list") == []  # connected anew


def test_an_error_answer_is_a_remote_error(fake: Callable[[dict[str, Any]], FakeDaemon]) -> None:
    failed = (
        b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "m", "data": [1]}}\n'
    )
    odd = b'{"jsonrpc": "2.0", "id": 2, "error": {"message": "no code"}}\n'
    daemon = fake({"reload": failed, "status": odd})
    with Client(daemon.path) as client:
        with pytest.raises(RemoteError) as caught:
            client.call("reload")
        assert (caught.value.code, caught.value.message, caught.value.data) == (-32603, "m", [1])
        with pytest.raises(RemoteError) as caught:
            client.call("status")
        assert (caught.value.code, caught.value.message) == (0, "no code")


def test_an_answer_to_another_id_is_skipped(fake: Callable[[dict[str, Any]], FakeDaemon]) -> None:
    other = b'{"jsonrpc": "2.0", "id": 99, "result": "not yours"}\n'
    mine = b'{"jsonrpc": "2.0", "id": 1, "result": "yours"}\n'
    daemon = fake({"status": other + mine})
    with Client(daemon.path) as client:
        assert client.call("status") == "yours"


def test_answers_to_other_ids_do_not_outlast_the_timeout(tmp_path: Path) -> None:
    """The timeout bounds the call, not each read: a peer that keeps answering other ids
    (or trickles a line) is no answer in time."""
    path = tmp_path / "chatty.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    stop = threading.Event()

    def chatter() -> None:
        conn, _ = server.accept()
        with conn, server:
            for _ in range(100):  # 5 s, then hang up: a client without a deadline fails
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(b'{"jsonrpc": "2.0", "id": 99, "result": "not yours"}\n')
                except OSError:
                    return

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    try:
        with Client(path) as client:
            started = time.monotonic()
            with pytest.raises(Unreachable, match=r"within 0\.5s"):
                client.call("status", timeout=0.5)
            assert time.monotonic() - started < 3
    finally:
        stop.set()
        thread.join()


def test_a_refusal_written_before_the_request_went_is_the_answer(tmp_path: Path) -> None:
    """nerved refuses a connection past its table (-32002) in one line and closes, maybe
    before the client's request went out: the client reads the refusal, not a broken pipe."""
    path = tmp_path / "full.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    refused = threading.Event()

    def refuse() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.sendall(
                b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32002,'
                b' "message": "too many control connections; try again later"}}\n'
            )
        refused.set()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    with Client(path) as client:
        client.connect()
        assert refused.wait(5)  # closed before the request is sent
        with pytest.raises(RemoteError, match="too many control connections") as caught:
            client.call("status", timeout=5)
    assert caught.value.code == -32002
    thread.join()


def test_the_module_documents_what_it_raises() -> None:
    for name in ("Unreachable", "RemoteError", "RequestTooLarge"):
        assert name in (client_module.__doc__ or "")
        assert name in (Client.call.__doc__ or "")


# -- what a newer daemon adds, and an older one does not send --------------------------------------


def ctl(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nervectl", "--socket", str(path), *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip


STATUS = {
    "version": "0.2.0",
    "pid": 4242,
    "uptime": 12.5,
    "senses": 3,
    "groups": 2,
    "activeWorkflows": 1,
    "queuedWorkflows": 0,
    "rss": 50 << 20,
    "state": "running",
    "workers": [
        {"kind": "sense", "name": "clock", "pid": 4243, "state": "ready", "restarts": 0,
         "reason": None},
        {"kind": "sense", "name": "default", "pid": None, "state": "fatal", "restarts": 7,
         "reason": "Traceback (most recent call last):\n  File ...\nImportError: no module x"},
        {"kind": "workflow", "name": "review", "pid": None, "state": "backoff", "restarts": 2,
         "reason": "exit code 3"},
        {"kind": "workflow", "name": "deploy", "pid": None, "state": "fatal", "restarts": 5,
         "reason": None},
    ],
}  # fmt: skip


def test_status_shows_worker_states_and_a_line_per_fatal_worker(
    fake: Callable[[dict[str, Any]], FakeDaemon],
) -> None:
    daemon = fake({"status": STATUS})
    done = ctl(daemon.path, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("KIND"))
    assert header.split() == ["KIND", "NAME", "PID", "STATE", "RESTARTS"]
    rows = {line.split()[1]: line.split() for line in lines if line.startswith(("sense", "work"))}
    assert rows["clock"] == ["sense", "clock", "4243", "ready", "0"]
    assert rows["default"] == ["sense", "default", "-", "fatal", "7"]
    assert rows["review"] == ["workflow", "review", "-", "backoff", "2"]
    assert lines[-2:] == [
        "sense group default: fatal (ImportError: no module x); fix its code and reload",
        "workflow deploy: fatal; fix its code and reload",
    ]
    # --json: the result as the daemon sent it.
    assert json.loads(ctl(daemon.path, "--json", "status").stdout) == STATUS


def test_status_of_an_older_daemon_has_no_state_column(daemon: Nerved) -> None:
    status = daemon.rpc("status")
    done = daemon.ctl("status")
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("KIND"))
    if any("state" in worker for worker in status["workers"]):  # a daemon that sends them
        assert "STATE" in header.split()
    else:
        assert header.split() == ["KIND", "NAME", "PID"]
    assert "fatal" not in done.stdout


def test_sense_list_shows_the_worker_when_sent(
    fake: Callable[[dict[str, Any]], FakeDaemon], daemon: Nerved
) -> None:
    senses = [
        {"name": "tick", "group": "clock", "computes": 3, "errors": 0, "worker": "ready"},
        {"name": "disk", "group": "default", "computes": 0, "errors": 2, "worker": "fatal",
         "lastError": "ImportError: no module x"},
    ]  # fmt: skip
    done = ctl(fake({"sense.list": senses}).path, "sense", "list")
    assert done.returncode == 0, done.stderr
    header, _, *rows = done.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "GROUP", "WORKER", "COMPUTES"]
    assert rows[0].split()[:4] == ["tick", "clock", "ready", "3"]
    assert rows[1].split()[:4] == ["disk", "default", "fatal", "0"]

    older = [{k: v for k, v in s.items() if k != "worker"} for s in senses]
    header = ctl(fake({"sense.list": older}).path, "sense", "list").stdout.splitlines()[0]
    assert header.split()[:3] == ["NAME", "GROUP", "COMPUTES"]
    # and a real one, whichever it is
    listed = daemon.rpc("sense.list")
    header = daemon.ctl("sense", "list").stdout.splitlines()[0]
    assert ("WORKER" in header.split()) == any("worker" in s for s in listed)


RUNS = [
    {"runId": "a" * 32, "workflow": "deploy", "status": "queued", "steps": 0, "worker": "fatal"},
    {"runId": "b" * 32, "workflow": "review", "status": "started", "steps": 2, "worker": "ready"},
    {"runId": "c" * 32, "workflow": "backup", "status": "started", "steps": 0, "worker": "fatal"},
    {"runId": "d" * 32, "workflow": "deploy", "status": "completed", "steps": 4},
]


def test_workflow_list_notes_runs_held_by_a_fatal_worker(
    fake: Callable[[dict[str, Any]], FakeDaemon],
) -> None:
    daemon = fake({"workflow.list": RUNS})
    done = ctl(daemon.path, "workflow", "list", "--all")
    assert done.returncode == 0, done.stderr
    assert all(run["runId"][:8] in done.stdout for run in RUNS)
    assert done.stderr == (
        "nervectl: note: the worker of workflows backup, deploy is fatal: its runs wait until"
        " its code is fixed and reloaded (nervectl status says why)\n"
    )
    one = fake({"workflow.list": RUNS[:2]})
    assert "the worker of workflow deploy is fatal" in ctl(one.path, "workflow", "list").stderr
    # No note when none is fatal, nor with --json (the result as it is, nothing more).
    calm = fake({"workflow.list": RUNS[1:2] + RUNS[3:]})
    assert ctl(calm.path, "workflow", "list").stderr == ""
    done = ctl(daemon.path, "--json", "workflow", "list", "--all")
    assert json.loads(done.stdout) == RUNS and done.stderr == ""


def test_no_command_module_builds_its_own_connection() -> None:
    """Every handler reaches the daemon through ctx.call (the context's one Client)."""
    for path in sorted((REPO / "nervectl").glob("*.py")):
        text = path.read_text()
        if path.name not in ("client.py", "context.py"):
            assert "Client(" not in text, path.name
            assert "ctx.remote" not in text, path.name
