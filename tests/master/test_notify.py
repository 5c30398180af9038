"""Tests for nerved.master.notify against a real datagram socket that stops reading, as a stuck
systemd (or any slow holder of NOTIFY_SOCKET) would."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import deadline

from nerved.master.notify import Notifier


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
