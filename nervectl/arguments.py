"""The arguments of each nervectl command, and the argparse types that check them.

Each function adds one command's arguments to its parser; :func:`nervectl.cli.build_parser`
calls only the one of the command about to run. Every value is checked here by the rule the
daemon holds it to (a name not empty and UTF-8, a number within what the daemon takes, a
payload by nerve.wire's rules), so what the daemon would refuse is a usage error (exit 2)
before anything is sent.
"""

from __future__ import annotations

import argparse

from nervectl.limits import MAX_INTEGER, MAX_KEY, MAX_QUERY_LIMIT, MAX_REPLAY_RUNS
from nervectl.times import SINCE_HELP, parse_duration_ms, parse_since

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

# What the shell completion offers for an argument, read by shtab from ``action.complete``
# when packaging/build_docs.py generates the completions (shtab's FILE and DIRECTORY, as
# plain dicts: shtab is a build dependency, never imported when nervectl runs).
FILE: dict[str, str] = {"bash": "_shtab_compgen_files", "zsh": "_files"}
DIRECTORY: dict[str, str] = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}
SOURCES: dict[str, str] = {"bash": "_nervectl_compgen_sources", "zsh": "(sense workflow)"}
INIT_TARGET: dict[str, str] = {
    "bash": "_nervectl_compgen_init_dirs",  # "_dir" in the name: bash marks dirs with a /
    # a leading space: _arguments calls the action as written, without compadd's options
    "zsh": " _alternative 'kinds:kind:(sense workflow)' 'dirs:directory:_files -/'",
}
COMPLETION_PREAMBLE: dict[str, str] = {
    "bash": """
# nervectl's own: logs --source, and init's sense, workflow or a directory
_nervectl_compgen_sources() { compgen -W "sense workflow" -- "$1"; }
_nervectl_compgen_init_dirs() { compgen -W "sense workflow" -- "$1"; compgen -d -- "$1"; }
"""
}
"""The bash functions SOURCES and INIT_TARGET name, for shtab.complete(preamble=...)."""


def completes(action: argparse.Action, how: dict[str, str]) -> argparse.Action:
    """``action``, whose value the shell completion completes as ``how`` says (a path, a
    directory, words): what shtab.FILE and the like set, without shtab at run time."""
    action.complete = how  # type: ignore[attr-defined]
    return action


LOGS_DEFAULT_LIMIT = 100
"""Entries ``logs`` shows unless told (the newest, or the oldest since ``--since``)."""


def _since(text: str) -> int:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _payload(text: str) -> Any:
    from nervectl.workflows import parse_payload

    try:
        return parse_payload(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to ``maximum``.

    Every integer option is bounded here by what the daemon takes, so that a number it would
    refuse (-32602, exit 1 after a round trip) is a usage error (exit 2) before sending.
    """

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not a number, or more than the 4,300 digits int() reads
            value = 0
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from 1 to {maximum:,}, got {text!r}"
            )
        return value

    return count


def _text(text: str) -> str:
    """An argparse type for a name, a run id or a filter, as the daemon's string params take
    them: not empty, and UTF-8 (argv that is not arrives as lone surrogates, which JSON on
    the wire cannot carry)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    try:
        text.encode()
    except UnicodeEncodeError:
        shown = text.encode(errors="surrogateescape")
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {shown!r}") from None
    return text


def _key(text: str) -> str:
    """An argparse type: an idempotency key, text of 1 to MAX_KEY characters."""
    text = _text(text)
    if len(text) > MAX_KEY:
        raise argparse.ArgumentTypeError(f"{len(text):,} characters; at most {MAX_KEY}")
    return text


def _signal_name(text: str) -> str:
    """An argparse type: a signal's name, as ``nerved.wait_for`` takes one (the same rule,
    :func:`nerved.waits.name_problem`, imported only for this command)."""
    from nerved.waits import name_problem

    problem = name_problem(_text(text))
    if problem is not None:
        raise argparse.ArgumentTypeError(f"a signal's name {problem}")
    return text


def _seconds(text: str) -> float:
    """An argparse type: seconds, as a number (``90``, ``0.5``) or as a duration with units
    (``1m30s``, ``2h``: nerve.yaml's grammar, as ``--since`` takes it)."""
    try:
        value = float(text)
    except ValueError:
        ms = parse_duration_ms(text)
        if ms is None:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds or a duration such as 1m30s, got {text!r}"
            ) from None
        value = ms / 1000
    if not 0 < value < 10**9:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def sense_trigger(trigger: argparse.ArgumentParser) -> None:
    trigger.add_argument("name", metavar="NAME", type=_text, help="the sense to compute")


