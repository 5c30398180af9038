"""Tests of nerved.config.load and .packages: reading nerve.yaml within bounds, and the packages
it names (the parts of nerved.config.load_root, tested in test_root.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from config_support import SPEC_EXAMPLE_DECLARED
from support import deadline

from nerved.config import MAX_FILE_SIZE, ConfigError, parse_config
from nerved.config.load import load_config
from nerved.config.packages import check_packages

# --------------------------------------------------------------------------------------------
# load_config


def test_load_config_reads_root_nerve_yaml(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_text(SPEC_EXAMPLE_DECLARED, encoding="utf-8")
    config = load_config(tmp_path)
    assert config.path == tmp_path / "nerve.yaml"
    assert list(config.senses) == ["disk-usage", "disk-alert"]


def test_load_config_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_bytes(b"\xef\xbb\xbfsenses:\n  a:\n")
    assert list(load_config(tmp_path).senses) == ["a"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == (
        f"nerve.yaml: cannot read {tmp_path / 'nerve.yaml'}: No such file or directory",
    )


def _make_directory(path: Path) -> None:
    path.mkdir()


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_make_directory, "a directory"),
        (_make_fifo, "a FIFO"),
        (_link_to_dev_zero, "a character device"),
    ],
    ids=["directory", "fifo", "dev-zero"],
)
def test_load_config_reads_only_a_regular_file(
    tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    make(tmp_path / "nerve.yaml")
    with deadline(5), pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == (
        f"nerve.yaml: cannot read {tmp_path / 'nerve.yaml'}: {kind}, not a regular file",
    )


def test_load_config_reads_at_most_max_file_size(tmp_path: Path) -> None:
    path = tmp_path / "nerve.yaml"
    path.write_bytes(b"#" * (MAX_FILE_SIZE - 1) + b"\n")
    assert dict(load_config(tmp_path).senses) == {}
    with path.open("ab") as file:
        file.truncate(8 << 30)  # sparse: 8 GiB that cost nothing to write, and must not be read
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == (
        f"nerve.yaml: {path} is larger than 256.0 KiB, the most it may hold",
    )


def test_load_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_bytes(b"senses:\n  caf\xe9:\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors == ("nerve.yaml:2: not UTF-8 text (byte 0xe9)",)


def test_load_config_reports_validation_errors(tmp_path: Path) -> None:
    (tmp_path / "nerve.yaml").write_text("senses:\n  a: {timeout: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^nerve.yaml:2: senses.a.timeout: "):
        load_config(tmp_path)


# --------------------------------------------------------------------------------------------
# check_packages

PACKAGES_YAML = """\
senses:
  present:
  missing:
  no-init:
workflows:
  flow:
  lost:
"""


def test_check_packages(tmp_path: Path) -> None:
    config = parse_config(PACKAGES_YAML, tmp_path / "nerve.yaml")
    # Importing this would end the test run: check_packages must only look at the files.
    for package in ("senses/present", "workflows/flow"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("raise SystemExit('imported!')\n")
    (tmp_path / "senses/no-init").mkdir()
    (tmp_path / "senses/no-init/compute.py").write_text("")

    assert check_packages(tmp_path, config) == [
        f"nerve.yaml:3: senses.missing: no package: senses/missing/__init__.py is missing "
        f"in {tmp_path}",
        f"nerve.yaml:4: senses.no-init: no package: senses/no-init/__init__.py is missing "
        f"in {tmp_path}",
        f"nerve.yaml:7: workflows.lost: no package: workflows/lost/__init__.py is missing "
        f"in {tmp_path}",
    ]
    assert not any(name in sys.modules for name in ("present", "flow"))


def test_check_packages_all_present(tmp_path: Path) -> None:
    config = parse_config(PACKAGES_YAML, tmp_path / "nerve.yaml")
    for package in ("senses/present", "senses/missing", "senses/no-init"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").touch()
    for package in ("workflows/flow", "workflows/lost"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").touch()
    assert check_packages(tmp_path, config) == []


def test_check_packages_init_that_is_not_a_file(tmp_path: Path) -> None:
    config = parse_config("senses:\n  odd:\n", tmp_path / "nerve.yaml")
    (tmp_path / "senses/odd/__init__.py").mkdir(parents=True)
    assert check_packages(tmp_path, config) == [
        f"nerve.yaml:2: senses.odd: no package: {tmp_path}/senses/odd/__init__.py "
        "is not a regular file"
    ]


def test_check_packages_when_senses_is_a_file(tmp_path: Path) -> None:
    config = parse_config("senses:\n  a:\n", tmp_path / "nerve.yaml")
    (tmp_path / "senses").write_text("")
    assert check_packages(tmp_path, config) == [
        f"nerve.yaml:2: senses.a: no package: senses/a/__init__.py is missing in {tmp_path}"
    ]


def test_check_packages_refuses_a_package_too_large_to_fingerprint(tmp_path: Path) -> None:
    config = parse_config("senses:\n  small:\nworkflows:\n  big:\n", tmp_path / "nerve.yaml")
    for package in ("senses/small", "workflows/big"):
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").touch()
    with (tmp_path / "workflows/big/model.bin").open("wb") as file:
        file.truncate(8 << 30)  # sparse: check_packages must size it, not read it
    assert check_packages(tmp_path, config) == [
        "nerve.yaml:4: workflows.big: package too large: more than 256.0 MiB in its files "
        "(a package may hold at most 10,000 files and 256.0 MiB)"
    ]
