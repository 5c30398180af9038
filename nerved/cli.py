"""``nerved``: the daemon's command line (SPEC §7).

Nothing but ``nerved.early`` is imported before :func:`main`, whose first statement puts
SIGHUP on hold: until then a SIGHUP kills nerved, so the command line's own modules
(argparse, logging), the daemon, the store and the configuration are imported after it, in
the functions that use them. ``tests/master/test_startup.py`` checks what importing this module
brings.
"""

from __future__ import annotations

import sys

from nerved import early

TYPE_CHECKING = False  # typing's would import typing before SIGHUP is held
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence


def _parser() -> argparse.ArgumentParser:
    import argparse

    from nerved import _version, logs

    class Parser(argparse.ArgumentParser):
        """argparse makes a help formatter for every argument it adds, only to check its
        metavar, and a formatter asks the terminal's width, importing shutil (and bz2, lzma
        and zlib with it: 0.4 MB that the master, and every worker it forks, would hold).
        The formatters made for that check get a fixed width; those that print help or
        usage, the terminal's (as nervectl's parser does)."""

        printing = False

        def _get_formatter(self) -> argparse.HelpFormatter:
            if self.printing:
                return super()._get_formatter()
            return argparse.HelpFormatter(prog=self.prog, width=80)  # no other class is set

        def _printed(self, format: Callable[[], str]) -> str:
            self.printing = True
            try:
                return format()
            finally:
                self.printing = False

        def format_help(self) -> str:
            return self._printed(super().format_help)

        def format_usage(self) -> str:
            return self._printed(super().format_usage)

    parser = Parser(
        prog="nerved",
        description="nerve daemon: senses, reflexes and durable workflow threads.",
    )
    parser.add_argument("--version", action="version", version=f"nerved {_version.__version__}")
    here = _defaults()
    parser.add_argument(
        "--root",
        metavar="DIR",
        help=f"the nerve root (default: {here['root']}: the first of $NERVE_ROOT, /etc/nerve"
        " as root, ~/.config/nerve)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"where logs.db lives (default: {here['state_dir']}: the first of"
        " $STATE_DIRECTORY, /var/lib/nerve as root, ~/.local/state/nerve)",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the control socket (default: {here['socket']}: the first of $NERVE_SOCKET,"
        " $RUNTIME_DIRECTORY/nerved.sock, /run/nerve/nerved.sock as root,"
        " $XDG_RUNTIME_DIR/nerve/nerved.sock)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=logs.LEVELS,
        help="what the log shows, from debug up (default: %(default)s)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep runs and logs in this PostgreSQL database (postgresql://...) instead of"
        " logs.db in the state directory (sqlite: logs.db); over nerve.yaml's store:",
    )
    parser.add_argument(
        "--host-id",
        metavar="ID",
        help="this nerved's name in a store several hosts share (default: $NERVE_HOST_ID,"
        " else the machine id)",
    )
    parser.add_argument("--no-watch", action="store_true", help="do not reload on file changes")
    parser.add_argument("--daemon", action="store_true", help="detach (for hosts without systemd)")
    parser.add_argument(
        "--pidfile", metavar="FILE", help="with --daemon: the pid file to write and lock"
    )
    parser.add_argument(
        "--import-timeout",
        type=_import_timeout,
        default=None,
        metavar="SECONDS",
        help="how long importing a package may take, in a worker or in the import check of a"
        " reload or of `check`, before it is reported as hung (default 20, at most 30)",
    )
    parser.add_argument(
        "--no-strict-modes",
        dest="strict_modes",
        action="store_false",
        help="warn about, instead of refusing, a root, package or state directory that users"
        " other than root and nerved's own could write (as sshd's StrictModes no)",
    )
    parser.add_argument("command", nargs="?", choices=["run", "check"], default="run",
                        help="run the daemon (default) or check the root and exit")  # fmt: skip
    return parser


def _defaults() -> dict[str, str]:
    """Where ``--root``, ``--state-dir`` and ``--socket`` point when not given, as
    :mod:`nerved.paths` resolves them now: for the user asking and the environment of this
    very command, so that ``--help`` says where this nerved would look, not only the rule.
    A default that cannot be worked out (no home directory) says so instead."""
    from nerved import paths

    shown: dict[str, str] = {}
    for name, resolve in (
        ("root", paths.resolve_root),
        ("state_dir", paths.resolve_state_dir),
        ("socket", paths.resolve_socket),
    ):
        try:
            value = str(resolve())
        except (RuntimeError, KeyError, OSError):  # Path.home() with no $HOME nor passwd entry
            value = "unknown here"
        shown[name] = value.replace("%", "%%")  # argparse formats help with %
    return shown


def _import_timeout(text: str) -> float:
    import argparse
    import math

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(seconds) and 0 < seconds <= 30):
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 30 seconds: {text}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    early.hold()
    try:
        return _run(_parser().parse_args(argv))
    finally:
        early.ignore()


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nerved import logs
    from nerved.paths import resolve_root, resolve_socket, resolve_state_dir

    root = resolve_root(args.root)
    if args.command == "check":
        from nerved import modes
        from nerved.code import check

        logs.setup("warning")
        modes.configure(strict=args.strict_modes)
        return check.run(root, args.import_timeout)
    if args.pidfile and not args.daemon:
        _parser().error("--pidfile needs --daemon")
    logs.setup(args.log_level)
    from nerved import hostid
    from nerved.master.daemon import Daemon
    from nerved.master.startup import Options

    try:
        host = hostid.resolve(args.host_id)
    except hostid.BadHostId as exc:
        _parser().error(str(exc))
    options = Options(
        root=root,
        state_dir=resolve_state_dir(args.state_dir),
        socket=resolve_socket(args.socket),
        watch=not args.no_watch,
        pidfile=Path(args.pidfile) if args.pidfile else None,
        strict_modes=args.strict_modes,
        store=args.store,
        host_id=host,
        **({"import_timeout": args.import_timeout} if args.import_timeout else {}),
    )
    if args.daemon:
        from nerved.master import detach  # python-daemon is only imported when used

        return detach.run(options, args.log_level)
    return Daemon(options).run()


if __name__ == "__main__":
    sys.exit(main())
