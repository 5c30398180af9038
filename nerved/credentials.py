"""``ctx.credential(name)``: the text of a systemd credential (SPEC §4, v2).

systemd hands a service its credentials (``LoadCredential=``, ``SetCredential=``) as files in
a directory of its own, named by ``$CREDENTIALS_DIRECTORY``, readable by the service's user
alone and never in the environment or the unit. Workers inherit the master's environment
(nerved.process drops only the variables that speak to systemd), so a role or a sense reads
the same directory the master was given.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BYTES = 1 << 20  # a credential is a secret, not a data file (systemd allows 1 MiB)


def read(name: str) -> str:
    """The credential's text (UTF-8). KeyError naming it when there is none: no such file, no
    credentials directory, or a name that is not a plain file name (``/``, ``..``)."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise KeyError(f"credential {name!r}: not a credential name")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise KeyError(
            f"credential {name!r}: no credentials directory ($CREDENTIALS_DIRECTORY is not set;"
            " under systemd, LoadCredential= in the unit sets it)"
        )
    path = Path(directory) / name
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise KeyError(f"credential {name!r}: not in {directory}") from None
    except OSError as exc:
        raise KeyError(f"credential {name!r}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise KeyError(f"credential {name!r}: longer than 1 MiB")
    return data.decode("utf-8", "replace")
