"""Idempotency keys (issue 12), through a real nerved: ``workflow.trigger {idempotencyKey}``
gives one run per key and workflow, whatever that run's status, across a crash and a
restart, and however many clients race with the key; retention frees it.

Each test synchronises on what nerved answers (a trigger's answer, a run's status).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from support import GATED, QUICK, Nerved, wait_until

from nervectl.client import RemoteError

CONFIG = """\
workflows:
  gated: {concurrency: 4, drainTimeout: 1s}
  quick: {concurrency: 4}
  other: {concurrency: 4}
  tight: {concurrency: 1, overflow: drop}
"""
WORKFLOWS = {"gated": GATED, "quick": QUICK, "other": QUICK, "tight": GATED}


@pytest.fixture
def daemon(nerved_factory) -> Nerved:
    return nerved_factory(CONFIG, None, WORKFLOWS).start()


def trigger(daemon: Nerved, workflow: str, key: Any, payload: Any = None) -> dict[str, Any]:
    answer: dict[str, Any] = daemon.rpc(
        "workflow.trigger", workflow=workflow, payload=payload, idempotencyKey=key
    )
    return answer


def runs_of(daemon: Nerved, workflow: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = daemon.rpc("workflow.list", workflow=workflow, all=True)
    return runs


def test_the_same_key_twice_is_one_run_while_it_runs_and_once_it_completed(daemon, tmp_path):
    gate = tmp_path / "gate"
    first = trigger(daemon, "gated", "order-1", {"gate": str(gate)})
    assert first["status"] == "started" and first["deduplicated"] is False
    assert set(first) == {"runId", "status", "worker", "deduplicated"}
    wait_until(lambda: Path(f"{gate}.running").exists(), what="the role to run")
    again = trigger(daemon, "gated", "order-1", {"gate": "another payload: not compared"})
    assert again == {**first, "deduplicated": True, "worker": again["worker"]}
    gate.touch()
    assert daemon.wait_run(first["runId"])["status"] == "completed"
    done = trigger(daemon, "gated", "order-1")
    assert (done["runId"], done["status"], done["deduplicated"]) == (
        first["runId"], "completed", True,
    )  # fmt: skip
    assert len(runs_of(daemon, "gated")) == 1
    # The key is in the run's row and in its history, right after the creating entry.
    run = daemon.rpc("workflow.inspect", runId=first["runId"])
    assert run["idempotencyKey"] == "order-1"
    assert [e["type"] for e in run["events"]][:2] == ["started", "key"]
    assert run["events"][0]["payload"] == {"gate": str(gate)}  # the creating entry's payload
    assert run["events"][1]["payload"] == {"key": "order-1"}
    # Without a key, every trigger is a run of its own.
    plain = [trigger(daemon, "quick", None)["runId"] for _ in range(2)]
    assert len(set(plain)) == 2
    daemon.healthy()


def test_a_dropped_run_keeps_its_key(daemon, tmp_path):
    """Whatever its status: a trigger dropped (overflow: drop) is the key's run too."""
    gate = tmp_path / "gate"
    holder = trigger(daemon, "tight", None, {"gate": str(gate)})
    dropped = trigger(daemon, "tight", "once", {"gate": str(gate)})
    assert (dropped["status"], dropped["deduplicated"]) == ("dropped", False)
    again = trigger(daemon, "tight", "once", {"gate": str(gate)})
    assert (again["runId"], again["status"], again["deduplicated"]) == (
        dropped["runId"], "dropped", True,
    )  # fmt: skip
    entries = daemon.entries(dropped["runId"])
    assert [e["type"] for e in entries] == ["dropped", "key"]
    gate.touch()
    daemon.wait_run(holder["runId"])
    daemon.healthy()


def test_a_key_belongs_to_its_workflow(daemon):
    one = trigger(daemon, "quick", "shared")
    other = trigger(daemon, "other", "shared")
    assert one["runId"] != other["runId"]
    assert not one["deduplicated"] and not other["deduplicated"]
    assert trigger(daemon, "other", "shared")["runId"] == other["runId"]
    with pytest.raises(RemoteError) as caught:
        trigger(daemon, "nosuch", "shared")
    assert caught.value.code == -32001
    daemon.healthy()


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "must not be empty"),
        ("k" * 257, "is 257 characters; at most 256"),
        (5, "must be a string"),
        (True, "must be a string, not a boolean"),
        (["k"], "must be a string"),
        ({"k": 1}, "must be a string"),
    ],
    ids=["empty", "257", "number", "boolean", "list", "object"],
)
def test_a_key_that_is_not_one_is_refused_and_nothing_runs(daemon, key, why):
    with pytest.raises(RemoteError) as caught:
        trigger(daemon, "quick", key)
    assert caught.value.code == -32602
    assert caught.value.message == f"param 'idempotencyKey' {why}"
    assert runs_of(daemon, "quick") == []


