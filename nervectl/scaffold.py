"""``nervectl init``: a nerve root, a sense or a workflow, written from the templates.

Nothing here talks to the daemon. Two rules keep it safe to run against a live root:
nothing that exists is ever overwritten (a package or a nerve.yaml is refused, not merged),
and every file appears whole, in one step, so that a running nerved's file watcher never
loads half a package or half a nerve.yaml. nerve.yaml is edited as text, not re-dumped,
so that the operator's comments and layout stay as they were.

What it makes, nerved's strict modes accept whatever the umask: directories 0755 (even their
parents: not ``mkdir -p``'s umask-given modes), files 0644.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Final

from nervectl.context import Context
from nervectl.exits import FAILED, OK, USAGE, CliError
from nerved.config.grammar import NAME_RE, NAME_RULE
from nerved.paths import resolve_root

CONFIG: Final = "nerve.yaml"
FIRST_SENSE: Final = "heartbeat"

_SENSE_BODY: Final = (
    "group: default       # senses of one group share one worker process",
    "timeout: 10s         # a compute running longer is abandoned and logged as an error",
)
_WORKFLOW_BODY: Final = (
    "concurrency: 1       # max active threads",
    "overflow: queue      # drop | queue: what a trigger does when every slot is busy",
)
# `senses:` at the start of a line, with perhaps an inline value and a comment after it.
_HEADER_RE: Final = re.compile(
    r"(?P<key>[A-Za-z]+):[ \t]*(?P<value>[^#\r\n]*?)[ \t]*(?P<comment>#.*)?"
)
_EMPTY_VALUES: Final = ("", "{}", "null", "~", "Null", "NULL")
_KEY_RE: Final = re.compile(
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<plain>[^\s:#'"][^:#]*?))\s*:(?:\s|$)"""
)


@dataclass
class Scaffolded:
    """What an init did, for the operator (and for ``--json``)."""

    root: Path
    created: list[Path] = field(default_factory=list)
    declared: bool = False  # nerve.yaml gained an entry
    notes: list[str] = field(default_factory=list)


