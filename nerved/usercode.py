"""Importing user packages (``senses/<name>``, ``workflows/<name>``) inside a worker.

Only ever called after fork: the master never imports user code, so a package that hangs,
crashes or leaks at import time can only hurt its own worker. Each package gets a private
module name, so two senses may both have a ``helpers.py`` and relative imports work.

The master does read the packages' files, to tell at a reload which ones changed
(:func:`fingerprint`), and it does so in its only thread: a package is read within bounds
(:data:`MAX_PACKAGE_FILES`, :data:`MAX_PACKAGE_BYTES`), without following symlinks and
without opening anything but regular files, so that no file a package holds can stall it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final, cast

from nerved.api import ComputeFn, WorkflowDefinition
from nerved.channel import Channel
from nerved.wire import KiB, MiB, size_text

MAX_PACKAGE_FILES: Final = 10_000
"""Entries (files, directories, symlinks) of one package the master lists at a reload."""

MAX_PACKAGE_BYTES: Final = 256 * MiB
"""Bytes of one package's files the master hashes at a reload (about 0.2 s of SHA-256 here)."""

_CHUNK: Final = 256 * KiB


class UserCodeError(Exception):
    """A package did not import, or does not export what nerve needs from it."""


class PackageTooLarge(UserCodeError):
    """A package holds more than the master reads at a reload: it is refused, not truncated."""

    def __init__(self, what: str) -> None:
        limits = f"{MAX_PACKAGE_FILES:,} files and {size_text(MAX_PACKAGE_BYTES)}"
        super().__init__(f"package too large: {what} (a package may hold at most {limits})")


_TOO_MANY_FILES: Final = f"more than {MAX_PACKAGE_FILES:,} files"
_TOO_MANY_BYTES: Final = f"more than {size_text(MAX_PACKAGE_BYTES)} in its files"


def module_name(kind: str, name: str) -> str:
    return f"nerve_user.{kind}.{re.sub(r'[^0-9A-Za-z_]', '_', name)}"


def _ensure_parents(qualified: str) -> None:
    parts = qualified.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            module = ModuleType(parent)
            module.__path__ = []
            sys.modules[parent] = module


