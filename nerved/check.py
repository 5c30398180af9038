"""``nerved check``: validate a root without starting anything.

The configuration is parsed and every referenced package imported, as its worker would
import it, but in a throwaway fork: user code never runs in the process that checks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

from nerved.channel import Channel, ChannelClosed, Garbled, ProtocolError
from nerved.config import ConfigError, check_packages, load_config
from nerved.process import describe_exit, spawn
from nerved.usercode import probe_child

EX_OK: Final = 0
EX_OSERR: Final = 71  # sysexits: "an operating system error ... e.g., cannot fork"
EX_CONFIG: Final = 78
PROBE_TIMEOUT: Final = 60.0


def probe_in_fork(root: Path, senses: list[str], workflows: list[str]) -> list[str]:
    """Import the packages in a child; its answer, or why there was none.

    Raises OSError when the child cannot be forked.
    """
    pid, sock = spawn("nerve:check", probe_child(root, senses, workflows, PROBE_TIMEOUT))
    channel = Channel(sock)
    try:
        message = channel.receive_blocking(PROBE_TIMEOUT)[0]
    except TimeoutError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return [f"importing the packages took longer than {PROBE_TIMEOUT:g}s"]
    except (ChannelClosed, ProtocolError):
        _, status = os.waitpid(pid, 0)
        return [f"the import check died ({describe_exit(status)})"]
    finally:
        channel.close()
    os.waitpid(pid, 0)
    if isinstance(message, Garbled):
        return [f"the import check's answer could not be read ({message.reason})"]
    return [str(e) for e in message["errors"]]


def run(root: Path) -> int:
    try:
        config = load_config(root)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    try:
        errors = check_packages(root, config) or probe_in_fork(
            root.resolve(), list(config.senses), list(config.workflows)
        )
    except OSError as exc:
        print(f"cannot fork a process to import the packages in: {exc}", file=sys.stderr)
        return EX_OSERR
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        return EX_CONFIG
    print(
        f"{root / 'nerve.yaml'}: ok ({len(config.senses)} senses, "
        f"{len(config.workflows)} workflows, {len(config.reflexes)} reflexes)"
    )
    return EX_OK