def check_name(name: str, what: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise CliError(f"{name!r} is not a valid {what} name: {NAME_RULE}", USAGE)


def template(name: str) -> str:
    return (files("nervectl") / "templates" / name).read_text(encoding="utf-8")


# -- init DIR ---------------------------------------------------------------------------------


def init_root(root: Path) -> Scaffolded:
    config = root / CONFIG
    package = root / "senses" / FIRST_SENSE / "__init__.py"
    for existing in (config, package):
        if existing.exists() or existing.is_symlink():
            raise CliError(
                f"{existing} already exists; not overwriting it (nervectl init sense NAME "
                f"--root {root} adds a sense to an existing root)"
            )
    done = Scaffolded(root)
    try:
        for directory in (package.parent, root / "workflows"):
            _make_dirs(directory)
        _create(package, _render("sense.py.tmpl", FIRST_SENSE), done)
        _create(config, template(CONFIG), done)
    except OSError as exc:
        raise CliError(_os_failure(exc, root)) from exc
    done.declared = True
    return done


# -- init sense NAME / init workflow NAME -----------------------------------------------------


def init_sense(root: Path, name: str) -> Scaffolded:
    check_name(name, "sense")
    return _init_package(root, "senses", name, "sense.py.tmpl", _SENSE_BODY)


def init_workflow(root: Path, name: str) -> Scaffolded:
    check_name(name, "workflow")
    return _init_package(root, "workflows", name, "workflow.py.tmpl", _WORKFLOW_BODY)


def _init_package(
    root: Path, section: str, name: str, template_name: str, body: Sequence[str]
) -> Scaffolded:
    config = root / CONFIG
    package = root / section / name / "__init__.py"
    if not config.is_file():
        raise CliError(f"{config} does not exist; create the root first with: nervectl init {root}")
    if package.exists() or package.is_symlink():
        raise CliError(f"{package} already exists; not overwriting it")
    done = Scaffolded(root)
    try:
        # Worked out before anything is written: a nerve.yaml this cannot edit leaves no trace.
        text = config.read_text(encoding="utf-8")
        edited = declare(text, section, name, body, where=str(config))
        _make_dirs(package.parent)
        # The package first: a watching nerved that sees the new entry finds its code there.
        _create(package, _render(template_name, name), done)
        if edited is None:
            done.notes.append(f"{name} is already declared under {section}: in {config}")
        else:
            _replace(config, edited)
            done.declared = True
    except OSError as exc:
        raise CliError(_os_failure(exc, root)) from exc
    return done


def declare(text: str, section: str, name: str, body: Sequence[str], where: str) -> str | None:
    """``text`` with ``name`` declared under the top-level ``section``; None if it already is.

    The entry goes right after the ``section:`` line, indented like the entries already
    there (2 spaces in an empty section); without a ``section:`` line, a new block is
    appended. A section written inline (``senses: {a: {}}``) is refused rather than guessed at.
    """
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if _header(line)[0] == section), None)
    if header is None:
        block = [f"{section}:\n", *_entry(name, body, 2)]
        separator = "" if not text or text.endswith("\n") else "\n"
        gap = "\n" if text.strip() else ""
        return text + separator + gap + "".join(block)
    _, value, comment = _header(lines[header])
    if value not in _EMPTY_VALUES:
        raise CliError(
            f"{where}:{header + 1}: {section}: is written inline; "
            f"add {name} to it by hand, or write it as a block"
        )
    newline = "\r\n" if lines[header].endswith("\r\n") else "\n"
    if value or not lines[header].endswith("\n"):  # an empty inline value, or the file's end
        lines[header] = f"{section}:" + (f"  {comment}" if comment else "") + newline
    indent: int | None = None
    for line in lines[header + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():
            break  # the next top-level key: the section's entries are behind us
        depth = len(line) - len(line.lstrip(" "))
        indent = depth if indent is None else indent
        if depth == indent and _key(stripped) == name:
            return None
    lines[header + 1 : header + 1] = _entry(name, body, indent or 2, newline)
    return "".join(lines)


def _header(line: str) -> tuple[str, str, str]:
    """(key, inline value, comment) of a top-level ``key:`` line; key "" for any other line."""
    match = _HEADER_RE.fullmatch(line.rstrip("\r\n"))
    if match is None:
        return "", "", ""
    return match["key"], match["value"], match["comment"] or ""


def _key(stripped: str) -> str | None:
    match = _KEY_RE.match(stripped)
    if match is None:
        return None
    key = match["dq"] if match["dq"] is not None else match["sq"] or match["plain"]
    return None if key is None else key.strip()


def _entry(name: str, body: Sequence[str], indent: int, newline: str = "\n") -> list[str]:
    pad = " " * indent
    return [f"{pad}{name}:{newline}", *(f"{pad}  {line}{newline}" for line in body)]


def _os_failure(exc: OSError, root: Path) -> str:
    return f"cannot write {exc.filename or root}: {exc.strerror or exc}"


# -- files ------------------------------------------------------------------------------------


def _render(template_name: str, name: str) -> str:
    return template(template_name).replace("__NAME__", name)


def _create(path: Path, text: str, done: Scaffolded) -> None:
    """Write a new file whole; if something appeared at ``path`` meanwhile, it is kept."""
    tmp = _write_temp(path, text, 0o644)
    try:
        os.link(tmp, path)  # unlike rename, never replaces what is there
    except FileExistsError:
        raise CliError(f"{path} already exists; not overwriting it", FAILED) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # A filesystem without hard links: checked, then renamed, which leaves a window.
        if path.exists():
            raise CliError(f"{path} already exists; not overwriting it", FAILED) from None
        os.rename(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    done.created.append(path)


def _replace(path: Path, text: str) -> None:
    """Swap in a new nerve.yaml whole, keeping its mode, and following a symlink to it."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777
    tmp = _write_temp(target, text, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_temp(path: Path, text: str, mode: int) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


# -- the command ------------------------------------------------------------------------------


def init(ctx: Context) -> int:
    words: list[str] = ctx.args.target
    option: str | None = ctx.args.root
    if len(words) == 2 and words[0] in ("sense", "workflow"):
        kind, name = words
        root = resolve_root(option)
        done = init_sense(root, name) if kind == "sense" else init_workflow(root, name)
        hint = (
            f"try it: nervectl sense trigger {name}"
            if kind == "sense"
            else f"try it: nervectl workflow trigger {name} --wait"
        )
        hint += " (a running nerved picks the change up by itself)"
    elif len(words) == 1 and words[0] in ("sense", "workflow"):
        raise CliError(f"init {words[0]} needs a NAME: nervectl init {words[0]} NAME", USAGE)
    elif len(words) <= 1:
        if words and option:
            raise CliError("give the directory once: nervectl init DIR", USAGE)
        root = Path(words[0]) if words else resolve_root(option)
        done = init_root(root)
        hint = f"check it: nerved check --root {root}; run it: nerved --root {root}"
    else:
        raise CliError(f"unexpected arguments: {' '.join(words)} (see nervectl init --help)", USAGE)
    if ctx.json:
        ctx.print_json(
            {
                "root": str(done.root),
                "created": [str(path) for path in done.created],
                "declared": done.declared,
                "notes": done.notes,
            }
        )
        return OK
    for path in done.created:
        ctx.print(f"created {path}")
    if done.declared and words[:1] in (["sense"], ["workflow"]):
        ctx.print(f"declared {words[0]} {words[1]} in {done.root / CONFIG}")
    for note in done.notes:
        ctx.print(note)
    ctx.print(hint)
    return OK


def _make_dirs(path: Path) -> None:
    """nerved's own (exact modes whatever the umask), imported when a scaffold is written:
    not for every nervectl command."""
    from nerved.modes import make_dirs

    make_dirs(path)
