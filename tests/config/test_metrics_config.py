"""nerve.yaml's ``metrics:`` (nerved.config.metrics): the textfile's form and the interval."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_support import errors_of, parse

from nerved.config import MetricsConfig


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", MetricsConfig()),
        ("metrics:\n", MetricsConfig()),
        ("metrics: {}\n", MetricsConfig(None, 15_000)),
        (
            "metrics: {textfile: /var/lib/prometheus/node-exporter/nerve.prom}\n",
            MetricsConfig(Path("/var/lib/prometheus/node-exporter/nerve.prom"), 15_000),
        ),
        ("metrics: {textfile: null, interval: 1m}\n", MetricsConfig(None, 60_000)),
        ("metrics: {textfile: /x/n.prom, interval: 1s}\n", MetricsConfig(Path("/x/n.prom"), 1_000)),
        ("metrics: {interval: 1h}\n", MetricsConfig(None, 3_600_000)),
    ],
)
def test_metrics(text: str, expected: MetricsConfig) -> None:
    assert parse(text).metrics == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("metrics: 3\n", "nerve.yaml:1: metrics: expected a mapping"),
        (
            "metrics: {textfile: nerve.prom}\n",
            "metrics.textfile: must be an absolute path, got 'nerve.prom'",
        ),
        ("metrics: {textfile: /var/lib/nerve.txt}\n", "metrics.textfile: must end in .prom"),
        ("metrics: {textfile: /var/lib/.prom}\n", "metrics.textfile: must end in .prom"),
        (
            "metrics: {textfile: 12}\n",
            "metrics.textfile: must be a file's path, got an integer (12)",
        ),
        ("metrics: {textfile: [a]}\n", "metrics.textfile: must be a file's path, got a list"),
        ("metrics: {interval: 500ms}\n", "metrics.interval: must be at least 1s"),
        ("metrics: {interval: 2h}\n", "metrics.interval: must be at most 1h"),
        ("metrics: {intervall: 2s}\n", "metrics.intervall: unknown key"),
    ],
)
def test_metrics_errors(text: str, error: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert error in errors[0], errors
