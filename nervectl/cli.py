"""``nervectl``: the operator's command line (SPEC §7).

Scripts rely on the exit status and on stderr being one line, so every expected failure
(a usage mistake, a daemon that does not answer, an error it reports) ends here as a
``nervectl: ...`` line and its code, never as a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from nervectl import arguments
from nervectl.exits import FAILED, INTERRUPTED, NOT_FOUND, OK, UNREACHABLE, USAGE, CliError
from nerved import _version
from nerved.paths import socket_path

# Every command pays for what this module imports, so it imports only what builds the parser
# (argparse, and constants from leaf modules). A command's handler, and what it needs (the
# client, tabulate, the scaffold, the payload codec, the time grammar), is imported once the
# command is known: ``nervectl --json status`` imports no table library, no nerve.yaml
# grammar, no scaffold (tests/nervectl/test_imports.py holds it to that).
TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

    from nervectl.client import RemoteError, Unreachable
    from nervectl.context import Context

    Handler = Callable[[Context], int]

# JSON-RPC codes (SPEC §6) that have their own exit status or wording.
_RPC_NOT_FOUND = -32001
_RPC_NO_METHOD = -32601

INIT_USAGE = """\
nervectl init [DIR]
       nervectl init sense NAME [--root DIR]
       nervectl init workflow NAME [--root DIR]"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other nervectl error.

    argparse makes a help formatter for every argument it adds, only to check its metavar,
    and a formatter asks the terminal's width (importing shutil, and bz2 and lzma with it):
    a tenth of ``nervectl --json status``. The formatters made for that check get a fixed
    width; those that print help or usage, the terminal's.
    """

    _printing = False

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"nervectl: {message} (see: {self.prog} --help)\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        if self._printing:
            return super()._get_formatter()
        return argparse.HelpFormatter(prog=self.prog, width=80)  # nervectl sets no other class

    def format_help(self) -> str:
        self._printing = True
        try:
            return super().format_help()
        finally:
            self._printing = False

    def format_usage(self) -> str:
        self._printing = True
        try:
            return super().format_usage()
        finally:
            self._printing = False


class _Guess(Exception):
    """The parser built for one command met what only the whole parser can answer."""


class _OneCommand(_Parser):
    """A parser holding only the command about to run (see :func:`_command_path`): what it
    cannot parse is parsed again, and its error said, by the whole parser."""

    def error(self, message: str) -> NoReturn:
        raise _Guess(message)


# Options of nervectl itself that take a value, as the scan of argv must skip them.
_VALUED = frozenset({"--socket"})
# The only options the scan lets stand before the command is named: any other (``-h``, its
# abbreviations ``--he``..., ``--vers``, ``--``, a typo) is for the whole parser, whose help
# lists every command (a parser of one would list that one alone).
_BEFORE = frozenset({"--json"})
_GROUPS = frozenset({"sense", "workflow"})


def _command_path(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The command ``argv`` names (``("status",)``, ``("workflow", "trigger")``), found
    without a parser, or None when an option other than ``--json`` and ``--socket`` comes
    before it is named (help or version of nervectl or of a group, an abbreviation, ``--``).

    Building every command's arguments is a fifth of ``nervectl --json status``'s own time
    (argparse looks up translations and the terminal's width for each): :func:`main` builds
    only the command named here, and the whole parser whenever that one cannot parse argv.
    """
    path: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED:
            skip = True
        elif token.startswith("-"):
            if token not in _BEFORE and not token.startswith("--socket="):
                return None
        else:
            path.append(token)
            if path[0] not in _GROUPS or len(path) == 2:
                return tuple(path)
    return None


def _common() -> argparse.ArgumentParser:
    """--socket and --json again on every command, so they may also follow it.

    SUPPRESS keeps an option that is not given here from overwriting the one given before
    the command.
    """
    common = _Parser(add_help=False)
    arguments.completes(
        common.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS),
        arguments.FILE,
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    return common


