"""Tests of nerved.config.load_root: the one way a root's configuration is read (the daemon's
start, its reloads and ``nerved check``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nerved import modes
from nerved.config import ConfigError, load_root

TICK = "def compute(ctx):\n    return None\n"


def make_root(root: Path, config: str, senses: tuple[str, ...] = ()) -> Path:
    root.mkdir(mode=0o755)
    (root / "nerve.yaml").write_text(config)
    for name in senses:
        (root / "senses" / name).mkdir(mode=0o755, parents=True)
        (root / "senses" / name / "__init__.py").write_text(TICK)
    return root


def test_the_configuration_of_a_root(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", "senses:\n  tick:\n", ("tick",))
    config = load_root(root)
    assert list(config.senses) == ["tick"]
    assert config.path == root / "nerve.yaml"


def test_a_root_that_is_a_link_is_resolved_at_each_call(tmp_path: Path) -> None:
    """The configuration's path is in the root the link points to now: the code is taken
    from there (``config.path.parent``)."""
    first = make_root(tmp_path / "first", "senses:\n  a:\n", ("a",))
    second = make_root(tmp_path / "second", "senses:\n  b:\n", ("b",))
    link = tmp_path / "conf"
    link.symlink_to(first)
    assert load_root(link).path == first / "nerve.yaml"
    link.unlink()
    link.symlink_to(second)
    config = load_root(link)
    assert config.path.parent == second and list(config.senses) == ["b"]


def test_every_problem_of_nerve_yaml_with_its_line(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", "senses:\n  a: {timeout: 0}\n  b: {throttle: x}\n")
    with pytest.raises(ConfigError) as caught:
        load_root(root)
    assert [error.split(":")[:2] for error in caught.value.errors] == [
        ["nerve.yaml", "2"],
        ["nerve.yaml", "3"],
    ]


def test_missing_packages_are_the_same_error(tmp_path: Path) -> None:
    root = make_root(
        tmp_path / "root", "senses:\n  here:\n  gone:\nworkflows:\n  lost:\n", ("here",)
    )
    with pytest.raises(ConfigError) as caught:
        load_root(root)
    assert caught.value.errors == (
        f"nerve.yaml:3: senses.gone: no package: senses/gone/__init__.py is missing in {root}",
        f"nerve.yaml:5: workflows.lost: no package: workflows/lost/__init__.py is missing"
        f" in {root}",
    )


def test_a_file_that_cannot_be_read_is_the_same_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ConfigError, match=r"^nerve\.yaml: cannot read "):
        load_root(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a link of another user needs root")
def test_a_link_on_the_way_to_the_root_in_strict_modes(tmp_path: Path) -> None:
    """The link's owner could point it elsewhere: refused, before nerve.yaml is read."""
    real = make_root(tmp_path / "real", "senses: [not a mapping\n")
    link = tmp_path / "conf"
    link.symlink_to(real)
    os.chown(link, 65534, -1, follow_symlinks=False)
    assert modes.strict()
    with pytest.raises(ConfigError) as caught:
        load_root(link)
    assert caught.value.errors[0].startswith(f"strict modes: {link} is owned by ")
    assert caught.value.errors[-1] == modes.HINT
    assert not any("nerve.yaml" in error for error in caught.value.errors)


def test_the_directory_that_holds_the_link_is_on_the_way(tmp_path: Path) -> None:
    """Whoever can write where the link is can replace it: refused as the link would be,
    though the resolved root does not pass there."""
    (tmp_path / "x").mkdir()
    real = make_root(tmp_path / "x" / "real", "senses: {}\n")
    holder = tmp_path / "a" / "b"
    holder.mkdir(parents=True)
    (holder / "conf").symlink_to(real)
    assert load_root(holder / "conf").path == real / "nerve.yaml"
    holder.chmod(0o777)
    with pytest.raises(ConfigError) as caught:
        load_root(holder / "conf")
    assert caught.value.errors == (
        f"strict modes: {holder} is writable by its group and others (mode 0777);"
        f" fix: chmod go-w {holder}",
        modes.HINT,
    )
