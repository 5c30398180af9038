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
"""The narrowest width the frame is drawn for (an ssh session's default terminal)."""
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

    def lines(self, width: int, room: int | None) -> list[str]:
        """The title, the header and as many rows as ``room`` holds (None: all), the last
        one then saying how many are not shown."""
        if not self.rows:
            return [self.title, f"  {self.empty}"]
        rows = self.rows
        more = 0
        if room is not None and len(rows) > room:
            more = len(rows) - max(room - 1, 0)
            rows = rows[: max(room - 1, 0)]
        text = grid(self.headers, rows, width, self.flexible)
        if more:
            text.append(f"  ... {more} more")
        return [self.title, *text]


def grid(headers: Row, rows: Sequence[Row], width: int, flexible: int) -> list[str]:
    """Aligned columns two spaces apart; the ``flexible`` column is cut so that the lines
    fit ``width`` (and any line still over it is cut at the edge)."""
    cells = [[visible(str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    over = sum(widths) + len(_GAP) * (len(widths) - 1) - width
    if over > 0:
        widths[flexible] = max(widths[flexible] - over, len(headers[flexible]))

    def line(row: Row) -> str:
        shown = [render.truncate(c, w).ljust(w) for c, w in zip(row, widths, strict=True)]
        return render.truncate(_GAP.join(shown).rstrip(), width)

    return [line(headers), *(line(row) for row in cells)]


def frame(answers: Answers, width: int = WIDTH, height: int | None = None) -> list[str]:
    """The whole view: header, then WORKERS, RUNS, ACTIVE RUNS and RECENT FAILURES.

    ``height`` None draws every row; otherwise the sections share the lines left after the
    header, each getting rows in turn, so that a short terminal shows some of each.
    """
    width = max(width, WIDTH)
    head = header(answers)
    sections = [workers(answers), per_workflow(answers), active_runs(answers), failures(answers)]
    rooms: list[int | None] = [None] * len(sections)
    if height is not None:
        fixed = len(head) + sum(2 + 1 for _ in sections)  # title, headers, blank line
        rooms = list(share([len(s.rows) for s in sections], max(height - fixed, 0)))
    lines = list(head)
    for section, room in zip(sections, rooms, strict=True):
        lines += ["", *section.lines(width, room)]
    lines = [render.truncate(line, width) for line in lines]
    return lines if height is None else lines[:height]


def share(needs: Sequence[int], room: int) -> list[int]:
    """``room`` rows dealt one at a time to the sections that need more, in turn."""
    given = [0] * len(needs)
    while room > 0:
        dealt = False
        for i, need in enumerate(needs):
            if given[i] < need and room > 0:
                given[i] += 1
                room -= 1
                dealt = True
        if not dealt:
            break
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
    return [render.truncate(line, max(width, WIDTH)) for line in
            ("nerved: daemon unreachable, retrying", visible(message))]  # fmt: skip
