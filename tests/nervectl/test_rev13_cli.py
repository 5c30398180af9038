"""Review of issue 13 (the operator's toolkit), nervectl side: defects found by trying it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from completion import bash_completes
from support import REPO

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


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_completes_paths_where_nervectl_takes_a_file(tmp_path: Path) -> None:
    """The completions are "generated from the argument parser" (shtab), but no argument
    says it takes a path (shtab.FILE/DIRECTORY), so a TAB after --payload-file, --socket,
    --root or `init` offers nothing at all, where bash would at least list files."""
    out = tmp_path / "built"
    done = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build_docs.py"), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (tmp_path / "payload.json").write_text("{}")
    setup = f". {shlex.quote(str(out / 'completions' / 'nervectl'))}"
    prefix = f"{tmp_path}/pay"
    for line in (
        f"nervectl workflow trigger code-review --payload-file {prefix}",
        f"nervectl workflow signal 3f2a9c1e approve --payload-file {prefix}",
        f"nervectl --socket {prefix}",
    ):
        assert bash_completes(setup, line) == [f"{tmp_path}/payload.json"], line


@pytest.mark.skipif(shutil.which("script") is None, reason="no script(1) here")
@pytest.mark.parametrize("term", ["xterm-kitty-not-installed", ""])
def test_top_over_ssh_with_a_terminal_this_host_does_not_know(tmp_path: Path, term: str) -> None:
    """`nervectl top` over ssh from a terminal whose terminfo the host lacks (TERM=xterm-kitty,
    alacritty, ghostty... on a stock Debian) or with TERM unset/empty: curses.initscr raises
    `_curses.error: setupterm: could not find terminal` and nervectl dies with a Python
    traceback (exit 1), instead of saying so on one `nervectl:` line or drawing plain
    frames as --once does."""
    command = (
        f"TERM={shlex.quote(term)} {shlex.quote(sys.executable)} -m nervectl"
        f" --socket {tmp_path}/nerved.sock top"
    )
    try:
        done = subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True, text=True, timeout=5, cwd=REPO, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:  # still drawing "daemon unreachable": fine
        output = (exc.stdout or b"").decode(errors="replace")
    assert "Traceback" not in output, output[-1500:]
