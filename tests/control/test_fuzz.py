"""Fuzzing the control socket: whatever a client sends, nerved answers it and stays up.

A seeded generator writes request lines for every method of ``COMMANDS`` and for unknown
ones: params with the right names and wrong or edge values, written as raw JSON text so that
``NaN``, ``1e400``, lone surrogates and 100-level nesting reach the daemon as a client could
send them; envelopes with odd ``jsonrpc``/``id``/``method``/``params``; lines mutated at the
byte level (truncated, flipped, invalid UTF-8, batches, two objects on a line). They go in
batches pipelined on one connection that is read at the same time; a connection then ends
cleanly, with half a line, or is dropped with its answers unread. Hypothesis was the other
way: its shrinking replays examples against a daemon whose state (runs, logs) has moved on,
and its one-example-at-a-time model rules out pipelining, where the server's per-turn
scheduling is exercised.

What is checked, by an oracle that needs nothing from nerved's own decoder:

- nerved stays alive, and ``status`` on a second connection answers between batches;
- a request line with an id gets exactly one answer, valid JSON-RPC 2.0, carrying its id (or
  null, only when nerve's JSON rules refuse the line); a notification gets none (a refused
  one may get a null-id error); any other line gets one answer with a null id;
- no -32603 but the documented ones: a ``workflow.wait`` timeout, a refused ``reload``;
- every run a trigger acknowledged is kept and ends, none crashed (these roles cannot crash
  their worker) and none restarted forever.

``NERVE_FUZZ_SECONDS`` (default 5) fuzzes longer; ``NERVE_FUZZ_SEED`` picks another seed. The
lines generated depend on the seed alone; how many are sent depends on the machine's speed.
A failure names the line, and the batch it was in is saved under the test's tmp_path.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from support import Nerved, wait_until

from nervectl.client import Client, RemoteError
from nerved.control.commands import COMMANDS
from nerved.control.rpc import INTERNAL_ERROR, MAX_LINE

SECONDS = float(os.environ.get("NERVE_FUZZ_SECONDS", "5"))
SEED = int(os.environ.get("NERVE_FUZZ_SEED", "20261125"))
STATUS_BOUND = 2.0  # seconds: the design promises a loop turn; this is for a loaded machine
SETTLE = 30.0  # seconds the answers of one batch may take, all told
MAX_REQUEST_DEPTH = 102  # a value may nest 100 levels, inside params, inside the request

CONFIG = """
    senses:
      tick: {}
    workflows:
      echo: {concurrency: 4, overflow: queue, maxQueue: 50}
      single: {concurrency: 1, overflow: drop}
      held: {concurrency: 50, overflow: queue, maxQueue: 50}
    retention:
      runs: {maxCount: null}
"""
TICK = "def compute(ctx):\n    return {'ok': True}\n"
# One step whose event carries the trigger payload back: a payload nerve accepted travels
# through the worker's channel and the store once more. It takes a moment, so that some
# runs are still active when a fuzzed workflow.cancel names them.
ECHO = """
    import time
    from nerved import WorkflowDefinition

    def echo(prompt, ctx):
        time.sleep(0.05)
        return {"type": "echoed", "payload": prompt}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "echo", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"echo": echo}, moderate=moderate)
"""
# Runs that wait for a signal ``go`` (or 2 s) hold still however fast nerve gets: a fuzzed
# workflow.cancel or workflow.signal always has live runs to name, not only final ones.
HELD = """
    import nerved
    from nerved import WorkflowDefinition

    def echo(prompt, ctx):
        return {"type": "echoed", "payload": prompt}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return nerved.wait_for("go", timeout=2)
        if event["type"] in ("signal", "wait_timeout"):
            return {"role": "echo", "prompt": event.get("payload")}
        return None

    workflow = WorkflowDefinition(roles={"echo": echo}, moderate=moderate)
