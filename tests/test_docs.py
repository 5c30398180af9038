"""The documentation that ships is whole: every key, method, command and option is in it.

The man pages and the shell completions are built as the package builds them
(packaging/build_docs.py: docutils, shtab), with no warning; the completions come from
nervectl's parser, and bash, driven as on a TAB, completes from them. The references in
docs/ and the man pages are held to what the code accepts: every key the nerve.yaml schema
knows, every control method in ``nerved.control.commands.COMMANDS``, every error code of
``nerved.control.rpc``, every command and option of nervectl's and nerved's parsers. A key,
a method or an option added without its documentation fails here, naming it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from completion import bash_completes
from support import REPO

from nervectl.cli import build_parser
from nerved.config import metrics, policies, schema
from nerved.control import rpc
from nerved.control.commands import COMMANDS

DOCS = REPO / "docs"
MAN = DOCS / "man"
BUILD = REPO / "packaging" / "build_docs.py"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    done = subprocess.run(
        [sys.executable, str(BUILD), str(out)], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return out


# -- man pages -------------------------------------------------------------------------------


def test_man_pages_build_without_warnings(built: Path) -> None:
    pages = sorted(p.name for p in (built / "man").iterdir())
    assert pages == ["nerve.yaml.5", "nervectl.1", "nerved.8"]
    for page in pages:
        text = (built / "man" / page).read_text()
        name, section = page.rsplit(".", 1)
        assert re.search(rf'^\.TH "?{re.escape(name)}"? "?{section}"?', text, re.I | re.M), page
        assert "@VERSION@" not in text


@pytest.mark.skipif(shutil.which("man") is None, reason="no man(1) here")
def test_man_pages_render(built: Path) -> None:
    for page in (built / "man").iterdir():
        done = subprocess.run(
            ["man", "--warnings", "-l", str(page)],
            capture_output=True, text=True, timeout=60, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "SYNOPSIS" in done.stdout and "SEE ALSO" in done.stdout, page.name
        assert done.stderr == "", f"{page.name}: {done.stderr}"


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with its command path: (), ("status",), ("workflow", "list")..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*path, name))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
    }


def test_nervectl_page_names_every_command_and_option() -> None:
    page = (MAN / "nervectl.1.rst").read_text()
    missing = []
    for path, parser in _leaves(build_parser()):
        if path and not re.search(r"^" + re.escape(" ".join(path)) + r"\b", page, re.M):
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {o}" for o in _options(parser) if o not in page]
    assert missing == [], f"docs/man/nervectl.1.rst does not describe: {missing}"


def test_nerved_page_names_every_option_and_command() -> None:
    from nerved.cli import _parser

    page = (MAN / "nerved.8.rst").read_text()
    parser = _parser()
    missing = [o for o in _options(parser) if o not in page]
    for action in parser._actions:
        missing += [f"command {c}" for c in action.choices or () if f"**{c}**" not in page]
    assert missing == [], f"docs/man/nerved.8.rst does not describe: {missing}"


# -- completions -----------------------------------------------------------------------------


def test_completions_name_every_command_and_option(built: Path) -> None:
    for script in ("nervectl", "_nervectl"):
        text = (built / "completions" / script).read_text()
        for path, parser in _leaves(build_parser()):
            for word in (*path, *_options(parser)):
                assert word in text, f"{script} lacks {word!r} (of {' '.join(path) or 'nervectl'})"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_completes_from_the_parser(built: Path) -> None:
    def complete(script: Path, line: str) -> list[str]:
        return bash_completes(f". {shlex.quote(str(script))}", line)

    script = built / "completions" / "nervectl"
    assert complete(script, "nervectl workflow tr") == ["trigger"]
    assert set(complete(script, "nervectl wor")) == {"workflow"}
    assert {"status", "sense", "workflow", "logs", "reload", "init"} <= set(
        complete(script, "nervectl ")
    )
    assert "--from-step" in complete(script, "nervectl workflow retry --fr")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_completes_words_and_directories_where_they_go(built: Path, tmp_path: Path) -> None:
    """``logs --source`` its two sources; ``init`` sense, workflow or a directory; ``--root``
    a directory (arguments.completes: shtab reads .complete when it builds)."""
    script = f"cd {tmp_path} && . {shlex.quote(str(built / 'completions' / 'nervectl'))}"
    (tmp_path / "root-dir").mkdir()
    (tmp_path / "root-file").write_text("")
    assert bash_completes(script, "nervectl logs --source ") == ["sense", "workflow"]
    assert bash_completes(script, "nervectl logs --source w") == ["workflow"]
    assert bash_completes(script, "nervectl init s") == ["sense"]
    assert bash_completes(script, "nervectl init r") == ["root-dir"]
    assert bash_completes(script, f"nervectl init {tmp_path}/ro") == [f"{tmp_path}/root-dir"]
    line = f"nervectl init sense x --root {tmp_path}/ro"
    assert bash_completes(script, line) == [f"{tmp_path}/root-dir"]


# -- the references in docs/ -----------------------------------------------------------------


def _sections(markdown: str) -> dict[str, str]:
    """The text under each ``## heading``, by heading."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


