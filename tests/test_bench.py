"""The benchmarks' machine-readable output: ``python -m bench.workflows --json`` is what a
script (or a regression check) reads, so it must stay one JSON object on stdout with the
figures issue 14 names, whatever the benchmark prints while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NAMED = {"runs_per_s", "iso_p50_ms", "iso_p99_ms", "ack_p99_ms", "ack_alone_p99_ms", "rss_mb"}


def test_workflows_json_is_one_object_with_the_named_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.workflows", "--n", "20", "--iso", "5", "--no-peers",
         "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    results = json.loads(done.stdout)  # the whole of stdout: nothing else is printed there
    assert list(results) == ["nerve"]
    nerve = results["nerve"]
    assert nerve.keys() >= NAMED
    assert all(isinstance(v, float | int) and v > 0 for v in nerve.values()), nerve
    assert "nerve" in done.stderr  # progress goes to stderr


def test_pg_quick_json_is_one_object_with_each_engine() -> None:
    """``bench.pg --quick --no-peers --no-takeover --json``: a throwaway PostgreSQL, W on
    SQLite, on PostgreSQL and on three hosts on ``placement: any``, one JSON object (about
    12 s here; the takeover is left out: it waits out a whole lease, 10 s more)."""
    from pg_support import pg_unavailable

    if (reason := pg_unavailable()) is not None:
        pytest.skip(f"PostgreSQL: {reason}")
    done = subprocess.run(
        [sys.executable, "-m", "bench.pg", "--quick", "--no-peers", "--no-takeover", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    results = json.loads(done.stdout)
    assert list(results) == ["nerve sqlite", "nerve postgresql", "nerve postgresql x3 any"]
    for engine in ("nerve sqlite", "nerve postgresql"):
        assert results[engine].keys() >= NAMED
    hosts = results["nerve postgresql x3 any"]
    drove = {key: value for key, value in hosts.items() if key.startswith("runs_host_")}
    assert sum(drove.values()) == 100 and set(drove) <= {
        "runs_host_h1",
        "runs_host_h2",
        "runs_host_h3",
    }
    assert all(isinstance(v, float | int) and v >= 0 for r in results.values() for v in r.values())
