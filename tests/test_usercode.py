"""Tests for nerved.usercode's view of package files: what the master reads, and how much."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nerved.usercode import (
    MAX_PACKAGE_BYTES,
    MAX_PACKAGE_FILES,
    PackageTooLarge,
    fingerprint,
    package_files,
)

TOO_MANY_FILES = (
    "package too large: more than 10,000 files "
    "(a package may hold at most 10,000 files and 256.0 MiB)"
)
TOO_MANY_BYTES = (
    "package too large: more than 256.0 MiB in its files "
    "(a package may hold at most 10,000 files and 256.0 MiB)"
)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    directory = tmp_path / "senses" / "a"
    (directory / "lib").mkdir(parents=True)
    (directory / "__init__.py").write_text("def compute(ctx):\n    return 1\n")
    (directory / "lib" / "helpers.py").write_text("X = 1\n")
    return directory


def test_fingerprint_follows_the_code_and_nothing_else(package: Path) -> None:
    before = fingerprint(package)
    assert fingerprint(package) == before
    # Compiled code, editors' files and hidden directories such as .git are not the code.
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (package / "__init__.py~").write_text("old")
    (package / ".__init__.py.swp").write_text("swap")
    (package / ".git" / "objects").mkdir(parents=True)
    (package / ".git" / "objects" / "ab").write_text("blob")
    assert fingerprint(package) == before
    (package / "lib" / "helpers.py").write_text("X = 2\n")
    assert fingerprint(package) != before
    (package / "lib" / "helpers.py").write_text("X = 1\n")
    assert fingerprint(package) == before
    (package / "lib" / "helpers.py").rename(package / "lib" / "other.py")
    assert fingerprint(package) != before


def test_symlinks_are_recorded_never_followed(package: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("Y = 1\n")
    (package / "shared.py").symlink_to(outside)
    (package / "loop").symlink_to("loop")
    (package / "up").symlink_to("..")  # a directory loop: walked into, it would never end
    (package / "zero").symlink_to("/dev/zero")
    assert package_files(package) == [
        ("__init__.py", "file"),
        ("lib/helpers.py", "file"),
        ("loop", "-> loop"),
        ("shared.py", f"-> {outside}"),
        ("up", "-> .."),
        ("zero", "-> /dev/zero"),
    ]
    before = fingerprint(package)
    outside.write_text("Y = 2\n")  # outside the package: not nerve's to watch
    assert fingerprint(package) == before
    (package / "shared.py").unlink()
    (package / "shared.py").symlink_to(tmp_path / "elsewhere.py")
    assert fingerprint(package) != before


def test_a_package_that_is_a_symlink_is_read_through_it(package: Path, tmp_path: Path) -> None:
    (tmp_path / "senses" / "b").symlink_to(package)
    assert fingerprint(tmp_path / "senses" / "b") == fingerprint(package)


def test_fifos_and_sockets_are_left_out_unopened(package: Path) -> None:
    os.mkfifo(package / "pipe")  # opening it for reading would wait for a writer, forever
    assert [path for path, _ in package_files(package)] == ["__init__.py", "lib/helpers.py"]
    assert len(fingerprint(package)) == 64


def test_missing_package_has_no_files(tmp_path: Path) -> None:
    assert package_files(tmp_path / "nothing") == []
    assert fingerprint(tmp_path / "nothing") == fingerprint(tmp_path / "neither")


def test_too_many_files_refuses_the_package(package: Path) -> None:
    many = package / "many"
    many.mkdir()
    # With __init__.py, lib/, lib/helpers.py and many/: one entry past the bound.
    for i in range(MAX_PACKAGE_FILES - 3):
        (many / f"{i}.txt").touch()
    with pytest.raises(PackageTooLarge) as caught:
        package_files(package)
    assert str(caught.value) == TOO_MANY_FILES
    assert fingerprint(package) == f"refused: {TOO_MANY_FILES}"
    (many / "0.txt").unlink()
    assert len(package_files(package)) == MAX_PACKAGE_FILES - 2


def test_too_many_bytes_refuses_the_package_without_reading_it(package: Path) -> None:
    used = sum((package / path).stat().st_size for path, _ in package_files(package))
    with (package / "data.bin").open("wb") as file:
        file.truncate(MAX_PACKAGE_BYTES - used)  # sparse: nothing written, nothing to read
    assert ("data.bin", "file") in package_files(package)  # exactly at the bound
    with (package / "data.bin").open("ab") as file:
        file.truncate(64 * MAX_PACKAGE_BYTES)
    with pytest.raises(PackageTooLarge) as caught:
        package_files(package)
    assert str(caught.value) == TOO_MANY_BYTES
    assert fingerprint(package) == f"refused: {TOO_MANY_BYTES}"
