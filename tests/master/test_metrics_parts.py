"""The parts of the metrics that need no daemon: the counts (nerved.master.metrics.tally)
and the textfile's atomic write (nerved.master.metrics.textfile)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nerved.master.metrics.tally import (
    MAX_ROLES,
    OTHER_ROLE,
    STEP_BUCKETS,
    FlowTally,
    Histogram,
)
from nerved.master.metrics.textfile import temporary, write_atomically
from nerved.states import RunStatus, Transition


def test_a_histogram_counts_by_bucket_and_exposes_them_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0, -1.0):  # a bound is in its bucket (le); < 0 is 0
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 3), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(2.65)


def test_the_step_buckets_run_from_a_millisecond_to_an_hour() -> None:
    assert STEP_BUCKETS[0] == 0.001 and STEP_BUCKETS[-1] == 3600.0
    assert list(STEP_BUCKETS) == sorted(set(STEP_BUCKETS))


def test_a_flow_counts_final_statuses_only() -> None:
    tally = FlowTally()
    for transition in (Transition.START, Transition.ENQUEUE, Transition.DISPATCH,
                       Transition.WAIT, Transition.WAKE, Transition.COMPLETE,
                       Transition.REJECT, Transition.GIVE_UP, Transition.FAIL):  # fmt: skip
        tally.moved(transition)
    assert tally.ended == {RunStatus.COMPLETED: 1, RunStatus.DROPPED: 1, RunStatus.FAILED: 2}


def test_roles_past_the_bound_are_counted_together() -> None:
    tally = FlowTally()
    for n in range(MAX_ROLES + 10):
        tally.stepped(f"r{n}", 0.01)
        tally.failed(f"r{n}")
    tally.stepped("r0", 0.01)
    assert len(tally.steps) == MAX_ROLES + 1 and len(tally.failures) == MAX_ROLES + 1
    assert tally.steps[OTHER_ROLE].count == 10 and tally.failures[OTHER_ROLE] == 10
    assert tally.steps["r0"].count == 2


def test_the_textfile_is_replaced_whole_and_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "nerve.prom"
    old = os.umask(0o077)  # stricter than the unit's 0027
    try:
        write_atomically(path, b"a 1\n")
        inode = path.stat().st_ino
        write_atomically(path, b"a 2\n" * 100_000)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"a 2\n" * 100_000
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["nerve.prom"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "nerve.prom"
    path.mkdir()  # a directory where the file should be: the rename fails
    with pytest.raises(OSError):
        write_atomically(path, b"a 1\n")
    assert os.listdir(tmp_path) == ["nerve.prom"]
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "nerve.prom", b"a 1\n")


def test_a_link_planted_at_the_temporary_path_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "nerve.prom"
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    temporary(path).symlink_to(target)
    with pytest.raises(OSError):
        write_atomically(path, b"a 1\n")
    assert target.read_text() == "keep"
    assert not path.exists()
