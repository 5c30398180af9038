"""User packages (``senses/<name>``, ``workflows/<name>``): the snapshot of the code nerve
accepted, and the import check that accepts it.

Only code that passed the import check ever runs. The master reads each package's Python
source once per snapshot (:meth:`CodeSnapshot.take`, at start and at every reload) and keeps
it: the reload probe imports exactly those bytes, and once the probe accepts them every worker
forked later imports those same bytes from the snapshot it inherits, never from disk. An
edit on disk therefore changes nothing until a reload checks and accepts it; a broken edit is
reported and the running configuration, the code of workers yet to be forked included, stays.
(Data files, and compiled extension modules, are read from disk when used: only Python
source is held.)

The master never imports user code, so a package that hangs, crashes or leaks at import time
can only hurt its own worker. Each package gets a private module name, distinct for distinct
packages (:func:`module_name`), so two senses may both have a ``helpers.py`` and relative
imports work.

The master reads the files in its only thread, so the work is bounded whatever a package
holds: a package is listed within bounds (:data:`MAX_PACKAGE_FILES`,
:data:`MAX_PACKAGE_BYTES`), and a snapshot of all packages reads at most
:data:`CONTENT_BUDGET` bytes of content, without following symlinks out of a package (a
``.py`` symlink to a regular file is read through) and without opening anything but regular
files, so that no file a package holds can stall it.

This module holds the snapshot of every package (:class:`CodeSnapshot`) and the throwaway
child that imports one as its workers would (:func:`probe_child`), which also refuses a role
policy in nerve.yaml for a role the workflow's code does not define: only importing the
code tells its roles, so that is checked where the code is (:func:`undefined_roles`). Its
parts, one job each: reading a package from disk (:mod:`nerved.code.reading`) and importing
it from its snapshot in a worker (:mod:`nerved.code.importing`). Their public names are also
importable from here; the importing ones (and ``nerved.api``) on first use (PEP 562), since
the master never imports code: importlib.abc and importlib.resources bring tempfile, random
and shutil, held again by every worker the master forks, which imports them itself.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nerved import wire
from nerved.channel import Channel
from nerved.code.reading import (
    CONTENT_BUDGET,
    MAX_PACKAGE_BYTES,
    MAX_PACKAGE_FILES,
    SMALL_FILE,
    Package,
    PackageTooLarge,
    UserCodeError,
    fingerprint,
    fingerprints,
    package_files,
    read_packages,
)
from nerved.config.messages import clip
from nerved.config.model import CONFIG_FILE, WorkflowConfig

if TYPE_CHECKING:
    from nerved.code.importing import (
        describe,
        import_package,
        load,
        load_sense,
        load_workflow,
        module_name,
        user_frame,
    )

__all__ = [
    "CONTENT_BUDGET",
    "EXIT_NO_ANSWER",
    "IMPORT_TIMEOUT",
    "MAX_PACKAGE_BYTES",
    "MAX_PACKAGE_FILES",
    "SMALL_FILE",
    "CodeSnapshot",
    "Package",
    "PackageTooLarge",
    "UserCodeError",
    "describe",
    "fingerprint",
    "fingerprints",
    "import_package",
    "load",
    "load_sense",
    "load_workflow",
    "module_name",
    "package_files",
    "probe_child",
    "read_packages",
    "undefined_roles",
    "user_frame",
]
_IMPORTING = ("describe", "import_package", "load", "load_sense", "load_workflow", "module_name",
              "user_frame")  # fmt: skip

if not TYPE_CHECKING:  # hidden from type checkers, which would then take any name as valid
    from nerved._lazy import exports

    __getattr__, __dir__ = exports(globals(), dict.fromkeys(_IMPORTING, "nerved.code.importing"),
                                   __all__)  # fmt: skip

# -- the import check ----------------------------------------------------------------------

IMPORT_TIMEOUT: Final = 20.0
"""Seconds a package's import may take in a worker, and each unit of a reload's import check,
before it is killed and reported as hung (``nerved --import-timeout``, at most 30 s). A
reload's check takes at most twice that (nerved.master.importcheck), so ``nervectl reload``, which
waits 130 s, hears the answer even when its reload was queued behind another one."""


EXIT_NO_ANSWER: Final = 74
"""How an import check's child ends when the package's code took its channel away."""


def probe_child(packages: Sequence[Package], timeout: float) -> Callable[[socket.socket], int]:
    """The main of a throwaway child that imports ``packages`` as their workers would.

    It says ``{"t": "importing", "package": "senses/x"}`` before each import, so that the
    parent can name the package if the child hangs or dies there, and ends with
    ``{"t": "probed", "errors": [...]}``, one message per package that failed. ``nerved
    check`` and the reloader both fork one, so that user code never runs in the process
    that asked.
    """
    packages = list(packages)

    def child_main(sock: socket.socket) -> int:
        from nerved.code.importing import load  # in the child: the master never imports code

        channel = Channel(sock)
        errors: list[str] = []
        try:
            for package in packages:
                channel.send({"t": "importing", "package": package.label})
                channel.flush_blocking(timeout)
                try:
                    loaded = load(package)
                except UserCodeError as exc:
                    errors.append(wire.text(str(exc)))  # megabytes of message are cut, not lost
                else:
                    errors += undefined_roles(package, loaded)
            channel.send({"t": "probed", "errors": errors})
            channel.flush_blocking(timeout)
        except OSError as exc:  # the package's code closed or broke the channel
            print(f"the import check cannot answer: {exc}", file=sys.stderr)
            return EXIT_NO_ANSWER
        return 0

    return child_main


_ROLES_SHOWN: Final = 20
"""Roles a message lists at most: a workflow may define any number."""


def undefined_roles(package: Package, loaded: object) -> list[str]:
    """Each role nerve.yaml sets a policy for (``package.policy_roles``) that the workflow
    ``loaded`` (what :func:`load` returned) does not define, one message each, placed as
    nerve.yaml's own errors are: ``nerve.yaml:12: workflows.w.roles.writr: workflows/w
    defines no role 'writr' (roles: reader, writer)``.

    Runs in the import check's child, after the import: the roles are user code's (a
    mapping of its own may raise), so a failure to list them is one more message.
    """
    from nerved.api import WorkflowDefinition
    from nerved.code.importing import describe

    if not package.policy_roles or not isinstance(loaded, WorkflowDefinition):
        return []
    try:
        defined = sorted(str(role) for role in loaded.roles)
    except Exception as exc:
        return [f"{package.label} cannot list its roles: {describe(exc)}"]
    known = set(defined)
    shown = ", ".join(clip(role) for role in defined[:_ROLES_SHOWN])
    if len(defined) > _ROLES_SHOWN:
        shown += f", ... ({len(defined)} in all)"
    return [
        f"{CONFIG_FILE}:{line}: workflows.{package.name}.roles.{role}: "
        f"{package.label} defines no role {role!r} (roles: {shown})"
        for role, line in package.policy_roles
        if role not in known
    ]


@dataclass(frozen=True, slots=True)
class CodeSnapshot:
    """Every configured package at one moment, read once per reload: fingerprints and source,
    and which worker imports which (``groups``: sense group -> its senses, in order)."""

    senses: Mapping[str, Package]
    workflows: Mapping[str, Package]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def take(
        cls,
        root: Path,
        senses: Iterable[str],
        workflows: Iterable[str] | Mapping[str, WorkflowConfig],
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> CodeSnapshot:
        """Read every package at once: they share one budget of content to read.

        ``groups`` maps each sense group to its senses in order (default: one per sense).
        ``workflows`` as configured (a configuration's ``workflows``) gives each workflow's
        package the roles its policies name, which the import check holds it to
        (:func:`undefined_roles`); as names only, none.
        """
        roles: dict[str, tuple[tuple[str, int], ...]] = {}
        if isinstance(workflows, Mapping):
            roles = {
                name: tuple((role, policy.line) for role, policy in flow.roles.items())
                for name, flow in workflows.items()
            }
        senses, workflows = list(senses), list(workflows)
        places = [("senses", name, root / "senses" / name) for name in senses]
        places += [("workflows", name, root / "workflows" / name) for name in workflows]
        packages = [
            dataclasses.replace(p, policy_roles=roles[p.name])
            if p.kind == "workflows" and roles.get(p.name)
            else p
            for p in read_packages(places)
        ]
        if groups is None:
            groups = {name: (name,) for name in senses}
        return cls(
            {p.name: p for p in packages if p.kind == "senses"},
            {p.name: p for p in packages if p.kind == "workflows"},
            {group: tuple(members) for group, members in groups.items()},
        )

    def refusals(self) -> list[str]:
        """Why packages cannot be used (too large), one line each."""
        return [
            f"{package.label}: {package.refused}"
            for package in [*self.senses.values(), *self.workflows.values()]
            if package.refused is not None
        ]

    def of_senses(self, names: Iterable[str]) -> str:
        """One digest for a group: its members and their code."""
        return "|".join(f"{name}:{self.senses[name].digest}" for name in names)

    def units(self) -> dict[str, tuple[Package, ...]]:
        """What each worker imports, by worker: ``{"sense group g": (a, b), "workflow w":
        (w,)}``. The import check imports each unit in a process of its own, as its worker
        would, so that no package's import-time side effects (a ``sys.path`` entry, a
        monkeypatch) help or hinder another's."""
        units = {
            f"sense group {group}": tuple(self.senses[name] for name in members)
            for group, members in self.groups.items()
        }
        units.update({f"workflow {name}": (package,) for name, package in self.workflows.items()})
        return units

    def changed_since(self, old: CodeSnapshot) -> list[tuple[Package, ...]]:
        """The units (see :meth:`units`) that are new or import other code than in ``old``:
        a member's code changed, or the group's members did; or whose import check holds
        them to other roles than in ``old``: a workflow's policies in nerve.yaml name other
        roles (their lines, and what they set, are no change). The daemon's pacing of
        automatic reloads counts such a unit as changed code too."""
        theirs = old.units()
        return [
            unit
            for label, unit in self.units().items()
            if [_checked(p) for p in theirs.get(label, ())] != [_checked(p) for p in unit]
        ]


def _checked(package: Package) -> tuple[str, str, list[str]]:
    """What the import check of ``package`` depends on: its code, and the roles it must define."""
    return package.name, package.digest, sorted(role for role, _ in package.policy_roles)
