"""The control server alone (nerved.control.server and its parts), over real Unix sockets.

No nerved: a loop (nerved.loop), the socket file bound by nerved.control.listener, and a
fake dispatch in place of the daemon's commands. The test drives the loop itself, turn by
turn, in its own thread, so every step is deterministic and fast.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nerved.control import server as server_module
from nerved.control.limits import ROOT_RESERVE
from nerved.control.listener import SocketInUse, bind
from nerved.control.peers import Peer
from nerved.control.rpc import INVALID_PARAMS, MAX_LINE, Pending, RpcError
from nerved.control.server import ControlServer
from nerved.loop import Loop
from nerved.outcome import NotFound


class Client:
    """One client: a non-blocking socket, the lines it has received, and what it sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.received = bytearray()
        self.eof = False

    def read(self) -> None:
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.received += chunk

    def take_line(self) -> dict[str, Any] | None:
        self.read()
        newline = self.received.find(b"\n")
        if newline < 0:
            return None
        line = bytes(self.received[:newline])
        del self.received[: newline + 1]
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.sock.close()


class Served:
    """A ControlServer on a loop, a fake dispatch, and the means to drive them."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.path = tmp_path / "run" / "control.sock"
        self.loop = Loop()
        self.calls: list[tuple[str, Any]] = []
        self.pending: list[Pending] = []
        self.server = ControlServer(
            self.loop,
            bind(self.path),
            self.dispatch,
            heavy=frozenset({"heavy", "slow"}),
            idle_timeout=settings.get("idle_timeout", 30.0),
            max_connections=settings.get("max_connections", 100),
        )
        self.clients: list[Client] = []

    def dispatch(self, method: str, params: Any, uid: int | None = None) -> Any:
        self.calls.append((method, params))
        if method == "slow":
            time.sleep(0.002)
            return params
        if method in ("echo", "heavy"):
            return params
        if method == "invalid":
            raise RpcError(INVALID_PARAMS, "no good")
        if method == "missing":
            raise NotFound("no such thing")
        if method == "later":
            pending = Pending()
            self.pending.append(pending)
            return pending
        raise RpcError(-32601, f"no method {method!r}")

    def connect(self) -> Client:
        client = Client(self.path)
        self.clients.append(client)
        return client

    def pump(self, until: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run loop turns until ``until()`` is true (its value is returned)."""
        deadline = time.monotonic() + timeout
        while True:
            value = until()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {until}")
            self.loop.run_once(0.01)

    def answer(self, client: Client) -> dict[str, Any]:
        answer: dict[str, Any] = self.pump(client.take_line)
        return answer

    def send(self, client: Client, data: bytes) -> None:
        """Send all of ``data``, running the loop whenever the socket is full."""
        view = memoryview(data)
        while view:
            try:
                sent = client.sock.send(view)
            except BlockingIOError:
                self.loop.run_once(0.01)
                continue
            view = view[sent:]

    def call(self, client: Client, method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(client, json.dumps(message).encode() + b"\n")
        return self.answer(client)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(**settings: Any) -> Served:
        made.append(Served(tmp_path, **settings))
        return made[-1]

    yield make
    for one in made:
        one.close()


def request(id: Any, method: str = "echo", **params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).encode()


# -- serving ----------------------------------------------------------------------------


def test_a_request_is_answered(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    assert s.call(client, "echo", {"a": [1, "b"]}, id="x") == {
        "jsonrpc": "2.0",
        "id": "x",
        "result": {"a": [1, "b"]},
    }
    assert s.calls == [("echo", {"a": [1, "b"]})]
    assert len(s.server.connections) == 1


def test_pipelined_requests_are_answered_in_order(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    s.send(
        client, b"".join(request(n, "heavy" if n % 3 else "echo", n=n) + b"\n" for n in range(200))
    )
    answers = [s.answer(client) for _ in range(200)]
    assert [a["id"] for a in answers] == list(range(200))
    assert [a["result"] for a in answers] == [{"n": n} for n in range(200)]


def test_clients_are_served_side_by_side(served: Callable[..., Served]) -> None:
    s = served()
    clients = [s.connect() for _ in range(5)]
    for n, client in enumerate(clients):
        s.send(client, request(n) + b"\n")
    assert [s.answer(client)["id"] for client in clients] == list(range(5))


def test_heavy_requests_share_the_turn_and_light_ones_pass_them(
    served: Callable[..., Served],
) -> None:
    """One client's pipeline of heavy requests takes about TURN_BUDGET of each turn: another
    client's light request is answered within a turn or two, not after the pipeline."""
    s = served()
    greedy, light = s.connect(), s.connect()
    s.send(greedy, b"".join(request(n, "slow") + b"\n" for n in range(30)))
    s.pump(lambda: s.calls)  # the pipeline has started
    s.send(light, request("status") + b"\n")
    assert s.answer(light)["id"] == "status"
    slow_done = sum(1 for method, _ in s.calls if method == "slow")
    assert slow_done <= 20, "the light request waited for the pipeline (two turns at most)"
    answers = [s.answer(greedy)["id"] for _ in range(30)]
    assert answers == list(range(30))


def test_errors_of_the_dispatch_get_their_codes(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    assert s.call(client, "invalid")["error"] == {"code": -32602, "message": "no good"}
    assert s.call(client, "missing")["error"] == {"code": -32001, "message": "no such thing"}
    assert s.call(client, "echo", {"still": "served"})["result"] == {"still": "served"}


def test_an_answer_that_comes_later_is_sent_when_it_comes(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    s.send(client, request(1, "later") + b"\n" + request(2) + b"\n")
    assert s.answer(client)["id"] == 2  # the later one does not hold the next back
    assert client.take_line() is None
    s.pending[0].resolve({"done": True})
    assert s.answer(client) == {"jsonrpc": "2.0", "id": 1, "result": {"done": True}}


def test_a_notification_gets_no_answer(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    notification = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}}).encode()
    s.send(client, notification + b"\n" + request(2) + b"\n")
    assert s.answer(client)["id"] == 2
    assert s.calls == [("echo", {"n": 1}), ("echo", {})]


# -- what is wrong with a frame ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        (b"not json", -32700, "not JSON"),
        (b"\xff\xfe", -32700, "not UTF-8"),
        (b"[1, 2]", -32600, "batch requests are not supported"),
        (b'"a string"', -32600, "a request must be a JSON object"),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "echo"}', -32600, 'jsonrpc must be "2.0"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600, "method must be a string"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]}', -32600, "params must be"),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "echo"}', -32600, "id must be"),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": NaN}}',
            -32602,
            "param 'x'",
        ),
    ],
    ids=["not-json", "not-utf8", "batch", "not-object", "version", "method", "params", "id", "nan"],
)
def test_a_malformed_frame_is_answered_and_the_connection_goes_on(
    served: Callable[..., Served], line: bytes, code: int, message: str
) -> None:
    s = served()
    client = s.connect()
    s.send(client, line + b"\n")
    error = s.answer(client)["error"]
    assert error["code"] == code and message in error["message"], error
    assert s.calls == []
    assert s.call(client, "echo", {"after": 1}, id=7)["result"] == {"after": 1}


