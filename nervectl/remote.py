"""The daemon as nervectl sees it: one connection, and every way it can fail made explicit.

``Client`` reports a refused or dropped connection as ``Unreachable``; a socket timeout or a
garbled answer would otherwise surface as a bare ``OSError`` or ``ValueError`` and end in a
traceback. Here all of them become ``Unreachable`` (exit 3), because to the operator they
mean the same thing: the daemon is not answering.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

from nervectl.client import Client, RemoteError, Unreachable

__all__ = ["DEFAULT_TIMEOUT", "FOREVER", "Remote", "RemoteError", "Unreachable"]

DEFAULT_TIMEOUT: Final = 30.0
FOREVER: Final = math.inf


class Remote:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._client = Client(path, DEFAULT_TIMEOUT)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """``timeout`` in seconds bounds the wait for the answer; ``FOREVER`` waits as long as
        the daemon takes (``workflow.wait`` without a timeout)."""
        try:
            if math.isinf(timeout):
                # Client.call reads timeout=None as "the client's default": make that "none".
                self._client.timeout = None
            return self._client.call(method, params, None if math.isinf(timeout) else timeout)
        except (Unreachable, RemoteError):
            raise
        except TimeoutError as exc:
            self.close()
            raise Unreachable(f"no answer from {self.path} within {timeout:g}s") from exc
        except OSError as exc:
            self.close()
            raise Unreachable(f"connection to {self.path} failed: {exc.strerror or exc}") from exc
        except ValueError as exc:  # not JSON, or not JSON-RPC
            self.close()
            raise Unreachable(f"{self.path} answered something that is not JSON-RPC") from exc
        finally:
            self._client.timeout = DEFAULT_TIMEOUT
