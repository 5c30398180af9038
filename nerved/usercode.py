"""Importing user packages (``senses/<name>``, ``workflows/<name>``) inside a worker.

Only ever called after fork: the master never imports user code, so a package that hangs,
crashes or leaks at import time can only hurt its own worker. Each package gets a private
module name, so two senses may both have a ``helpers.py`` and relative imports work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

from nerved.api import ComputeFn, WorkflowDefinition
from nerved.channel import Channel


class UserCodeError(Exception):
    """A package did not import, or does not export what nerve needs from it."""


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


def fingerprint(directory: Path) -> str:
    """A digest of a package's files, so a reload can tell whether its code changed."""
    digest = hashlib.sha256()
    if directory.is_dir():
        for path in sorted(directory.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in (".pyc", ".swp") or path.name.endswith("~"):
                continue
            digest.update(str(path.relative_to(directory)).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
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
