"""User packages (``senses/<name>``, ``workflows/<name>``): what the master reads of them, and
how a worker imports them.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import socket
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, ModuleType, SimpleNamespace
from typing import Any, Final, cast

from nerved import wire
from nerved.api import ComputeFn, WorkflowDefinition
from nerved.channel import Channel
from nerved.wire import KiB, MiB, size_text

MAX_PACKAGE_FILES: Final = 10_000
"""Entries (files, directories, symlinks) of one package the master lists at a reload."""

MAX_PACKAGE_BYTES: Final = 256 * MiB
"""Bytes in one package's regular files (by their sizes: a package is listed, not read)."""

SMALL_FILE: Final = 1 * MiB
"""A regular file up to this size is fingerprinted by its content, while the budget lasts.
Python source is always read whole, whatever its size (it is what workers import)."""

CONTENT_BUDGET: Final = 64 * MiB
"""Bytes of content one snapshot of all packages reads at most (about 0.2 s of SHA-256 here).

Reading every package whole took the master's only thread 0.7 s per 250 MiB package, at
start and at every reload: forty such packages held `status` for 8 s and the start for 28 s,
near systemd's 30 s watchdog. Python source is read first; packages whose source does not
fit in the budget are refused.
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


_NERVE: Final = str(Path(__file__).resolve().parent) + os.sep
"""nerve's own code: never the place an operator is pointed at."""


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


def _skipped(entry: os.DirEntry[str]) -> bool:
    """Compiled code, editors' droppings and hidden directories (``.git``): never the code."""
    name = entry.name
    if entry.is_dir(follow_symlinks=False):
        return name == "__pycache__" or name.startswith(".")
    return name.endswith((".pyc", ".swp", "~"))


@dataclass(frozen=True, slots=True)
class _Entry:
    """One entry of a package as listed: what :func:`package_files` says of it, and for a
    regular file the metadata it is fingerprinted by when its content is not read. ``link``
    is the target of a ``.py`` symlink that leads to a regular file: such a module is read
    (and imported) through its link, as stow and configuration management lay packages out."""

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    link: str = ""

    @property
    def source(self) -> bool:
        """A Python source file: read whole into every snapshot, and imported from it."""
        return self.kind == "file" and self.path.endswith(".py")


def package_files(directory: Path) -> list[tuple[str, str]]:
    """What a package is made of, by relative path: ``[(path, kind), ...]``, sorted.

    ``kind`` is ``"file"`` for a regular file (``"file -> target"`` for a ``.py`` symlink to
    one, which is read through), ``"-> target"`` for any other symlink (never followed: not
    out of the package, not round a loop) and ``"unreadable"`` for a directory that cannot be
    listed; FIFOs, sockets and devices are left out. The package directory itself may be a
    symlink; a missing one has no files. Raises PackageTooLarge past MAX_PACKAGE_FILES
    entries, or past MAX_PACKAGE_BYTES in regular files (by their size, nothing is read).
    """
    return [
        (entry.path, f"{entry.kind} -> {entry.link}" if entry.link else entry.kind)
        for entry in _list(directory)
    ]


def _list(directory: Path) -> list[_Entry]:
    """:func:`package_files` with each regular file's size, mtime and mode (from the
    listing's own ``lstat``, or ``stat`` through a ``.py`` symlink: nothing is opened)."""
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
                    info: os.stat_result | None = None
                    link = ""
                    if entry.is_symlink():
                        link = os.readlink(entry.path)
                        if entry.name.endswith(".py"):
                            with contextlib.suppress(OSError):
                                info = entry.stat(follow_symlinks=True)
                        if info is None or not stat.S_ISREG(info.st_mode):
                            found.append(_Entry(relative, "-> " + link))
                            continue
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(relative + "/")
                        continue
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                    else:
                        continue
                    total += info.st_size
                    if total > MAX_PACKAGE_BYTES:
                        raise PackageTooLarge(_TOO_MANY_BYTES)
                    found.append(
                        _Entry(relative, "file", info.st_size, info.st_mtime_ns, info.st_mode, link)
                    )
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone meanwhile, or no package at all: check_packages says so
        except OSError:
            found.append(_Entry(prefix, "unreadable"))
    return sorted(found, key=lambda entry: entry.path)


@dataclass(frozen=True, slots=True, eq=False)
class Package:
    """One package as a snapshot saw it: its fingerprint, and the Python source it imports.

    ``sources`` maps each ``.py`` file's relative path to its bytes, exactly as read and
    hashed into ``digest``; ``unreadable`` names the ones that could not be (with why), and
    ``files`` every regular file listed (an extension module is loaded from disk only if it
    was listed). ``refused`` is why the package cannot be used at all (too large), if so.
    """

    kind: str
    name: str
    directory: Path
    digest: str
    sources: Mapping[str, bytes] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)
    files: frozenset[str] = frozenset()
    refused: str | None = None

    @property
    def label(self) -> str:
        """``senses/disk-usage``: how messages name it."""
        return f"{self.kind}/{self.name}"


def fingerprint(directory: Path) -> str:
    """The fingerprint of one package, as :func:`fingerprints` gives it."""
    return fingerprints([directory])[0]


