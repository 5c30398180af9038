"""What every command handler gets: the parsed options, the output, and the daemon on demand.

The connection is opened lazily so that the commands that need no daemon (``init``) never
touch the socket, and closed once by ``main`` whatever the handler did.
"""

from __future__ import annotations

import json
import sys

from nervectl.client import Client

TYPE_CHECKING = False  # typing is not imported at run time: see nervectl.client
if TYPE_CHECKING:
    import argparse
    from typing import Any, TextIO


class Context:
    """``args`` as argparse parsed them, ``socket`` the control socket's path, ``json``
    whether ``--json`` was given, ``out`` where results go (stdout)."""

    def __init__(
        self, args: argparse.Namespace, socket: str, json: bool, out: TextIO | None = None
    ) -> None:
        self.args = args
        self.socket = socket
        self.json = json
        self.out = sys.stdout if out is None else out
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The daemon's client, connected by its first call (:mod:`nervectl.client`)."""
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """:meth:`Client.call`: the method's result; ``timeout`` in seconds (None: 30 s)."""
        return self.client.call(method, params, timeout)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        """A note for the operator, on stderr (never in what a script reads on stdout)."""
        print(f"nervectl: note: {text}", file=sys.stderr)

    def print_json(self, value: Any) -> None:
        """A whole result as ``--json`` prints it: indented, for jq and for people alike."""
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.out)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
