"""Where the root, the state and the control socket are (SPEC §2), for nerved and nervectl alike."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # nervectl imports this module: neither typing nor pathlib at run time
if TYPE_CHECKING:
    from pathlib import Path


def _as_root() -> bool:
    return os.geteuid() == 0


def resolve_root(option: str | None = None) -> Path:
    """The root as given, made absolute but with its symlinks kept: nerved resolves it
    again at each reload, so that a root that is a link may be pointed elsewhere."""
    from pathlib import Path

    if option:
        return Path(os.path.abspath(option))
    if env := os.environ.get("NERVE_ROOT"):
        return Path(os.path.abspath(env))
    if _as_root():
        return Path("/etc/nerve")
    return Path.home() / ".config" / "nerve"


def resolve_state_dir(option: str | None = None) -> Path:
    from pathlib import Path

    if option:
        return Path(option)
    if env := os.environ.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours.
        return Path(env.split(":", 1)[0])
    if _as_root():
        return Path("/var/lib/nerve")
    return Path.home() / ".local" / "state" / "nerve"


def socket_path(option: str | None = None) -> str:
    """The control socket's path, as text: what nervectl needs, without pathlib (whose
    import costs a CLI command a third of an interpreter's start)."""
    if option:
        return _normal(option)
    if env := os.environ.get("NERVE_SOCKET"):
        return _normal(env)
    if env := os.environ.get("RUNTIME_DIRECTORY"):
        return _normal(os.path.join(env.split(":", 1)[0], "nerved.sock"))
    if _as_root():
        return "/run/nerve/nerved.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.join(runtime, "nerve", "nerved.sock")


def _normal(path: str) -> str:
    """``path`` as ``str(pathlib.PurePosixPath(path))`` gives it, without pathlib: no
    trailing slash (``connect()`` fails on ``/run/nerve/nerved.sock/``, which a Path always
    took), no ``//`` or ``/./`` inside; ``..`` kept."""
    root = "/" if path.startswith("/") else ""
    if path.startswith("//") and not path.startswith("///"):
        root = "//"  # POSIX leaves a leading pair of slashes to the implementation: kept
    return root + "/".join(part for part in path.split("/") if part not in ("", ".")) or "."


def resolve_socket(option: str | None = None) -> Path:
    """:func:`socket_path` as a Path."""
    from pathlib import Path

    return Path(socket_path(option))
