"""Driving a real nerved from tests: a root on disk, the process, its notify socket, RPC.

Tests synchronise on what the daemon says (``READY=1`` on a notify socket the test holds,
answers on the control socket, a status), never on fixed sleeps. ``wait_until`` polls a
condition against a deadline, for the places where the daemon's state is the signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from nervectl.client import Client

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


GATED = """
    import os, time
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        open(prompt["gate"] + ".running", "w").close()
        while not os.path.exists(prompt["gate"]):
            time.sleep(0.01)
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""
"""A workflow of one step that returns once the file named by its payload's ``gate`` exists;
``<gate>.running`` exists once its role runs."""

QUICK = """
    from nerved import WorkflowDefinition

    def work(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "work", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"work": work}, moderate=moderate)
"""
"""A workflow of one step that returns ``{"type": "done"}`` at once."""

CREDENTIAL_READER = """
    from nerved import WorkflowDefinition

    def read(prompt, ctx):
        try:
            ctx.credential("absent")
        except KeyError as exc:
            missing = str(exc)
        return {"type": "read", "token": ctx.credential("token"), "missing": missing}

    def moderate(thread, event):
        return {"role": "read", "prompt": {}} if event["type"] == "thread_start" else None

    workflow = WorkflowDefinition(roles={"read": read}, moderate=moderate)
"""
"""A workflow whose role returns the credential ``token`` (``ctx.credential``) and the
KeyError of one that is absent."""


FORKER = """
    import os, time
    from nerved import WorkflowDefinition

    def sleep_forever(pidfile):
        with open(pidfile + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        while True:
            time.sleep(60)

    def spawn(prompt, ctx):
        if os.fork() == 0:
            try:
                sleep_forever(prompt["dir"] + "/child")
            finally:
                os._exit(0)
        middle = os.fork()
        if middle == 0:
            try:
                if prompt.get("setsid"):
                    os.setsid()
                if os.fork() == 0:
                    sleep_forever(prompt["dir"] + "/daemon")
            finally:
                os._exit(0)
        os.waitpid(middle, 0)
        while prompt.get("gate") and not os.path.exists(prompt["gate"]):
            time.sleep(0.01)
        return {"type": "spawned"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "spawn", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"spawn": spawn}, moderate=moderate)
"""
"""A role that starts processes meant to outlive it, their pids in files of the payload's
``dir``: ``child`` sleeps forever; ``daemon``, forked by a child that exits at once, is an
orphan (with ``setsid``, one that also left the worker's process group). Then it returns, or
waits for the payload's ``gate`` to exist."""

LEAKER = """
    import os, time
    from nerved import WorkflowDefinition

    hoard = []

    def leak_forever():
        while True:
            hoard.append(b"\\x01" * (20 << 20))
            time.sleep(0.05)

    def leak(prompt, ctx):
        if prompt and prompt.get("in_child"):
            if os.fork() == 0:
                try:
                    leak_forever()
                finally:
                    os._exit(0)
            while True:
                time.sleep(1)
        leak_forever()

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "leak", "prompt": event["payload"]}
        return None

    workflow = WorkflowDefinition(roles={"leak": leak}, moderate=moderate)
"""
"""A role that takes 20 MiB every 50 ms and never returns: in the worker, or with payload
``{"in_child": true}`` in a child it forks (what counts is the unit's memory)."""


def make_root(
    base: Path,
    config: str,
    senses: dict[str, str] | None = None,
    workflows: dict[str, str] | None = None,
) -> Path:
    """Write a nerve root: nerve.yaml and one package per sense/workflow (code dedented)."""
    root = base / "root"
    root.mkdir(parents=True, exist_ok=True)
    (root / "nerve.yaml").write_text(textwrap.dedent(config))
    for kind, packages in (("senses", senses or {}), ("workflows", workflows or {})):
        for name, code in packages.items():
            write_package(root, kind, name, code)
    return root


