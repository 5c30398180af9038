"""nerve.yaml's ``store:`` (issue 15): sqlite, or a PostgreSQL URL; a wrong one is an error
that never shows more of the URL than its scheme (a password may follow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerved.config import ConfigError, parse_config


def store_of(text: str) -> str | None:
    return parse_config(text, Path("/etc/nerve/nerve.yaml")).store


def errors_of(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("/etc/nerve/nerve.yaml"))
    return caught.value.errors


def test_sqlite_is_the_default_and_may_be_said() -> None:
    assert store_of("") is None
    assert store_of("store: sqlite\n") is None


@pytest.mark.parametrize(
    "url", ["postgresql://nerve@db/nerve?sslmode=verify-full", "postgres:///nerve?host=/run/pg"]
)
def test_a_postgresql_url_is_kept_as_it_is(url: str) -> None:
    assert store_of(f"store: '{url}'\n") == url


def test_another_url_is_refused_without_showing_its_password() -> None:
    errors = errors_of("store: mysql://nerve:s3cret@db/nerve\n")
    assert errors == (
        "nerve.yaml:1: store: expected sqlite or a postgresql:// URL, got 'mysql' URL",
    )
    assert not any("s3cret" in e for e in errors)


@pytest.mark.parametrize("value", ["5", "[a]", "{a: 1}", "sqlite3", "/var/lib/nerve/logs.db"])
def test_anything_else_is_refused(value: str) -> None:
    (error,) = errors_of(f"store: {value}\n")
    assert error.startswith("nerve.yaml:1: store: expected sqlite or a postgresql:// URL")
