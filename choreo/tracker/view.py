"""What the state API reads: saga states and the tracker's counters.

Both tracker shells feed ``TrackerMetrics`` the same way (``TrackerPipeline`` observes
each fold's transition) and expose their states through ``StatesView``, so the API
cannot tell them apart.
"""

from __future__ import annotations

import builtins
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Histogram

from choreo.saga.machine import Publish
from choreo.saga.packing import Peek
from choreo.saga.state import SagaState, SagaStatus, StepStatus
from choreo.tracker.states import SagaTable

QUANTILES = (0.5, 0.9, 0.99)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values; NaN when there are none (as Prometheus)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# Bucket bounds in seconds: from a deadline to its compensation (the tracker's timer and
# a send; seconds mean it is behind), and a step's own duration (milliseconds to hours).
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class Delays:
    """Deadline-to-compensation delays: a prometheus_client histogram (bounded buckets,
    no sample kept however long the tracker runs), with their count and the longest."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "choreo_deadline_to_compensation_seconds",
            "From a step's deadline to the tracker publishing its compensation.",
            buckets=DELAY_BUCKETS,
            registry=None,  # exposed by the state API's own registry (tracker.exposition)
        )
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.histogram.observe(value)
        self.count += 1
        self.max = max(self.max, value)


def _step_histogram() -> Histogram:
    return Histogram(
        "choreo_step_seconds",
        "From a step's trigger to its done or failed event, by saga and step.",
        ["saga", "step"],  # the contracts' names: a bounded label set, never a gid
        buckets=STEP_BUCKETS,
        registry=None,
    )


@dataclass
class TrackerMetrics:
    compensations_issued: int = 0
    stalls_detected: int = 0
    folds: int = 0  # transitions of saga states the tracker made durable
    # Deliveries past a record never folded (the faust tracker sought back) and gaps
    # found in the log itself (choreo.tracker.offsets).
    read_gaps: int = 0
    log_gaps: int = 0
    expired: int = 0  # settled sagas removed after their retention
    deadline_to_compensation: Delays = field(default_factory=Delays)
    step_seconds: Histogram = field(default_factory=_step_histogram)

    def observe(
        self,
        before: SagaState | None,
        after: SagaState,
        actions: Sequence[Publish],
        sent_at: float,
    ) -> None:
        """Count what one fold decided (the transition's ``actions``), once the records
        they became are acknowledged at ``sent_at``."""
        self.folds += 1
        self._finished_steps(before, after)
        compensated = {a.step for a in actions if a.op == "compensate"}
        self.compensations_issued += sum(a.op == "compensate" for a in actions)
        if before is None or before.status != SagaStatus.RUNNING:
            return
        if after.status == SagaStatus.RUNNING or "timed out" not in after.reason:
            return
        self.stalls_detected += 1
        for name in sorted(compensated):
            step = after.steps.get(name)
            if step is not None and step.outcome_note == "timed out" and step.deadline_at:
                self.deadline_to_compensation.observe(max(0.0, sent_at - step.deadline_at))

    def _finished_steps(self, before: SagaState | None, after: SagaState) -> None:
        """Observe the duration of every step this fold saw answer (done or failed)."""
        for name, step in after.steps.items():
            if step.status not in _ANSWERED or step.finished_at is None:
                continue
            if step.dispatched_at is None:
                continue
            old = before.steps.get(name) if before is not None else None
            if old is not None and old.status in _ANSWERED:
                continue
            seconds = max(0.0, step.finished_at - step.dispatched_at)
            self.step_seconds.labels(after.saga, name).observe(seconds)


_ANSWERED = frozenset({StepStatus.DONE, StepStatus.FAILED})


@dataclass(frozen=True)
class Page:
    items: list[SagaState]
    total: int
    next_offset: int | None


class StateView(Protocol):
    """What the HTTP API needs of a tracker."""

    def list(
        self,
        *,
        status: SagaStatus | None = None,
        saga: str | None = None,
        since: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page: ...

    def get(self, gid: str) -> SagaState | None: ...

    def counts(self) -> dict[str, Any]: ...

    def step_latencies(self) -> builtins.list[dict[str, Any]]: ...

    def metrics(self) -> TrackerMetrics: ...


def _as_state(value: SagaState | Mapping[str, Any]) -> SagaState:
    return value if isinstance(value, SagaState) else SagaState.model_validate(value)


class StatesView:
    """A ``StateView`` over a ``SagaTable`` (the trackers' own) or any mapping of gid to
    state (values ``SagaState`` objects or their JSON form). Over a ``SagaTable``, lists
    and counts read the packed states without building them, and only ``get`` reads a
    saga's timeline."""

    def __init__(
        self,
        states: Mapping[str, SagaState | Mapping[str, Any]] | SagaTable,
        metrics: TrackerMetrics | Callable[[], TrackerMetrics],
    ) -> None:
        self._states = states
        self._metrics = metrics

    def _all(self) -> Iterable[SagaState]:
        if isinstance(self._states, SagaTable):
            table = self._states
            return (s for gid in table if (s := table.hot(gid)) is not None)
        return (_as_state(v) for v in list(self._states.values()))

    def _peeks(self) -> Iterable[tuple[str, Peek]]:
        if isinstance(self._states, SagaTable):
            return self._states.peeks()
        return (
            (s.gid, Peek(s.saga, s.status, s.version, s.started_at, s.updated_at, s.resolved))
            for s in self._all()
        )

    def list(
        self,
        *,
        status: SagaStatus | None = None,
        saga: str | None = None,
        since: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """Newest first; ``since`` keeps sagas updated at or after that epoch time. Over a
        ``SagaTable`` the items come without their timelines (``get`` gives one whole)."""
        found = [
            (p.started_at, gid)
            for gid, p in self._peeks()
            if (status is None or p.status == status)
            and (saga is None or p.saga == saga)
            and (since is None or p.updated_at >= since)
        ]
        found.sort(key=lambda row: (-row[0], row[1]))
        items = [s for _at, gid in found[offset : offset + limit] if (s := self._hot(gid))]
        following = offset + len(items)
        return Page(items, len(found), following if following < len(found) else None)

    def _hot(self, gid: str) -> SagaState | None:
        if isinstance(self._states, SagaTable):
            return self._states.hot(gid)
        return self.get(gid)

    def get(self, gid: str) -> SagaState | None:
        value = self._states.get(gid)
        return None if value is None else _as_state(value)

    def counts(self) -> dict[str, Any]:
        by_status: Counter[str] = Counter()
        by_saga: dict[str, Counter[str]] = {}
        unresolved = 0
        if isinstance(self._states, SagaTable):
            rows = self._states.counts()
        else:
            rows = Counter((p.saga, p.status.value, p.stuck_unresolved) for _, p in self._peeks())
        for (saga, status, stuck_unresolved), n in rows.items():
            by_status[status] += n
            by_saga.setdefault(saga, Counter())[status] += n
            unresolved += n * stuck_unresolved
        return {
            "total": sum(by_status.values()),
            "by_status": {st.value: by_status[st.value] for st in SagaStatus},
            "by_saga": {name: dict(c) for name, c in sorted(by_saga.items())},
            "stuck_unresolved": unresolved,
        }

    def step_latencies(self) -> builtins.list[dict[str, Any]]:
        """Seconds from a step's dispatch to its success, per saga and step; a success
        that came after the deadline counts too, since that slowness is what to see."""
        seen: dict[tuple[str, str], list[float]] = {}
        for s in self._all():
            for name, step in s.steps.items():
                if step.status == StepStatus.FAILED:
                    continue
                if step.dispatched_at is not None and step.finished_at is not None:
                    latency = step.finished_at - step.dispatched_at
                    seen.setdefault((s.saga, name), []).append(latency)
        rows = []
        for (saga, name), values in sorted(seen.items()):
            values.sort()
            row: dict[str, Any] = {"saga": saga, "step": name, "count": len(values)}
            row.update({f"p{round(q * 100)}": quantile(values, q) for q in QUANTILES})
            rows.append(row)
        return rows

    def metrics(self) -> TrackerMetrics:
        return self._metrics() if callable(self._metrics) else self._metrics
