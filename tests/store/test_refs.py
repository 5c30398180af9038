"""Run ids, and the key logs.db files a ref's entries under (nerved.store.refs)."""

from __future__ import annotations

import itertools
import re
import sqlite3
import time

from nerved.store.refs import REF_KEY, new_run_id, ref_key


def test_a_run_id_is_32_hex_random_first_then_its_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_run_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", run_id) for run_id in ids)
    assert len(set(ids)) == len(ids)
    # What an operator types differs: 32 random bits, so that 2000 ids share a prefix about
    # once in 2000 tries (the birthday bound); three shared would be once in 10^10.
    assert len({run_id[:8] for run_id in ids}) >= len(ids) - 2
    assert all(before <= int(run_id[8:20], 16) <= after for run_id in ids)
    # Filed by key, the runs of one time sit together, in the order they were made.
    keys = [ref_key(run_id) for run_id in ids]
    assert all(a[:12] <= b[:12] for a, b in itertools.pairwise(keys))


def test_the_key_is_the_ref_turned_as_sqlite_spells_it() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE logs (ref_id TEXT)")
    refs = [new_run_id(), "0" * 32, "tick", "", "a" * 8, "disk-usage-9", "é😀ü" * 4]
    conn.executemany("INSERT INTO logs VALUES (?)", [(ref,) for ref in refs])
    stored = conn.execute(f"SELECT ref_id, {REF_KEY} FROM logs").fetchall()
    assert stored == [(ref, ref_key(ref)) for ref in refs]
    assert len({ref_key(ref) for ref in refs}) == len(refs)  # a bijection: no two refs meet
