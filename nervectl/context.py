"""What every command handler gets: the parsed options, the output, and the daemon on demand.

The connection is opened lazily so that the commands that need no daemon (``init``) never
touch the socket, and closed once by ``main`` whatever the handler did.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nervectl.remote import DEFAULT_TIMEOUT, Remote
from nervectl.render import dumps


@dataclass
class Context:
    args: argparse.Namespace
    socket: Path
    json: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)
    _remote: Remote | None = None

    @property
    def remote(self) -> Remote:
        if self._remote is None:
            self._remote = Remote(self.socket)
        return self._remote

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        return self.remote.call(method, params, timeout)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def print_json(self, value: Any) -> None:
        print(dumps(value), file=self.out)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