def build_parser(only: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """nervectl's parser: every command, or ``only`` the one named (:func:`_command_path`),
    whose errors then raise :class:`_Guess`."""
    common = _common()
    parser = (_Parser if only is None else _OneCommand)(
        prog="nervectl",
        description="Operate nerved, the nerve daemon, over its control socket.",
        epilog="Exit status: 0 ok, 1 the daemon reported an error (or a waited-for run did "
        "not complete, a replayed history diverged, or init refused), 2 usage error, 3 daemon "
        "unreachable, 4 not found.",
    )
    socket = parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the control socket (default: $NERVE_SOCKET, $RUNTIME_DIRECTORY/nerved.sock, "
        "/run/nerve/nerved.sock as root, else $XDG_RUNTIME_DIR/nerve/nerved.sock)",
    )
    arguments.completes(socket, arguments.FILE)
    parser.add_argument(
        "--json", action="store_true", help="print the daemon's result as JSON on stdout"
    )
    parser.add_argument("--version", action="version", version=f"nervectl {_version.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def wanted(*path: str) -> bool:
        return only is None or only[: len(path)] == path

    def command(
        group: Any,
        path: tuple[str, ...],
        handler: str,
        text: str,
        arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """A command whose handler is ``module:function`` in nervectl, imported if it runs;
        built (its ``arguments`` added) only if it is wanted."""
        if not wanted(*path):
            return
        leaf = group.add_parser(path[-1], help=text, description=text, parents=[common], **kwargs)
        leaf.set_defaults(handler=handler)
        if arguments is not None:
            arguments(leaf)

    command(sub, ("status",), "commands:status", "show what the daemon is doing and its workers")
    command(
        sub,
        ("top",),
        "top:top",
        "a live view of workers, runs and failures, refreshed until q",
        arguments.top,
    )
    if wanted("sense"):
        sense = sub.add_parser("sense", help="list or trigger senses", description="Senses.")
        senses = sense.add_subparsers(dest="sense_command", metavar="SUBCOMMAND", required=True)
        command(
            senses, ("sense", "list"), "commands:sense_list", "list the senses with their counters"
        )
        command(
            senses,
            ("sense", "trigger"),
            "commands:sense_trigger",
            "compute a sense now (subject to its throttle)",
            arguments.sense_trigger,
        )
    command(
        sub,
        ("logs",),
        "logs:logs",
        "show entries of the daemon's log store (signals, sense logs and errors, run histories)",
        arguments.logs,
    )
    command(
        sub,
        ("metrics",),
        "metrics:metrics",
        "print nerve's metrics in the OpenMetrics text format (what Prometheus reads)",
    )
    command(
        sub,
        ("reload",),
        "commands:reload",
        "re-read nerve.yaml and the packages, show what changed",
    )
    if wanted("workflow"):
        workflow = sub.add_parser(
            "workflow",
            help="list, inspect, trigger, signal, cancel, retry or replay workflow runs; their"
            " schedule",
            description="Workflow runs.",
        )
        runs = workflow.add_subparsers(dest="workflow_command", metavar="SUBCOMMAND", required=True)
        command(
            runs,
            ("workflow", "list"),
            "workflows:workflow_list",
            "list workflow runs (the active ones by default)",
            arguments.workflow_list,
        )
        command(
            runs,
            ("workflow", "inspect"),
            "history:workflow_inspect",
            "show one run and its event history",
            arguments.workflow_inspect,
        )
        command(
            runs,
            ("workflow", "replay"),
            "replay:workflow_replay",
            "check that the workflow's current code decides as its runs' histories say; "
            "exit 1 when one diverges",
            arguments.workflow_replay,
        )
        command(
            runs,
            ("workflow", "schedule"),
            "schedule:workflow_schedule",
            "list the cron reflexes with their next and last firing and its outcome",
        )
        command(
            runs,
            ("workflow", "trigger"),
            "workflows:workflow_trigger",
            "start a run of a workflow",
            arguments.workflow_trigger,
        )
        command(
            runs,
            ("workflow", "cancel"),
            "steering:workflow_cancel",
            "cancel active runs: queued ones never start, started ones stop at once",
            arguments.workflow_cancel,
        )
        command(
            runs,
            ("workflow", "signal"),
            "steering:workflow_signal",
            "send a signal to a run: its moderator gets it when it waits for that name",
            arguments.workflow_signal,
        )
        command(
            runs,
            ("workflow", "retry"),
            "steering:workflow_retry",
            "run a final run again as a new run, keeping the steps it completed",
            arguments.workflow_retry,
        )
    command(
        sub,
        ("init",),
        "scaffold:init",
        "scaffold a nerve root, a sense or a workflow (needs no daemon)",
        arguments.init,
        usage=INIT_USAGE,
        epilog="init DIR writes DIR/nerve.yaml with one sense, heartbeat; DIR defaults to the "
        "root nerved would use ($NERVE_ROOT, /etc/nerve as root, else ~/.config/nerve). "
        "init sense|workflow NAME writes DIR/senses|workflows/NAME/__init__.py and declares it "
        "in DIR/nerve.yaml. Nothing that exists is overwritten.",
    )
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """argv parsed by a parser of the one command it names, or else by the whole parser
    (which also says every error, and gives every help)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    only = _command_path(args_list)
    if only is not None:
        try:
            return build_parser(only).parse_args(args_list)
        except _Guess:
            pass
    return build_parser().parse_args(args_list)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed them
        return exc.code if isinstance(exc.code, int) else USAGE
    from importlib import import_module

    from nervectl.client import RemoteError, RequestTooLarge, Unreachable
    from nervectl.context import Context

    ctx = Context(args=args, socket=socket_path(args.socket), json=args.json)
    try:
        module, name = args.handler.split(":")
        handler: Handler = getattr(import_module(f"nervectl.{module}"), name)
        code = handler(ctx)
        ctx.out.flush()  # here, where a closed pipe can still be handled
        return code
    except CliError as exc:
        return _fail(exc.message, exc.code)
    except RequestTooLarge as exc:
        return _fail(str(exc), USAGE)
    except Unreachable as exc:
        return _fail(f"{exc}{_unreachable_hint(exc)}", UNREACHABLE)
    except RemoteError as exc:
        return _fail(*_remote_failure(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED)
    except BrokenPipeError:
        # The reader of our stdout went away (| head): not an error worth a word.
        _silence_stdout()
        return OK
    finally:
        ctx.close()


def _unreachable_hint(exc: Unreachable) -> str:
    cause = exc.__cause__
    if not isinstance(cause, OSError) or isinstance(cause, ConnectionResetError | BrokenPipeError):
        return ""
    if cause.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return " (is nerved running, and is this its socket?)"
    if cause.errno in (errno.EACCES, errno.EPERM):
        return " (root, nerved's own user and members of the nerve group may connect)"
    return ""


def _remote_failure(exc: RemoteError) -> tuple[str, int]:
    if exc.code == _RPC_NOT_FOUND:
        return exc.message, NOT_FOUND
    if exc.code == _RPC_NO_METHOD:
        return f"{exc.message} (this nerved does not serve it: is it older than nervectl?)", FAILED
    return exc.message, FAILED


def _fail(message: str, code: int) -> int:
    from nervectl.context import visible  # the daemon's messages may quote user code

    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"nervectl: {visible(line)}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


if __name__ == "__main__":
    sys.exit(main())
