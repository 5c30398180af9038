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
child that imports one as its workers would (:func:`probe_child`). Its parts, one job each:
reading a package from disk (:mod:`nerved.code.reading`) and importing it from its snapshot
in a worker (:mod:`nerved.code.importing`). Their public names are also importable from here.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nerved import wire
from nerved.channel import Channel
from nerved.code.importing import (
    describe,
    import_package,
    load,
    load_sense,
    load_workflow,
    module_name,
    user_frame,
)
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
    "user_frame",
]

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
        channel = Channel(sock)
        errors: list[str] = []
        try:
            for package in packages:
                channel.send({"t": "importing", "package": package.label})
                channel.flush_blocking(timeout)
                try:
                    load(package)
                except UserCodeError as exc:
                    errors.append(wire.text(str(exc)))  # megabytes of message are cut, not lost
            channel.send({"t": "probed", "errors": errors})
            channel.flush_blocking(timeout)
        except OSError as exc:  # the package's code closed or broke the channel
            print(f"the import check cannot answer: {exc}", file=sys.stderr)
            return EXIT_NO_ANSWER
        return 0

    return child_main


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
        workflows: Iterable[str],
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> CodeSnapshot:
        """Read every package at once: they share one budget of content to read.

        ``groups`` maps each sense group to its senses in order (default: one per sense).
        """
        senses, workflows = list(senses), list(workflows)
        places = [("senses", name, root / "senses" / name) for name in senses]
        places += [("workflows", name, root / "workflows" / name) for name in workflows]
        packages = read_packages(places)
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
        a member's code changed, or the group's members did."""
        theirs = old.units()
        return [
            unit
            for label, unit in self.units().items()
            if [(p.name, p.digest) for p in theirs.get(label, ())]
            != [(p.name, p.digest) for p in unit]
        ]