# Each tuple of keys the schema accepts, by the section of docs/configuration.md and the
# heading of nerve.yaml(5) that describe it. A tuple not listed here fails the test below.
KEY_SECTIONS = {
    "_TOP_KEYS": ("The file", "DESCRIPTION"),
    "_SENSE_KEYS": ("senses", "SENSES"),
    "_CRON_KEYS": ("reflexes", "REFLEXES"),
    "_SENSE_REFLEX_KEYS": ("reflexes", "REFLEXES"),
    "_WORKFLOW_REFLEX_KEYS": ("reflexes", "REFLEXES"),
    "_WORKFLOW_KEYS": ("workflows", "WORKFLOWS"),
    "_ROLE_KEYS": ("workflows.<w>.roles", "ROLES"),
    "_RETRY_KEYS": ("workflows.<w>.roles", "ROLES"),
    "_RETENTION_KEYS": ("retention", "RETENTION"),
    "_RUNS_KEYS": ("retention", "RETENTION"),
    "_SIGNALS_KEYS": ("retention", "RETENTION"),
    "_CONTROL_KEYS": ("control", "CONTROL"),
    "_METRICS_KEYS": ("metrics", "METRICS"),
}


def _schema_keys() -> dict[str, tuple[str, ...]]:
    found = {}
    for module in (schema, policies, metrics):
        for name, value in vars(module).items():
            if re.fullmatch(r"_[A-Z_]+_KEYS", name) and isinstance(value, tuple):
                found[name] = value
    return found


def _man_sections(rst: str) -> dict[str, str]:
    parts = re.split(r"^([A-Z][A-Z ]+)\n=+\n", rst, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_configuration_reference_has_every_key() -> None:
    keys = _schema_keys()
    assert set(keys) == set(KEY_SECTIONS), "a new tuple of keys: say where it is documented"
    reference = _sections((DOCS / "configuration.md").read_text())
    page = _man_sections((MAN / "nerve.yaml.5.rst").read_text())
    missing = []
    for name, keys_of in keys.items():
        section, heading = KEY_SECTIONS[name]
        for key in keys_of:
            if not re.search(rf"^\| `{key}` \|", reference.get(section, ""), re.M):
                missing.append(f"configuration.md ## {section}: {key}")
            if not re.search(rf"^ *{key}\b", page.get(heading, ""), re.M) and (
                f"``{key}:``" not in page.get(heading, "")
            ):
                missing.append(f"nerve.yaml.5 {heading}: {key}")
    assert missing == []


def test_protocol_reference_has_every_method_param_and_code() -> None:
    reference = _sections((DOCS / "protocol.md").read_text())
    missing = []
    for name, command in COMMANDS.items():
        section = reference.get(f"`{name}`")
        if section is None:
            missing.append(f"method {name}")
            continue
        missing += [f"{name} param {p}" for p in command.params if f"`{p}" not in section]
    codes = reference.get("Errors", "")
    for name, value in vars(rpc).items():
        is_code = name.isupper() and isinstance(value, int) and -32768 <= value <= -32000
        if is_code and f"`{value}`" not in codes:
            missing.append(f"error {value} ({name})")
    assert missing == []


def _anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_links_between_the_docs_lead_somewhere() -> None:
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    anchors = {
        page.resolve(): {_anchor(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}
        for page in pages
    }
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page.resolve()
            if not dest.exists() or (anchor and anchor not in anchors.get(dest, set())):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_unit_gives_a_reload_longer_than_nervectl_waits_for_it() -> None:
    """systemd applies TimeoutStartSec= to ExecReload= (nervectl reload): above nervectl's
    own bound, a reload that takes too long ends with nervectl saying so, not a SIGTERM."""
    from nervectl.commands import RELOAD_TIMEOUT

    unit = (REPO / "systemd" / "nerved.service").read_text()
    [seconds] = re.findall(r"^TimeoutStartSec=(\d+)s$", unit, re.M)
    assert int(seconds) > RELOAD_TIMEOUT
    assert f"`TimeoutStartSec={seconds}s`" in (DOCS / "guide.md").read_text()
