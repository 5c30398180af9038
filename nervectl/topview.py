"""One frame of ``nervectl top``: the daemon's answers, drawn as lines of at most a width.

Pure (answers in, lines out), so that the frame a terminal shows and the one ``--once``
prints are the same text, and the tests read it without a terminal. Every cell is cut to
fit: over ssh in 80 columns a line that wraps would push the rest of the screen away.
"""

from __future__ import annotations

from nervectl import render
from nervectl.context import visible
from nervectl.times import format_ago, format_duration
from nervectl.workflows import SHORT_ID, in_flight

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Final

    Row = Sequence[str]

WIDTH: Final = 80
"""The width ``--once`` draws for when its output is no terminal (an ssh session's default)."""
MIN_WIDTH: Final = 40
"""The narrowest terminal a frame is drawn for (a tmux pane split in two): narrower, the
columns would be cut to nothing, and the screen says the terminal is too small."""
MIN_HEIGHT: Final = 10
"""The fewest lines a frame takes: the header's two, and each section's title with one line
under it (its rows, or ``... N more``). ``nervectl top`` keeps one more for its footer."""
_GAP: Final = "  "


class Answers:
    """What one refresh asked: ``status``, the active runs, the senses, the last failures
    (each as the daemon answered; ``sense.list`` and the failures may be None)."""

    def __init__(
        self,
        status: Mapping[str, Any],
        active: Sequence[Mapping[str, Any]],
        senses: Sequence[Mapping[str, Any]] | None,
        failures: Sequence[Mapping[str, Any]] | None,
        now: int,
    ) -> None:
        self.status = status
        self.active = active
        self.senses = senses or []
        self.failures = failures or []
        self.now = now


class Section:
    """A titled table: its column headers, its rows, and which column gives way first."""

    def __init__(self, title: str, headers: Row, rows: list[Row], flexible: int, empty: str):
        self.title = title
        self.headers = headers
        self.rows = rows
        self.flexible = flexible
        self.empty = empty

    def lines(self, width: int, shown: int | None = None) -> list[str]:
        """The title, then the header and the first ``shown`` rows (None: all) and a line
        saying how many are not; no row shown is the title and that line alone."""
        if not self.rows:
            return [self.title, f"  {self.empty}"]
        count = len(self.rows) if shown is None else min(max(shown, 0), len(self.rows))
        more = len(self.rows) - count
        text = grid(self.headers, self.rows[:count], width, self.flexible) if count else []
        if more:
            text.append(f"  ... {more} more")
        return [self.title, *text]

    def height(self, shown: int) -> int:
        """How many lines :meth:`lines` takes for ``shown`` rows (counted, not drawn)."""
        if not self.rows:
            return 2
        count = min(max(shown, 0), len(self.rows))
        return 1 + (1 + count if count else 0) + (1 if count < len(self.rows) else 0)


