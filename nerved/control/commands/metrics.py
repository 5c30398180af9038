"""metrics: nerve's metrics, as Prometheus reads them.

Result: ``{text}``, the OpenMetrics exposition (``application/openmetrics-text`` 1.0.0,
ending in ``# EOF``): the same series that nerve.yaml's ``metrics.textfile`` holds, which
is written in Prometheus's text format for node_exporter. The series are listed in the
README ("Metrics").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nerved.control.rpc import Params

if TYPE_CHECKING:
    from nerved.control.engine import Engine

NAME = "metrics"
PARAMS: tuple[str, ...] = ()
MUTATES = False
HEAVY = True  # the first call imports prometheus_client; each builds every series


def run(engine: Engine, params: Params) -> Any:
    return {"text": engine.metrics.exposition()}
