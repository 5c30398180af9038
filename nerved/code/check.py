"""``nerved check``: validate a root without starting anything.

The configuration is parsed and every referenced package imported, as its worker would
import it, but in a throwaway fork: user code never runs in the process that checks.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Final

from nerved.channel import Channel, ChannelClosed, Garbled, ProtocolError
from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot, Package, probe_child
from nerved.config import ConfigError, load_root
from nerved.process import describe_exit, spawn
from nerved.words import plural

EX_OK: Final = 0
EX_OSERR: Final = 71  # sysexits: "an operating system error ... e.g., cannot fork"
EX_CONFIG: Final = 78


def probe_in_fork(units: list[tuple[Package, ...]], timeout: float = IMPORT_TIMEOUT) -> list[str]:
    """Import each unit (what one worker imports) in a child of its own, one per CPU at a
    time, each within ``timeout`` seconds, as a reload's import check does
    (nerved.master.importcheck); their answers, or why there was none (naming the package a child
    was importing when it hung or died), in unit order.

    Raises OSError when a child cannot be forked (the others are ended first).
    """
    parallel = os.cpu_count() or 1
    errors: list[str] = []
    for first in range(0, len(units), parallel):
        batch = units[first : first + parallel]
        children: list[tuple[int, Channel]] = []
        try:
            for unit in batch:
                pid, sock = spawn("nerve:check", probe_child(unit, timeout))
                children.append((pid, Channel(sock)))
        except OSError:
            for pid, channel in children:
                channel.close()
                _end(pid)
            raise
        deadline = time.monotonic() + timeout
        for (pid, channel), unit in zip(children, batch, strict=True):
            errors += _answer(pid, channel, unit[0].label, deadline, timeout)
    return errors


def _answer(
    pid: int, channel: Channel, importing: str, deadline: float, timeout: float
) -> list[str]:
    """One child's answer by ``deadline``, and the child ended."""
    try:
        while True:
            for message in channel.receive_blocking(max(0.001, deadline - time.monotonic())):
                if isinstance(message, Garbled):
                    return [f"the import check's answer could not be read ({message.reason})"]
                if message.get("t") == "importing":
                    importing = str(message.get("package"))
                elif message.get("t") == "probed":
                    return [str(e) for e in message["errors"]]
    except TimeoutError:
        return [f"importing {importing} took longer than {timeout:g}s"]
    except (ChannelClosed, ProtocolError):
        if not _exits_by(pid, deadline):  # it closed its channel, and goes on
            return [f"importing {importing} took longer than {timeout:g}s"]
        _, status = _end(pid)
        pid = 0  # reaped: its id is free, and must never be signalled again
        return [f"importing {importing} ended the import check ({describe_exit(status)})"]
    finally:
        channel.close()
        if pid:
            _end(pid)


def _exits_by(pid: int, deadline: float) -> bool:
    """Whether the child ``pid`` has exited by ``deadline`` (it is not reaped here)."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0])
    finally:
        os.close(fd)


def _end(pid: int) -> tuple[int, int]:
    """End the check's child and all it started (its process group, nerved.process), and
    reap it: ``waitpid``'s answer. The group is signalled only while its leader is unreaped
    (alive, or exited and not yet waited for), so the id cannot belong to anyone else."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)


def run(root: Path, import_timeout: float | None = None) -> int:
    """Check ``root`` as the daemon's start would (nerved.config's ``load_root``), then
    import its code in throwaway forks; the exit code."""
    try:
        config = load_root(root)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    try:
        code = CodeSnapshot.take(
            config.path.parent, config.senses, config.workflows, config.group_members()
        )
        errors = code.refusals() or probe_in_fork(
            list(code.units().values()), import_timeout or IMPORT_TIMEOUT
        )
    except OSError as exc:
        print(f"cannot fork a process to import the packages in: {exc}", file=sys.stderr)
        return EX_OSERR
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        return EX_CONFIG
    print(
        f"{root / 'nerve.yaml'}: ok ({plural(len(config.senses), 'sense')}, "
        f"{plural(len(config.workflows), 'workflow')}, "
        f"{plural(len(config.reflexes), 'reflex', 'reflexes')})"
    )
    return EX_OK
