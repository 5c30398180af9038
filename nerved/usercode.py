"""Importing user packages (``senses/<name>``, ``workflows/<name>``) inside a worker.

Only ever called after fork: the master never imports user code, so a package that hangs,
crashes or leaks at import time can only hurt its own worker. Each package gets a private
module name, so two senses may both have a ``helpers.py`` and relative imports work.

The master does read the packages' files, to tell at a reload which ones changed
(:func:`fingerprints`), and it does so in its only thread: a package is listed within bounds
(:data:`MAX_PACKAGE_FILES`, :data:`MAX_PACKAGE_BYTES`), and a snapshot of all packages reads
at most :data:`CONTENT_BUDGET` bytes of content, without following symlinks and without
opening anything but regular files, so that no file a package holds can stall it.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
"""Bytes in one package's regular files (by their sizes: a package is listed, not read)."""

SMALL_FILE: Final = 1 * MiB
"""A regular file up to this size is fingerprinted by its content, while the budget lasts."""

CONTENT_BUDGET: Final = 64 * MiB
"""Bytes of content one snapshot of all packages reads at most (about 0.2 s of SHA-256 here).

Reading every package whole took the master's only thread 0.7 s per 250 MiB package, at
start and at every reload: forty such packages held `status` for 8 s and the start for 28 s,
near systemd's 30 s watchdog.
"""

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


@dataclass(frozen=True, slots=True)
class _Entry:
    """One entry of a package as listed: what :func:`package_files` says of it, and for a
    regular file the metadata it is fingerprinted by when its content is not read."""

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0


def package_files(directory: Path) -> list[tuple[str, str]]:
    """What a package is made of, by relative path: ``[(path, kind), ...]``, sorted.

    ``kind`` is ``"file"`` for a regular file, ``"-> target"`` for a symlink (never followed:
    not out of the package, not round a loop) and ``"unreadable"`` for a directory that cannot
    be listed; FIFOs, sockets and devices are left out. The package directory itself may be a
    symlink; a missing one has no files. Raises PackageTooLarge past MAX_PACKAGE_FILES
    entries, or past MAX_PACKAGE_BYTES in regular files (by their size, nothing is read).
    """
    return [(entry.path, entry.kind) for entry in _list(directory)]


def _list(directory: Path) -> list[_Entry]:
    """:func:`package_files` with each regular file's size, mtime and mode (from the
    listing's own ``lstat``: nothing is opened)."""
    found: list[_Entry] = []
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
                        found.append(_Entry(relative, "-> " + os.readlink(entry.path)))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(relative + "/")
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        total += info.st_size
                        if total > MAX_PACKAGE_BYTES:
                            raise PackageTooLarge(_TOO_MANY_BYTES)
                        found.append(
                            _Entry(relative, "file", info.st_size, info.st_mtime_ns, info.st_mode)
                        )
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone meanwhile, or no package at all: check_packages says so
        except OSError:
            found.append(_Entry(prefix, "unreadable"))
    return sorted(found, key=lambda entry: entry.path)


def fingerprint(directory: Path) -> str:
    """The fingerprint of one package, as :func:`fingerprints` gives it."""
    return fingerprints([directory])[0]


def fingerprints(directories: Sequence[Path], budget: int = CONTENT_BUDGET) -> list[str]:
    """A digest of each package's files, so that a reload can tell whether its code changed.

    Runs in the master's only thread, at start and at every reload, so its work is bounded
    whatever the packages hold: every package is listed (MAX_PACKAGE_FILES entries at most),
    and at most ``budget`` bytes of content are read over all of them. Each regular file
    counts by its relative path and either

    - its content (SHA-256), if it holds at most SMALL_FILE bytes and the budget lasts; files
      are taken ``.py`` first, then by package path and relative path, so that the choice is
      the same at every snapshot of the same files; or
    - its size, mtime (ns) and mode: a large data file, or any file once the budget is spent.

    So a small source file is always seen to change, even when an edit keeps its size and
    mtime (``rsync -a`` and ``touch -r`` put mtimes back), and touching it changes nothing.
    A file fingerprinted by metadata (past 1 MiB, or past the budget: more than 64 MiB of
    small files in all) can be rewritten unnoticed only if its size and mtime (ns) are kept,
    for as long as they are: the next change of either is seen. A file that moves from one
    kind to the other (the small files grew past the budget, or shrank back) changes its
    package's fingerprint: a change seen where there was none (its worker restarts), never
    one missed.

    A package past the bounds, which check_packages refuses, gets a fingerprint that says so
    instead of a digest. Only regular files are opened (non-blocking, not through a symlink).
    """
    listings: list[list[_Entry] | str] = []
    for directory in directories:
        try:
            listings.append(_list(directory))
        except PackageTooLarge as exc:
            listings.append(f"refused: {exc}")
    small = sorted(
        (not entry.path.endswith(".py"), str(directory), entry.path, entry.size)
        for directory, listing in zip(directories, listings, strict=True)
        if not isinstance(listing, str)
        for entry in listing
        if entry.kind == "file" and entry.size <= SMALL_FILE
    )
    read: set[tuple[str, str]] = set()
    for _, directory_name, path, size in small:
        if size <= budget:
            budget -= size
            read.add((directory_name, path))
    return [
        listing if isinstance(listing, str) else _digest(directory, listing, read)
        for directory, listing in zip(directories, listings, strict=True)
    ]


def _digest(directory: Path, listing: list[_Entry], read: set[tuple[str, str]]) -> str:
    """One package's fingerprint: its files' contents where ``read`` names them, else their
    metadata (see :func:`fingerprints`)."""
    digest = hashlib.sha256()
    for entry in listing:
        kind = entry.kind
        if kind == "file":
            if (str(directory), entry.path) in read:
                kind = "content " + _hash_file(directory / entry.path, entry.size)
            else:
                kind = f"stat {entry.size} {entry.mtime_ns} {entry.mode:o}"
        digest.update(f"{entry.path}\0{kind}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()


def _hash_file(path: Path, size: int) -> str:
    """The SHA-256 (hex) of a regular file listed with ``size`` bytes, or ``"unreadable"``.

    Reads at most ``size + 1`` bytes: a file that grew since it was listed hashes differently
    from the file it was (a change, which the next reload sees whole) and costs no more.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return "unreadable"
    digest = hashlib.sha256()
    left = size + 1
    buffer = memoryview(bytearray(min(_CHUNK, left)))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "unreadable"
        while left and (count := os.readv(fd, [buffer[: min(len(buffer), left)]])):
            left -= count
            digest.update(buffer[:count])
    except OSError:
        return "unreadable"
    finally:
        os.close(fd)
    return digest.hexdigest()


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
        """Fingerprint every package at once: they share one budget of content to read."""
        senses, workflows = list(senses), list(workflows)
        directories = [root / "senses" / name for name in senses]
        directories += [root / "workflows" / name for name in workflows]
        digests = fingerprints(directories)
        return cls(
            dict(zip(senses, digests[: len(senses)], strict=True)),
            dict(zip(workflows, digests[len(senses) :], strict=True)),
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
