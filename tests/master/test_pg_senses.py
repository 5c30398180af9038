"""Senses stay each host's own on a store several hosts share (SPEC v2 §9): two hosts with a
sense of one name keep two senses' entries (``<name>@<host>``), and a sense's
``ctx.logs.query``, like ``nervectl logs --sense``, reads its own host's."""

from __future__ import annotations

import pytest
from pg_support import pg_unavailable
from support import wait_until

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

CONFIG = """
senses:
  s: {group: a}
  seen: {group: b}
reflexes:
  - {kind: sense, sense: s, interval: 100ms}
  - {kind: sense, sense: seen, on: [s]}
"""
SENSES = {
    "s": "import os\n\ndef compute(ctx):\n    return {'nerved': os.getppid()}\n",
    "seen": """
        def compute(ctx):
            entries = ctx.logs.query(source="sense", type="signal", ref_id="s", limit=1000)
            return {"nerved": sorted({e.payload["nerved"] for e in entries})}
    """,
}


def test_two_hosts_senses_of_one_name_are_two_senses(nerved_factory, pg_dsn):
    hosts, names = [], "ab"
    for name in names:
        daemon = nerved_factory(CONFIG, SENSES, args=("--store", pg_dsn, "--host-id", name),
                                name=name)  # fmt: skip
        hosts.append(daemon.start())
    for daemon, name in zip(hosts, names, strict=True):
        own = wait_until(
            lambda d=daemon: d.rpc("logs.query", sense="seen", type="signal", limit=1000),
            what="the follower's signals",
        )
        assert all(entry["payload"]["nerved"] == [daemon.pid] for entry in own), own
        assert {e["refId"] for e in own} == {f"seen@{name}"}
        signals = daemon.rpc("logs.query", source="sense", type="signal", refId="s", limit=1000)
        assert signals and {e["payload"]["nerved"] for e in signals} == {daemon.pid}
    a, b = hosts
    theirs = a.rpc("logs.query", sense="s@b", type="signal", limit=1000)  # another host's
    assert theirs and {e["payload"]["nerved"] for e in theirs} == {b.pid}
