"""A root's configuration, read the one way: :func:`load_root`.

The start of the daemon, each of its reloads and ``nerved check`` all read a root through
here, so that what one accepts the others accept, and each says what is wrong in the same
words: the way to the root (its symbolic links) in strict modes, then ``nerve.yaml`` read
within bounds and validated (``load``), then the packages it names, present, small enough
and in strict modes (``packages``). Every problem is one :class:`ConfigError`, each message
with its line where it has one; nothing here imports or runs user code.
"""

from __future__ import annotations

from pathlib import Path

from nerved import modes
from nerved.config.load import load_config
from nerved.config.model import ConfigError, NerveConfig
from nerved.config.packages import check_packages


def load_root(root: Path) -> NerveConfig:
    """The configuration of ``root`` (as given: absolute, its links kept), or ConfigError.

    The root is resolved here, at every call: a root that is a link (``/etc/nerve ->
    /etc/static/nerve``, as NixOS lays it out) may point elsewhere since the last one. The
    configuration's ``path`` is in the resolved root, which is what callers take the code
    from (``config.path.parent``).
    """
    resolved = root.resolve()
    refused = modes.enforce(_on_the_way(root, resolved))
    if refused:
        raise ConfigError(refused)
    config = load_config(resolved)
    problems = check_packages(resolved, config)
    if problems:
        raise ConfigError(problems)
    return config


def _on_the_way(root: Path, resolved: Path) -> list[modes.Violation]:
    """Strict modes of what the kernel walks to reach the root as given but not on the way to
    the resolved root: the symbolic links (``/etc/nerve -> /srv/conf``) and the directories
    that hold them, whose writers could point them elsewhere. The resolved path is checked
    with the packages (:func:`check_packages`), so it is left out here, not said twice."""
    later = {str(path) for path in (resolved, *resolved.parents)}
    checker = modes.Checker()
    checker.path(root)
    return [v for v in checker.violations if v.path not in later]
