"""Where the root, the state and the control socket are (SPEC §2), for nerved and nervectl alike."""

from __future__ import annotations

import os
from pathlib import Path


def _as_root() -> bool:
    return os.geteuid() == 0


def resolve_root(option: str | None = None) -> Path:
    """The root as given, made absolute but with its symlinks kept: nerved resolves it
    again at each reload, so that a root that is a link may be pointed elsewhere."""
    if option:
        return Path(os.path.abspath(option))
    if env := os.environ.get("NERVE_ROOT"):
        return Path(os.path.abspath(env))
    if _as_root():
        return Path("/etc/nerve")
    return Path.home() / ".config" / "nerve"


def resolve_state_dir(option: str | None = None) -> Path:
    if option:
        return Path(option)
    if env := os.environ.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours.
        return Path(env.split(":", 1)[0])
    if _as_root():
        return Path("/var/lib/nerve")
    return Path.home() / ".local" / "state" / "nerve"


def resolve_socket(option: str | None = None) -> Path:
    if option:
        return Path(option)
    if env := os.environ.get("NERVE_SOCKET"):
        return Path(env)
    if env := os.environ.get("RUNTIME_DIRECTORY"):
        return Path(env.split(":", 1)[0]) / "nerved.sock"
    if _as_root():
        return Path("/run/nerve/nerved.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime) / "nerve" / "nerved.sock"
