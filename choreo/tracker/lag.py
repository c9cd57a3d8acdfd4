"""Which steps a saga waits on, and how far behind the services that should act are.

A step waits on its service: for its action while the saga runs (the trigger is on the
step's ``on`` topic), for its compensation while the saga compensates or is stuck. The
service's consumer group lag is read on the one partition the gid hashes to, the same
partition every producer of that gid writes to. ``diagnose`` turns an entry into a
sentence for people: which of lag, a dead letter, a silent handler or a late tracker is
the likely cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from choreo.saga.contract import SagaContract, Step
from choreo.saga.state import SagaState, SagaStatus, StepState, StepStatus
from choreo.transport.base import TopicPartition, Transport
from choreo.transport.partitioner import partition_for

TRACKER_SLACK = 2.0  # seconds past a due time before "the tracker has not acted" is said


def service_group(service: str, groups: Mapping[str, str] | None = None) -> str:
    """The consumer group of a service: ``choreo.<name>`` unless ``groups`` says otherwise."""
    return (groups or {}).get(service) or f"choreo.{service}"


def _in_flight(state: SagaState, contract: SagaContract) -> list[tuple[Step, StepState, str]]:
    found = []
    for step in contract.steps:
        current = state.steps.get(step.name)
        if current is None:
            continue
        if state.status == SagaStatus.RUNNING and current.status == StepStatus.PENDING:
            found.append((step, current, "action"))
        elif current.status == StepStatus.COMPENSATING and step.compensation is not None:
            found.append((step, current, "compensate"))
    return found


async def partition_lag(transport: Transport, group: str, topic: str, gid: str) -> dict[str, Any]:
    """The group's committed offset, the end offset and the lag on ``gid``'s partition."""
    partitions = await transport.partitions_for(topic)
    if partitions == 0:
        return {"partition": None, "committed": None, "end_offset": 0, "lag": 0}
    tp = TopicPartition(topic, partition_for(gid.encode(), partitions))
    committed = (await transport.group_offsets(group)).get(tp)
    end = (await transport.end_offsets([tp])).get(tp, 0)
    return {
        "partition": tp.partition,
        "committed": committed,
        "end_offset": end,
        "lag": max(0, end - (committed or 0)),
    }


async def waiting_on(
    state: SagaState,
    contract: SagaContract,
    transport: Transport,
    groups: Mapping[str, str] | None,
    now: float,
) -> list[dict[str, Any]]:
    """One entry per step in flight, in contract order."""
    entries = []
    for step, current, op in _in_flight(state, contract):
        event = step.on if op == "action" else step.compensation
        assert event is not None
        since = current.dispatched_at if op == "action" else current.compensation_issued_at
        group = service_group(step.service, groups) if step.service else ""
        entry: dict[str, Any] = {
            "step": step.name,
            "op": op,
            "service": step.service,
            "event_type": event.event_type,
            "topic": event.topic,
            "group": group,
            "since": since,
            "waited_s": None if since is None else max(0.0, now - since),
            "deadline_at": current.deadline_at if op == "action" else None,
            "overdue_s": None,
            "attempts": current.compensation_attempts,
            "next_retry_at": current.next_retry_at if op == "compensate" else None,
        }
        if entry["deadline_at"] is not None and now > entry["deadline_at"]:
            entry["overdue_s"] = now - entry["deadline_at"]
        if group:
            entry.update(await partition_lag(transport, group, event.topic, state.gid))
        else:
            entry.update({"partition": None, "committed": None, "end_offset": 0, "lag": 0})
        entries.append(entry)
    return entries


def diagnose(state: SagaState, w: dict[str, Any], now: float) -> str:
    """Why the step of ``w`` (a ``waiting_on`` entry with its dead letters) is not moving."""
    return "; ".join(filter(None, [_cause(state, w), _late(w, now)]))


def _cause(state: SagaState, w: dict[str, Any]) -> str:
    where, group, service = f"{w['topic']}[{w['partition']}]", w["group"], w["service"]
    if not service:
        return f"step {w['step']!r} names no service; add service=... to its Step"
    if w["dead_letters"]:
        return (
            f"{service} dead-lettered this saga's events ({', '.join(w['dead_letters'])}); "
            "fix the cause, then `choreo dlq replay ID`"
        )
    if w["end_offset"] == 0:
        return f"nothing was ever published on {where}"
    if w["committed"] is None:
        return f"group {group} never committed on {where}: is {service} running?"
    if w["lag"] > 0:
        return f"group {group} is {w['lag']} record(s) behind on {where}: {service} is slow or down"
    if state.status == SagaStatus.STUCK:
        return (
            f"{service} read the compensation but never confirmed it; fix {service}, then "
            "`choreo saga retry` (a fresh budget) or `choreo saga resolve`"
        )
    if w["op"] == "compensate":
        return f"{service} read the compensation but has not confirmed it; the tracker retries"
    return (
        f"{service} read everything on {where} but did not answer; the tracker compensates "
        "at the deadline, or `choreo saga retry` re-publishes the trigger"
    )


def _late(w: dict[str, Any], now: float) -> str:
    """The tracker should have acted by now (it checks deadlines every tick)."""
    due = w["deadline_at"] if w["op"] == "action" else w["next_retry_at"]
    if due is None or now - due < TRACKER_SLACK:
        return ""
    what = "deadline" if w["op"] == "action" else "compensation retry"
    return (
        f"its {what} passed {now - due:.0f}s ago and the tracker has not acted: "
        "is the tracker running and keeping up?"
    )
