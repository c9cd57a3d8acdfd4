"""The state API's operations routes, added to the app ``build_app`` makes:

    GET  /sagas/{gid}/why        what the saga waits on, lag, dead letters, next deadline
    POST /sagas/{gid}/commands   {action, actor, note}: an audited AdminCommand -> {event_id}
    GET  /stalled?limit=         RUNNING past a deadline, COMPENSATING, and STUCK sagas
    GET  /dlq?gid=&limit=        dead letters, newest first
    GET  /dlq/{id}               one dead letter with headers and payload
    POST /dlq/replay             {ids: ["2:17"]} or {partition: 2, offsets: [17]}

They sit behind the app's token guard like every other route. Errors are JSON
``{"error", "hint"}``: 400 bad input, 404 unknown gid or id, 409 an action the saga's
state makes pointless, 413 an actor over 200 or a note over 2000 characters, 503 the
broker did not answer.

A replay goes only to the topic choreo recorded the record came from, and only to a
topic of the tracker's contracts (never ``choreo.system``): a dead letter naming another
topic, or none, is a 400 and nothing is sent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from choreo.errors import TransportError
from choreo.http_guard import json_response
from choreo.saga.contract import SagaContract
from choreo.saga.state import SagaState, SagaStatus
from choreo.tracker import ops
from choreo.tracker.deadletters import DeadLetterReader, describe
from choreo.tracker.http import (
    MAX_ROWS,
    Route,
    json_body,
    known_gid,
    limit,
    problem,
    summary,
    text,
)
from choreo.tracker.view import StateView
from choreo.transport.base import Transport


@dataclass
class OpsContext:
    """What the ops routes need: the tracker's states, a transport on the same broker,
    the contracts, and service -> consumer group where a service's group is not
    ``choreo.<service>``."""

    view: StateView
    transport: Transport
    contracts: Sequence[SagaContract]
    groups: Mapping[str, str] = field(default_factory=dict)
    reader: DeadLetterReader | None = None

    def replay_topics(self) -> frozenset[str]:
        return ops.replay_topics(self.contracts)

    def dead_letter_reader(self) -> DeadLetterReader:
        if self.reader is None:
            self.reader = DeadLetterReader(self.transport)
        return self.reader


OPS = web.AppKey("choreo.ops", OpsContext)


def add_ops_routes(app: web.Application, ctx: OpsContext) -> None:
    app[OPS] = ctx
    for method, path, route in ROUTES:
        app.router.add_route(method, path, guarded(route))
    app.on_cleanup.append(close_reader)


def guarded(route: Route) -> Route:
    async def run(request: web.Request) -> web.Response:
        try:
            return await route(request)
        except TransportError as exc:
            return problem(503, f"the broker did not answer: {exc}", "try again shortly")

    return run


async def close_reader(app: web.Application) -> None:
    reader = app[OPS].reader
    if reader is not None:
        await reader.close()


def stalled_row(state: SagaState, now: float) -> dict[str, Any]:
    waiting = ops.in_flight(state, now)
    row = summary(state)
    overdue = [w["overdue_s"] for w in waiting if w["overdue_s"] is not None]
    row.update(
        waiting=waiting,
        overdue_s=max(overdue, default=None),
        age_s=now - state.started_at,
        resolved_by=state.resolved_by,
    )
    return row


def known(request: web.Request) -> tuple[OpsContext, SagaState]:
    """The app's ops context and the state of the request's ``{gid}`` (404 unknown)."""
    ctx = request.app[OPS]
    gid = known_gid(request)
    state = ctx.view.get(gid)
    if state is None:
        raise web.HTTPNotFound(reason=f"no saga with gid {gid!r}")
    return ctx, state


async def why(request: web.Request) -> web.Response:
    ctx, state = known(request)
    reader = ctx.dead_letter_reader()
    found = await ops.why(state, ctx.contracts, ctx.transport, reader=reader, groups=ctx.groups)
    return json_response(found)


async def commands(request: web.Request) -> web.Response:
    ctx, state = known(request)
    body = await json_body(request)
    action, actor, note = body.get("action"), body.get("actor"), body.get("note", "")
    if action not in ops.ADMIN_ACTIONS:
        return problem(400, f"action must be one of {', '.join(ops.ADMIN_ACTIONS)}")
    if not isinstance(actor, str) or not actor.strip() or not isinstance(note, str):
        return problem(400, "actor (who acts) must be a non-empty string, note a string")
    bounds = {"actor": (actor, ops.MAX_ACTOR_CHARS), "note": (note, ops.MAX_NOTE_CHARS)}
    for name, (value, most) in bounds.items():
        if len(value) > most:
            return problem(413, f"{name} is {len(value)} characters, over the {most} limit")
    if action == "resolve" and not note.strip():
        return problem(400, "resolve needs a note saying what was fixed by hand")
    refused = ops.refusal(state, action)
    if refused is not None:
        return problem(409, f"not sent: {refused}", "`choreo saga why GID` shows its state")
    event_id = await ops.command(ctx.transport, state.gid, state.saga, action, actor, note)
    return json_response({"event_id": event_id, "gid": state.gid, "action": action}, 202)


async def stalled(request: web.Request) -> web.Response:
    view, now, most = request.app[OPS].view, time.time(), limit(request, 200, MAX_ROWS)
    rows: dict[str, list[dict[str, Any]]] = {"stalled": [], "stuck": []}
    for status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.STUCK):
        for state in view.list(status=status, limit=10**9).items:
            row = stalled_row(state, now)
            if status == SagaStatus.STUCK:
                rows["stuck"].append(row)
            elif status == SagaStatus.COMPENSATING or row["overdue_s"] is not None:
                rows["stalled"].append(row)
    totals = {f"{name}_total": len(found) for name, found in rows.items()}
    return json_response({name: found[:most] for name, found in rows.items()} | totals)


async def dlq(request: web.Request) -> web.Response:
    ctx = request.app[OPS]
    gid = text(request, "gid")
    reader = ctx.dead_letter_reader()
    most = limit(request, 100, MAX_ROWS)
    return json_response({"items": await ops.dead_letters(ctx.transport, gid, most, reader=reader)})


async def dlq_one(request: web.Request) -> web.Response:
    reader = request.app[OPS].dead_letter_reader()
    await reader.refresh()
    dead_id = request.match_info["id"]
    try:
        record = reader.get(dead_id)
    except ValueError as exc:
        return problem(400, str(exc))
    if record is None:
        return problem(404, f"no dead letter {dead_id}", "`choreo dlq list` shows their ids")
    return json_response(describe(record, payload=True))


async def dlq_replay(request: web.Request) -> web.Response:
    ctx = request.app[OPS]
    body = await json_body(request)
    ids, offsets, partition = body.get("ids"), body.get("offsets"), body.get("partition")
    if ids is None and isinstance(offsets, list) and isinstance(partition, int):
        ids = [f"{partition}:{offset}" for offset in offsets[: ops.MAX_REPLAY + 1]]
        ids += [""] * (len(offsets) - len(ids))  # counted, not formatted
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return problem(400, 'give {"ids": ["2:17", ...]} or {"partition": 2, "offsets": [17]}')
    if len(ids) > ops.MAX_REPLAY:
        return problem(413, f"{len(ids)} ids; replay at most {ops.MAX_REPLAY} at a time")
    try:
        done = await ops.replay(
            ctx.transport, ids, topics=ctx.replay_topics(), reader=ctx.dead_letter_reader()
        )
    except ValueError as exc:
        return problem(400, str(exc))
    except LookupError as exc:
        return problem(404, str(exc).strip("'\""), "`choreo dlq list` shows their ids")
    return json_response({"replayed": done})


ROUTES: tuple[tuple[str, str, Route], ...] = (
    ("GET", "/sagas/{gid}/why", why),
    ("POST", "/sagas/{gid}/commands", commands),
    ("GET", "/stalled", stalled),
    ("GET", "/dlq", dlq),
    ("POST", "/dlq/replay", dlq_replay),
    ("GET", "/dlq/{id}", dlq_one),
)
