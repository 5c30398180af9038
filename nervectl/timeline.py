"""A run's steps as a timeline: a bar per step, scaled to its duration, because a glance at
where the time went beats reading timestamps (``workflow inspect``).

Derived from the run's history alone (SPEC §5): a step begins when the step before it was
recorded (``step_complete``), when the moderator got an ``input`` (a signal, a wait's end),
or when the run ``started``; it ends at its own ``step_complete``. Failed tries
(``step_failed``) are marked on the step they delayed, waits get a line of their own, and a
step still in flight is drawn open-ended, up to now.
"""

from __future__ import annotations

from nervectl.times import format_duration

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

BAR_WIDTH: Final = 40
"""Characters of the longest step's bar; the others are scaled to it."""
ROLE_WIDTH: Final = 14

UNICODE: Final = {"bar": "█", "failed": "✗", "wait": "⏸", "open": "▶"}
ASCII: Final = {"bar": "#", "failed": "x", "wait": "||", "open": ">"}
"""What a terminal that cannot show the block characters (not UTF-8) gets instead."""


class Step:
    """One step of the run: its number, role, when it began and ended (None: in flight),
    its failed tries, and whether it failed for good, was kept from an earlier run, or
    was resumed in a new worker."""

    def __init__(self, number: int, role: str, start: int, end: int | None) -> None:
        self.number = number
        self.role = role
        self.start = start
        self.end = end
        self.failures = 0
        self.failed = False
        self.copied = False
        self.resumed = 0

    def duration(self, now: int) -> int:
        return max(0, (now if self.end is None else self.end) - self.start)


class Wait:
    """A wait of the run: for a signal (``name``) or a sleep (None), how it ended
    (``signal``, ``wait_timeout``, ``wake``; None: it goes on)."""

    def __init__(self, name: str | None, start: int) -> None:
        self.name = name
        self.start = start
        self.end: int | None = None
        self.outcome: str | None = None


def derive(run: Mapping[str, Any], now: int) -> list[Step | Wait]:
    """The run's steps and waits, in order, from its ``events`` (and, for the step in
    flight, its ``progress``).

    ``events`` may be the newest page of the history (``earlier`` entries left out before
    it): the steps begin at its first step's end (when the one after it began), numbered
    from the run's ``steps`` less those the page holds. A page that is not the newest
    (``more``) has no timeline: where its steps stand in the run is not known."""
    items: list[Step | Wait] = []
    start: int | None = None  # when the next step began
    failures: list[Mapping[str, Any]] = []
    resumed = copied = 0
    wait: Wait | None = None
    events = run.get("events") or []
    partial = bool(run.get("earlier"))
    if partial and run.get("more"):
        return []
    shown = sum(1 for entry in events if entry.get("type") == "step_complete")
    number = max(0, _integer(run.get("steps")) - shown) if partial else 0

    def step(role: Any, end: int | None) -> Step:
        nonlocal number
        assert start is not None
        number += 1
        made = Step(number, str(role), start, end)
        made.failures, made.resumed = len(failures), resumed
        items.append(made)
        return made

    for entry in events:
        kind, ts = entry.get("type"), entry.get("ts")
        payload = _object(entry.get("payload"))
        if not isinstance(ts, int):
            continue
        if kind == "started" and start is None:
            start = ts
        elif partial and start is None and kind in ("step_complete", "input"):
            # The page begins inside the history: this step (or input) began before it.
            # Only where it ended is known, which is where the next step began.
            event = _object(payload.get("event"))
            if kind == "step_complete" or event.get("type") == "role_failed":
                number += 1
            elif wait is not None:  # a wait the page holds the start of: it ends here
                wait.end, wait.outcome = ts, event.get("type")
                items.append(wait)
                wait = None
            start, failures, resumed = ts, [], 0
        elif kind == "copied":
            copied = int(payload.get("steps") or 0)
        elif kind == "resumed":
            resumed += 1
        elif kind == "step_failed":
            failures.append(payload)
        elif kind == "step_complete" and start is not None:
            done = step(payload.get("role", "?"), ts)
            done.copied, copied = copied > 0, max(copied - 1, 0)
            start, failures, resumed = ts, [], 0
        elif kind == "waiting":
            wait = Wait(payload.get("wait"), ts)
        elif kind == "input" and start is not None:
            event = _object(payload.get("event"))
            if event.get("type") == "role_failed":  # onError: moderate
                step(event.get("role", "?"), ts).failed = True
            elif wait is not None:
                wait.end, wait.outcome = ts, event.get("type")
                items.append(wait)
                wait = None
            start, failures, resumed = ts, [], 0
    if wait is not None:
        items.append(wait)  # still waiting
    elif start is not None and run.get("status") == "started":
        progress = _object(run.get("progress"))
        role = progress.get("role") or (failures[-1].get("role") if failures else None)
        step(role or "?", None)
    elif start is not None and failures:  # the last try failed, and the run with it
        last = failures[-1]
        ends = [e.get("ts") for e in events if e.get("type") == "step_failed"]
        step(last.get("role", "?"), ends[-1]).failed = True
    return items