def import_package(root: Path, kind: str, name: str) -> ModuleType:
    """Import ``root/kind/name/__init__.py``; any failure becomes one readable UserCodeError."""
    directory = root / kind / name
    init = directory / "__init__.py"
    if not init.is_file():
        raise UserCodeError(f"{init} does not exist")
    qualified = module_name(kind, name)
    _ensure_parents(qualified)
    spec = importlib.util.spec_from_file_location(
        qualified, init, submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise UserCodeError(f"cannot load {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(qualified, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError(f"{kind}/{name} failed to import: {describe(exc)}") from exc
    return module


def describe(exc: BaseException) -> str:
    """``ValueError: bad thing (at senses/x/__init__.py:12)``: one line an operator can act on."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if "/nerved/" not in frame.filename.replace("\\", "/"):
            return f"{text} (at {frame.filename}:{frame.lineno})"
    return text


def _skipped(entry: os.DirEntry[str]) -> bool:
    """Compiled code, editors' droppings and hidden directories (``.git``): never the code."""
    name = entry.name
    if entry.is_dir(follow_symlinks=False):
        return name == "__pycache__" or name.startswith(".")
    return name.endswith((".pyc", ".swp", "~"))


def package_files(directory: Path) -> list[tuple[str, str]]:
    """What a package is made of, by relative path: ``[(path, kind), ...]``, sorted.

    ``kind`` is ``"file"`` for a regular file, ``"-> target"`` for a symlink (never followed:
    not out of the package, not round a loop) and ``"unreadable"`` for a directory that cannot
    be listed; FIFOs, sockets and devices are left out. The package directory itself may be a
    symlink; a missing one has no files. Raises PackageTooLarge past MAX_PACKAGE_FILES
    entries, or past MAX_PACKAGE_BYTES in regular files (by their size, nothing is read).
    """
    found: list[tuple[str, str]] = []
    entries = total = 0
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            with os.scandir(directory / prefix) as listing:
                for entry in listing:
                    entries += 1
                    if entries > MAX_PACKAGE_FILES:
                        raise PackageTooLarge(_TOO_MANY_FILES)
                    if _skipped(entry):
                        continue
                    relative = prefix + entry.name
                    if entry.is_symlink():
                        found.append((relative, "-> " + os.readlink(entry.path)))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(relative + "/")
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                        if total > MAX_PACKAGE_BYTES:
                            raise PackageTooLarge(_TOO_MANY_BYTES)
                        found.append((relative, "file"))
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone meanwhile, or no package at all: check_packages says so
        except OSError:
            found.append((prefix, "unreadable"))
    return sorted(found)


def fingerprint(directory: Path) -> str:
    """A digest of a package's files, so a reload can tell whether its code changed.

    Runs in the master: files are hashed in chunks and at most MAX_PACKAGE_BYTES in all, and
    only regular files are opened (non-blocking, not through a symlink). A package past the
    bounds, which check_packages refuses, gets a fingerprint that says so instead of a digest.
    """
    digest = hashlib.sha256()
    budget = MAX_PACKAGE_BYTES
    try:
        for relative, kind in package_files(directory):
            if kind == "file":
                kind, size = _hash_file(directory / relative, budget)
                budget -= size
            digest.update(f"{relative}\0{kind}\n".encode(errors="surrogateescape"))
    except PackageTooLarge as exc:
        return f"refused: {exc}"
    return digest.hexdigest()


def _hash_file(path: Path, budget: int) -> tuple[str, int]:
    """``(sha256 hex, bytes read)`` of a regular file; ``("unreadable", 0)`` if it is not one.

    Raises PackageTooLarge when the file holds more than ``budget`` bytes (it grew since it
    was listed).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return "unreadable", 0
    digest = hashlib.sha256()
    read = 0
    buffer = memoryview(bytearray(_CHUNK))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "unreadable", 0
        while count := os.readv(fd, [buffer]):
            read += count
            if read > budget:
                raise PackageTooLarge(_TOO_MANY_BYTES)
            digest.update(buffer[:count])
    except OSError:
        return "unreadable", 0
    finally:
        os.close(fd)
    return digest.hexdigest(), read


def load_sense(root: Path, name: str) -> ComputeFn:
    module = import_package(root, "senses", name)
    compute = getattr(module, "compute", None)
    if not callable(compute):
        raise UserCodeError(f"senses/{name} defines no compute(ctx) function")
    return cast(ComputeFn, compute)


def load_workflow(root: Path, name: str) -> WorkflowDefinition:
    module = import_package(root, "workflows", name)
    definition = getattr(module, "workflow", None)
    if not isinstance(definition, WorkflowDefinition):
        raise UserCodeError(
            f"workflows/{name} must define `workflow = WorkflowDefinition(roles=..., moderate=...)`"
        )
    return definition


def probe(root: Path, senses: Iterable[str], workflows: Iterable[str]) -> list[str]:
    """Import each package as its worker would; one message per package that fails."""
    errors: list[str] = []
    for name in senses:
        try:
            load_sense(root, name)
        except UserCodeError as exc:
            errors.append(str(exc))
    for name in workflows:
        try:
            load_workflow(root, name)
        except UserCodeError as exc:
            errors.append(str(exc))
    return errors


def probe_child(
    root: Path, senses: Iterable[str], workflows: Iterable[str], timeout: float
) -> Callable[[socket.socket], int]:
    """The main of a throwaway child that probes packages and answers ``{"t": "probed"}``.

    ``nerved check`` and the reloader both fork one, so that user code never runs in the
    process that asked.
    """
    senses, workflows = list(senses), list(workflows)

    def child_main(sock: socket.socket) -> int:
        channel = Channel(sock)
        channel.send({"t": "probed", "errors": probe(root, senses, workflows)})
        channel.flush_blocking(timeout)
        return 0

    return child_main


@dataclass(frozen=True, slots=True)
class CodeSnapshot:
    """The fingerprints of every configured package at one moment, taken once per reload."""

    senses: Mapping[str, str]
    workflows: Mapping[str, str]

    @classmethod
    def take(cls, root: Path, senses: Iterable[str], workflows: Iterable[str]) -> CodeSnapshot:
        return cls(
            {name: fingerprint(root / "senses" / name) for name in senses},
            {name: fingerprint(root / "workflows" / name) for name in workflows},
        )

    def of_senses(self, names: Iterable[str]) -> str:
        """One digest for a group: its members and their code."""
        return "|".join(f"{name}:{self.senses[name]}" for name in names)

    def changed_since(self, old: CodeSnapshot) -> tuple[list[str], list[str]]:
        """Packages that are new or differ from ``old``: (senses, workflows)."""
        return (
            [n for n, d in self.senses.items() if old.senses.get(n) != d],
            [n for n, d in self.workflows.items() if old.workflows.get(n) != d],
        )