def fingerprints(directories: Sequence[Path], budget: int = CONTENT_BUDGET) -> list[str]:
    """A digest of each package's files, so that a reload can tell whether its code changed.

    The digests of :func:`read_packages` (which see).
    """
    places = [("", directory.name, directory) for directory in directories]
    return [package.digest for package in read_packages(places, budget)]


def read_packages(
    places: Sequence[tuple[str, str, Path]], budget: int = CONTENT_BUDGET
) -> list[Package]:
    """Snapshot each package ``(kind, name, directory)``: its Python source and a digest.

    Runs in the master's only thread, at start and at every reload, so its work is bounded
    whatever the packages hold: every package is listed (MAX_PACKAGE_FILES entries at most),
    and at most ``budget`` bytes of content are read over all of them.

    - Every ``.py`` file is read whole, packages in order: it is what workers import. A
      package whose source does not fit in what is left of the budget is refused.
    - Any other regular file counts by its content (SHA-256) if it holds at most SMALL_FILE
      bytes and the budget lasts (taken by package path and relative path, so that the
      choice is the same at every snapshot of the same files), else by its size, mtime (ns)
      and mode: a large data file, or any file once the budget is spent.

    So a source file is always seen to change, even when an edit keeps its size and mtime
    (``rsync -a`` and ``touch -r`` put mtimes back), and touching it changes nothing. A data
    file fingerprinted by metadata can be rewritten unnoticed only if its size and mtime (ns)
    are kept, for as long as they are: the next change of either is seen. A file that moves
    from one kind to the other (the small files grew past the budget, or shrank back)
    changes its package's fingerprint: a change seen where there was none (its worker
    restarts), never one missed.

    A package past the bounds gets a digest that says so (``refused: ...``). Only regular
    files are opened (non-blocking, and not through a symlink but a ``.py`` one's).
    """
    listings: list[list[_Entry] | str] = []
    for _, _, directory in places:
        try:
            listings.append(_list(directory))
        except PackageTooLarge as exc:
            listings.append(f"refused: {exc}")
    for index, listing in enumerate(listings):
        if isinstance(listing, str):
            continue
        size = sum(entry.size for entry in listing if entry.source)
        if size > budget:
            listings[index] = f"refused: {_source_too_large(size)}"
        else:
            budget -= size
    small = sorted(
        (str(directory), entry.path, entry.size)
        for (_, _, directory), listing in zip(places, listings, strict=True)
        if not isinstance(listing, str)
        for entry in listing
        if entry.kind == "file" and not entry.source and entry.size <= SMALL_FILE
    )
    read: set[tuple[str, str]] = set()
    for directory_name, path, size in small:
        if size <= budget:
            budget -= size
            read.add((directory_name, path))
    return [
        Package(kind, name, directory, listing, refused=listing.removeprefix("refused: "))
        if isinstance(listing, str)
        else _read_package(kind, name, directory, listing, read)
        for (kind, name, directory), listing in zip(places, listings, strict=True)
    ]


def _source_too_large(size: int) -> str:
    return (
        f"package too large: {size_text(size)} of Python source, past what nerve reads"
        f" of all packages at a reload ({size_text(CONTENT_BUDGET)})"
    )


def _read_package(
    kind: str, name: str, directory: Path, listing: list[_Entry], read: set[tuple[str, str]]
) -> Package:
    """One package's snapshot: its sources read, its other files by content where ``read``
    names them, else by metadata (see :func:`read_packages`)."""
    digest = hashlib.sha256()
    sources: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    for entry in listing:
        kind_text = entry.kind
        if entry.source or (entry.kind == "file" and (str(directory), entry.path) in read):
            content = _read_file(directory / entry.path, entry.size, follow=bool(entry.link))
            if isinstance(content, bytes):
                kind_text = "content " + hashlib.sha256(content).hexdigest()
                if entry.source:
                    sources[entry.path] = content
            else:
                kind_text = "unreadable"
                unreadable[entry.path] = content
        elif entry.kind == "file":
            kind_text = f"stat {entry.size} {entry.mtime_ns} {entry.mode:o}"
        if entry.link:
            kind_text += " -> " + entry.link
        digest.update(f"{entry.path}\0{kind_text}\n".encode(errors="surrogateescape"))
    files = frozenset(entry.path for entry in listing if entry.kind == "file")
    return Package(kind, name, directory, digest.hexdigest(), sources, unreadable, files)


def _read_file(path: Path, size: int, *, follow: bool = False) -> bytes | str:
    """The content of a regular file listed with ``size`` bytes, or why it cannot be read.

    Reads at most ``size + 1`` bytes: a file that grew since it was listed is being written,
    and is refused for now (the write's own event brings the next reload, which reads it
    whole); a file that shrank is taken as it is, which its digest says.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return f"cannot open it: {exc.strerror or exc}"
    chunks: list[bytes] = []
    left = size + 1
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "it is no longer a regular file"
        while left and (chunk := os.read(fd, min(_CHUNK, left))):
            left -= len(chunk)
            chunks.append(chunk)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if not left:
        return "it changed while nerve read it"
    return b"".join(chunks)


# -- importing, in a worker ---------------------------------------------------------------


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
