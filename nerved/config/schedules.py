"""A reflex's ``cron:``, ``timezone:`` and ``catchUp:``, and a workflow reflex's ``key:``,
checked as every other key is.

Its own module because both kinds of reflex take the clock keys, and because what makes an
expression or a zone valid is ``cron``'s (cronsim and the system's tzdata), not YAML's:
here each failure becomes a message with its line and key path.
"""

from __future__ import annotations

from nerved.config.cron import CronError, check_expression, zone
from nerved.config.messages import UNREADABLE, describe, show
from nerved.config.model import CronSpec
from nerved.config.walker import Entry, Walker


def cron_spec(walker: Walker, fields: dict[str, Entry], path: str) -> CronSpec | None:
    """The reflex's schedule (None without ``cron``); ``timezone`` and ``catchUp`` without a
    ``cron`` are reported, as keys that apply to nothing."""
    if "cron" not in fields:
        for key in ("timezone", "catchUp"):
            if key in fields:
                walker.error(fields[key].line, f"{path}.{key}", "only applies with cron")
        return None
    expr = _string(walker, fields["cron"], f"{path}.cron", "a crontab expression")
    if expr is not None:
        try:
            check_expression(expr)
        except CronError as exc:
            walker.error(fields["cron"].line, f"{path}.cron", f"{show(expr)} {exc}")
            expr = None
    name: str | None = None
    if "timezone" in fields:
        entry = fields["timezone"]
        name = _string(walker, entry, f"{path}.timezone", "a time zone name")
        if name is not None:
            try:
                zone(name)
            except CronError as exc:
                walker.error(entry.line, f"{path}.timezone", str(exc))
                name = None
    catch_up = False
    if "catchUp" in fields:
        entry = fields["catchUp"]
        value = walker.value(entry.value, f"{path}.catchUp")
        if isinstance(value, bool):
            catch_up = value
        elif value is not UNREADABLE:
            walker.error(
                entry.line, f"{path}.catchUp", f"expected true or false, got {describe(value)}"
            )
    if expr is None:
        return None
    return CronSpec(expr=" ".join(expr.split()), timezone=name, catch_up=catch_up)


def json_pointer(walker: Walker, entry: Entry, path: str) -> str | None:
    """``key:``, an RFC 6901 JSON pointer: ``""`` (the whole payload) or ``/a/b``."""
    pointer = _string(walker, entry, path, "a JSON pointer")
    if pointer is None:
        return None
    if pointer and not pointer.startswith("/"):
        walker.error(
            entry.line,
            path,
            f"a JSON pointer is empty or starts with '/' (such as /{pointer}), got {show(pointer)}",
        )
        return None
    for escape in pointer.split("~")[1:]:
        if escape[:1] not in ("0", "1"):
            walker.error(entry.line, path, "'~' is written '~0' and '/' in a name '~1' (RFC 6901)")
            return None
    return pointer


def _string(walker: Walker, entry: Entry, path: str, what: str) -> str | None:
    value = walker.value(entry.value, path)
    if isinstance(value, str):
        return value
    if value is not UNREADABLE:
        walker.error(entry.line, path, f"expected {what} (a string), got {describe(value)}")
    return None
