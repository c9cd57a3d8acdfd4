"""The ops layer on the memory transport: why, dead letters, replay, admin commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from choreo import AdminCommand, codec
from choreo.saga import SagaState, SagaStatus
from choreo.system_events import SYSTEM_TOPIC
from choreo.tracker import ops
from choreo.tracker.deadletters import DeadLetterReader, parse_dead_letter_id
from choreo.transport.base import OutgoingRecord
from choreo.transport.memory import MemoryTransport
from tests.procs.tracker_api import Seeded, seeded

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def env() -> AsyncIterator[Seeded]:
    async with seeded() as seeded_env:
        yield seeded_env


def state(env: Seeded, name: str) -> SagaState:
    found = env.tracker.get(env.gids[name])
    assert found is not None
    return found


async def why(env: Seeded, name: str) -> dict[str, object]:
    contracts = [env.travel.contract]
    return await ops.why(state(env, name), contracts, env.h.transport, groups=env.groups)


async def test_why_running_past_its_deadline(env: Seeded) -> None:
    found = await why(env, "running")
    assert found["status"] == "RUNNING"
    assert found["summary"] == "RUNNING, waiting on hotel (action by hotel)"
    [wait] = found["waiting"]  # type: ignore[misc]
    assert (wait["step"], wait["op"], wait["service"], wait["event_type"]) == (
        "hotel",
        "action",
        "hotel",
        "FlightBooked",
    )
    assert wait["group"] == env.travel.hotel.group
    assert wait["lag"] == 0
    assert wait["committed"] == wait["end_offset"] > 0
    assert wait["overdue_s"] > 0
    assert "did not answer" in wait["diagnosis"]
    assert "the tracker has not acted" in wait["diagnosis"]
    assert found["dead_letters"] == []


async def test_why_stuck_names_its_dead_letters(env: Seeded) -> None:
    found = await why(env, "stuck")
    assert found["status"] == "STUCK"
    [wait] = found["waiting"]  # type: ignore[misc]
    assert (wait["step"], wait["op"], wait["event_type"]) == ("hotel", "compensate", "CancelHotel")
    dead = found["dead_letters"]
    assert isinstance(dead, list)
    by_service = {d["service"] for d in dead}
    assert by_service == {"hotel", "rental"}  # rental choked on the car's trigger
    assert wait["dead_letters"] == [d["id"] for d in dead if d["service"] == "hotel"]
    assert "choreo dlq replay" in wait["diagnosis"]
    assert all(d["gid"] == env.gids["stuck"] for d in dead)


async def test_why_terminal_and_unknown_contract(env: Seeded) -> None:
    found = await why(env, "completed")
    assert (found["waiting"], found["summary"]) == ([], "COMPLETED: nothing to wait for")
    other = state(env, "completed").model_copy(update={"saga": "nope"})
    found = await ops.why(other, [env.travel.contract], env.h.transport)
    assert found["contract_known"] is False
    assert found["summary"] == "the tracker has no contract named 'nope'"


async def test_lag_shows_a_service_that_is_behind(env: Seeded) -> None:
    groups = dict(env.groups, hotel="a-group-that-never-ran")
    found = await ops.why(
        state(env, "running"), [env.travel.contract], env.h.transport, groups=groups
    )
    [wait] = found["waiting"]
    assert wait["committed"] is None
    assert wait["lag"] == wait["end_offset"] > 0
    assert "never committed" in wait["diagnosis"]


async def test_dead_letters_filter_and_reader_catches_up(env: Seeded) -> None:
    transport = env.h.transport
    every = await ops.dead_letters(transport)
    mine = await ops.dead_letters(transport, env.gids["stuck"])
    assert {d["gid"] for d in every} == {env.gids["stuck"], env.gids["compensating"]}
    assert [d["gid"] for d in mine] == [env.gids["stuck"]] * len(mine)
    assert [d["dead_at"] for d in every] == sorted((d["dead_at"] for d in every), reverse=True)
    assert len(await ops.dead_letters(transport, limit=1)) == 1
    async with DeadLetterReader(transport) as reader:
        await reader.refresh()
        assert len(reader.records()) == len(every)
        first = reader.records()[0]
        copy = OutgoingRecord(first.topic, first.key, first.value, first.headers)
        await transport.send(copy)  # one more dead letter
        await reader.refresh()
        assert len(reader.records()) == len(every) + 1


async def test_replay_resends_the_original_record(env: Seeded) -> None:
    transport = env.h.transport
    [dead, *_] = await ops.dead_letters(transport, env.gids["compensating"])
    partition, offset = parse_dead_letter_id(dead["id"])
    before = env.h.transport.broker.records(dead["topic"])  # type: ignore[attr-defined]
    [sent] = await ops.replay(transport, [dead["id"]])
    assert sent["id"] == dead["id"]
    assert sent["topic"] == dead["topic"] == "test.travel"
    after = env.h.transport.broker.records(dead["topic"])  # type: ignore[attr-defined]
    assert len(after) == len(before) + 1
    replayed = next(
        r for r in after if (r.partition, r.offset) == (sent["partition"], sent["offset"])
    )
    assert replayed.header(codec.H_ID) == dead["event_id"].encode()
    assert not any(name.startswith("choreo-dlq-") for name, _ in replayed.headers)
    with pytest.raises(LookupError, match="no dead letter with id 9:999"):
        await ops.replay(transport, ["9:999"])
    with pytest.raises(ValueError, match="partition:offset"):
        await ops.replay(transport, ["not-an-id"])
    assert (partition, offset) == parse_dead_letter_id(dead["id"])


async def test_command_lands_in_the_timeline(env: Seeded) -> None:
    env.clock.frozen = None  # let the tracker act on it
    gid = env.gids["stuck"]
    assert ops.refusal(state(env, "stuck"), "resolve") is None
    event_id = await ops.command(env.h.transport, gid, "trip", "resolve", "ana@ops", "refunded")
    limit = time.monotonic() + 20
    while not state(env, "stuck").resolved:
        assert time.monotonic() < limit
        await asyncio.sleep(0.02)
    resolved = state(env, "stuck")
    assert (resolved.resolved_by, resolved.resolved_note) == ("ana@ops", "refunded")
    assert any(
        e.event_id == event_id and "admin resolve by ana@ops: refunded" in e.note
        for e in resolved.timeline
    )
    await env.h.drain()
    [sent] = [m for m in env.h.published(AdminCommand) if m.envelope.event_id == event_id]
    assert sent.topic == SYSTEM_TOPIC
    assert sent.gid == gid
    assert sent.envelope.source == "operator"
    assert ops.refusal(resolved, "resolve") == "already resolved by ana@ops"


async def test_command_and_refusal_validate() -> None:
    transport = MemoryTransport()
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        await ops.command(transport, "g", "trip", "delete", "ana")
    with pytest.raises(ValueError, match="needs an actor"):
        await ops.command(transport, "g", "trip", "retry", " ")
    done = SagaState.new("g", "trip", 0.0).model_copy(update={"status": SagaStatus.COMPLETED})
    assert ops.refusal(done, "compensate") == (
        "only a RUNNING saga can be compensated; this one is COMPLETED"
    )
    assert (
        ops.refusal(done, "resolve") == "only a STUCK saga can be resolved; this one is COMPLETED"
    )
    assert "no compensation is unconfirmed" in (ops.refusal(done, "retry") or "")
    running = SagaState.new("g", "trip", 0.0)
    assert (
        ops.refusal(running, "retry") == "no step is pending, so there is no trigger to re-publish"
    )
    assert ops.refusal(running, "compensate") is None
