"""``nervectl top``: a live view of the daemon, redrawn every ``--interval`` until ``q``.

Each refresh asks four things, one request each (``status``, the active runs, the senses,
the last five failures), on one connection: a view left open for a day must cost the daemon
no more than an operator typing ``status`` now and then. A daemon that goes away (a
restart, a stop) is shown as unreachable and asked again at the next refresh, never a
traceback in the middle of the screen.

The screen is drawn with curses (the standard library's): it restores the terminal however
top ends (``q``, Ctrl-C, an error). ``--once``, or a stdout that is no terminal, prints one
frame as plain text and exits, for scripts and for the tests. A terminal curses cannot
drive (over ssh from a terminal whose terminfo this host lacks, TERM empty, TERM=dumb) gets
the same plain frames, one every interval after a one-line note saying why, until Ctrl-C:
the operator who asked for a live view gets one they can read rather than an error to
work around (``TERM=xterm-256color nervectl top`` still gives the full screen).
"""

from __future__ import annotations

import sys
import time

from nervectl import topview
from nervectl.client import RemoteError, Unreachable
from nervectl.exits import OK
from nervectl.times import now_ms

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from typing import Any, Final

    from nervectl.context import Context

CALL_TIMEOUT: Final = 5.0
"""Seconds a refresh waits for each answer: a daemon that hangs shows as unreachable soon,
and ``q`` is read again, rather than the screen freezing for the client's 30 s."""
FAILURES_SHOWN: Final = 5
ACTIVE_LIMIT: Final = 1000  # active runs asked for: every slot and queue of a busy host
_KEY_POLL_MS: Final = 100  # how often keys are read between refreshes


def top(ctx: Context) -> int:
    ctx.client.timeout = CALL_TIMEOUT
    if ctx.json:
        ctx.print_json(_raw(ask(ctx)))  # one refresh's answers, as they came
        return OK
    if ctx.args.once or not (ctx.out.isatty() and sys.stdin.isatty()):
        width = topview.WIDTH
        if ctx.args.once and ctx.out.isatty():
            width = _columns()
        for line in topview.frame(ask(ctx), width):  # an unreachable daemon: exit 3
            ctx.print(line)
        return OK
    interval = float(ctx.args.interval)
    why = no_screen()
    if why is not None:
        ctx.note(f"{why}: printing a frame every {interval:g}s instead, until Ctrl-C")
        return _plain(ctx, interval)
    import curses

    try:  # noqa: SIM105 (contextlib is not imported for this)
        curses.wrapper(_live, ctx, interval)
    except KeyboardInterrupt:  # Ctrl-C quits as q does; curses.wrapper restored the terminal
        pass
    return OK


def no_screen() -> str | None:
    """Why curses cannot draw a screen on this terminal, or None when it can: no terminfo
    entry for TERM here (curses.initscr would raise), or one that cannot move the cursor
    (``dumb``: every refresh would scroll garbage)."""
    import curses
    import os

    term = os.environ.get("TERM", "")
    try:
        curses.setupterm(term or "unknown", sys.stdout.fileno())
    except curses.error:
        if not term:
            return "TERM is not set, so curses cannot drive this terminal"
        return f"this host has no terminfo for TERM={term!r} (try TERM=xterm-256color)"
    if not curses.tigetstr("cup") or not curses.tigetstr("clear"):
        return f"TERM={term!r} cannot move the cursor"
    return None


def _columns() -> int:
    import shutil

    return max(shutil.get_terminal_size().columns, topview.MIN_WIDTH)


def _plain(ctx: Context, interval: float) -> int:
    """Frames as ``--once`` prints them, one every ``interval`` with the footer's line, the
    daemon unreachable shown and asked again as on the screen; Ctrl-C ends with 0."""
    try:
        while True:
            due = time.monotonic() + interval
            try:
                lines = topview.frame(ask(ctx), _columns())
            except (Unreachable, RemoteError) as exc:
                lines = topview.unreachable(str(exc), _columns())
            for line in lines:
                ctx.print(line)
            ctx.print(f"-- every {interval:g}s; {time.strftime('%H:%M:%S')}; Ctrl-C quits")
            ctx.out.flush()
            time.sleep(max(due - time.monotonic(), 0))
    except KeyboardInterrupt:
        return OK


def ask(ctx: Context) -> topview.Answers:
    """One refresh's answers (Unreachable or RemoteError if the daemon does not give them)."""
    status = ctx.call("status")
    active = ctx.call("workflow.list", {"limit": ACTIVE_LIMIT})
    senses = ctx.call("sense.list")
    failures = ctx.call("workflow.list", {"status": ["failed", "crashed"], "limit": FAILURES_SHOWN})
    return topview.Answers(status, active, senses, failures, now_ms())


def _raw(answers: topview.Answers) -> dict[str, Any]:
    return {
        "status": answers.status,
        "active": answers.active,
        "senses": answers.senses,
        "failures": answers.failures,
    }


def _live(screen: Any, ctx: Context, interval: float) -> None:
    """The curses loop: ask, draw, then read keys until the next refresh is due. A resized
    terminal is drawn again from the answers it has (a resize asks the daemon nothing)."""
    import curses

    try:  # noqa: SIM105 (contextlib is not imported for this)
        curses.curs_set(0)
    except curses.error:  # a terminal that cannot hide its cursor shows it
        pass
    screen.timeout(_KEY_POLL_MS)
    while True:
        due = time.monotonic() + interval
        answers: topview.Answers | str
        try:
            answers = ask(ctx)
        except (Unreachable, RemoteError) as exc:
            answers = str(exc)
        footer = f"q quits; every {interval:g}s; {time.strftime('%H:%M:%S')}"
        _draw(screen, answers, footer)
        while time.monotonic() < due:
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                _draw(screen, answers, footer)


def _draw(screen: Any, answers: topview.Answers | str, footer: str) -> None:
    """The frame of ``answers`` (a message: the daemon did not answer) for the screen's size
    now, the footer on its last line."""
    import curses

    height, width = _size(screen)
    small = topview.too_small(width, height - 1)
    if small is not None:  # one line saying so, no footer: nothing else would be whole
        lines = [small]
    elif isinstance(answers, str):
        lines = topview.unreachable(answers, width)
    else:
        lines = topview.frame(answers, width, height - 1)
    screen.erase()
    for y, line in enumerate(lines[: max(height - 1, 1)]):
        _put(screen, y, line, width, curses.A_BOLD if _is_title(line) else curses.A_NORMAL)
    if small is None:
        _put(screen, height - 1, footer, width, curses.A_REVERSE)
    screen.refresh()


def _size(screen: Any) -> tuple[int, int]:
    """The terminal's size now. curses learns of a resize from SIGWINCH, which it may not
    get (a resize while a refresh waited on the daemon, a multiplexer): the size is asked of
    the terminal itself, and curses told when it changed."""
    import curses
    import os

    height, width = screen.getmaxyx()
    try:
        real = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return height, width
    if (real.lines, real.columns) != (height, width):
        curses.resizeterm(real.lines, real.columns)
        return real.lines, real.columns
    return height, width


def _put(screen: Any, y: int, text: str, width: int, attr: int) -> None:
    import curses

    try:  # noqa: SIM105 (contextlib is not imported for this)
        screen.addnstr(y, 0, text, width, attr)
    except curses.error:  # the bottom-right cell (the cursor cannot move past it): drawn
        pass


def _is_title(line: str) -> bool:
    return line.isupper() and not line.startswith(" ")
