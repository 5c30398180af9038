"""The packages nerve.yaml names: present, small enough, in strict modes (check_packages)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nerved import modes
from nerved.code.reading import PackageTooLarge, package_files
from nerved.config.model import CONFIG_FILE, NerveConfig


def check_packages(root: Path, config: NerveConfig) -> list[str]:
    """Problems with the packages the configuration names, without importing them.

    Kept apart from parsing because importing user code runs it, which only workers may do;
    this lets the daemon and ``nerved check`` refuse a configuration whose code is missing,
    or too large for the master to fingerprint at every reload (see
    ``nerved.code.packages.package_files``).

    Then strict modes (nerved.modes): the root, nerve.yaml and every named package must be
    writable by nobody but root and the daemon's user. Every caller (the start, each reload,
    ``nerved check``) comes through here, by nerved.config.root's ``load_root``, before it
    imports anything, so this is where it is checked; under ``--no-strict-modes`` the
    violations are logged as warnings instead.
    """
    filename = config.path.name
    errors: list[str] = []
    wanted = [("senses", sense.name, sense.line) for sense in config.senses.values()]
    wanted += [("workflows", flow.name, flow.line) for flow in config.workflows.values()]
    for section, name, line in wanted:
        problem = _package_problem(root, section, name)
        if problem is not None:
            errors.append(f"{filename}:{line}: {section}.{name}: {problem}")
    packages = [root / section / name for section, name, _line in wanted]
    return errors + modes.enforce(modes.root_violations(root, root / CONFIG_FILE, packages))


def _package_problem(root: Path, section: str, name: str) -> str | None:
    relative = f"{section}/{name}/__init__.py"
    try:
        mode = os.stat(root / relative).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"no package: {relative} is missing in {root}"
    except OSError as exc:
        return f"cannot check {root / relative}: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return f"no package: {root / relative} is not a regular file"
    try:
        package_files(root / section / name)
    except PackageTooLarge as exc:
        return str(exc)
    return None