def write_package(root: Path, kind: str, name: str, code: str) -> None:
    package = root / kind / name
    package.mkdir(parents=True, exist_ok=True)
    tmp = package / "__init__.py.tmp"
    tmp.write_text(textwrap.dedent(code))
    tmp.rename(package / "__init__.py")  # atomic: inotify sees one complete file


def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds``: a call that blocks fails, not hangs.

    SIGALRM interrupts a blocking system call (a FIFO's open, a full socket's send) in this,
    the main thread, and its handler's exception ends the call. It comes again every 0.1 s,
    for code that swallows exceptions (sdnotify does unless asked not to).
    """

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Nerved:
    """One nerved process on a root, with its state, socket and notify socket in ``base``."""

    def __init__(self, root: Path, base: Path, *extra: str, env: dict[str, str] | None = None):
        self.command = [sys.executable, "-m", "nerved"]
        """How nerved is started: ``python -m nerved``, or the ``nerved`` console script."""
        self.root = root
        self.base = base
        self.state = base / "state"
        self.socket = base / "run" / "nerved.sock"
        self.log_path = base / "nerved.log"
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_path = base / "notify.sock"
        self._notify: socket.socket | None = None
        self.notifications: list[str] = []

    # -- process ------------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> Nerved:
        self.base.mkdir(parents=True, exist_ok=True)
        if self._notify is None:
            self.notify_path.unlink(missing_ok=True)
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.notify_path))
        self.notifications.clear()
        self._notify.setblocking(False)  # what an earlier process said is not this one's READY
        with contextlib.suppress(BlockingIOError):
            while True:
                self._notify.recv(65536)
        self._notify.setblocking(True)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **self.env}
        env.pop("NERVE_SOCKET", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [*self.command, "--root", str(self.root),
             "--state-dir", str(self.state), "--socket", str(self.socket),
             "--log-level", "debug", *self.extra],
            stdout=log, stderr=log, env=env, cwd=REPO, start_new_session=True,
        )  # fmt: skip
        log.close()
        if wait:
            self.wait_notify("READY=1", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_notify(self, needle: str, timeout: float = 20.0) -> str:
        """Wait for a notify message containing ``needle``; fail fast if nerved exits."""
        assert self._notify is not None
        deadline = time.monotonic() + timeout
        for message in self.notifications:
            if needle in message:
                return message
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"nerved exited with {self.proc.returncode} before {needle!r}:\n{self.log()}"
                )
            self._notify.settimeout(0.1)
            try:
                message = self._notify.recv(65536).decode()
            except TimeoutError:
                continue
            self.notifications.append(message)
            if needle in message:
                return message
        raise AssertionError(f"no {needle!r} from nerved within {timeout}s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """kill -9 of the master alone (its workers die by PR_SET_PDEATHSIG)."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- talking to it ------------------------------------------------------------------

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.socket, timeout)

    def rpc(self, method: str, **params: Any) -> Any:
        with self.client() as client:
            return client.call(method, params)

    def ctl(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nervectl", "--socket", str(self.socket), *args],
            capture_output=True, text=True, input=input, timeout=timeout, cwd=REPO,
        )  # fmt: skip

    def ctl_json(self, *args: str) -> Any:
        done = self.ctl("--json", *args)
        assert done.returncode == 0, f"nervectl {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return json.loads(done.stdout)

    def trigger(self, workflow: str, payload: Any = None) -> str:
        """A new run's id, once nerved acknowledged it."""
        return str(self.rpc("workflow.trigger", workflow=workflow, payload=payload)["runId"])

    def wait_run(self, run_id: str, timeout: float = 20) -> dict[str, Any]:
        """The run once final (``workflow.wait``; its timeout is an error)."""
        with self.client(timeout=timeout + 5) as client:
            answer: dict[str, Any] = client.call(
                "workflow.wait", {"runId": run_id, "timeout": timeout}
            )
            return answer

    def entries(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """A run's whole history (of one type of entry), as ``workflow.inspect`` pages it."""
        events: list[dict[str, Any]] = []
        while True:
            after = events[-1]["id"] if events else 0
            page = self.rpc("workflow.inspect", runId=run_id, afterId=after, limit=10_000)
            events += page["events"]
            if not page["more"] or not page["events"]:
                return [e for e in events if kind is None or e["type"] == kind]

    def healthy(self) -> None:
        """It answers ``nervectl status``, and every run's row is what its entries say."""
        wait_until(lambda: self.ctl("status").returncode == 0, timeout=10)
        assert_runs_match_logs(self.state / "logs.db")

    def sense(self, name: str) -> dict[str, Any]:
        return next(s for s in self.rpc("sense.list") if s["name"] == name)

    def worker_pids(self, kind: str | None = None) -> dict[str, int]:
        return {
            w["name"]: w["pid"]
            for w in self.rpc("status")["workers"]
            if w["pid"] is not None and (kind is None or w["kind"] == kind)
        }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


# Every type of entry a run has (source 'workflow', ref_id the run), and what it does to the
# run's row. Listed here by hand, not taken from nerved: a type nerved adds must be taught to
# derive_runs, which fails on a type it does not know, or the derivation would go blind.
STATUS_TYPES = (
    "queued",
    "started",
    "waiting",
    "completed",
    "failed",
    "crashed",
    "dropped",
    "cancelled",
)
"""Transitions: the run's status becomes the type. A ``waiting`` entry ``{wait, until}`` (or
none) sets wait_for and wake_at; they are null in any other status."""
ERROR_TYPES = ("failed", "crashed", "dropped")
"""Transitions whose payload, a string, is the run's error (null: the error stays)."""
HISTORY_ENTRY_TYPES = ("step_complete", "step_failed", "input")
"""Steps (steps + 1), failed tries (tries + 1, retry_at: retryAt), inputs: the last two
forgotten at the next step or input; an input to a waiting run ends its wait (started)."""
INERT_TYPES = ("log", "resumed", "copied", "signal")
"""ctx.log lines, a run given to a new worker, and the note before the steps a retry copied
(the copies themselves count as steps), a signal sent to the run: no change to the row."""
KEY_TYPE = "key"
"""The idempotency key a run was triggered with, ``{key}``, right after its creating entry:
the row's idempotency_key."""

RUN_FIELDS = (
    "status",
    "steps",
    "error",
    "tries",
    "retry_at",
    "idempotency_key",
    "wait_for",
    "wake_at",
)


def cancelled_error(payload: Any) -> str:
    """A cancelled run's error from its entry ``{reason, uid}``: "cancelled by uid N" or
    "cancelled" without a uid, then ": <reason>" when there is one. Written apart from
    nerved.store.records.cancelled_error, which the row's error comes from."""
    assert isinstance(payload, dict) and {"reason", "uid"} <= payload.keys(), payload
    words = ["cancelled"]
    if payload["uid"] is not None:
        words += ["by", "uid", str(payload["uid"])]
    text = " ".join(words)
    if payload["reason"]:
        text += ": " + payload["reason"]
    return text


def derive_runs(conn: Any) -> dict[str, dict[str, Any]]:
    """Rebuild every run's status, steps, error, tries, retry_at and idempotency_key from the
    ``logs`` table
    alone, over a plain ``sqlite3`` connection (RFC-002 §6.2: workflow_runs is derived data).

    This is the independent derivation that tests compare the rows with: each entry type
    is listed above with its effect, an unknown type fails (AssertionError), and so does a
    ``step_failed`` whose ``try`` is not the count of the step's failed tries.
    """
    derived: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        "SELECT id, ref_id, type, payload FROM logs WHERE source = 'workflow' ORDER BY id"
    )
    for entry_id, ref_id, type_, text in rows:
        run = derived.setdefault(
            ref_id,
            {"status": None, "steps": 0, "error": None, "tries": 0, "retry_at": None,
             "idempotency_key": None, "wait_for": None, "wake_at": None},
        )  # fmt: skip
        payload = None if text is None else json.loads(text)
        if type_ in STATUS_TYPES:
            run["status"] = type_
            waits = type_ == "waiting" and isinstance(payload, dict)
            run["wait_for"] = payload.get("wait") if waits else None
            run["wake_at"] = payload.get("until") if waits else None
            if type_ not in ("queued", "started", "waiting"):  # final: no retry will come
                run["retry_at"] = None
            if type_ in ERROR_TYPES and payload is not None:
                run["error"] = payload
            elif type_ == "cancelled":
                run["error"] = cancelled_error(payload)
        elif type_ == "step_complete":
            run.update(steps=run["steps"] + 1, tries=0, retry_at=None)
        elif type_ == "step_failed":
            run["tries"] += 1
            assert isinstance(payload, dict) and payload.get("try") == run["tries"], (
                f"run {ref_id}: entry {entry_id} ({payload}) should be try {run['tries']}:"
                " the failed tries of a step are counted from its previous step or input"
            )
            run["retry_at"] = payload["retryAt"]
        elif type_ == "input":
            run.update(tries=0, retry_at=None)
            if run["status"] == "waiting":
                run.update(status="started", wait_for=None, wake_at=None)
        elif type_ == KEY_TYPE:
            assert isinstance(payload, dict) and isinstance(payload.get("key"), str), payload
            assert run["idempotency_key"] is None, f"run {ref_id}: a second key entry {entry_id}"
            run["idempotency_key"] = payload["key"]
        elif type_ not in INERT_TYPES:
            raise AssertionError(
                f"run {ref_id}: entry {entry_id} has type {type_!r}, unknown to"
                " tests/support.py: say what it does to a run (derive_runs)"
            )
    return derived


