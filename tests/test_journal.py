"""journald's native protocol (nerved.journal) and the log handler that speaks it (nerved.logs).

The encoder is checked byte for byte against the protocol's description, the sender against
a datagram socket of the test's that stops reading, and both against a real journald in
tests/tools/journald-sandbox where the machine can run one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

from nerved import journal, logs
from nerved.states import RunStatus


def decode(datagram: bytes) -> dict[str, str]:
    """The protocol read back, as journald reads it."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, f"entry does not end with a newline: {rest!r}"
        if b"=" in line:
            name, _, value = line.partition(b"=")
            rest = after
        else:
            name = line
            (size,) = struct.unpack("<Q", after[:8])
            value, rest = after[8 : 8 + size], after[8 + size :]
            assert rest[:1] == b"\n"
            rest = rest[1:]
        fields[name.decode()] = value.decode()
    return fields


def test_a_plain_value_is_key_equals_value() -> None:
    assert journal.encode({"MESSAGE": "run 1 of g started", "PRIORITY": "6"}) == (
        b"MESSAGE=run 1 of g started\nPRIORITY=6\n"
    )


def test_a_value_with_a_newline_is_length_prefixed() -> None:
    text = "boom\nTraceback (most recent call last):\n  x = 1 = 2"
    encoded = journal.encode({"MESSAGE": text})
    value = text.encode()
    assert encoded == b"MESSAGE\n" + struct.pack("<Q", len(value)) + value + b"\n"
    assert decode(encoded) == {"MESSAGE": text}


def test_names_journald_would_refuse_are_left_out() -> None:
    fields = {"_PID": "1", "lower": "x", "A-B": "x", "X" * 65: "x", "NERVE_RUN_ID": "r"}
    assert decode(journal.encode(fields)) == {"NERVE_RUN_ID": "r"}


def test_a_huge_value_is_cut_and_says_so() -> None:
    fields = decode(journal.encode({"MESSAGE": "x" * 200_000}))
    assert len(fields["MESSAGE"].encode()) == journal.MAX_VALUE
    assert fields["MESSAGE"].endswith("longer than 48 KiB]")


def test_text_that_is_not_utf8_still_goes() -> None:
    fields = decode(journal.encode({"MESSAGE": "a\udcffb"}))
    assert fields["MESSAGE"] == "a\\udcffb"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def drain(sock: socket.socket) -> list[dict[str, str]]:
    got = []
    while True:
        try:
            got.append(decode(sock.recv(1 << 20)))
        except BlockingIOError:
            return got


def test_a_journald_that_stops_reading_never_blocks_and_loses_no_line(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    fell_back: list[str] = []
    sender = journal.JournalSocket(lambda fields: fell_back.append(fields["MESSAGE"]), path)
    total = 2000
    for n in range(total):  # the receiver's queue holds a few: the rest waits, then falls back
        sender.send({"MESSAGE": f"line {n}"})
    assert fell_back, "a queue that never fills proves nothing: send more"
    assert sender.fallen_back == len(fell_back)
    assert len(sender._pending) <= journal.MAX_PENDING
    received = drain(sock)
    while sender._pending:
        sender.flush()
        received += drain(sock)
    lines = [entry["MESSAGE"] for entry in received]
    assert sorted([*lines, *fell_back], key=lambda m: int(m.split()[1])) == [
        f"line {n}" for n in range(total)
    ]
    assert lines == sorted(lines, key=lambda m: int(m.split()[1]))  # in order


def test_no_journald_falls_back_to_text(tmp_path: Path) -> None:
    fell_back: list[journal.Fields] = []
    sender = journal.JournalSocket(fell_back.append, str(tmp_path / "none"))
    sender.send({"MESSAGE": "hello", "PRIORITY": "4"})
    assert fell_back == [{"MESSAGE": "hello", "PRIORITY": "4"}]


def test_the_handler_sends_fields_only_when_stderr_is_the_journal(
    receiver: tuple[socket.socket, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = receiver
    monkeypatch.setattr(journal, "SOCKET_PATH", path)
    stream = (tmp_path / "stderr").open("w+")
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("info", stream)
        log = logging.getLogger("nerved.test")
        log.warning("run %s of %s failed", "r1", "g", extra=logs.run("r1", "g", RunStatus.FAILED))
        log.info("sense %s", "s", extra=logs.sense("s"))
        logs.relabel("workflow:g", NERVE_WORKFLOW="g")
        log.info("from a worker")
        [failed, sensed, worker] = drain(sock)
        stream.seek(0)
        assert stream.read() == ""  # nothing went to stderr
        monkeypatch.delenv("JOURNAL_STREAM")
        logs.setup("info", stream)
        log.info("to a terminal")
        assert drain(sock) == []
        stream.seek(0)
        assert "INFO    nerved[" in stream.read()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        stream.close()
    assert failed["MESSAGE"] == "run r1 of g failed"
    assert failed["PRIORITY"] == "4"
    assert failed["NERVE_RUN_ID"] == "r1" and failed["NERVE_WORKFLOW"] == "g"
    assert failed["MESSAGE_ID"] == logs.RUN_MESSAGE_IDS[RunStatus.FAILED]
    assert failed["SYSLOG_IDENTIFIER"] == "nerved"
    assert failed["CODE_FILE"] == __file__
    assert sensed["NERVE_SENSE"] == "s" and sensed["PRIORITY"] == "6"
    assert "NERVE_RUN_ID" not in sensed
    assert worker["MESSAGE"] == "workflow:g: from a worker"
    assert worker["NERVE_WORKFLOW"] == "g"


def test_each_kind_of_run_transition_has_an_id_the_catalog_explains() -> None:
    ids = logs.RUN_MESSAGE_IDS
    assert set(ids) == set(RunStatus)
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids.values())
    catalog = (REPO / "systemd" / "nerve.catalog").read_text()
    sections = re.findall(r"^-- ([0-9a-f]{32})\nSubject: (.*)$", catalog, re.MULTILINE)
    assert {i: s for i, s in sections} == {
        i: f"nerve run @NERVE_RUN_ID@ of @NERVE_WORKFLOW@ {status}" for status, i in ids.items()
    }


JOURNALD = REPO / "tests" / "tools" / "journald-sandbox"
SENDER = """
    import sys
    from nerved import journal
    sender = journal.JournalSocket(lambda fields: sys.exit("fell back: %r" % (fields,)))
    sender.send({"MESSAGE": "first\\nsecond", "PRIORITY": "4", "NERVE_RUN_ID": "jt-1",
                 "SYSLOG_IDENTIFIER": "nerved-test"})
    sender.send({"MESSAGE": "other", "NERVE_RUN_ID": "jt-2", "SYSLOG_IDENTIFIER": "nerved-test"})
    sender.close()
"""


def test_a_real_journald_keeps_the_fields() -> None:
    if os.geteuid() != 0:
        pytest.skip("journald-sandbox needs root")
    script = (
        f"{sys.executable} -c {shlex.quote(textwrap.dedent(SENDER))} && journalctl --sync"
        " && journalctl NERVE_RUN_ID=jt-1 -o json --no-pager"
    )
    done = subprocess.run(
        [str(JOURNALD), "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    if done.returncode == 125:
        pytest.skip(f"journald-sandbox: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["MESSAGE"], e["PRIORITY"], e["SYSLOG_IDENTIFIER"]) for e in entries] == [
        ("first\nsecond", "4", "nerved-test")
    ]
