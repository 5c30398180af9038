"""The metric families, built when asked from the counts (nerved.master.metrics.tally) and
from what the master holds now: its queues, active runs, supervisors and senses.

A prometheus_client collector on a registry of nerve's own (never the library's global
one): ``collect()`` runs only when the ``metrics`` method or the textfile asks, and costs
a walk over the configured workflows, senses and units and their active runs (bounded by
``concurrency``), one read of logs.db per workflow with a queue (its oldest run's age) and
one ``stat`` per store file and ``/proc`` read per live worker. Every series is named by
configuration (a workflow, a role its code defines, a sense, a sense group): never a run.

This module imports prometheus_client (a tenth of a second), so it is itself imported
only when the metrics are first asked for (nerved.master.metrics.service).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nerved import _version
from nerved.master.memory import total_rss
from nerved.master.metrics.tally import Histogram
from nerved.master.senses import SenseState
from nerved.master.supervisor import Supervisor
from nerved.master.workflows.runs import Flow
from nerved.states import FINAL, RunStatus, WorkerState
from nerved.store.records import now_ms

ACTIVE_SHOWN: Final = (RunStatus.QUEUED, RunStatus.STARTED, RunStatus.WAITING)
ENDS_SHOWN: Final = tuple(status for status in RunStatus if status in FINAL)  # enum order


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the families are read from, each asked at every collect: the workflows as the
    manager holds them, the senses, every unit's supervisor, when a run was created (ms, or
    None: not committed yet, or gone), logs.db's files, and the commits' histogram."""

    flows: Callable[[], Iterable[Flow]]
    senses: Callable[[], Iterable[SenseState]]
    supervisors: Callable[[], Iterable[Supervisor]]
    created_at: Callable[[str], int | None]
    store_files: Callable[[], Iterable[Path]]
    commits: Histogram


class NerveCollector(Collector):
    """nerve's own series; the master's process series come from prometheus_client's
    ProcessCollector on the same registry (nerved.master.metrics.service)."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "nerve_build_info", "The running nerved's version (always 1).", labels=["version"]
        )
        info.add_metric([_version.__version__], 1)
        yield info
        flows = [flow for flow in self.sources.flows() if not flow.removed]
        yield from _runs(flows, self.sources.created_at)
        yield from _steps(flows)
        yield from _workers(list(self.sources.supervisors()))
        yield from _senses(list(self.sources.senses()))
        yield from _store(self.sources.store_files(), self.sources.commits)


def _runs(flows: list[Flow], created_at: Callable[[str], int | None]) -> Iterator[Metric]:
    ended = CounterMetricFamily(
        "nerve_runs",
        "Runs that reached a final status since nerved started, by workflow and status.",
        labels=["workflow", "status"],
    )
    active = GaugeMetricFamily(
        "nerve_runs_active",
        "Runs queued, started (a worker has them or will) and waiting (for a signal or a"
        " time), by workflow.",
        labels=["workflow", "status"],
    )
    oldest = GaugeMetricFamily(
        "nerve_queue_oldest_age_seconds",
        "How long the oldest queued run of each workflow has waited for a slot (0: none).",
        labels=["workflow"],
        unit="seconds",
    )
    now = now_ms()
    for flow in flows:
        for status in ENDS_SHOWN:
            ended.add_metric([flow.name, status], flow.tally.ended.get(status, 0))
        waiting = sum(1 for run in flow.active.values() if run.waiting is not None)
        counts = (len(flow.queue), len(flow.active) - waiting, waiting)
        for status, count in zip(ACTIVE_SHOWN, counts, strict=True):
            active.add_metric([flow.name, status], count)
        since = created_at(flow.queue[0].run_id) if flow.queue else None
        oldest.add_metric([flow.name], 0.0 if since is None else max(now - since, 0) / 1000)
    yield from (ended, active, oldest)


def _steps(flows: list[Flow]) -> Iterator[Metric]:
    durations = HistogramMetricFamily(
        "nerve_step_duration_seconds",
        "Steps recorded, by how long their try took: from its hand-out to a worker (or the"
        " step before) to its record, the role and the moderator's decision.",
        labels=["workflow", "role"],
        unit="seconds",
    )
    failures = CounterMetricFamily(
        "nerve_step_failures",
        "Failed tries of a step (raised, asked to retry, gave up, timed out), by workflow and"
        " role.",
        labels=["workflow", "role"],
    )
    for flow in flows:
        for role, histogram in sorted(flow.tally.steps.items()):
            durations.add_metric([flow.name, role], histogram.cumulative(), sum_value=histogram.sum)
        for role, count in sorted(flow.tally.failures.items()):
            failures.add_metric([flow.name, role], count)
    yield from (durations, failures)


def _workers(supervisors: list[Supervisor]) -> Iterator[Metric]:
    labels = ["kind", "name"]
    restarts = CounterMetricFamily(
        "nerve_worker_restarts",
        "Workers of a unit that died and were replaced (kind sense: a sense group's).",
        labels=labels,
    )
    fatal = GaugeMetricFamily(
        "nerve_worker_fatal",
        "1 while a unit is fatal: its workers kept dying before any work, nerve stopped"
        " restarting them until a reload brings new code.",
        labels=labels,
    )
    memory = GaugeMetricFamily(
        "nerve_worker_resident_memory_bytes",
        "Resident memory of a unit's live workers (not what they started).",
        labels=labels,
        unit="bytes",
    )
    for supervisor in supervisors:
        names = [supervisor.kind, supervisor.name]
        restarts.add_metric(names, supervisor.restarts)
        fatal.add_metric(names, int(supervisor.state is WorkerState.FATAL))
        memory.add_metric(names, total_rss(worker.pid for worker in supervisor.live()))
    yield from (restarts, fatal, memory)


def _senses(senses: list[SenseState]) -> Iterator[Metric]:
    computes = CounterMetricFamily(
        "nerve_sense_computes", "Computes of a sense that ended, errors included.", labels=["sense"]
    )
    errors = CounterMetricFamily(
        "nerve_sense_errors", "Computes of a sense that raised or timed out.", labels=["sense"]
    )
    for state in senses:
        computes.add_metric([state.name], state.computes)
        errors.add_metric([state.name], state.errors)
    yield from (computes, errors)


def _store(files: Iterable[Path], commits: Histogram) -> Iterator[Metric]:
    duration = HistogramMetricFamily(
        "nerve_store_commit_duration_seconds",
        "Commits of logs.db (one per turn that wrote), by how long each took.",
        unit="seconds",
    )
    duration.add_metric([], commits.cumulative(), sum_value=commits.sum)
    size = 0
    for path in files:
        with contextlib.suppress(OSError):
            size += path.stat().st_size
    yield duration
    yield GaugeMetricFamily(
        "nerve_store_size_bytes", "logs.db and its write-ahead log.", size, unit="bytes"
    )