def read_runs(conn: Any) -> dict[str, dict[str, Any]]:
    """The rows of workflow_runs, the same fields as :func:`derive_runs`."""
    rows = conn.execute(f"SELECT run_id, {', '.join(RUN_FIELDS)} FROM workflow_runs")
    return {row[0]: dict(zip(RUN_FIELDS, row[1:], strict=True)) for row in rows}


def _read_only(db: Path) -> Any:
    import sqlite3

    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def derive_runs_from_logs(db: Path) -> dict[str, dict[str, Any]]:
    """:func:`derive_runs` of the file ``db``, read through its own read-only connection."""
    conn = _read_only(db)
    try:
        return derive_runs(conn)
    finally:
        conn.close()


def stored_runs(db: Path) -> dict[str, dict[str, Any]]:
    """:func:`read_runs` of the file ``db``."""
    conn = _read_only(db)
    try:
        return read_runs(conn)
    finally:
        conn.close()


def assert_runs_match(derived: dict[str, Any], stored: dict[str, Any]) -> None:
    assert set(derived) == set(stored), "runs without log entries, or log entries without runs"
    for run_id, row in stored.items():
        assert derived[run_id] == row, f"run {run_id}: logs say {derived[run_id]}, row says {row}"


def assert_runs_match_logs(db: Path) -> None:
    """Every run's row is what its entries say (:func:`derive_runs`), and every run with
    entries has a row: both read in one read transaction, so that a live nerved's commit
    cannot fall between them."""
    conn = _read_only(db)
    try:
        conn.execute("BEGIN")
        derived = derive_runs(conn)
        stored = read_runs(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert_runs_match(derived, stored)


# -- runs, as workflow.inspect shows them ---------------------------------------------------


def inspect(daemon: Nerved, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = daemon.rpc("workflow.inspect", runId=run_id)
    return run


def status(daemon: Nerved, run_id: str) -> str:
    return str(inspect(daemon, run_id)["status"])


def waiting(daemon: Nerved, run_id: str, timeout: float = 20) -> dict[str, Any]:
    wait_until(lambda: status(daemon, run_id) == "waiting", timeout=timeout, what="a wait")
    return inspect(daemon, run_id)