def test_a_line_past_the_size_limit_is_refused_and_skipped(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    huge = b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": "' + b"a" * MAX_LINE
    s.send(client, huge + b'"}}\n' + request(2) + b"\n")
    error = s.answer(client)
    assert error["id"] is None
    assert error["error"] == {"code": -32600, "message": f"request line exceeds {MAX_LINE} bytes"}
    assert s.answer(client)["id"] == 2  # the rest of the long line was dropped, not read
    assert s.calls == [("echo", {})]
    assert s.pump(lambda: s.server.input_total == 0)


def test_a_line_of_exactly_the_limit_is_served(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    head = b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": "'
    line = head + b"a" * (MAX_LINE - len(head) - 3) + b'"}}'
    assert len(line) == MAX_LINE
    s.send(client, line + b"\n")
    assert s.answer(client)["result"] == {"x": "a" * (MAX_LINE - len(head) - 3)}


# -- clients that go away ---------------------------------------------------------------


def test_a_client_that_disconnects_mid_request_is_forgotten(served: Callable[..., Served]) -> None:
    s = served()
    leaving = s.connect()
    s.send(leaving, b'{"jsonrpc": "2.0", "id": 1, "method": "ec')
    s.pump(lambda: s.server.input_total > 0)
    leaving.close()
    s.pump(lambda: not s.server.connections)
    assert s.server.input_total == 0 and s.server.output_total == 0
    assert s.calls == []
    other = s.connect()
    assert s.call(other, "echo", {"ok": 1})["result"] == {"ok": 1}


def test_a_request_ended_by_the_end_of_stream_is_an_error(served: Callable[..., Served]) -> None:
    s = served()
    client = s.connect()
    s.send(client, request(1) + b"\n" + b'{"jsonrpc": "2.0"')
    client.sock.shutdown(socket.SHUT_WR)
    assert s.answer(client)["id"] == 1
    error = s.answer(client)["error"]
    assert error["code"] == -32700 and "end of stream before newline" in error["message"]
    s.pump(lambda: not s.server.connections)


def test_a_client_gone_before_its_later_answer_costs_nothing(
    served: Callable[..., Served],
) -> None:
    s = served()
    client = s.connect()
    s.send(client, request(1, "later") + b"\n")
    s.pump(lambda: s.pending)
    client.close()
    # It may only have shut its side (SHUT_WR) and still wait: kept until the answer comes.
    s.loop.run_once(0.01)
    assert len(s.server.connections) == 1
    s.pending[0].resolve("too late")  # it cannot be written: the connection goes
    s.pump(lambda: not s.server.connections)
    assert s.server.output_total == 0 and s.server.input_total == 0


def test_an_idle_client_is_disconnected(
    served: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "SWEEP_EVERY", 0.02)
    s = served(idle_timeout=0.1)
    idle = s.connect()
    busy = s.connect()
    s.send(busy, request(1, "later") + b"\n")  # an answer owed: not idle
    s.pump(lambda: len(s.server.connections) == 2 and s.pending)
    started = time.monotonic()
    s.pump(lambda: len(s.server.connections) == 1)
    assert time.monotonic() - started < 2
    idle.read()
    assert idle.eof
    s.pending[0].resolve(1)
    assert s.answer(busy)["result"] == 1


# -- who may connect, and how many ------------------------------------------------------


def test_connections_past_the_limit_are_refused_in_one_line(
    served: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = [0]
    monkeypatch.setattr(server_module, "peer_of", lambda sock: Peer(os.getpid(), uid[0], 0))
    s = served(max_connections=ROOT_RESERVE + 2)
    s.server.policy.allows = lambda peer: True  # type: ignore[method-assign]
    uid[0] = 65534  # not root: the last ROOT_RESERVE connections are not theirs
    kept = [s.connect(), s.connect()]
    s.pump(lambda: len(s.server.connections) == 2)
    refused = s.connect()
    error = s.answer(refused)
    assert error["id"] is None and error["error"]["code"] == -32002
    assert "too many control connections (2 open" in error["error"]["message"]
    s.pump(lambda: refused.read() or refused.eof)
    uid[0] = 0  # root may take the reserve, up to max_connections
    roots = [s.connect() for _ in range(ROOT_RESERVE)]
    s.pump(lambda: len(s.server.connections) == ROOT_RESERVE + 2)
    also_refused = s.connect()
    assert s.answer(also_refused)["error"]["code"] == -32002
    for client in [*kept, *roots]:
        assert s.call(client, "echo", {"ok": True})["result"] == {"ok": True}


def test_a_peer_not_allowed_is_told_and_served_nothing(served: Callable[..., Served]) -> None:
    s = served()
    s.server.policy.allows = lambda peer: False  # type: ignore[method-assign]
    client = s.connect()
    s.send(client, request(1) + b"\n" + request(2) + b"\n")
    error = s.answer(client)["error"]
    assert error["code"] == -32003 and "may not use this socket" in error["message"]
    s.pump(lambda: not s.server.connections)
    client.read()
    assert client.eof and not client.received
    assert s.calls == []


@pytest.mark.parametrize("flush", [True, False])
def test_close_sends_what_is_owed_unless_told_not_to(
    served: Callable[..., Served], flush: bool
) -> None:
    s = served()
    client = s.connect()
    s.send(client, request(1, "later") + b"\n")
    s.pump(lambda: s.pending)
    # Answered outside a turn: written, not yet sent (answers go out after the turn's commit).
    s.pending[0].resolve("owed")
    assert s.server.output_total > 0
    s.server.close(flush=flush)  # flush=False: a failed commit, whose answers may be untrue
    client.sock.setblocking(True)
    client.sock.settimeout(5)
    received = b""
    while chunk := client.sock.recv(1 << 16):
        received += chunk
    if flush:
        assert json.loads(received) == {"jsonrpc": "2.0", "id": 1, "result": "owed"}
    else:
        assert received == b""
    assert not s.server.connections


# -- the socket file --------------------------------------------------------------------


def test_bind_makes_the_socket_0660_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "run" / "s.sock"
    first = bind(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    with pytest.raises(SocketInUse, match="another nerved is listening"):
        bind(path)
    first.close()  # the file stays, nobody listens: stale
    second = bind(path)
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode)
    finally:
        second.close()


def test_bind_leaves_what_is_not_a_socket_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("mine")
    with pytest.raises(FileExistsError):
        bind(path)
    assert path.read_text() == "mine"
