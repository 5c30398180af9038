"""``nervectl top`` through a real nerved: one frame as text (``--once``), and the live view
in a real terminal (tmux: start it, read the screen, press q).

The daemon holds a run that waits for a signal, one that runs (gated), one queued behind it
and one that failed, so that every section has something to show.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import GATED, REPO, Nerved, wait_until

from nervectl import topview

CONFIG = """
    workflows:
      approval: {}
      gated: {concurrency: 1, overflow: queue}
      broken: {}
"""
APPROVAL = """
    from nerved import WorkflowDefinition, wait_for

    def propose(prompt, ctx):
        return {"type": "proposed"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "propose", "prompt": {}}
        if event["type"] == "proposed":
            return wait_for("approve", timeout="1h")
        return None

    workflow = WorkflowDefinition(roles={"propose": propose}, moderate=moderate)
"""
BROKEN = """
    from nerved import WorkflowDefinition

    def explode(prompt, ctx):
        raise RuntimeError("the disk is on fire")

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "explode", "prompt": {}}
        return None

    workflow = WorkflowDefinition(roles={"explode": explode}, moderate=moderate)
"""


@pytest.fixture
def busy(nerved_factory: Callable[..., Nerved], tmp_path: Path) -> Iterator[tuple[Nerved, dict]]:
    """A daemon with a waiting run, a started one, a queued one and a failed one."""
    workflows = {"approval": APPROVAL, "gated": GATED, "broken": BROKEN}
    daemon = nerved_factory(CONFIG, workflows=workflows).start()
    gate = tmp_path / "gate"
    runs = {
        "waiting": daemon.trigger("approval"),
        "started": daemon.trigger("gated", {"gate": str(gate)}),
        "queued": daemon.trigger("gated", {"gate": str(gate)}),
        "failed": daemon.trigger("broken"),
    }
    assert daemon.wait_run(runs["failed"])["status"] == "failed"
    wait_until(lambda: daemon.rpc("workflow.inspect", runId=runs["waiting"])["status"] == "waiting")
    wait_until(lambda: Path(f"{gate}.running").exists())
    yield daemon, runs
    gate.touch()


def test_once_draws_every_section_within_80_columns(busy: tuple[Nerved, dict]) -> None:
    daemon, runs = busy
    done = daemon.ctl("top", "--once")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = done.stdout
    assert lines[0].startswith("nerved ") and " running " in lines[0]
    for title in ("WORKERS", "RUNS", "ACTIVE RUNS", "RECENT FAILURES"):
        assert title in lines
    section = _section(lines, "ACTIVE RUNS")
    assert _row(section, runs["waiting"][:8]).split()[1:3] == ["approval", "waiting"]
    assert "signal 'approve', timeout in" in _row(section, runs["waiting"][:8])
    assert _row(section, runs["queued"][:8]).split()[1:3] == ["gated", "queued"]
    assert _row(section, runs["started"][:8]).split()[1:3] == ["gated", "started"]
    per_workflow = _section(lines, "RUNS")
    assert _row(per_workflow, "gated").split()[1:4] == ["1", "0", "1"]  # started, waiting, queued
    assert _row(per_workflow, "approval").split()[1:4] == ["0", "1", "0"]
    failed = _row(_section(lines, "RECENT FAILURES"), runs["failed"][:8])
    assert "broken" in failed and "failed" in failed and "RuntimeError" in failed
    worker = next(line for line in _section(lines, "WORKERS") if line.split()[1] == "gated")
    assert f"{runs['started'][:8]} step 1" in worker  # what the worker does now
    assert "M" in worker.split()[4]  # its resident memory
    workers = [w for w in daemon.rpc("status")["workers"] if w["pid"] is not None]
    assert workers and all(isinstance(w["rss"], int) and w["rss"] > 0 for w in workers)
    assert "1 queued" in lines[1] and text.count(runs["queued"][:8]) == 1


def _section(lines: list[str], title: str) -> list[str]:
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def _row(section: list[str], first: str) -> str:
    return next(line for line in section if line.startswith(first))


def test_once_of_a_daemon_that_is_not_there_exits_3(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nervectl", "--socket", str(tmp_path / "none"), "top"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.startswith("nervectl: cannot connect")


def test_a_short_screen_shows_some_of_each_section() -> None:
    active = [
        {"runId": f"{i:08d}-run", "workflow": "w", "status": "queued", "createdAt": i}
        for i in range(30)
    ]
    workers = [{"kind": "sense", "name": f"g{i}", "state": "idle", "pid": None} for i in range(9)]
    answers = topview.Answers({"workers": workers}, active, [], [], now=100_000)
    lines = topview.frame(answers, 80, 24)
    assert len(lines) <= 24
    assert "WORKERS" in lines and "ACTIVE RUNS" in lines and "RECENT FAILURES" in lines
    assert any(line.strip().startswith("... ") and "more" in line for line in lines)


def test_every_size_from_the_minimum_up_draws_each_section_within_it() -> None:
    """Any terminal of MIN_WIDTH x MIN_HEIGHT or more gets a frame that fits it, every
    section's title in it; a smaller one gets one line saying so."""
    workers = [{"kind": "sense", "name": f"g{i}", "state": "idle", "pid": None} for i in range(7)]
    active = [
        {"runId": f"{i:08d}-run", "workflow": f"w{i % 4}", "status": "queued", "createdAt": i}
        for i in range(12)
    ]
    failed = [{"runId": "f" * 12, "workflow": "w", "status": "failed", "updatedAt": 1}]
    for counts in ((7, 12, 1), (0, 0, 0), (1, 1, 1), (7, 0, 1)):
        answers = topview.Answers(
            {"workers": workers[: counts[0]]}, active[: counts[1]], [], failed[: counts[2]], 9
        )
        for width in range(topview.MIN_WIDTH, 100, 13):
            for height in range(topview.MIN_HEIGHT, 45):
                lines = topview.frame(answers, width, height)
                assert len(lines) <= height and all(len(line) <= width for line in lines)
                for title in ("WORKERS", "RUNS", "ACTIVE RUNS", "RECENT FAILURES"):
                    assert title in lines, (width, height, lines)
        small = topview.frame(answers, 80, topview.MIN_HEIGHT - 1)
        assert len(small) == 1 and small[0].startswith("terminal too small")
        assert topview.frame(answers, topview.MIN_WIDTH - 1, 40)[0].startswith("terminal too")


