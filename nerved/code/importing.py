"""Importing a package from its snapshot, in a worker: finders, loaders and the path hook.

Only code that passed the import check ever runs: a worker imports the bytes the snapshot
(:class:`nerved.code.reading.Package`) holds, never the files as they are on disk when it
forks. The meta path finder finds each package by its private module name
(:func:`module_name`); the path hook stands in for the file system's finder on every
directory of a snapshotted package, so that a module added on disk since is refused with the
reason, and one that exists nowhere is not found, as usual. Also how an error in user code
is placed for the operator (:func:`describe`). Apart from the reading because it runs in a
worker, where user code runs, and the master never imports it for itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import CodeType, ModuleType, SimpleNamespace
from typing import Any, Final, cast

from nerved.api import ComputeFn, WorkflowDefinition
from nerved.code.reading import Package, UserCodeError


def module_name(kind: str, name: str) -> str:
    """The private module name of a package: ``nerve_user.<kind>.<escaped name>``.

    Distinct packages get distinct names: ASCII letters and digits stay, ``_`` becomes ``__``
    and any other character ``_xx`` (its code point in hex), so ``disk-usage`` is
    ``disk_2dusage`` and ``disk_usage`` is ``disk__usage``. Mapping both to one name made two
    senses of one group share their submodules (``from . import settings`` returned the
    other package's).
    """
    escaped = "".join(
        ch if ch.isascii() and ch.isalnum() else "__" if ch == "_" else f"_{ord(ch):02x}"
        for ch in name
    )
    return f"nerve_user.{kind}.{escaped}"


def _ensure_parents(qualified: str) -> None:
    parts = qualified.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            module = ModuleType(parent)
            module.__path__ = []
            sys.modules[parent] = module


_NERVE: Final = str(Path(__file__).resolve().parent.parent) + os.sep
"""nerve's own code (all of ``nerved/``): never the place an operator is pointed at."""


def user_frame(frames: Sequence[traceback.FrameSummary]) -> traceback.FrameSummary | None:
    """The frame an operator should look at: the innermost in a user package this process
    imported, else the innermost that is neither nerve's own code nor code without a file
    (``<frozen importlib._bootstrap>``, the ``<string>`` of a generated ``__init__``)."""
    packages = tuple(str(package.directory) + os.sep for package in _IMPORTED.values())
    if packages:
        for frame in reversed(frames):
            if frame.filename.startswith(packages):
                return frame
    for frame in reversed(frames):
        if not frame.filename.startswith((_NERVE, "<")):
            return frame
    return None


def describe(exc: BaseException) -> str:
    """``ValueError: bad thing (at senses/x/__init__.py:12)``: one line an operator can act on.

    The place is :func:`user_frame`'s: a ``json.loads`` that fails in a compute is placed
    at the compute's line, not in the json module. A SyntaxError is placed where the
    compiler found it, which no frame shows.
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        text = f"{type(exc).__name__}: {exc.msg}" if exc.msg else type(exc).__name__
        return f"{text} (at {exc.filename}:{exc.lineno})"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frame = user_frame(traceback.extract_tb(exc.__traceback__))
    return text if frame is None else f"{text} (at {frame.filename}:{frame.lineno})"


_IMPORTED: dict[str, Package] = {}
"""The packages this process imports from their snapshots, by private module name."""


class _SourceLoader(importlib.abc.InspectLoader):
    """Loads one module of a snapshotted package from the source the snapshot holds, under
    whatever name it is imported (its private name, or a plain one when user code puts the
    package's directory on ``sys.path``).

    It is compiled from the held bytes with its real path as ``__file__``, so that
    tracebacks, data files next to it, ``pkgutil.get_data`` and ``importlib.resources`` work
    (data comes from disk: only source is held).
    """

    def __init__(self, package: Package, relative: str) -> None:
        self.package = package
        self.relative = relative  # "__init__.py", "lib/helpers.py"
        self.path = str(package.directory / relative)

    def is_package(self, fullname: str) -> bool:
        return self.relative.rpartition("/")[2] == "__init__.py"

    def get_source(self, fullname: str) -> str:
        return importlib.util.decode_source(self.package.sources[self.relative])

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_code(self, fullname: str) -> CodeType:
        source = self.package.sources[self.relative]
        # Tracebacks show the lines that run, not the file as it is on disk now.
        text = importlib.util.decode_source(source)
        linecache.cache[self.path] = (len(text), None, text.splitlines(True), self.path)
        return compile(source, self.path, "exec", dont_inherit=True)

    def exec_module(self, module: ModuleType) -> None:
        exec(self.get_code(module.__name__), module.__dict__)

    def get_data(self, path: str) -> bytes:
        """``pkgutil.get_data``: a module's source as held, anything else from disk."""
        relative = os.path.relpath(path, self.package.directory)
        if relative in self.package.sources:
            return self.package.sources[relative]
        with open(path, "rb") as file:
            return file.read()

    def get_resource_reader(self, fullname: str) -> importlib.abc.ResourceReader | None:
        """``importlib.resources.files()`` of a package: its directory on disk."""
        if not self.is_package(fullname):
            return None
        from importlib.readers import FileReader

        return FileReader(cast(Any, SimpleNamespace(path=self.path)))


class _PackageFinder(importlib.abc.MetaPathFinder):
    """Finds each snapshotted package by its private name; first on ``sys.meta_path``. Its
    modules are found by the path hook (:class:`_SnapshotFinder`), which stands in for the
    file system's finder on every directory of a snapshotted package."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package = _IMPORTED.get(fullname)
        return None if package is None else _spec(fullname, package, "")


_FINDER: Final = _PackageFinder()


class _SnapshotFinder:
    """The path-entry finder of one directory of a snapshotted package (``relative``: where
    in the package, ``""`` or ``"lib/"``).

    It answers every name looked up there, so that nothing in a package's directories is
    ever found on disk by the file system's finder: a module the snapshot holds, an
    extension module that was listed, a directory of the package (a namespace portion);
    a module that exists on disk but not in the snapshot (added since) is refused with the
    reason; one that exists nowhere is not found, as usual (``ModuleNotFoundError``, and
    ``importlib.util.find_spec`` gives None).
    """

    def __init__(self, package: Package, relative: str) -> None:
        self.package = package
        self.relative = relative

    def find_spec(
        self, fullname: str, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        relative = self.relative + fullname.rpartition(".")[2]
        spec = _spec(fullname, self.package, relative)
        if spec is not None:
            return spec
        directory = self.package.directory
        on_disk = [relative + "/"] if os.path.isdir(directory / relative) else []
        on_disk += [
            relative + suffix
            for suffix in (".py", *importlib.machinery.EXTENSION_SUFFIXES)
            if os.path.lexists(directory / (relative + suffix))
        ]
        if on_disk:
            raise ImportError(
                f"{self.package.label}/{on_disk[0]} is not in the code nerve accepted: it"
                " appeared or changed since (a reload imports it once it passes the check),"
                " or is reached through a symlinked directory, which nerve does not follow",
                name=fullname,
            )
        return None

    def invalidate_caches(self) -> None:
        pass

    def iter_modules(self, prefix: str = "") -> Iterator[tuple[str, bool]]:
        """``pkgutil.iter_modules``: the modules of this directory the snapshot holds."""
        seen: set[str] = set()
        for path in sorted({*self.package.sources, *self.package.files}):
            if not path.startswith(self.relative):
                continue
            head, _, rest = path[len(self.relative) :].partition("/")
            if rest == "__init__.py":
                name, is_package = head, True
            elif not rest and head.endswith(".py") and head != "__init__.py":
                name, is_package = head[:-3], False
            else:
                continue
            if name not in seen and name.isidentifier():
                seen.add(name)
                yield prefix + name, is_package


def _spec(fullname: str, package: Package, relative: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``relative`` (a module path in ``package``, ``""`` for the package)."""
    base = relative + "/" if relative else ""
    for candidate, is_package in ((base + "__init__.py", True), (relative + ".py", False)):
        if candidate in package.sources:
            loader = _SourceLoader(package, candidate)
            spec = importlib.machinery.ModuleSpec(
                fullname, loader, origin=loader.path, is_package=is_package
            )
            spec.has_location = True
            if is_package:
                spec.submodule_search_locations = [str(package.directory / relative)]
            return spec
        if candidate in package.unreadable:
            raise ImportError(
                f"{package.label}/{candidate} could not be read: {package.unreadable[candidate]}",
                name=fullname,
            )
    if not relative:
        return None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if relative + suffix in package.files:
            return importlib.util.spec_from_file_location(
                fullname, package.directory / (relative + suffix)
            )
    if any(path.startswith(base) for path in (*package.files, *package.sources)):
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(package.directory / relative)]
        return spec  # a directory without __init__.py: a namespace portion
    return None


def _path_hook(entry: str) -> _SnapshotFinder:
    """On ``sys.path_hooks``: claims every directory of a snapshotted package, by the path
    it was configured at or by its real path (a symlinked package, reached through
    ``os.path.realpath(__file__)``), so that no name is ever found in it on disk."""
    real = os.path.realpath(entry)
    for package in _IMPORTED.values():
        for base, path in ((str(package.directory), entry), (_real(package), real)):
            relative = os.path.relpath(path, base)
            if relative == ".":
                return _SnapshotFinder(package, "")
            if relative != ".." and not relative.startswith(".." + os.sep):
                return _SnapshotFinder(package, relative.replace(os.sep, "/") + "/")
    raise ImportError("not a directory of a snapshotted package")


def _real(package: Package) -> str:
    return os.path.realpath(package.directory)


def _install(qualified: str, package: Package) -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
        sys.path_hooks.insert(0, _path_hook)
    _IMPORTED[qualified] = package
    directory = str(package.directory)
    for entry in [
        e for e in sys.path_importer_cache if e == directory or e.startswith(directory + os.sep)
    ]:
        del sys.path_importer_cache[entry]  # a file system finder made before: not any more


def import_package(package: Package) -> ModuleType:
    """Import a package from its snapshot; any failure becomes one readable UserCodeError."""
    if package.refused is not None:
        raise UserCodeError(f"{package.label}: {package.refused}")
    if "__init__.py" not in package.sources:
        why = package.unreadable.get("__init__.py", "it does not exist")
        raise UserCodeError(f"{package.label}/__init__.py cannot be imported: {why}")
    qualified = module_name(package.kind, package.name)
    _install(qualified, package)
    _ensure_parents(qualified)
    try:
        return importlib.import_module(qualified)
    except BaseException as exc:
        for name in [n for n in sys.modules if n == qualified or n.startswith(qualified + ".")]:
            del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError(f"{package.label} failed to import: {describe(exc)}") from exc


def load_sense(package: Package) -> ComputeFn:
    module = import_package(package)
    compute = getattr(module, "compute", None)
    if not callable(compute):
        raise UserCodeError(f"{package.label} defines no compute(ctx) function")
    return cast(ComputeFn, compute)


def load_workflow(package: Package) -> WorkflowDefinition:
    module = import_package(package)
    definition = getattr(module, "workflow", None)
    if not isinstance(definition, WorkflowDefinition):
        raise UserCodeError(
            f"{package.label} must define `workflow = WorkflowDefinition(roles=..., moderate=...)`"
        )
    return definition


def load(package: Package) -> object:
    """Import a package and check it exports what its kind needs (as its worker would)."""
    if package.kind == "senses":
        return load_sense(package)
    return load_workflow(package)
