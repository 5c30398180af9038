"""Frames between the master and a worker: what cannot be read is consumed, never stuck."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator

import pytest

from nerved import wire
from nerved.channel import (
    ENVELOPE_DEPTH,
    TO_MASTER,
    TO_WORKER,
    Channel,
    Garbled,
    ProtocolError,
    ack_frame,
    frame,
)
from nerved.worker.port import Port


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Channel]]:
    """The raw sending end, and a channel on the receiving end (the master's limits)."""
    sender, receiver = socket.socketpair()
    channel = Channel(receiver)
    yield sender, channel
    sender.close()
    channel.close()


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def receive_all(channel: Channel, count: int) -> list[dict | Garbled]:
    received: list[dict | Garbled] = []
    while len(received) < count:
        received += channel.receive_blocking(5)
    return received


def test_a_frame_that_does_not_decode_is_consumed_and_the_next_ones_are_read(pair) -> None:
    sender, channel = pair
    bodies = [
        b'{"t": "first"}',
        b'{"t": "step", "event": {"x": NaN}}',
        b'{"t": "x", "v": ' + b"[" * 980 + b"]" * 980 + b"}",
        b"[1, 2]",
        b"\xff not utf-8",
        b'{"t": "last"}',
    ]
    sender.sendall(b"".join(raw_frame(b) for b in bodies))
    first, nan, deep, array, binary, last = receive_all(channel, len(bodies))
    assert first == {"t": "first"} and last == {"t": "last"}
    assert nan == Garbled("NaN is not JSON (at event.x)")
    depth = wire.MAX_DEPTH + ENVELOPE_DEPTH
    assert isinstance(deep, Garbled) and deep.reason.startswith(f"nested deeper than {depth}")
    assert array == Garbled("a frame must hold a JSON object")
    assert isinstance(binary, Garbled) and binary.reason.startswith("not UTF-8")


def test_a_message_may_nest_its_values_as_deep_as_any_value(pair) -> None:
    sender, channel = pair
    value: object = 1
    for _ in range(wire.MAX_DEPTH - 1):
        value = [value]
    reply = {"t": "reply", "entries": [{"payload": value}]}  # three levels of envelope
    sender.sendall(frame(reply, TO_MASTER))
    assert receive_all(channel, 1) == [reply]


def test_a_frame_longer_than_the_receiver_takes_ends_the_channel(pair) -> None:
    sender, channel = pair
    sender.sendall(struct.pack(">I", TO_MASTER + 1))
    with pytest.raises(ProtocolError, match=r"a frame of 4\.0 MiB is larger than 4\.0 MiB"):
        channel.receive_blocking(5)


def test_frame_refuses_what_the_receiver_would_refuse() -> None:
    assert frame({"t": "ok"}, 100)[4:] == b'{"t":"ok"}'
    with pytest.raises(wire.Invalid, match="NaN is not JSON"):
        frame({"t": "x", "v": float("nan")}, TO_MASTER)
    with pytest.raises(wire.Invalid, match="lone UTF-16 surrogate"):
        frame({"t": "log", "message": "\ud800"}, TO_MASTER)
    with pytest.raises(wire.Invalid, match=r"larger than a frame may be \(100 B\)"):
        frame({"t": "x" * 100}, 100)


def test_a_worker_that_cannot_read_its_master_ends_itself_to_be_replaced() -> None:
    """It cannot know which run the frame was for, so no run may wait on it any longer."""
    master, worker_end = socket.socketpair()
    loop = asyncio.new_event_loop()
    heard: list[dict] = []
    try:
        port = Port(worker_end, loop, heard.append)
        body = json.dumps({"t": "ack", "n": 1}).encode().replace(b"1", b"NaN")
        master.sendall(raw_frame(b'{"t": "stop"}') + raw_frame(body))
        loop.run_until_complete(asyncio.wait_for(port.closed.wait(), 5))
    finally:
        loop.close()
        master.close()
    assert heard == [{"t": "stop"}]
    assert port.unreadable == "NaN is not JSON (at n)"  # serve() exits EXIT_UNREADABLE


@pytest.mark.parametrize("run_id", ["0" * 32, "a1b2c3d4" + "0" * 24, 'odd "id" é\\'])
def test_an_ack_frame_is_the_frame_of_its_message(run_id: str) -> None:
    n = 7
    assert ack_frame(run_id, n) == frame({"t": "ack", "run": run_id, "n": n}, TO_WORKER)