def test_the_longest_key_is_taken_in_characters_not_bytes(daemon):
    key = "é" * 256  # 512 bytes of UTF-8
    first = trigger(daemon, "quick", key)
    assert trigger(daemon, "quick", key)["runId"] == first["runId"]
    assert daemon.wait_run(first["runId"])["idempotencyKey"] == key
    daemon.healthy()


def test_keys_outlive_a_kill_and_a_restart(daemon, tmp_path):
    """Acknowledged is durable: after kill -9 and a restart, the same keys give the same
    runs, the one that was running (resumed) as well as the one that had completed."""
    gate = tmp_path / "gate"
    done = trigger(daemon, "quick", "before")
    daemon.wait_run(done["runId"])
    running = trigger(daemon, "gated", "during", {"gate": str(gate)})
    wait_until(lambda: Path(f"{gate}.running").exists(), what="the role to run")
    daemon.kill()
    daemon.start()
    again = trigger(daemon, "gated", "during", {"gate": str(gate)})
    assert (again["runId"], again["status"], again["deduplicated"]) == (
        running["runId"], "started", True,
    )  # fmt: skip
    gate.touch()
    assert daemon.wait_run(running["runId"])["status"] == "completed"
    for workflow, key, run_id in (("quick", "before", done), ("gated", "during", running)):
        answer = trigger(daemon, workflow, key)
        assert (answer["runId"], answer["status"], answer["deduplicated"]) == (
            run_id["runId"], "completed", True,
        )  # fmt: skip
    assert len(runs_of(daemon, "gated")) == 1 and len(runs_of(daemon, "quick")) == 1
    daemon.healthy()


def pipelined(daemon: Nerved, lines: list[bytes], start: threading.Barrier) -> list[Any]:
    """Send every line at once on a connection of its own, then read their answers: many of
    them land in one turn of the master, with another client's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon.socket))
        start.wait(10)
        sock.sendall(b"".join(lines))
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = sock.recv(65536)
            assert chunk, "nerved hung up"
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def one_by_one(daemon: Nerved, lines: list[bytes], start: threading.Barrier) -> list[Any]:
    """Each request answered before the next is sent."""
    answers = []
    with daemon.client() as client:
        start.wait(10)
        for line in lines:
            request = json.loads(line)
            result = client.call(request["method"], request["params"])
            answers.append({"id": request["id"], "result": result})
    return answers


@pytest.mark.parametrize("send", [pipelined, one_by_one], ids=["pipelined", "one by one"])
def test_two_clients_racing_with_one_key_get_one_run(daemon, send):
    """Two clients (threads) trigger with one key 20 times each: one run, and every answer
    names it; exactly one says it was not deduplicated."""
    start = threading.Barrier(2)
    answers: dict[int, list[Any]] = {}

    def client(number: int) -> None:
        lines = [
            json.dumps({
                "jsonrpc": "2.0", "id": f"{number}-{i}", "method": "workflow.trigger",
                "params": {"workflow": "quick", "payload": {"client": number, "i": i},
                           "idempotencyKey": "race"},
            }).encode() + b"\n"
            for i in range(20)
        ]  # fmt: skip
        answers[number] = send(daemon, lines, start)

    threads = [threading.Thread(target=client, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == [1, 2]
    results = [answer["result"] for number in (1, 2) for answer in answers[number]]
    assert len(results) == 40, answers
    assert len({r["runId"] for r in results}) == 1
    assert sorted(r["deduplicated"] for r in results) == [False] + [True] * 39
    (run,) = runs_of(daemon, "quick")
    assert run["runId"] == results[0]["runId"] and run["idempotencyKey"] == "race"
    assert daemon.wait_run(run["runId"])["status"] == "completed"
    daemon.healthy()


def test_a_run_pruned_by_retention_frees_its_key(nerved_factory):
    daemon = nerved_factory(
        CONFIG + "retention:\n  runs: {maxCount: 1, maxAge: null}\n", None, WORKFLOWS
    ).start()
    first = trigger(daemon, "quick", "reused")
    daemon.wait_run(first["runId"])
    newer = trigger(daemon, "quick", None)
    daemon.wait_run(newer["runId"])
    daemon.stop()
    daemon.start()  # the first retention pass comes a second after start
    wait_until(
        lambda: [r["runId"] for r in runs_of(daemon, "quick")] == [newer["runId"]],
        what="the keyed run to be pruned",
    )
    again = trigger(daemon, "quick", "reused")
    assert again["runId"] != first["runId"] and again["deduplicated"] is False
    assert trigger(daemon, "quick", "reused")["runId"] == again["runId"]
    daemon.healthy()


def test_the_replay_check_passes_over_the_key_entry(daemon):
    """A keyed run's ``key`` entry says nothing of its moderator's decisions."""
    run = trigger(daemon, "quick", "replayed", {"n": 1})
    daemon.wait_run(run["runId"])
    checked = daemon.rpc("workflow.replay", runId=run["runId"])
    assert checked == {"checked": 1, "diverged": [], "skipped": []}
