"""Tests for nerved.master.notify against a real datagram socket that stops reading, as a stuck
systemd (or any slow holder of NOTIFY_SOCKET) would."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import deadline, wait_until

from nerved.master.notify import EXTEND_EVERY, EXTEND_WINDOW, Notifier


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(65536).decode())
        except BlockingIOError:
            return messages


def drain(notifier: Notifier, sock: socket.socket) -> list[str]:
    """Read, let the notifier send what waits, and again, until nothing more comes."""
    messages = []
    while batch := received(sock):
        messages += batch
        notifier.flush()
    return messages


# The receiver's queue holds this many datagrams; a sender then blocks, or gets EAGAIN.
QUEUE = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())


def test_a_full_queue_never_blocks_and_no_state_change_is_lost(receiver: socket.socket) -> None:
    notifier = Notifier()
    with deadline(5):
        for _ in range(3 * QUEUE):
            notifier.watchdog()
        notifier.ready("a")
        notifier.status("s1")
        notifier.status("s2")  # replaces s1
        for _ in range(5):
            notifier.watchdog()  # one is already waiting
        notifier.reloading()
        notifier.ready("b")
        notifier.reloading()  # folds the reload before it, which both still wait
        notifier.ready("c")
        notifier.stopping("bye")
    queued = received(receiver)
    assert set(queued) == {"WATCHDOG=1"} and len(queued) <= QUEUE + 1
    notifier.flush()
    messages = drain(notifier, receiver)
    assert [message.split("\n")[:2] for message in messages] == [
        ["WATCHDOG=1"],
        ["READY=1", "STATUS=a"],
        ["STATUS=s2"],
        ["RELOADING=1", messages[3].split("\n")[1]],
        ["READY=1", "STATUS=c"],
        ["STOPPING=1", "STATUS=bye"],
    ]
    assert messages[3].split("\n")[1].startswith("MONOTONIC_USEC=")
    notifier.status("later")  # nothing waits any more: sent at once
    assert received(receiver) == ["STATUS=later"]


def test_a_reader_that_is_gone_costs_a_warning_not_an_exception(
    receiver: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier()
    receiver.close()
    with caplog.at_level(logging.WARNING, logger="nerved.master.notify"):
        notifier.status("nobody listens")
        notifier.flush()
    assert "sd_notify failed, message dropped (" in caplog.text
    assert "'STATUS=nobody listens'" in caplog.text


def test_a_notify_socket_that_cannot_be_reached_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    with caplog.at_level(logging.WARNING, logger="nerved.master.notify"):
        notifier = Notifier()
    assert f"cannot notify systemd at {tmp_path / 'missing.sock'}" in caplog.text
    notifier.ready("fine")  # a no-op, as without NOTIFY_SOCKET
    notifier.flush()


def test_extend_asks_for_more_time_at_most_every_few_seconds(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = Notifier()
    clock = [1000.0]
    monkeypatch.setattr("nerved.master.notify.time.monotonic", lambda: clock[0])
    notifier.extend()
    notifier.extend()  # within EXTEND_EVERY: nothing more
    clock[0] += EXTEND_EVERY
    notifier.extend()
    assert received(receiver) == [f"EXTEND_TIMEOUT_USEC={int(EXTEND_WINDOW * 1e6)}"] * 2


def test_extend_feeds_the_watchdog_too_when_it_runs(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start after READY=1 (the one that follows a wait for the store) runs under the
    watchdog before the loop, whose Upkeep feeds it, turns: its progress feeds it."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    notifier.extend()
    assert received(receiver) == [f"EXTEND_TIMEOUT_USEC={int(EXTEND_WINDOW * 1e6)}", "WATCHDOG=1"]


GATED_ROLE = """
import os, time
from nerved import WorkflowDefinition

def hold(prompt, ctx):
    while not os.path.exists(prompt["gate"]):
        time.sleep(0.02)
    return {"type": "done"}

def moderate(thread, event):
    if event["type"] == "thread_start":
        return {"role": "hold", "prompt": event["payload"]}
    return None

workflow = WorkflowDefinition(roles={"hold": hold}, moderate=moderate)
"""


def test_a_stop_that_waits_for_a_step_asks_systemd_for_more_time(
    nerved_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    daemon = nerved_factory("workflows:\n  w: {}\n", None, {"w": GATED_ROLE}).start()
    gate = tmp_path / "gate"
    run = daemon.rpc("workflow.trigger", workflow="w", payload={"gate": str(gate)})
    wait_until(
        lambda: daemon.rpc("workflow.inspect", runId=run["runId"])["progress"],
        what="the step to run",
    )
    daemon.notifications.clear()
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_notify("STOPPING=1")
    daemon.wait_notify("EXTEND_TIMEOUT_USEC=30000000")  # the first at once, then every 5 s
    gate.touch()
    assert daemon.wait() == 0
