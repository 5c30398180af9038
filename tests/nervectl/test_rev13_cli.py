"""Review of issue 13 (the operator's toolkit), nervectl side: defects found by trying it."""

from __future__ import annotations

import pytest

from nervectl import topview


@pytest.mark.parametrize("height", [12, 16, 20])
def test_top_on_a_short_terminal_draws_a_frame(height: int) -> None:
    """`nervectl top` in a 40x12 tmux pane (or any terminal where a section gets one row or
    none) died with `TypeError: 'int' object is not iterable` in topview.grid: a section
    that keeps no row calls grid() with no rows, and max(len(h), *()) is max(int)."""
    workers = [
        {"kind": "workflow", "name": f"w{i}", "state": "idle", "pid": None} for i in range(6)
    ]
    active = [
        {"runId": f"{i:08d}abcdef", "workflow": f"w{i % 3}", "status": "queued", "createdAt": i}
        for i in range(6)
    ]
    failures = [
        {"runId": f"{i:08d}ffffff", "workflow": "w0", "status": "failed", "createdAt": i,
         "updatedAt": i, "error": "boom"}
        for i in range(5)
    ]  # fmt: skip
    answers = topview.Answers({"workers": workers}, active, [], failures, now=100_000)
    lines = topview.frame(answers, 80, height)
    assert len(lines) <= height