def logs(logs_parser: argparse.ArgumentParser) -> None:
    completes(
        logs_parser.add_argument(
            "--source", metavar="S", type=_text,
            help="only this source: sense or workflow (another: exit 4)",
        ),
        SOURCES,
    )  # fmt: skip
    logs_parser.add_argument(
        "--type", metavar="T", type=_text, help="only this type (signal, log, error, started, ...)"
    )
    about = logs_parser.add_mutually_exclusive_group()
    about.add_argument(
        "--run", metavar="RUN_ID", type=_text,
        help="only the history of this run: its id, or a unique prefix of 8+ chars (no such "
        "run: exit 4)",
    )  # fmt: skip
    about.add_argument(
        "--sense", metavar="NAME", type=_text,
        help="only the entries of this sense (not configured and none kept: exit 4)",
    )  # fmt: skip
    logs_parser.add_argument(
        "--since", metavar="TIME", type=_since, help=f"from TIME: {SINCE_HELP}"
    )
    logs_parser.add_argument(
        "--limit",
        metavar="N",
        type=_count(MAX_INTEGER),
        default=LOGS_DEFAULT_LIMIT,
        help=f"at most N entries (default {LOGS_DEFAULT_LIMIT}; the newest, or the oldest "
        f"since --since); more than {MAX_QUERY_LIMIT:,} are read that many at a time",
    )
    logs_parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="then keep printing new entries as they arrive, until interrupted",
    )


def workflow_list(listing: argparse.ArgumentParser) -> None:
    from nerved.states import RunStatus  # the run statuses, as the daemon has them

    statuses = [status.value for status in RunStatus]
    listing.add_argument("--all", action="store_true", help="finished runs too")
    listing.add_argument(
        "--status",
        metavar="S",
        action="append",
        choices=statuses,
        help=f"only runs in this status ({', '.join(statuses)}); may be repeated",
    )
    listing.add_argument(
        "--workflow", metavar="NAME", type=_text,
        help="only runs of this workflow (neither configured nor with kept runs: exit 4)",
    )  # fmt: skip
    listing.add_argument(
        "--host", metavar="H", type=_text,
        help="only runs of this host, the one that last drove each (a store several hosts "
        "share; a host no run has, and any host with SQLite: no runs)",
    )  # fmt: skip
    listing.add_argument(
        "--limit",
        metavar="N",
        type=_count(MAX_QUERY_LIMIT),
        help=f"at most N runs, newest first (default 100; at most {MAX_QUERY_LIMIT:,}, "
        "the most the daemon lists at once); a line after the table says how many more "
        "there are",
    )
    listing.add_argument(
        "--full", action="store_true",
        help="whole run ids (the table shows their first 8 characters, which every command "
        "takes; --json has them whole)",
    )  # fmt: skip


def workflow_inspect(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument(
        "run_id", metavar="RUN_ID", type=_text, help="a run id, or a unique prefix of 8+ chars"
    )
    inspect.add_argument(
        "--all", action="store_true",
        help="every event of the run, from its start (read a page at a time)",
    )  # fmt: skip
    inspect.add_argument(
        "--limit", metavar="N", type=_count(MAX_INTEGER),
        help=f"at most N events (default {INSPECT_DEFAULT_LIMIT}: the newest, or the first "
        f"after --after); more than {MAX_QUERY_LIMIT:,} are read that many at a time",
    )  # fmt: skip
    inspect.add_argument(
        "--after", metavar="ID", type=_entry_id,
        help="the events after the event ID, oldest first (to page on: the last ID shown)",
    )  # fmt: skip
    inspect.add_argument(
        "--before", metavar="ID", type=_entry_id,
        help="the newest events before the event ID (to page back: the first ID shown)",
    )  # fmt: skip


INSPECT_DEFAULT_LIMIT: Final = 100  # workflow.inspect's own default page


def _entry_id(text: str) -> int:
    """An argparse type: a log entry's id, 0 or more, as the daemon takes it."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"expected an entry id, 0 or more, got {text!r}")
    return value


def workflow_replay(replay: argparse.ArgumentParser) -> None:
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "run_id", metavar="RUN_ID", nargs="?", type=_text,
        help="the run to check: its id, or a unique prefix of 8+ chars",
    )  # fmt: skip
    which.add_argument(
        "--workflow", metavar="NAME", type=_text,
        help="check the newest runs of this workflow, whatever their status",
    )  # fmt: skip
    replay.add_argument(
        "--limit", metavar="N", type=_count(MAX_REPLAY_RUNS),
        help=f"with --workflow: at most N runs, newest first (default 100, at most "
        f"{MAX_REPLAY_RUNS:,})",
    )  # fmt: skip


def workflow_trigger(start: argparse.ArgumentParser) -> None:
    start.add_argument("name", metavar="NAME", type=_text, help="the workflow")
    _payload_options(start, "the trigger payload, a JSON value", "the JSON trigger payload")
    start.add_argument(
        "--key",
        metavar="KEY",
        type=_key,
        help=f"an idempotency key (1 to {MAX_KEY} characters): if a kept run of the workflow "
        "was triggered with KEY, show that run instead of starting another",
    )
    _waiting(start)


def _step(text: str) -> int:
    """An argparse type: a number of steps, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 2**31:
        raise argparse.ArgumentTypeError(f"expected a number of steps, 0 or more, got {text!r}")
    return value


def _waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the run to end and show it; exit 1 unless it completed",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        help="with --wait: give up waiting after this long, in seconds or as a duration such as "
        "1m30s (default: wait as long as it takes)",
    )


