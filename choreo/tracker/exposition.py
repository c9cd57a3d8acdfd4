"""The tracker's ``/metrics``, written by prometheus_client.

A collector reads the tracker's counters (``TrackerMetrics``) and its states' counts when
Prometheus scrapes, into a registry of the API's own (no process-wide registry, so two
trackers in one process never mix). Label sets are bounded: saga states, and the
contracts' saga and step names; never a gid.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from choreo.saga.state import SagaStatus
from choreo.tracker.view import StateView


class TrackerCollector(Collector):
    def __init__(self, view: StateView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        by_status = self.view.counts()["by_status"]
        metrics = self.view.metrics()
        sagas = GaugeMetricFamily("choreo_sagas", "Sagas the tracker knows, by state.",
                                  labels=["state"])  # fmt: skip
        for status in SagaStatus:
            sagas.add_metric([status.value], by_status.get(status.value, 0))
        yield sagas
        counters = (
            ("choreo_compensations_issued", "Compensation events the tracker published.",
             metrics.compensations_issued),
            ("choreo_stalls_detected", "Sagas sent to compensation by a step's deadline.",
             metrics.stalls_detected),
            ("choreo_tracker_folds", "Saga state transitions the tracker made durable.",
             metrics.folds),
            ("choreo_tracker_read_gaps", "Records delivered past one never folded (the "
             "tracker sought back to it).", metrics.read_gaps),
            ("choreo_tracker_log_gaps", "Offsets without records in the log itself.",
             metrics.log_gaps),
            ("choreo_sagas_expired", "Settled sagas removed after their retention.",
             metrics.expired),
        )  # fmt: skip
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        delays = metrics.deadline_to_compensation
        yield from delays.histogram.collect()
        yield GaugeMetricFamily(
            "choreo_deadline_to_compensation_max_seconds",
            "The longest delay from a step's deadline to its compensation seen.",
            value=delays.max,
        )
        yield from metrics.step_seconds.collect()


def render_metrics(view: StateView) -> bytes:
    """The text exposition of ``view``'s metrics, as prometheus_client writes it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrackerCollector(view))
    return generate_latest(registry)
