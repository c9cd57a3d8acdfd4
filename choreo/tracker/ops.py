"""Operations on live sagas, shared by the state API's ops routes and tests.

``why`` explains what a saga waits on and why it may not be moving; ``dead_letters`` and
``replay`` read and re-send the dead-letter topic; ``command`` publishes an operator's
audited ``AdminCommand``, which the tracker folds into the saga's timeline and acts on.
Each works over a plain ``Transport``, so the faust tracker and the memory tracker share it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, get_args

from choreo import codec
from choreo.deadletter import DLQ_TOPIC, H_SERVICE, original_event_id, original_record
from choreo.events import Envelope, Message
from choreo.saga.contract import SagaContract
from choreo.saga.state import SagaState, SagaStatus, StepStatus
from choreo.system_events import (
    MAX_ACTOR_CHARS,
    MAX_NOTE_CHARS,
    SYSTEM_TOPIC,
    AdminAction,
    AdminCommand,
)
from choreo.tracker.deadletters import (
    Coordinates,
    DeadLetterReader,
    describe,
    parse_dead_letter_id,
)
from choreo.tracker.lag import diagnose, service_group, waiting_on
from choreo.transport.base import Record, Transport

ADMIN_ACTIONS: tuple[str, ...] = get_args(AdminAction)
OPERATOR_SOURCE = "operator"
MAX_REPLAY = 100  # dead letters in one replay
__all__ = [
    "ADMIN_ACTIONS",
    "MAX_ACTOR_CHARS",
    "MAX_NOTE_CHARS",
    "MAX_REPLAY",
    "command",
    "dead_letters",
    "refusal",
    "replay",
    "replay_topics",
    "service_group",
    "why",
]


async def why(
    state: SagaState,
    contracts: Iterable[SagaContract],
    transport: Transport,
    *,
    reader: DeadLetterReader | None = None,
    groups: Mapping[str, str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """What ``state`` waits on: each step, the service that should act, that service's
    lag on the gid's partition, the saga's dead letters and its next deadline."""
    now = time.time() if now is None else now
    dead = await dead_letters(transport, state.gid, limit=50, reader=reader)
    contract = {c.name: c for c in contracts}.get(state.saga)
    waiting = [] if contract is None else await waiting_on(state, contract, transport, groups, now)
    for entry in waiting:
        entry["dead_letters"] = [d["id"] for d in dead if d["service"] == entry["service"]]
        entry["diagnosis"] = diagnose(state, entry, now)
    due = state.next_deadline()
    return {
        "gid": state.gid,
        "saga": state.saga,
        "status": state.status.value,
        "reason": state.reason,
        "resolved": state.resolved,
        "age_s": max(0.0, now - state.started_at),
        "idle_s": max(0.0, now - state.updated_at),
        "contract_known": contract is not None,
        "waiting": waiting,
        "dead_letters": dead,
        "next_deadline": due,
        "next_deadline_in_s": None if due is None else due - now,
        "summary": _summary(state, waiting, contract is not None),
    }


def in_flight(state: SagaState, now: float) -> list[dict[str, Any]]:
    """The steps a saga waits on, from its state alone (no contract, no broker)."""
    found = []
    for name, step in state.steps.items():
        if state.status == SagaStatus.RUNNING and step.status == StepStatus.PENDING:
            op, since, due = "action", step.dispatched_at, step.deadline_at
        elif step.status == StepStatus.COMPENSATING:
            op, since, due = "compensate", step.compensation_issued_at, step.next_retry_at
        else:
            continue
        found.append(
            {
                "step": name,
                "op": op,
                "since": since,
                "due_at": due,
                "overdue_s": None if due is None or now <= due else now - due,
                "attempts": step.compensation_attempts,
            }
        )
    return found


def _summary(state: SagaState, waiting: list[dict[str, Any]], known: bool) -> str:
    if not known:
        return f"the tracker has no contract named {state.saga!r}"
    if state.status == SagaStatus.STUCK:
        done = " (resolved by an operator)" if state.resolved else ""
        return f"STUCK{done}: {state.reason or 'a compensation ran out of retries'}"
    if state.status.is_terminal:
        return f"{state.status.value}: nothing to wait for"
    if not waiting:
        return f"{state.status.value} with no step in flight"
    steps = ", ".join(f"{w['step']} ({w['op']} by {w['service'] or '?'})" for w in waiting)
    return f"{state.status.value}, waiting on {steps}"


async def dead_letters(
    transport: Transport,
    gid: str | None = None,
    limit: int = 100,
    *,
    reader: DeadLetterReader | None = None,
) -> list[dict[str, Any]]:
    """Dead letters, newest first, optionally of one saga. Without ``reader`` a throwaway
    one reads the topic from the beginning."""
    if reader is not None:
        await reader.refresh()
        return [describe(r) for r in reader.records(gid)[:limit]]
    async with DeadLetterReader(transport) as own:
        return await dead_letters(transport, gid, limit, reader=own)


def replay_topics(contracts: Iterable[SagaContract]) -> frozenset[str]:
    """The topics a replay may write to: the contracts' own, never the system topic (an
    operator acts there through ``command``) nor the dead-letter topic."""
    return frozenset(t for c in contracts for t in c.topics()) - {SYSTEM_TOPIC, DLQ_TOPIC}


async def replay(
    transport: Transport,
    ids: Sequence[str],
    *,
    topics: Collection[str],
    reader: DeadLetterReader | None = None,
) -> list[dict[str, Any]]:
    """Re-send each dead letter's original record to the topic choreo recorded it came
    from, with its event id (``choreo.deadletter.original_record``).

    Every id is checked before anything is sent: ValueError for a malformed id, more
    than ``MAX_REPLAY`` ids, a dead letter that does not name its topic or lost its value,
    or a topic outside ``topics`` (``replay_topics`` of the tracker's contracts);
    LookupError for an id that is not (or no longer) on the dead-letter topic. Dead
    letters of one record (each consumer group that failed on it wrote one) are sent once.

    Every consumer group of the topic receives the replayed record, not only the one of
    the service that failed (``service`` in the answer): a service that had handled the
    event finds its barrier record and re-publishes what it published then, a duplicate
    its consumers ignore; a service with no handler for it skips it."""
    if reader is None:
        async with DeadLetterReader(transport) as own:
            return await replay(transport, ids, topics=topics, reader=own)
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_REPLAY:
        raise ValueError(f"{len(unique)} dead letters in one replay; at most {MAX_REPLAY}")
    wanted: dict[str, Coordinates] = {i: parse_dead_letter_id(i) for i in unique}
    await reader.refresh()
    missing = [i for i in unique if reader.get(i) is None]
    if missing:
        raise LookupError(f"no dead letter with id {', '.join(missing)}")
    whole = await reader.fetch([c for i, c in wanted.items() if _cut(reader, i)])
    records = {(r.partition, r.offset): r for r in whole}
    outgoing = {}
    for dead_id, coordinates in wanted.items():
        preview = reader.get(dead_id)
        assert preview is not None
        record = records.get(coordinates) or Record(
            reader.topic, *coordinates, preview.key, preview.value, preview.headers
        )
        out = original_record(record)
        if out.topic not in topics:
            known = ", ".join(sorted(topics)) or "none"
            raise ValueError(
                f"dead letter {dead_id} came from topic {out.topic[:200]!r}, which no saga "
                f"contract of this tracker uses (known: {known}); replay refused"
            )
        service = (record.header(H_SERVICE) or b"").decode(errors="replace")
        outgoing[dead_id] = (out, original_event_id(record), service)
    replayed = []
    sent_as: dict[tuple[str, str], dict[str, Any]] = {}
    for dead_id, (out, event_id, service) in outgoing.items():
        first = sent_as.get((out.topic, event_id))
        if first is None:
            sent = await transport.send(out)
            first = sent_as[(out.topic, event_id)] = {
                "id": dead_id,
                "topic": sent.topic,
                "partition": sent.partition,
                "offset": sent.offset,
            }
            entry = dict(first)
        else:
            entry = {**first, "id": dead_id, "same_as": first["id"]}
        replayed.append({**entry, "event_id": event_id, "service": service})
    return replayed


def _cut(reader: DeadLetterReader, dead_id: str) -> bool:
    preview = reader.get(dead_id)
    return preview is not None and preview.cut


def refusal(state: SagaState, action: str) -> str | None:
    """Why the tracker would ignore ``action`` on ``state`` (None when it would act)."""
    status = state.status
    if action == "compensate" and status != SagaStatus.RUNNING:
        return f"only a RUNNING saga can be compensated; this one is {status.value}"
    if action == "retry":
        if status == SagaStatus.RUNNING:
            if not any(s.status == StepStatus.PENDING for s in state.steps.values()):
                return "no step is pending, so there is no trigger to re-publish"
        elif not any(s.status == StepStatus.COMPENSATING for s in state.steps.values()):
            return f"no compensation is unconfirmed; the saga is {status.value}"
    if action == "resolve":
        if status != SagaStatus.STUCK:
            return f"only a STUCK saga can be resolved; this one is {status.value}"
        if state.resolved:
            return f"already resolved by {state.resolved_by}"
    return None


async def command(
    transport: Transport, gid: str, saga: str, action: str, actor: str, note: str = ""
) -> str:
    """Publish an ``AdminCommand`` keyed by ``gid``; returns its event id."""
    if action not in ADMIN_ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ADMIN_ACTIONS)}")
    if not actor.strip():
        raise ValueError("an admin command needs an actor (who asked for it)")
    if len(actor) > MAX_ACTOR_CHARS or len(note) > MAX_NOTE_CHARS:
        raise ValueError(
            f"an admin command's actor is at most {MAX_ACTOR_CHARS} characters and its note "
            f"at most {MAX_NOTE_CHARS}"
        )
    event = AdminCommand.model_validate({"action": action, "actor": actor, "note": note})
    envelope = Envelope.first(event, gid=gid, saga=saga, source=OPERATOR_SOURCE)
    await transport.send(codec.encode(Message(envelope, event, SYSTEM_TOPIC)))
    return envelope.event_id