@pytest.mark.skipif(shutil.which("script") is None, reason="no script(1) here")
def test_top_on_a_dumb_terminal_prints_plain_frames(tmp_path: Path) -> None:
    """TERM=dumb cannot move the cursor: one note, then a plain frame every interval."""
    command = f"TERM=dumb {sys.executable} -m nervectl --socket {tmp_path}/s top --interval 0.5"
    try:
        done = subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True, text=True, timeout=3, cwd=REPO, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        output = done.stdout
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace")
    assert "nervectl: note: TERM='dumb' cannot move the cursor" in output
    assert output.count("daemon unreachable, retrying") >= 2, output


def test_unreachable_frame_says_it_retries() -> None:
    assert topview.unreachable("cannot connect to /x: No such file")[0] == (
        "nerved: daemon unreachable, retrying"
    )


# -- in a real terminal ------------------------------------------------------------------------


def _tmux(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tmux", "-f", "/dev/null", "-S", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _screen(socket: Path) -> str:
    return _tmux(socket, "capture-pane", "-p", "-t", "top").stdout


@pytest.mark.skipif(
    shutil.which("tmux") is None, reason="no tmux here (make test-deps installs it)"
)
@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_in_a_real_terminal_refreshes_and_quits_on_q(
    busy: tuple[Nerved, dict], tmp_path: Path, key: str
) -> None:
    """Started in an 80x24 tmux pane: the screen is read until the header shows, a run that
    ends leaves it at a refresh, and q (or Ctrl-C) ends top with 0, the terminal restored."""
    daemon, runs = busy
    sock = tmp_path / "tmux.sock"
    exited = tmp_path / "exited"
    command = (
        f"{sys.executable} -m nervectl --socket {daemon.socket} top --interval 0.5;"
        f" echo $? > {exited}; echo TOP-ENDED; sleep 60"
    )
    started = _tmux(sock, "new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)
    assert started.returncode == 0, started.stderr
    try:
        wait_until(lambda: _screen(sock).startswith("nerved "), timeout=20)
        screen = _screen(sock)
        lines = screen.splitlines()
        assert all(len(line) <= 80 for line in lines)
        assert "WORKERS" in lines and "ACTIVE RUNS" in lines
        assert runs["waiting"][:8] in screen and "q quits" in screen
        # it refreshes: a run that ends leaves the screen
        daemon.rpc("workflow.signal", runId=runs["waiting"], name="approve")
        wait_until(lambda: runs["waiting"][:8] not in _screen(sock), timeout=20)
        _tmux(sock, "send-keys", "-t", "top", key)
        wait_until(exited.exists, timeout=20)
        wait_until(lambda: "TOP-ENDED" in _screen(sock), timeout=20)
        assert exited.read_text().strip() == "0"
        after = _screen(sock)
        assert "WORKERS" not in after  # the terminal is given back as it was (alternate screen)
    finally:
        _tmux(sock, "kill-server")


@pytest.mark.skipif(
    shutil.which("tmux") is None, reason="no tmux here (make test-deps installs it)"
)
def test_top_says_the_daemon_is_unreachable_and_comes_back_with_it(
    nerved_factory: Callable[..., Nerved], tmp_path: Path
) -> None:
    """nerved stopped under a live top: the screen says so and top keeps asking; nerved
    started again: the screen is back, through a terminal resized meanwhile."""
    daemon = nerved_factory(
        "workflows:\n  approval: {}\n", workflows={"approval": APPROVAL}
    ).start()
    sock = tmp_path / "tmux.sock"
    command = f"{sys.executable} -m nervectl --socket {daemon.socket} top --interval 0.5"
    started = _tmux(sock, "new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)
    assert started.returncode == 0, started.stderr
    try:
        wait_until(lambda: _screen(sock).startswith("nerved "), timeout=20)
        assert daemon.stop() == 0
        wait_until(lambda: "daemon unreachable, retrying" in _screen(sock), timeout=20)
        assert _tmux(sock, "resize-window", "-t", "top", "-x", "100", "-y", "30").returncode == 0
        daemon.start()
        wait_until(lambda: _screen(sock).startswith("nerved "), timeout=20)
        screen = _screen(sock).splitlines()
        assert len(screen) == 30 and "WORKERS" in screen and "q quits" in screen[-1]
        _tmux(sock, "send-keys", "-t", "top", "q")
        wait_until(lambda: _tmux(sock, "has-session", "-t", "top").returncode != 0, timeout=20)
    finally:
        _tmux(sock, "kill-server")