def workflow_cancel(cancel: argparse.ArgumentParser) -> None:
    cancel.add_argument(
        "run_ids",
        metavar="RUN_ID",
        nargs="+",
        type=_text,
        help="a run id, or a unique prefix of 8+ chars; several may be given",
    )
    cancel.add_argument(
        "--reason", metavar="TEXT", type=_text, help="why, kept in the run's history"
    )


def workflow_retry(retry: argparse.ArgumentParser) -> None:
    retry.add_argument(
        "run_id",
        metavar="RUN_ID",
        type=_text,
        help="a final run: its id, or a unique prefix of 8+ chars",
    )
    retry.add_argument(
        "--from-step",
        metavar="N",
        type=_step,
        help="keep the old run's first N steps, not run again, and go on from step N+1 "
        "(default: keep every step it completed; 0: run it all again)",
    )
    _waiting(retry)


def workflow_signal(signal: argparse.ArgumentParser) -> None:
    signal.add_argument(
        "run_id", metavar="RUN_ID", type=_text, help="an active run: its id, or a unique prefix"
        " of 8+ chars",
    )  # fmt: skip
    signal.add_argument(
        "name", metavar="NAME", type=_signal_name,
        help="the signal's name, as the moderator's wait_for has it (1 to 256 characters)",
    )  # fmt: skip
    _payload_options(
        signal, "the signal's payload, a JSON value (default: null)", "the JSON payload"
    )


def _payload_options(parser: argparse.ArgumentParser, inline: str, from_file: str) -> None:
    """``--payload JSON | --payload-file FILE`` (read by nervectl.workflows.payload_of):
    absent when neither is given, so that no payload is sent."""
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument(
        "--payload", metavar="JSON", type=_payload, default=argparse.SUPPRESS, help=inline
    )
    completes(
        payload.add_argument(
            "--payload-file", metavar="FILE", help=f"read {from_file} from FILE (- stdin)"
        ),
        FILE,
    )


def init(init: argparse.ArgumentParser) -> None:
    completes(
        init.add_argument(
            "target", nargs="*", metavar="DIR | sense NAME | workflow NAME", help="what to create"
        ),
        INIT_TARGET,
    )
    completes(
        init.add_argument(
            "--root", metavar="DIR",
            help="the nerve root to add to (default: as nerved resolves it)",
        ),
        DIRECTORY,
    )  # fmt: skip


TOP_MIN_INTERVAL = 0.5
"""Seconds between refreshes of ``top`` at least: each asks the daemon four things."""


def _interval(text: str) -> float:
    value = _seconds(text)
    if value < TOP_MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"at least {TOP_MIN_INTERVAL:g}s, got {text!r}")
    return value


def top(top_parser: argparse.ArgumentParser) -> None:
    top_parser.add_argument(
        "--interval", metavar="SECONDS", type=_interval, default=2.0,
        help="seconds between refreshes, or a duration such as 10s (default 2, at least 0.5)",
    )  # fmt: skip
    top_parser.add_argument(
        "--once", action="store_true",
        help="print one frame as plain text and exit (what a stdout that is no terminal gets)",
    )  # fmt: skip
