"""Reading a package from disk: what a package is made of, and the snapshot of one.

The master's side, in its only thread, at start and at every reload: a package is listed
within bounds (:data:`MAX_PACKAGE_FILES`, :data:`MAX_PACKAGE_BYTES`), its Python source read
whole and the rest fingerprinted, all packages together within :data:`CONTENT_BUDGET` bytes
of content (:func:`read_packages`), without following symlinks out of a package (a ``.py``
symlink to a regular file is read through) and without opening anything but regular files,
so that no file a package holds can stall it. What comes out is a :class:`Package`, which
the import machinery (:mod:`nerved.code.importing`) imports from, in a worker, never from
disk. Apart from it because this module never imports user code, and that one never reads a
package's directory listing.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nerved.wire import KiB, MiB, size_text

# Digests tell a reload whether a package changed, nothing else: they are never stored. BLAKE2b
# from _blake2, which is what hashlib.blake2b is, because importing hashlib sets up OpenSSL's
# digests: about 1 MB in the master, held again by every worker it forks (issue 14).
try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython builds _blake2 unless told not to
    from hashlib import blake2b

MAX_PACKAGE_FILES: Final = 10_000
"""Entries (files, directories, symlinks) of one package the master lists at a reload."""

MAX_PACKAGE_BYTES: Final = 256 * MiB
"""Bytes in one package's regular files (by their sizes: a package is listed, not read)."""

SMALL_FILE: Final = 1 * MiB
"""A regular file up to this size is fingerprinted by its content, while the budget lasts.
Python source is always read whole, whatever its size (it is what workers import)."""

CONTENT_BUDGET: Final = 64 * MiB
"""Bytes of content one snapshot of all packages reads at most (read and hashed in 85 ms here,
from the page cache, with BLAKE2b; 46 ms with OpenSSL's SHA-256, which the master does not
import: see ``blake2b`` above).

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

    ``policy_roles``, of a workflow only, is not its code but what the import check holds it
    to: the roles nerve.yaml sets a policy for, each with its line there
    (``nerved.code.packages``, which fills it in; no worker reads it).
    """

    kind: str
    name: str
    directory: Path
    digest: str
    sources: Mapping[str, bytes] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)
    files: frozenset[str] = frozenset()
    refused: str | None = None
    policy_roles: tuple[tuple[str, int], ...] = ()

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
    - Any other regular file counts by its content (BLAKE2b) if it holds at most SMALL_FILE
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
    digest = blake2b(digest_size=32)
    sources: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    for entry in listing:
        kind_text = entry.kind
        if entry.source or (entry.kind == "file" and (str(directory), entry.path) in read):
            content = _read_file(directory / entry.path, entry.size, follow=bool(entry.link))
            if isinstance(content, bytes):
                kind_text = "content " + blake2b(content, digest_size=32).hexdigest()
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
