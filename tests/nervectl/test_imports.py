"""nervectl imports what the command being run needs, and nothing else.

Every command is a new interpreter, so an import that a command does not need is paid on each
run: ``nervectl --json status`` must stay close to the interpreter's own start (issue 10;
``python -m bench.control`` measures it). Held here by the modules a command imports, through
a real nerved, never by the clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Nerved

# nervectl's main() run in a fresh interpreter: what sys.modules gained from the import of
# nervectl.cli to the end of the command (whatever the interpreter's site imports before is
# not nervectl's) goes to the file named first.
RUN = """
import json, sys
before = set(sys.modules)
from nervectl.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(set(sys.modules) - before)}, out)
"""

# Never needed to ask the daemon and print its answer as JSON.
NOT_FOR_JSON = (
    "tabulate",  # tables: its import alone costs more than the rest of the command
    "importlib.metadata",  # what tabulate 0.10 imports
    "nervectl.scaffold",  # init only
    "nervectl.workflows",
    "nervectl.logs",
    "nerved.config",  # nerve.yaml's grammar: durations are read by logs and workflow only
    "nerved.wire",  # the payload codec: workflow trigger only
    "nerved.store",
    "nerved.api",
    "sqlite3",
    "yaml",
    "dataclasses",
    "datetime",  # times are formatted for people only
    "typing",
)
# Never needed by any command that talks to the daemon.
NOT_FOR_ANY = ("nervectl.scaffold", "nerved.config.schema", "nerved.store", "sqlite3", "yaml")


def modules_of(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    record = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(record), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(record.read_text())
    return result["code"], result["modules"]


def imported(modules: list[str], names: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that are one of ``names`` or inside one of them."""
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


@pytest.fixture
def daemon(nerved_factory: Callable[..., Nerved]) -> Nerved:
    sense = "def compute(ctx):\n    return {'ok': True}\n"
    return nerved_factory("senses:\n  probe: {}\n", {"probe": sense}).start()


def test_json_status_imports_no_table_grammar_scaffold_nor_store(
    daemon: Nerved, tmp_path: Path
) -> None:
    code, modules = modules_of(tmp_path, "--socket", str(daemon.socket), "--json", "status")
    assert code == 0
    assert imported(modules, NOT_FOR_JSON) == []
    assert {"nervectl.client", "nervectl.commands"} <= set(modules)  # the one client, the handler


def test_status_imports_tabulate_and_nothing_for_other_commands(
    daemon: Nerved, tmp_path: Path
) -> None:
    code, modules = modules_of(tmp_path, "--socket", str(daemon.socket), "status")
    assert code == 0
    assert "tabulate" in modules
    assert imported(modules, NOT_FOR_ANY) == []
    assert imported(modules, ("nervectl.workflows", "nervectl.logs", "nerved.wire")) == []


@pytest.mark.parametrize(
    "args",
    [
        ("--json", "sense", "list"),
        ("sense", "list"),
        ("--json", "workflow", "list", "--all"),
        ("workflow", "list", "--all"),
        ("--json", "logs", "--limit", "5"),
        ("logs", "--since", "1h30m"),
    ],
    ids=" ".join,
)
def test_other_commands_import_no_scaffold_nor_store(
    daemon: Nerved, tmp_path: Path, args: tuple[str, ...]
) -> None:
    code, modules = modules_of(tmp_path, "--socket", str(daemon.socket), *args)
    assert code == 0
    assert imported(modules, NOT_FOR_ANY) == []
    if args[0] == "--json":
        assert imported(modules, ("tabulate", "importlib.metadata")) == []


@pytest.mark.parametrize("args", [("top", "--once"), ("--json", "top")], ids=" ".join)
def test_top_once_imports_no_curses_nor_tables(
    daemon: Nerved, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """One frame as text needs no curses (the live view imports it) and no tabulate."""
    code, modules = modules_of(tmp_path, "--socket", str(daemon.socket), *args)
    assert code == 0
    assert imported(modules, (*NOT_FOR_ANY, "curses", "_curses", "tabulate")) == []
    assert "nervectl.top" in modules


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "table"])
def test_workflow_replay_imports_its_handler_alone(
    daemon: Nerved, tmp_path: Path, json_output: bool
) -> None:
    args = ("--json",) if json_output else ()
    code, modules = modules_of(
        tmp_path, "--socket", str(daemon.socket), *args, "workflow", "replay", "--workflow", "w"
    )
    assert code == 4  # no such workflow: the answer came, and was read
    assert "nervectl.replay" in modules
    assert imported(modules, NOT_FOR_ANY) == []
    assert imported(modules, ("nervectl.workflows", "nervectl.logs", "nerved.wire")) == []
    if json_output:
        assert imported(modules, NOT_FOR_JSON) == []


def test_workflow_trigger_checks_its_payload_with_the_daemons_codec(tmp_path: Path) -> None:
    """The codec is imported where it is needed: a payload is refused before connecting."""
    args = ("--socket", str(tmp_path / "none.sock"), "workflow", "trigger", "w")
    code, modules = modules_of(tmp_path, *args, "--payload", '{"x": NaN}')
    assert code == 2
    assert "nerved.wire" in modules
    assert imported(modules, ("tabulate", "nervectl.scaffold", "sqlite3")) == []


def test_help_and_version_need_no_client(tmp_path: Path) -> None:
    for args in (("--version",), ("--help",), ("workflow", "--help")):
        code, modules = modules_of(tmp_path, *args)
        assert code == 0
        assert imported(modules, ("nervectl.client", "socket", "tabulate", "nerved.wire")) == []


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["status"], ("status",)),
        (["--json", "status"], ("status",)),
        (["--socket", "status", "status"], ("status",)),  # --socket's value is no command
        (["workflow", "--json", "trigger", "w"], ("workflow", "trigger")),
        (["sense", "list"], ("sense", "list")),
        (["workflow"], None),
        (["--help"], None),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_command_is_found_without_a_parser(argv, path):
    """nervectl builds only the parser of the command about to run (nervectl.cli)."""
    from nervectl.cli import _command_path

    assert _command_path(argv) == path


@pytest.mark.parametrize(
    "argv",
    [
        ["stauts"],
        ["workflow", "trigger"],
        ["logs", "--limit", "0"],
        ["workflow", "list", "--status", "nope"],
        ["--socket"],
    ],
)
def test_a_usage_error_reads_as_the_whole_parser_says_it(argv, capsys):
    """What the one-command parser cannot parse is parsed again by the whole parser, which
    says the error: the same words as before nervectl built parsers lazily."""
    from nervectl.cli import build_parser, main

    assert main(argv) == 2
    lazy = capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert lazy == capsys.readouterr().err and lazy.startswith("nervectl: ")