def _integer(value: Any) -> int:
    """``value`` if it is an integer (not a boolean), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _object(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (an unreadable payload is null)."""
    return value if isinstance(value, dict) else {}


def lines(run: Mapping[str, Any], now: int, unicode: bool = True) -> list[str]:
    """The timeline as text: ``   2  writer           1.2s  ████████ ✗✗``; a wait as
    ``        ⏸ waited 3m for 'approve'``. Empty when the run has no step yet."""
    marks = UNICODE if unicode else ASCII
    items = derive(run, now)
    steps = [item for item in items if isinstance(item, Step)]
    longest = max((s.duration(now) for s in steps), default=0)
    out: list[str] = []
    for item in items:
        if isinstance(item, Wait):
            out.append(f"{'':6}{marks['wait']} {_wait_text(item, now)}")
            continue
        took = item.duration(now)
        size = BAR_WIDTH if longest == 0 else max(1, round(took / longest * BAR_WIDTH))
        bar = marks["bar"] * size + (marks["open"] if item.end is None else "")
        role = item.role if len(item.role) <= ROLE_WIDTH else item.role[: ROLE_WIDTH - 2] + ".."
        shown = _took(took) + ("+" if item.end is None else "")
        tail = _marks(item, marks)
        out.append(f"{item.number:>4}  {role:<{ROLE_WIDTH}}  {shown:>8}  {bar}{tail}".rstrip())
    return out


def _marks(step: Step, marks: Mapping[str, str]) -> str:
    """`` ✗✗`` for two failed tries (``✗ 7 failed tries`` past five), and what else befell
    the step."""
    notes: list[str] = []
    if step.failures:
        many = step.failures > 5
        notes.append(
            f"{marks['failed']} {step.failures} failed tries"
            if many
            else marks["failed"] * step.failures
        )
    if step.failed:
        notes.append("failed")
    if step.end is None:
        notes.append("in flight")
    if step.resumed:
        notes.append("resumed" + (f" {step.resumed} times" if step.resumed > 1 else ""))
    if step.copied:
        notes.append("kept from the retried run")
    return "".join(f" {note}" for note in notes)


def _wait_text(wait: Wait, now: int) -> str:
    took = _took(max(0, (now if wait.end is None else wait.end) - wait.start))
    if wait.name is None:
        return f"slept {took}" if wait.end is not None else f"sleeping, {took} so far"
    name = repr(wait.name)
    if wait.end is None:
        return f"waiting for {name}, {took} so far"
    timed_out = " (timed out)" if wait.outcome == "wait_timeout" else ""
    return f"waited {took} for {name}{timed_out}"


def _took(ms: int) -> str:
    return f"{ms}ms" if ms < 1000 else format_duration(ms / 1000)


def blocks_ok(out: Any) -> bool:
    """Whether the bars may use the block characters on ``out``: its encoding can carry
    them, and so can the locale's. Under ``LC_ALL=C`` (or POSIX) Python turns on its UTF-8
    mode by itself (PEP 540), so the stream is UTF-8 whatever the terminal was set up for;
    the locale's codeset (ASCII there) is what says what the operator asked for."""
    import locale

    return unicode_ok(getattr(out, "encoding", None)) and unicode_ok(
        locale.nl_langinfo(locale.CODESET)
    )


def unicode_ok(encoding: str | None) -> bool:
    """Whether text in ``encoding`` can carry the bar's block characters."""
    if not encoding:
        return False
    try:
        "".join(UNICODE.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
