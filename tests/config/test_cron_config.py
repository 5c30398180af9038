"""``cron:``, ``timezone:``, ``catchUp:`` of reflexes and a workflow reflex's ``key:`` in
nerve.yaml (nerved.config.schedules): what they make, and each mistake with its line."""

from __future__ import annotations

import pytest
from config_support import errors_of, parse

from nerved.config import CronSpec, SenseReflex, WorkflowReflex

HEAD = "senses: {a: , b: }\nworkflows: {w: }\nreflexes:\n"


def test_cron_reflexes_and_a_key() -> None:
    config = parse(
        HEAD
        + "  - kind: workflow\n    workflow: w\n    cron: '30 3  * * *'\n"
        + "    timezone: Europe/Berlin\n    catchUp: true\n"
        + "  - {kind: sense, sense: a, cron: '*/5 * * * *'}\n"
        + "  - {kind: workflow, workflow: w, on: [b], key: /alert}\n"
    )
    assert config.reflexes == (
        WorkflowReflex("w", (), line=4, cron=CronSpec("30 3 * * *", "Europe/Berlin", True)),
        SenseReflex("a", None, (), line=9, cron=CronSpec("*/5 * * * *")),
        WorkflowReflex("w", ("b",), line=10, key="/alert"),
    )


RULES = [
    ("{kind: workflow, workflow: w, cron: '61 * * * *'}", 4, "reflexes[0].cron",
     "'61 * * * *' is not a crontab expression: bad minute field"),
    ("{kind: workflow, workflow: w, cron: '0 3 * *'}", 4, "reflexes[0].cron",
     "'0 3 * *' expected five fields (minute hour day-of-month month day-of-week), got 4"),
    ("{kind: workflow, workflow: w, cron: 5}", 4, "reflexes[0].cron",
     "expected a crontab expression (a string), got an integer (5)"),
    ("{kind: workflow, workflow: w, cron: '0 3 * * *', timezone: Europe/Berln}", 4,
     "reflexes[0].timezone", "unknown time zone 'Europe/Berln'"),
    ("{kind: workflow, workflow: w, cron: '0 3 * * *', catchUp: yes please}", 4,
     "reflexes[0].catchUp", "expected true or false, got a string ('yes please')"),
    ("{kind: workflow, workflow: w, on: [a], cron: '0 3 * * *'}", 4, "reflexes[0].cron",
     "cron replaces on: a reflex fires on a clock or on signals, not both (on is on line 4)"),
    ("{kind: sense, sense: a, interval: 1s, cron: '0 3 * * *'}", 4, "reflexes[0].cron",
     "cron replaces interval and on"),
    ("{kind: workflow, workflow: w, on: [a], timezone: UTC}", 4, "reflexes[0].timezone",
     "only applies with cron"),
    ("{kind: sense, sense: a, on: [b], catchUp: true}", 4, "reflexes[0].catchUp",
     "only applies with cron"),
    ("{kind: workflow, workflow: w}", 4, "reflexes[0].on", "(or cron:)"),
    ("{kind: workflow, workflow: w, on: [a], key: alert}", 4, "reflexes[0].key",
     "a JSON pointer is empty or starts with '/' (such as /alert), got 'alert'"),
    ("{kind: workflow, workflow: w, on: [a], key: /a~2}", 4, "reflexes[0].key", "RFC 6901"),
    ("{kind: workflow, workflow: w, cron: '0 3 * * *', key: /a}", 4, "reflexes[0].key",
     "a cron reflex keys each run by its firing"),
    ("{kind: sense, sense: a, on: [b], key: /a}", 4, "reflexes[0].key",
     "'key' belongs to a reflex of kind: workflow"),
]  # fmt: skip


@pytest.mark.parametrize(("item", "line", "path", "message"), RULES)
def test_rule(item: str, line: int, path: str, message: str) -> None:
    [error] = errors_of(f"{HEAD}  - {item}\n")
    prefix = f"nerve.yaml:{line}: {path}: "
    assert error.startswith(prefix), error
    assert message in error.removeprefix(prefix), error


def test_cron_on_its_own_line_is_named_there() -> None:
    [error] = errors_of(HEAD + "  - kind: workflow\n    workflow: w\n\n    cron: '0 0 31 2 *'\n")
    assert error == (
        "nerve.yaml:7: reflexes[0].cron: '0 0 31 2 *' is not a crontab expression: "
        "bad day-of-month field"
    )
