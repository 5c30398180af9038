"""``nerved check``: validate a root without starting anything.

The configuration is parsed and every referenced package imported, as its worker would
import it, but in a throwaway fork: user code never runs in the process that checks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Final

from nerved.channel import Channel
from nerved.config import ConfigError, check_packages, load_config
from nerved.process import describe_exit, spawn
from nerved.usercode import probe

EX_OK: Final = 0
EX_CONFIG: Final = 78
PROBE_TIMEOUT: Final = 60.0


def probe_in_fork(root: Path, senses: list[str], workflows: list[str]) -> list[str]:
    """Import the packages in a child; its answer, or why there was none."""

    def child_main(sock: socket.socket) -> int:
        channel = Channel(sock)
        channel.send({"t": "probed", "errors": probe(root, senses, workflows)})
        channel.flush_blocking(PROBE_TIMEOUT)
        return 0

    pid, sock = spawn("nerve:check", child_main)
    sock.settimeout(PROBE_TIMEOUT)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        os.kill(pid, 9)
        return [f"importing the packages took longer than {PROBE_TIMEOUT:g}s"]
    finally:
        sock.close()
        _, status = os.waitpid(pid, 0)
    if len(data) < 4:
        return [f"the import check died ({describe_exit(status)})"]
    message = json.loads(bytes(data[4:]))
    return [str(e) for e in message["errors"]]


def run(root: Path) -> int:
    try:
        config = load_config(root)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    errors = check_packages(root, config) or probe_in_fork(
        root.resolve(), list(config.senses), list(config.workflows)
    )
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        return EX_CONFIG
    print(
        f"{root / 'nerve.yaml'}: ok ({len(config.senses)} senses, "
        f"{len(config.workflows)} workflows, {len(config.reflexes)} reflexes)"
    )
    return EX_OK