"""
WORKFLOWS = ("echo", "single", "held")
NAMING = frozenset({"runId", "name", "workflow"})  # params that say what a method is about
METHODS = sorted(COMMANDS)
UNKNOWN_METHODS = ("", "nope", "STATUS", "status ", "workflow.", "rpc.discover", "__init__",
                   "run", "dispatch", "logs.query\u0000", "\ud800", "sense.list.x")  # fmt: skip

# Raw JSON text (and some that only looks like it), to put where a value goes.
EDGES = (
    "null", "true", "false", "0", "-0", "-1", "1", "0.0", "1.5", "-2.5", "1e9", "1000000001",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551616", "1" + "0" * 400, "9" * 5000,
    "1e400", "-1e400", "1e-400", "5e-324", "NaN", "Infinity", "-Infinity", "-NaN", "+1", "01",
    '""', '" "', '"\\u0000"', '"\\ud800"', '"x\\udfffy"', '"\\ud83d\\ude00"', '"é😀"', '"\\\\"',
    "[]", "{}", "[null]", '{"":null}', '[1,"a",{}]', '{"\\ud800":1}', '{"a":NaN}', "[1e400]",
)  # fmt: skip
BAD_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xef\xbb\xbf")


def nested(depth: int, as_object: bool) -> str:
    return '{"a":' * depth + "0" + "}" * depth if as_object else "[" * depth + "]" * depth


class Fuzzer:
    """Request lines: every method, the right param names, right, wrong and edge values."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = 0
        self.runs: list[str] = []  # run ids triggers answered with, for runId params
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()

    def record(self, method: str | None, answer: dict[str, Any]) -> None:
        """Count the outcome (by method: ``result`` or the error code); keep new run ids."""
        result = answer.get("result")
        outcome = "result" if "result" in answer else str(answer["error"]["code"])
        self.outcomes[method or "(null id)", outcome] += 1
        # A mutated line may carry another line's id: only a trigger's answer has this shape.
        if (
            method == "workflow.trigger"
            and isinstance(result, dict)
            and set(result) == {"runId", "status", "worker", "deduplicated"}
        ):
            self.runs.append(result["runId"])

    def line(self) -> bytes:
        """A request line, without its newline."""
        rng = self.rng
        method = self.method()
        envelope = {"jsonrpc": '"2.0"', "id": self.request_id(), "method": json.dumps(method)}
        if rng.random() < 0.15:
            self.mutate_envelope(envelope)
        if rng.random() < 0.9:
            envelope["params"] = self.params(method)
        elif rng.random() < 0.7:
            envelope["params"] = rng.choice(EDGES)
        pairs = list(envelope.items())
        if rng.random() < 0.05:
            rng.shuffle(pairs)
        line = ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}").encode()
        return self.mutate_bytes(line) if rng.random() < 0.12 else line

    def method(self) -> str:
        if self.rng.random() < 0.05:
            return self.rng.choice(UNKNOWN_METHODS)
        weights = [0.02 if m == "reload" else 1.0 for m in METHODS]  # each forks a probe
        return self.rng.choices(METHODS, weights)[0]

    def request_id(self) -> str:
        self.ids += 1
        return str(self.ids) if self.rng.random() < 0.5 else f'"q{self.ids}"'

    def mutate_envelope(self, envelope: dict[str, str]) -> None:
        rng = self.rng
        key = rng.choice(("jsonrpc", "id", "method", "extra"))
        if key != "extra" and rng.random() < 0.4:
            del envelope[key]  # no jsonrpc, a notification, no method
        else:
            envelope[key] = rng.choice((*EDGES, '"2.0"', '"1.0"', "2.0", '"status"'))

    def params(self, method: str) -> str:
        rng = self.rng
        names = sorted(COMMANDS[method].params) if method in COMMANDS else []
        # What names the run, sense or workflow most of the time: without it, a method
        # does nothing past its checks (workflow.signal needs a run and a name).
        chosen = [n for n in names if rng.random() < (0.9 if n in NAMING else 0.6)]
        if rng.random() < 0.08:
            chosen.append(rng.choice(("x", "", "runid", "limit", "params", "\\ud800")))
        values = [self.value(name) if rng.random() < 0.7 else self.edge() for name in chosen]
        return "{" + ",".join(f'"{n}":{v}' for n, v in zip(chosen, values, strict=True)) + "}"

    def value(self, name: str) -> str:
        """A value of the right kind for a param (or a plausible mistake with that kind)."""
        rng = self.rng
        match name:
            case "runId" | "refId":
                return json.dumps(self.run_ref())
            case "workflow":
                return json.dumps(rng.choice((*WORKFLOWS, "nope", "Echo")))
            case "sense":
                return json.dumps(rng.choice(("tick", "nope", "tick ")))
            case "name" if rng.random() < 0.7:  # a signal's name: the one held runs wait for
                return json.dumps(rng.choice(("go", "go", "Go", "x", "", "go.1", "é")))
            case "payload" if rng.random() < 0.1:  # at the depth limit: accepted, so kept
                return nested(rng.choice((98, 99, 100)), rng.random() < 0.5)
            case "payload":
                return self.json_value(0)
            case "timeout":
                return rng.choice(("0", "0.01", "0.05", "0.2", "null", "1e-9"))
            case "limit":
                return rng.choice(("1", "7", "100", "10000", "10001", "0"))  # 0: refused
            case "afterId" | "beforeId" | "since":
                return str(rng.randrange(0, 5000))
            case "status":
                return rng.choice(('"completed"', '["queued","started"]', '"failed"', "[]",
                                   '"bogus"', '["completed","dropped","crashed"]'))  # fmt: skip
            case "all":
                return rng.choice(("true", "false"))
            case "idempotencyKey":  # a few keys, used again and again; and ones refused
                return json.dumps(rng.choice(("k1", "k2", "ü", "k" * 256, "k" * 257, "")))
            case "source":
                return rng.choice(('"sense"', '"workflow"', '"nope"'))
            case "type":
                return rng.choice(('"signal"', '"completed"', '"started"', '"x"'))
        return self.json_value(0)

    def run_ref(self) -> str:
        """A real run id, a prefix of one (long enough or not), or an id of no run."""
        rng = self.rng
        if not self.runs or rng.random() < 0.15:
            return rng.choice(("", "0" * 32, "abcdef12", f"{rng.getrandbits(128):032x}"))
        # Half the time one of the newest: the likeliest to be live (a held run waits 2 s),
        # so that cancel and signal name live runs, not only final ones, whatever the seed.
        run = rng.choice(self.runs[-6:] if rng.random() < 0.5 else self.runs)
        roll = rng.random()
        if roll < 0.6:
            return run
        if roll < 0.85:
            return run[: rng.randrange(8, 32)]
        return run[: rng.randrange(1, 8)] if roll < 0.93 else run.upper()

    def json_value(self, depth: int) -> str:
        """A random JSON value, now and then with an edge (NaN, 2**63, ...) at a leaf."""
        rng = self.rng
        roll = rng.random()
        if depth < 4 and roll < 0.25:
            return "[" + ",".join(self.json_value(depth + 1) for _ in range(rng.randrange(4))) + "]"
        if depth < 4 and roll < 0.5:
            keys = [rng.choice(("a", "b", "type", "", "é", "\\ud800")) for _ in range(3)]
            items = [f'"{k}":{self.json_value(depth + 1)}' for k in keys[: rng.randrange(4)]]
            return "{" + ",".join(items) + "}"
        if roll < 0.6:
            return self.edge()
        return rng.choice(("1", "-7", "0.25", "true", "null", '"text"', '"ünïcode"', '"/tmp/a"'))

    def edge(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.06:
            depth = rng.choice((98, 99, 100, 101, 102, 500, 5000, 100_000))
            return nested(depth, rng.random() < 0.5)
        if roll < 0.08:
            return '"' + "x" * rng.choice((70_000, 300_000)) + '"'
        if roll < 0.081:  # a line at the cap's edge: fits, or not by a few bytes
            return '"' + "y" * (MAX_LINE - rng.randrange(-150, 250)) + '"'
        return rng.choice(EDGES)

    def mutate_bytes(self, line: bytes) -> bytes:
        rng = self.rng
        at = rng.randrange(len(line) + 1)
        match rng.randrange(9):
            case 0:
                return line[:at]
            case 1 | 2:
                flipped = bytearray(line)
                flipped[min(at, len(line) - 1)] ^= 1 << rng.randrange(8)
                return bytes(flipped)
            case 3:
                return line[:at] + rng.choice(BAD_UTF8) + line[at:]
            case 4:
                return rng.choice((b"[]", b"1", b'"x"', b"null", b"true", b"{", b"}", b" \t"))
            case 5:
                return b"[" + line + b"," + line + b"]"
            case 6:
                return line + rng.choice((b"", b" ", b"\r")) + line
            case 7:
                return line[:at] + rng.choice((b"\x00", b"\x1b", b"\r", b"\n", b"\t")) + line[at:]
        return rng.choice((b" ", b"\xef\xbb\xbf", b"\r")) + line + rng.choice((b"", b" ", b"\r"))


def _refuse(text: str) -> Any:
    raise ValueError(text)


def deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (``[]`` is one, ``[[]]`` two)."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
    return any(isinstance(node, dict | list) for node in level)


def read_request(raw: bytes) -> tuple[Any, bool]:
    """The line as Python's lenient ``json`` reads it (None if it cannot), and whether nerve's
    rules (wire.py) may refuse it whole: NaN, Infinity (even under a key given twice, which
    leaves only the last value), a number that overflows (1e400), a lone surrogate, nesting
    past 102 levels."""
    if len(raw) > MAX_LINE:
        return None, True
    bom = raw.startswith(b"\xef\xbb\xbf")  # RFC 8259: a parser may ignore it, or refuse it
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    constants: list[str] = []

    def constant(text: str) -> float:
        constants.append(text)
        return float(text)

    try:
        value = json.loads(raw.decode(), parse_constant=constant)
    except (ValueError, RecursionError):
        return None, True
    if bom or constants or deeper_than(value, MAX_REQUEST_DEPTH):
        return value, True
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:  # UnicodeEncodeError (a lone surrogate) is one too
        return value, True
    return value, False


def answer_problem(answer: Any) -> str | None:
    """What makes ``answer`` something other than one JSON-RPC 2.0 response, if anything."""
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0" or "id" not in answer:
        return "not a JSON-RPC 2.0 response"
    if set(answer) - {"jsonrpc", "id", "result", "error"}:
        return "unexpected members"
    rid = answer["id"]
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        return "an id that is neither a string, an integer nor null"
    if ("result" in answer) == ("error" in answer):
        return "not exactly one of result and error"
    error = answer.get("error", {"code": 0, "message": ""})
    if not isinstance(error, dict) or set(error) - {"code", "message", "data"}:
        return "an error that is not {code, message, data?}"
    code, message = error.get("code"), error.get("message")
    if isinstance(code, bool) or not isinstance(code, int) or not isinstance(message, str):
        return "an error without an integer code and a string message"
    return None


def documented_internal_error(error: dict[str, Any], method: str | None) -> bool:
    """The -32603 answers that are not a client's mistake (a damaged store aside)."""
    data = error.get("data")
    if not isinstance(data, dict):
        return False
    if data.get("timeout") is True:
        return method in (None, "workflow.wait")
    return isinstance(data.get("errors"), list) and method in (None, "reload")


class Finding(AssertionError):
    """Something the daemon must never do, with the lines that show it."""

    def __init__(self, what: str, lines: Sequence[bytes] = ()) -> None:
        shown = "".join(f"\n  request: {line[:600]!r}" for line in lines[:5])
        super().__init__(what + shown)


class Ledger:
    """The answers a connection owes and has given: by id, and how many with a null id."""

    def __init__(self) -> None:
        self.owed: collections.Counter[Any] = collections.Counter()
        self.nullable: collections.Counter[Any] = collections.Counter()  # owed, refused lines
        self.got: collections.Counter[Any] = collections.Counter()
        self.requests: dict[Any, tuple[str, bytes]] = {}  # id -> (method, line)
        self.null_owed = 0  # lines that must get one null-id answer
        self.null_optional = 0  # refused notifications: a null-id answer, or none
        self.null_lines: list[bytes] = []
        self.nulls = 0

    def expect(self, raw: bytes) -> None:
        """Take one line as the server will see it (not blank: those it skips)."""
        message, refused = read_request(raw)
        if not isinstance(message, dict):
            message = {"id": None}
        if "id" not in message:
            self.null_optional += refused
            return
        rid = message["id"]
        if rid is None or isinstance(rid, bool) or not isinstance(rid, str | int):
            self.null_owed += 1
            self.null_lines.append(raw)
            return
        self.owed[rid] += 1
        self.nullable[rid] += refused
        method = message.get("method")
        self.requests[rid] = (method if isinstance(method, str) else "(no method)", raw)

    def missing(self) -> list[Any]:
        """Ids whose answer must still come with that id."""
        return [r for r, n in self.owed.items() if self.got[r] < n - self.nullable[r]]

    def answered(self, line: bytes) -> bool:
        """Whether an answer carrying this line's id has come."""
        message, _ = read_request(line)
        rid = message.get("id") if isinstance(message, dict) else None
        return isinstance(rid, str | int) and self.got[rid] > 0

    def nulls_due(self) -> int:
        """Null-id answers owed: lines that get one, and refused lines not answered by id."""
        return self.null_owed + sum(self.owed[r] - self.got[r] for r in self.owed)

    def settled(self) -> bool:
        return not self.missing() and self.nulls >= self.nulls_due()

    def take(self, data: bytes) -> tuple[str | None, dict[str, Any]]:
        """Check one answer line and count it; returns it and its request's method."""
        try:
            answer = json.loads(data.decode(), parse_constant=_refuse)
        except ValueError as exc:
            raise Finding(f"an answer that is not JSON ({exc}): {data[:600]!r}") from None
        problem = answer_problem(answer)
        if problem is not None:
            raise Finding(f"an answer with {problem}: {data[:600]!r}")
        rid = answer["id"]
        method, line = self.requests.get(rid, (None, b"")) if rid is not None else (None, b"")
        if rid is None:
            self.nulls += 1
        elif self.got[rid] >= self.owed[rid]:
            text = json.dumps(rid).encode()
            lines = [line] if line else [raw for raw in self.null_lines if text in raw]
            raise Finding(
                f"an answer no line was owed (a second one, or an id in a line that is not"
                f" JSON-RPC to read): {data[:600]!r}",
                lines,
            )
        else:
            self.got[rid] += 1
        error = answer.get("error")
        internal = error is not None and error["code"] == INTERNAL_ERROR
        if internal and not documented_internal_error(error, method):
            lines = [line] if rid is not None else self.null_lines[-5:]
            raise Finding(f"-32603 for a client's request: {data[:600]!r}", lines)
        return method, answer


class FuzzConnection:
    """One client: pipelines batches of lines while reading the answers, keeps the ledger."""

    def __init__(self, daemon: Nerved, fuzzer: Fuzzer) -> None:
        self.daemon = daemon
        self.fuzzer = fuzzer
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(daemon.socket))
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.ledger = Ledger()
        self.buf = b""
        self.eof = False
        self.batch: list[bytes] = []  # the lines of the last batch, for a report

    def make_batch(self, size: int) -> bytes:
        self.batch = []
        for _ in range(size):
            line = self.fuzzer.line()
            for piece in line.split(b"\n"):  # a mutation may have cut the line in two
                if piece.strip():
                    self.ledger.expect(piece)
            self.batch.append(line)
        return b"".join(line + b"\n" for line in self.batch)

    def exchange(self, size: int, tag: int) -> None:
        """Send a batch and a ``status`` after it; return once everything owed is answered."""
        data = self.make_batch(size)
        last = json.dumps({"jsonrpc": "2.0", "id": f"end{tag}", "method": "status"})
        self.ledger.expect(last.encode())
        self.pump(data + last.encode() + b"\n", self.ledger.settled)

    def end(self, partial: bool) -> None:
        """Close our side (after half a line, maybe) and read every answer until nerved
        closes; then the ledger must balance exactly."""
        data = b""
        if partial:
            line = self.fuzzer.line()
            data = line[: self.fuzzer.rng.randrange(1, max(2, len(line)))].split(b"\n")[0]
            if data:
                self.ledger.null_owed += 1  # "end of stream before newline"
                self.ledger.null_lines.append(data)
        self.pump(data, lambda: True)
        self.sock.shutdown(socket.SHUT_WR)
        self.pump(b"", lambda: self.eof)
        ledger = self.ledger
        missing = ledger.missing()
        if missing:
            lines = [ledger.requests[r][1] for r in missing]
            raise Finding(f"{len(missing)} requests never answered", lines)
        due = ledger.nulls_due()
        if not due <= ledger.nulls <= due + ledger.null_optional:
            raise Finding(
                f"{ledger.nulls} null-id answers where {due} to {due + ledger.null_optional}"
                " were owed",
                ledger.null_lines[-5:],
            )
        self.close()

    def abandon(self, size: int) -> None:
        """Send what the socket takes of a batch and close without reading a thing."""
        data = self.make_batch(size)
        with contextlib.suppress(OSError):
            self.sock.send(data)
        self.close()

    def close(self) -> None:
        self.selector.close()
        self.sock.close()

    def pump(self, data: bytes, done: Callable[[], bool]) -> None:
        """Write ``data`` while reading answers, until it is all sent and ``done()``."""
        view = memoryview(data)
        deadline = time.monotonic() + SETTLE
        while view or not done():
            if self.eof:
                self.fail("nerved closed the connection with answers owed")
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0)
            self.selector.modify(self.sock, events)
            if not self.selector.select(timeout=max(0.0, deadline - time.monotonic())):
                self.fail(f"answers still owed after {SETTLE:g}s")
            if view:
                try:
                    view = view[self.sock.send(view[: 1 << 18]) :]
                except BlockingIOError:
                    pass
                except OSError:
                    self.eof = True
            self.receive()

    def receive(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        for line in lines:
            self.fuzzer.record(*self.ledger.take(line))

    def fail(self, what: str) -> NoReturn:
        """Answers are owed and will not come: say so, with the lines that show it.

        If nerved died, the lines after the last one answered with its id: it takes a
        connection's lines in order, so one of the first few took it down (lines it answers
        with a null id are among them too). Else the lines still owed an answer.
        """
        assert self.daemon.proc is not None
        try:
            code = self.daemon.proc.wait(2)
        except subprocess.TimeoutExpired:
            missing = [self.ledger.requests[r][1] for r in self.ledger.missing()]
            raise Finding(what, missing) from None
        answered = [i for i, line in enumerate(self.batch) if self.ledger.answered(line)]
        first = answered[-1] + 1 if answered else 0
        raise Finding(f"nerved exited with {code}: {what}", self.batch[first:])


class Session:
    """Connections one after the other, each a few batches; ``status`` asked between them."""

    def __init__(self, daemon: Nerved, fuzzer: Fuzzer, status: Client) -> None:
        self.daemon = daemon
        self.fuzzer = fuzzer
        self.status = status
        self.conn: FuzzConnection | None = None
        self.latencies: list[float] = []
        self.sent = 0

    def run(self, seconds: float) -> None:
        rng = self.fuzzer.rng
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.conn = FuzzConnection(self.daemon, self.fuzzer)
            if rng.random() < 0.1:
                self.conn.abandon(rng.randint(1, 100))
            else:
                for _ in range(rng.randint(1, 8)):
                    self.conn.exchange(rng.randint(1, 120), len(self.latencies))
                    self.sent += len(self.conn.batch)
                    self.check_status()
                self.conn.end(partial=rng.random() < 0.2)
            self.check_status()

    def check_status(self) -> None:
        started = time.monotonic()
        assert self.status.call("status")["pid"] == self.daemon.pid
        self.latencies.append(time.monotonic() - started)
        assert self.latencies[-1] < STATUS_BOUND, f"status took {self.latencies[-1]:.2f}s"

    def check_runs(self) -> None:
        """No run is lost: each acknowledged one is kept and ends (none is retried forever).

        None crashes either: these roles cannot kill their worker, so a crash means nerved
        killed it over a value it had accepted (a value it cannot carry must fail the run).
        """
        wait_until(
            lambda: not self.status.call("workflow.list"),
            timeout=SETTLE,
            what="no run active (each ends, none restarts forever)",
        )
        for run_id in self.fuzzer.runs:
            run = self.status.call("workflow.wait", {"runId": run_id, "timeout": 0})
            ended = ("completed", "failed", "dropped", "cancelled")
            assert run["status"] in ended, f"a run ended so: {run}"

    def report(self, finding: Exception, tmp_path: Path) -> str:
        saved = tmp_path / "batch.txt"
        batch = self.conn.batch if self.conn else []
        saved.write_bytes(b"".join(line + b"\n" for line in batch))
        tail = "\n".join(self.daemon.log().splitlines()[-40:])
        return f"{finding}\n(seed {SEED}; the last batch is in {saved})\nnerved's log ends:\n{tail}"


def test_fuzzed_requests_are_each_answered_once_and_never_take_nerved_down(
    nerved_factory: Callable[..., Nerved], tmp_path: Path
) -> None:
    workflows = {"echo": ECHO, "single": ECHO, "held": HELD}
    daemon = nerved_factory(CONFIG, {"tick": TICK}, workflows).start()
    fuzzer = Fuzzer(SEED)
    with daemon.client() as status:
        session = Session(daemon, fuzzer, status)
        try:
            session.run(SECONDS)
            session.check_runs()
        except (AssertionError, RemoteError, OSError) as exc:
            raise AssertionError(session.report(exc, tmp_path)) from None
    assert daemon.proc is not None and daemon.proc.poll() is None
    latencies = sorted(session.latencies)
    print(
        f"\nfuzz: {session.sent} lines, {len(fuzzer.runs)} runs; status p50 "
        f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    for method in (*METHODS, "(null id)"):
        counts = {o: n for (m, o), n in sorted(fuzzer.outcomes.items()) if m == method}
        print(f"  {method}: {counts}")
    # The generator still reaches past the checks: every method answered a result sometimes.
    assert not [m for m in METHODS if not fuzzer.outcomes[m, "result"]], fuzzer.outcomes
