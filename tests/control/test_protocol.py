"""The control socket under bad input: every mistake gets a JSON-RPC error, the loop never stalls."""

from __future__ import annotations

import json
import socket
import time

import pytest
from support import Nerved

CONFIG = "senses:\n  tick: {}\n"
TICK = "def compute(ctx):\n    return {'ok': True}\n"


@pytest.fixture
def daemon(nerved_factory) -> Nerved:
    return nerved_factory(CONFIG, {"tick": TICK}).start()


def raw(daemon: Nerved) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket))
    return sock


def read_answer(sock: socket.socket, buf: bytearray) -> dict:
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the daemon closed the connection before answering"
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def ask(sock: socket.socket, line: bytes, buf: bytearray | None = None) -> dict:
    sock.sendall(line + b"\n")
    return read_answer(sock, buf if buf is not None else bytearray())


def error_code(answer: dict) -> int:
    assert "error" in answer, answer
    return answer["error"]["code"]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"garbage", -32700),
        (b"\xff\xfe not utf-8", -32700),
        (b"[1, 2]", -32600),
        (b'"just a string"', -32600),
        (b'{"id": 1, "method": "status"}', -32600),  # no jsonrpc
        (b'{"jsonrpc": "1.0", "id": 1, "method": "status"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": [1]}', -32600),
        (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "status"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "no.such"}', -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "sense.trigger", "params": {"sense": 5}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "sense.trigger", "params": {}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "sense.trigger", "params": {"x": 1}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"limit": -1}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"limit": true}}', -32602),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "sense.trigger", "params": {"sense": "x"}}',
            -32001,
        ),
    ],
)
def test_bad_requests_get_jsonrpc_errors(daemon: Nerved, line: bytes, code: int) -> None:
    with raw(daemon) as sock:
        buf = bytearray()
        assert error_code(ask(sock, line, buf)) == code
        # The same connection keeps working.
        answer = ask(sock, b'{"jsonrpc": "2.0", "id": 7, "method": "status"}', buf)
        assert answer["id"] == 7 and answer["result"]["pid"] == daemon.pid


def test_many_requests_share_a_connection_and_notifications_get_no_answer(daemon: Nerved) -> None:
    with raw(daemon) as sock:
        lines = [
            b'{"jsonrpc": "2.0", "method": "status"}',  # a notification: no answer
            *(b'{"jsonrpc": "2.0", "id": %d, "method": "status"}' % i for i in range(1, 51)),
        ]
        sock.sendall(b"\n".join(lines) + b"\n")
        buf = bytearray()
        ids = [read_answer(sock, buf)["id"] for _ in range(50)]
        assert ids == list(range(1, 51))


def test_oversized_line_is_refused_and_the_connection_recovers(daemon: Nerved) -> None:
    with raw(daemon) as sock:
        big = b'{"jsonrpc": "2.0", "id": 1, "method": "status", "pad": "' + b"x" * (2 << 20) + b'"}'
        sock.sendall(big + b"\n")
        buf = bytearray()
        answer = read_answer(sock, buf)
        assert error_code(answer) == -32600
        assert "exceeds" in answer["error"]["message"]
        answer = ask(sock, b'{"jsonrpc": "2.0", "id": 2, "method": "status"}', buf)
        assert answer["id"] == 2 and "result" in answer


def test_half_written_request_then_end_of_stream_gets_a_parse_error(daemon: Nerved) -> None:
    with raw(daemon) as sock:
        sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "meth')
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock, bytearray())
        assert error_code(answer) == -32700
        assert sock.recv(1) == b""  # then the daemon closes


def test_silent_and_slow_clients_do_not_stall_the_daemon(daemon: Nerved) -> None:
    silent = raw(daemon)
    silent.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "sta')  # and never more
    # A client that asks a lot and reads nothing.
    greedy = raw(daemon)
    request = b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"limit": 10000}}\n'
    greedy.setblocking(False)
    try:
        for _ in range(2000):
            greedy.send(request)
    except BlockingIOError:
        pass
    started = time.monotonic()
    for _ in range(20):
        assert daemon.rpc("status")["pid"] == daemon.pid
    assert time.monotonic() - started < 5
    silent.close()
    greedy.close()
    assert daemon.rpc("status")["pid"] == daemon.pid


def test_many_clients_at_once(daemon: Nerved) -> None:
    socks = [raw(daemon) for _ in range(100)]
    for i, sock in enumerate(socks):
        sock.sendall(b'{"jsonrpc": "2.0", "id": %d, "method": "status"}\n' % i)
    for i, sock in enumerate(socks):
        assert read_answer(sock, bytearray())["id"] == i
        sock.close()


