"""The ops routes of the state API over a memory tracker with sagas in every state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import test_utils

from choreo import AdminCommand
from choreo.deadletter import DLQ_TOPIC, H_TOPIC
from choreo.system_events import MAX_ACTOR_CHARS, MAX_NOTE_CHARS, SYSTEM_TOPIC
from choreo.tracker.api import build_app
from choreo.tracker.api_ops import OpsContext, add_ops_routes
from choreo.transport.base import OutgoingRecord
from tests.procs.tracker_api import Seeded, seeded

pytestmark = pytest.mark.timeout(120)
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def env() -> AsyncIterator[Seeded]:
    async with seeded() as seeded_env:
        yield seeded_env


@pytest.fixture
async def client(env: Seeded) -> AsyncIterator[test_utils.TestClient[Any, Any]]:
    app = build_app(env.tracker.view(), token=TOKEN)
    context = OpsContext(env.tracker.view(), env.h.transport, [env.travel.contract], env.groups)
    add_ops_routes(app, context)
    async with test_utils.TestClient(test_utils.TestServer(app)) as test_client:
        yield test_client


async def call(
    client: test_utils.TestClient[Any, Any], method: str, path: str, status: int, **kw: Any
) -> Any:
    response = await client.request(method, path, headers=AUTH, **kw)
    body = await response.json()
    assert response.status == status, body
    return body


async def test_why_and_unknown_gid(client: test_utils.TestClient[Any, Any], env: Seeded) -> None:
    why = await call(client, "GET", f"/sagas/{env.gids['running']}/why", 200)
    assert why["summary"] == "RUNNING, waiting on hotel (action by hotel)"
    assert why["waiting"][0]["group"] == env.travel.hotel.group
    missing = await call(client, "GET", "/sagas/nope/why", 404)
    assert missing["error"] == "no saga with gid 'nope'"
    response = await client.get(f"/sagas/{env.gids['running']}/why")
    assert response.status == 401  # the app's token guard covers the ops routes


async def test_stalled_lists_stalled_and_stuck(
    client: test_utils.TestClient[Any, Any], env: Seeded
) -> None:
    rows = await call(client, "GET", "/stalled", 200)
    stalled = {r["gid"]: r for r in rows["stalled"]}
    assert set(stalled) == {env.gids["running"], env.gids["compensating"]}
    assert [r["gid"] for r in rows["stuck"]] == [env.gids["stuck"]]
    assert (rows["stalled_total"], rows["stuck_total"]) == (2, 1)
    running = stalled[env.gids["running"]]
    assert running["overdue_s"] > 0
    assert [(w["step"], w["op"]) for w in running["waiting"]] == [("hotel", "action")]
    assert (await call(client, "GET", "/stalled?limit=1", 200))["stalled_total"] == 2
    await call(client, "GET", "/stalled?limit=-1", 400)


async def test_commands_validate_and_refuse(
    client: test_utils.TestClient[Any, Any], env: Seeded
) -> None:
    path = f"/sagas/{env.gids['completed']}/commands"
    bad = await call(client, "POST", path, 400, json={"action": "delete", "actor": "ana"})
    assert bad["error"] == "action must be one of retry, compensate, resolve"
    await call(client, "POST", path, 400, json={"action": "retry"})
    await call(client, "POST", path, 400, data=b"not json")
    stuck = f"/sagas/{env.gids['stuck']}/commands"
    await call(client, "POST", stuck, 400, json={"action": "resolve", "actor": "ana"})
    refused = await call(client, "POST", path, 409, json={"action": "compensate", "actor": "a"})
    assert refused["error"] == (
        "not sent: only a RUNNING saga can be compensated; this one is COMPLETED"
    )
    assert refused["hint"]
    await call(client, "POST", "/sagas/nope/commands", 404, json={"action": "retry", "actor": "a"})


async def test_command_is_published_and_recorded(
    client: test_utils.TestClient[Any, Any], env: Seeded
) -> None:
    env.clock.frozen = None
    gid = env.gids["stuck"]
    body = {"action": "resolve", "actor": "ana@ops", "note": "refunded by hand"}
    sent = await call(client, "POST", f"/sagas/{gid}/commands", 202, json=body)
    assert (sent["gid"], sent["action"]) == (gid, "resolve")
    limit = time.monotonic() + 20
    while not (state := await call(client, "GET", f"/sagas/{gid}", 200))["resolved"]:
        assert time.monotonic() < limit
        await asyncio.sleep(0.05)
    assert state["resolved_by"] == "ana@ops"
    notes = [e["note"] for e in state["timeline"] if e["event_id"] == sent["event_id"]]
    assert notes == ["admin resolve by ana@ops: refunded by hand"]


async def test_dlq_list_show_and_replay(
    client: test_utils.TestClient[Any, Any], env: Seeded
) -> None:
    every = (await call(client, "GET", "/dlq", 200))["items"]
    assert len(every) >= 3
    mine = (await call(client, "GET", f"/dlq?gid={env.gids['compensating']}", 200))["items"]
    assert {d["gid"] for d in mine} == {env.gids["compensating"]}
    assert len((await call(client, "GET", "/dlq?limit=1", 200))["items"]) == 1
    one = await call(client, "GET", f"/dlq/{mine[0]['id']}", 200)
    assert one["payload"].startswith('{"trip_id":')
    assert one["headers"]["choreo-type"] == one["event_type"]
    assert (await call(client, "GET", "/dlq/7:777", 404))["error"] == "no dead letter 7:777"
    await call(client, "GET", "/dlq/x", 400)
    done = await call(client, "POST", "/dlq/replay", 200, json={"ids": [mine[0]["id"]]})
    assert [r["id"] for r in done["replayed"]] == [mine[0]["id"]]
    partition, offset = mine[0]["id"].split(":")
    body = {"partition": int(partition), "offsets": [int(offset)]}
    again = await call(client, "POST", "/dlq/replay", 200, json=body)
    assert again["replayed"][0]["topic"] == "test.travel"
    await call(client, "POST", "/dlq/replay", 404, json={"ids": ["7:777"]})
    await call(client, "POST", "/dlq/replay", 400, json={"ids": []})
    await call(client, "POST", "/dlq/replay", 400, json={"ids": ["bad"]})


async def test_admin_text_is_bounded_and_never_stored(
    client: test_utils.TestClient[Any, Any], env: Seeded
) -> None:
    env.clock.frozen = None
    gid = env.gids["stuck"]
    path = f"/sagas/{gid}/commands"
    too_long = [
        {"action": "resolve", "actor": "a" * (MAX_ACTOR_CHARS + 1), "note": "fixed"},
        {"action": "resolve", "actor": "ana", "note": "n" * (MAX_NOTE_CHARS + 1)},
    ]
    for body in too_long:
        refused = await call(client, "POST", path, 413, json=body)
        assert "limit" in refused["error"]
    huge = {"action": "resolve", "actor": "ana", "note": "n" * 100_000}  # over the body limit
    response = await client.post(path, headers=AUTH, json=huge)
    assert response.status == 413
    await env.h.drain()
    assert env.h.published(AdminCommand) == []
    state = await call(client, "GET", f"/sagas/{gid}", 200)
    assert not state["resolved"]
    ok = {"action": "resolve", "actor": "a" * MAX_ACTOR_CHARS, "note": "n" * MAX_NOTE_CHARS}
    await call(client, "POST", path, 202, json=ok)


async def test_replay_of_a_forged_dead_letter_is_400(
    client: test_utils.TestClient[Any, Any], env: Seeded
) -> None:
    """A dead letter naming choreo.system (here an AdminCommand) is not replayed there."""
    command = AdminCommand(action="resolve", actor="mallory", note="")
    forged = OutgoingRecord(
        DLQ_TOPIC,
        env.gids["stuck"].encode(),
        command.model_dump_json().encode(),
        ((H_TOPIC, SYSTEM_TOPIC.encode()), ("choreo-type", b"choreo.AdminCommand")),
    )
    sent = await env.h.transport.send(forged)
    before = len(env.h.transport.broker.records(SYSTEM_TOPIC))  # type: ignore[attr-defined]
    refused = await call(
        client, "POST", "/dlq/replay", 400, json={"ids": [f"{sent.partition}:{sent.offset}"]}
    )
    assert "came from topic 'choreo.system', which no saga contract" in refused["error"]
    assert len(env.h.transport.broker.records(SYSTEM_TOPIC)) == before  # type: ignore[attr-defined]
    many = {"partition": 0, "offsets": list(range(5000))}
    await call(client, "POST", "/dlq/replay", 413, json=many)


@pytest.mark.parametrize(
    "path",
    ["/dlq?limit=" + "9" * 3000, "/dlq?gid=" + "g" * 300, "/dlq/1:" + "9" * 3000,
     "/stalled?limit=" + "9" * 3000, "/sagas/" + "g" * 300 + "/why"],
)  # fmt: skip
async def test_ops_parameters_are_bounded(
    client: test_utils.TestClient[Any, Any], path: str
) -> None:
    body = await call(client, "GET", path, 400)
    assert len(body["error"]) < 200