def grid(headers: Row, rows: Sequence[Row], width: int, flexible: int) -> list[str]:
    """Aligned columns two spaces apart; the ``flexible`` column is cut so that the lines
    fit ``width`` (and any line still over it is cut at the edge)."""
    cells = [[visible(str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    over = sum(widths) + len(_GAP) * (len(widths) - 1) - width
    if over > 0:
        widths[flexible] = max(widths[flexible] - over, len(headers[flexible]))

    def line(row: Row) -> str:
        shown = [render.truncate(c, w).ljust(w) for c, w in zip(row, widths, strict=True)]
        return render.truncate(_GAP.join(shown).rstrip(), width)

    return [line(headers), *(line(row) for row in cells)]


def too_small(width: int, height: int | None) -> str | None:
    """The one line shown instead of a frame on a terminal smaller than it needs, or None."""
    if width >= MIN_WIDTH and (height is None or height >= MIN_HEIGHT):
        return None
    return render.truncate(
        f"terminal too small for top: {MIN_WIDTH}x{MIN_HEIGHT + 1} at least", max(width, 1)
    )


def frame(answers: Answers, width: int = WIDTH, height: int | None = None) -> list[str]:
    """The whole view: header, then WORKERS, RUNS, ACTIVE RUNS and RECENT FAILURES.

    ``height`` None draws every row. Otherwise the frame takes at most ``height`` lines and
    every section keeps its title: rows are dealt to the sections in turn, so that a short
    terminal shows some of each and ``... N more``; the blank lines between sections go
    first, when all would not fit with them. Smaller than MIN_WIDTH x MIN_HEIGHT: one line
    saying so (a frame cut there would show no section whole).
    """
    small = too_small(width, height)
    if small is not None:
        return [small]
    head = header(answers)
    sections = [workers(answers), per_workflow(answers), active_runs(answers), failures(answers)]
    shown: list[int | None] = [None] * len(sections)
    blank = True
    if height is not None:
        everything = len(head) + sum(1 + s.height(len(s.rows)) for s in sections)
        blank = everything <= height
        if not blank:
            shown = list(share(sections, height - len(head)))
    lines = list(head)
    for section, rows in zip(sections, shown, strict=True):
        lines += ["", *section.lines(width, rows)] if blank else section.lines(width, rows)
    return [render.truncate(line, width) for line in lines]


def share(sections: Sequence[Section], room: int) -> list[int]:
    """How many rows each section shows in ``room`` lines: one more to each in turn, while
    the lines it then takes still fit (a first row costs its header too; a last one takes
    the place of its ``... N more``)."""
    given = [0] * len(sections)
    used = sum(s.height(0) for s in sections)
    dealt = True
    while dealt:
        dealt = False
        for i, section in enumerate(sections):
            if given[i] >= len(section.rows):
                continue
            cost = section.height(given[i] + 1) - section.height(given[i])
            if used + cost <= room:
                given[i] += 1
                used += cost
                dealt = True
    return given


def header(answers: Answers) -> list[str]:
    """``nerved 1.2  running  up 2h 3m  pid 41  rss 52.1 MiB`` and the counts."""
    status = answers.status
    uptime = status.get("uptime")
    up = "-" if uptime is None else format_duration(float(uptime))
    first = (
        f"nerved {status.get('version', '?')}  {status.get('state', '?')}  up {up}"
        f"  pid {status.get('pid', '-')}  rss {render.mib(status.get('rss'))}"
    )
    counts = (
        f"{render.plural(int(status.get('senses') or 0), 'sense')}"
        f", {render.plural(int(status.get('workflows') or 0), 'workflow')}"
        f", {status.get('activeWorkflows', 0)} active"
        f", {status.get('queuedWorkflows', 0)} queued"
        f", {render.plural(len(status.get('workers') or []), 'worker')}"
    )
    return [first, counts]


def workers(answers: Answers) -> Section:
    """Each worker, its state, memory and what it does now: the sense it computes, or the
    run and step it holds."""
    computing: dict[str, list[str]] = {}
    for sense in answers.senses:
        if sense.get("running"):
            computing.setdefault(str(sense.get("group")), []).append(str(sense.get("name")))
    holding: dict[str, list[Mapping[str, Any]]] = {}
    for run in answers.active:
        progress = run.get("progress")
        if run.get("status") == "started" and isinstance(progress, dict) and progress.get("since"):
            holding.setdefault(str(run.get("workflow")), []).append(run)
    rows: list[Row] = []
    for worker in answers.status.get("workers") or []:
        kind, name = str(worker.get("kind", "-")), str(worker.get("name", "-"))
        state = str(worker.get("state", "-"))
        doing = "-"
        if state != "draining" and kind == "sense" and computing.get(name):
            doing = _some("computing", computing[name])
        elif state != "draining" and kind == "workflow" and holding.get(name):
            runs = holding[name]
            doing = f"{str(runs[0].get('runId'))[:SHORT_ID]} {_step(runs[0], answers.now)}"
            doing += f" (+{len(runs) - 1})" if len(runs) > 1 else ""
        elif state in ("backoff", "fatal") and worker.get("reason"):
            doing = render.one_line(str(worker["reason"]))
        pid = worker.get("pid")
        rss = worker.get("rss")
        rows.append((kind, name, state, "-" if pid is None else str(pid), _mib(rss), doing))
    return Section(
        "WORKERS", ("KIND", "NAME", "STATE", "PID", "RSS", "DOING"), rows, 5, "no workers"
    )


def _some(verb: str, names: list[str]) -> str:
    return f"{verb} {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else "")


def _step(run: Mapping[str, Any], now: int) -> str:
    """``step 3 writer 12s``: the step a run's worker is on, its role, for how long."""
    progress = run.get("progress") or {}
    role = progress.get("role")
    since = progress.get("since")
    took = "" if since is None else f" {format_duration(max(0, now - since) / 1000)}"
    return f"step {progress.get('step', '?')}" + (f" {role}" if role else "") + took


def _mib(size: Any) -> str:
    return "-" if size is None else f"{size / (1 << 20):.1f}M"


def per_workflow(answers: Answers) -> Section:
    """Per workflow with active runs: how many are started, waiting, queued, and how long
    the oldest queued one has waited (what a too-low ``concurrency`` looks like)."""
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, int] = {}
    for run in answers.active:
        name, status = str(run.get("workflow")), str(run.get("status"))
        counts.setdefault(name, {}).setdefault(status, 0)
        counts[name][status] += 1
        created = run.get("createdAt")
        if status == "queued" and isinstance(created, int):
            oldest[name] = min(oldest.get(name, created), created)
    rows: list[Row] = [
        (
            name,
            str(c.get("started", 0)),
            str(c.get("waiting", 0)),
            str(c.get("queued", 0)),
            _age(oldest.get(name), answers.now),
        )
        for name, c in sorted(counts.items())
    ]
    headers = ("WORKFLOW", "STARTED", "WAITING", "QUEUED", "OLDEST QUEUED")
    return Section("RUNS", headers, rows, 0, "no active runs")


def active_runs(answers: Answers) -> Section:
    """The active runs, oldest first: where each stands (``in flight``)."""
    runs = sorted(answers.active, key=lambda run: run.get("createdAt") or 0)
    rows: list[Row] = [
        (
            str(run.get("runId", "-"))[:SHORT_ID],
            str(run.get("workflow", "-")),
            str(run.get("status", "-")),
            _age(run.get("createdAt"), answers.now),
            in_flight(run, answers.now),
        )
        for run in runs
    ]
    headers = ("RUN", "WORKFLOW", "STATUS", "AGE", "IN FLIGHT")
    return Section("ACTIVE RUNS", headers, rows, 4, "none")


def failures(answers: Answers) -> Section:
    """The last runs that failed or crashed, newest first, with why."""
    rows: list[Row] = [
        (
            str(run.get("runId", "-"))[:SHORT_ID],
            str(run.get("workflow", "-")),
            str(run.get("status", "-")),
            format_ago(run.get("updatedAt"), answers.now),
            render.one_line(str(run.get("error") or "-")),
        )
        for run in answers.failures
    ]
    headers = ("RUN", "WORKFLOW", "STATUS", "ENDED", "ERROR")
    return Section("RECENT FAILURES", headers, rows, 4, "none")


def _age(created: Any, now: int) -> str:
    if not isinstance(created, int | float):
        return "-"
    return format_duration(max(0, now - created) / 1000)


def unreachable(message: str, width: int = WIDTH) -> list[str]:
    """The frame while the daemon does not answer: top keeps asking."""
    return [render.truncate(line, max(width, 1)) for line in
            ("nerved: daemon unreachable, retrying", visible(message))]  # fmt: skip
