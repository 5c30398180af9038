#!/usr/bin/env python3
"""Build what ships beside the programs: man pages and shell completions.

    python3 packaging/build_docs.py OUTDIR

writes ``OUTDIR/man/nerved.8``, ``nervectl.1``, ``nerve.yaml.5`` from the reStructuredText
sources in ``docs/man/`` (docutils' man page writer, what ``rst2man`` runs), and
``OUTDIR/completions/nervectl`` (bash) and ``_nervectl`` (zsh) from nervectl's own argument
parser (shtab). ``make man`` runs it into build/ for a checkout; debian/rules runs it with
Debian's python3-docutils and shtab from PyPI (Debian 12's is too old, see below) when the
package is built.

Why generated, and here: a man page written by hand in roff, or a completion script kept
beside the parser, drifts from what it describes; a completion generated from
``nervectl.cli.build_parser()`` cannot offer a command that does not exist or miss one that
does, and the man pages have one source each that tests hold to the parser, the schema and
the control methods (tests/test_docs.py). Neither docutils nor shtab is needed at run time:
both are build dependencies only.

A docutils warning is an error here (``halt_level``): a man page that renders with a
warning has lost some markup, and nobody reads build logs.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
SOURCES = TOP / "docs" / "man"
# docutils reports: 1 info, 2 warning, 3 error. Stop at a warning, and print from warnings.
WARNING = 2


def version() -> str:
    with open(TOP / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def man_pages(out: Path) -> list[Path]:
    """Each ``docs/man/NAME.SECTION.rst`` as ``out/NAME.SECTION``, the version filled in."""
    from docutils.core import publish_string

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for source in sorted(SOURCES.glob("*.rst")):
        text = source.read_text(encoding="utf-8").replace("@VERSION@", version())
        page = publish_string(
            text,
            source_path=str(source),
            writer_name="manpage",
            settings_overrides={
                "halt_level": WARNING,
                "report_level": WARNING,
                "input_encoding": "unicode",
                "output_encoding": "utf-8",
                "exit_status_level": WARNING,
            },
        )
        target = out / source.stem  # nerved.8.rst -> nerved.8
        target.write_bytes(page if isinstance(page, bytes) else page.encode())
        made.append(target)
    return made


# shtab 1.5.5 (Debian 12's python3-shtab) completes only the first of several subcommands
# (shtab issue 86: `nervectl workflow tr<TAB>` offers nothing); 1.6 and later are right.
SHTAB_AT_LEAST = (1, 6)


def completions(out: Path) -> list[Path]:
    """bash's and zsh's completion of nervectl, from the parser nervectl runs."""
    import shtab

    found = tuple(int(part) for part in shtab.__version__.split(".")[:2])
    if found < SHTAB_AT_LEAST:
        raise SystemExit(
            f"build_docs.py: shtab {shtab.__version__} completes only the first subcommand; "
            "install shtab>=1.6 (pip)"
        )

    sys.path.insert(0, str(TOP))
    from nervectl.arguments import COMPLETION_PREAMBLE
    from nervectl.cli import build_parser

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for shell, name in (("bash", "nervectl"), ("zsh", "_nervectl")):
        target = out / name
        script = shtab.complete(
            build_parser(), shell=shell, preamble=COMPLETION_PREAMBLE.get(shell, "")
        )
        target.write_text(script, encoding="utf-8")
        made.append(target)
    return made


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: build_docs.py OUTDIR", file=sys.stderr)
        return 2
    from docutils.utils import SystemMessage

    out = Path(argv[0])
    try:
        made = man_pages(out / "man")
    except SystemMessage as exc:  # already printed by docutils' reporter, with its line
        print(f"build_docs.py: {exc}", file=sys.stderr)
        return 1
    for path in (*made, *completions(out / "completions")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