def test_socket_mode_is_0660(daemon: Nerved) -> None:
    assert daemon.socket.stat().st_mode & 0o777 == 0o660


def deep(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


@pytest.mark.parametrize(
    ("line", "code", "names"),
    [
        # Any shape under the line cap gets an answer: nesting is refused where it enters.
        (deep(990), -32600, "nested deeper than 102"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": {"x": ' + deep(980) + b"}}",
         -32602, "param 'x' nests deeper than 100 levels"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger", "params": {"workflow": "w", "payload": ' + deep(101) + b"}}",
         -32602, "param 'payload' nests deeper than 100 levels"),
        # Values JSON cannot carry, named by param and path.
        (b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger", "params": {"workflow": "w", "payload": {"x": NaN}}}',
         -32602, "param 'payload' holds what JSON cannot carry: NaN is not JSON (at payload.x)"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger", "params": {"workflow": "w", "payload": [Infinity]}}',
         -32602, "Infinity is not JSON (at payload[0])"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger", "params": {"workflow": "w", "payload": 1e400}}',
         -32602, "param 'payload' holds what JSON cannot carry: a number too large"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.trigger", "params": {"workflow": "w", "payload": "\\ud800"}}',
         -32602, "lone UTF-16 surrogate"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"refId": "\\udc00x"}}',
         -32602, "param 'refId'"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"afterId": 9223372036854775808}}',
         -32602, "param 'afterId' must be at most 9223372036854775807"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "logs.query", "params": {"since": 1e400}}',
         -32602, "param 'since' must be an integer"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "workflow.wait", "params": {"runId": "abcdefgh", "timeout": 1e300}}',
         -32602, "param 'timeout' must be at most"),
        (b'{"jsonrpc": "2.0", "id": NaN, "method": "status"}', -32600, "NaN is not JSON (at id)"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\xff', -32700, "not UTF-8"),
    ],
    ids=["deep-line", "deep-param", "deep-payload", "nan", "infinity", "1e400", "surrogate",
         "surrogate-param", "int64", "float-for-int", "huge-timeout", "nan-id", "not-utf8"],
)  # fmt: skip
def test_every_shape_and_value_gets_its_answer_and_changes_nothing(
    nerved_factory, line: bytes, code: int, names: str
) -> None:
    daemon = nerved_factory(
        "workflows:\n  w: {concurrency: 1, overflow: queue, maxQueue: 2}\n",
        workflows={"w": HOLD},
    ).start()
    with raw(daemon) as sock:
        buf = bytearray()
        # A full queue: a trigger that evicted before validating would drop its oldest run.
        runs = [ask(sock, TRIGGER % i, buf)["result"]["runId"] for i in range(3)]
        answer = ask(sock, line, buf)
        assert error_code(answer) == code, answer
        assert names in answer["error"]["message"]
        listed = {r["runId"]: r["status"] for r in daemon.rpc("workflow.list", all=True)}
        assert listed == {runs[0]: "started", runs[1]: "queued", runs[2]: "queued"}
        assert ask(sock, b'{"jsonrpc": "2.0", "id": 7, "method": "status"}', buf)["id"] == 7
    assert "Traceback" not in daemon.log()


HOLD = """
    import time
    from nerved import WorkflowDefinition

    def hold(prompt, ctx):
        time.sleep(3600)

    def moderate(thread, event):
        return {"role": "hold", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"hold": hold}, moderate=moderate)
"""
TRIGGER = b'{"jsonrpc": "2.0", "id": 100, "method": "workflow.trigger", "params": {"workflow": "w", "payload": %d}}'


def test_a_refused_value_is_answered_to_its_id_and_a_notification_not_at_all(daemon: Nerved):
    with raw(daemon) as sock:
        buf = bytearray()
        # A notification (no id) whose params hold NaN: no answer. Then a request with one.
        sock.sendall(b'{"jsonrpc": "2.0", "method": "status", "params": {"x": NaN}}\n')
        answer = ask(
            sock,
            b'{"jsonrpc": "2.0", "id": 5, "method": "status", "params": {"x": "\\udc00"}}',
            buf,
        )
        assert answer["id"] == 5 and error_code(answer) == -32602
        answer = ask(sock, b'{"jsonrpc": "2.0", "id": "\\ud800", "params": {"x": NaN}}', buf)
        assert answer["id"] is None and error_code(answer) in (-32600, -32602)
        assert ask(sock, b'{"jsonrpc": "2.0", "id": 6, "method": "status"}', buf)["id"] == 6
