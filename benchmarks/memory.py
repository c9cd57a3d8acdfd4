"""Memory: saga states as the tracker holds them, and barrier records in the memory store.

Traced with ``tracemalloc``: the peak and the retained (still allocated at the end) size
of building a structure, minus what was allocated before. Inputs are prepared outside
the traced region as bytes, and every traced build parses its own copy, so the strings
of each state or record are counted, as they would be in a process that read them off
the log.

tracker states: the records a ``MemoryTracker`` read during a run of completed order
sagas are decoded and folded again (``codec.decode`` and ``TrackerCore.fold``, the
tracker's own path) into a dict of packed hot states by gid, as the tracker holds them
(``choreo.saga.packing``; each saga's timeline is kept apart, in the table, and is not
counted), against the final states' JSON parsed into plain dicts (``orjson.loads``): the
whole state, timeline included, without the models. The peak of the fold includes its
short-lived garbage (unpacked states, drafts, outgoing records).

barrier records: ``MemoryStore.commit`` of an action's record whose outbox is one
encoded event (as the dispatcher writes it), against a plain dict
``{(gid, step, op): (status, outputs)}`` holding the same bytes.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from choreo import codec
from choreo.codec import pack_outbox as pack
from choreo.events import Envelope, Message
from choreo.saga.contract import SagaContract
from choreo.saga.packing import pack_state, unpack_state
from choreo.saga.state import SagaState
from choreo.store.base import BarrierKey
from choreo.store.memory import MemoryStore
from choreo.tracker.core import TrackerCore
from choreo.transport.base import Record
from services_demo.contract import StockReserved


@dataclass(frozen=True)
class Traced:
    peak: int  # bytes above the starting point at the highest moment of the build
    retained: int  # bytes still allocated when the build returned (what is held)


async def trace(build: Callable[[], Awaitable[Any]]) -> Traced:
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = await build()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del held
    return Traced(peak=peak - before, retained=current - before)


NOW = 1_700_000_000.0


async def tracker_states(records: Sequence[Record], contracts: Sequence[SagaContract]) -> Traced:
    core = TrackerCore(contracts)

    async def build() -> dict[str, bytes]:
        # As the tracker holds them: each saga's hot state packed (choreo.saga.packing),
        # unpacked to fold the next event; the timeline is kept apart, in the table.
        states: dict[str, bytes] = {}
        for record in records:
            message = codec.decode(record, core.registry)
            raw = states.get(message.gid)
            before = unpack_state(raw) if raw is not None else None
            after, _ = core.fold(before, message, NOW)
            if after is not None:
                states[after.gid] = pack_state(after)
        return states

    return await trace(build)


def state_blobs(states: Sequence[SagaState]) -> list[tuple[bytes, bytes]]:
    """(gid, JSON) of each state."""
    return [(state.gid.encode(), state.model_dump_json().encode()) for state in states]


async def saga_states_dicts(blobs: Sequence[tuple[bytes, bytes]]) -> Traced:
    async def build() -> dict[str, dict[str, Any]]:
        return {gid.decode(): orjson.loads(blob) for gid, blob in blobs}

    return await trace(build)


STEP = "stock"


def barrier_inputs(count: int) -> list[tuple[bytes, bytearray]]:
    """(gid, outbox) pairs: the outbox of the stock step, one StockReserved record."""
    out = []
    for index in range(count):
        gid = f"order-{index:07d}"
        event = StockReserved(order_id=gid, customer="alice", amount=100 + index % 400)
        envelope = Envelope(
            event_type=event.event_type,
            gid=gid,
            saga="order",
            step=STEP,
            op="action",
            outcome="done",
            causation_id=f"cause-{index}",
            source="inventory",
        )
        blob = pack([codec.encode(Message(envelope, event, event.topic))])
        out.append((gid.encode(), bytearray(blob)))
    return out


async def barrier_store(inputs: Sequence[tuple[bytes, bytearray]]) -> Traced:
    async def build() -> MemoryStore:
        store = MemoryStore()
        for gid, blob in inputs:
            await store.commit(
                BarrierKey(gid.decode(), STEP, "action"),
                status="done",
                outputs=bytes(blob),
                effects=(),
                null_outputs=b"",
                handler_ran=True,
            )
        return store

    return await trace(build)


async def barrier_dict(inputs: Sequence[tuple[bytes, bytearray]]) -> Traced:
    async def build() -> dict[tuple[str, str, str], tuple[str, bytes]]:
        held: dict[tuple[str, str, str], tuple[str, bytes]] = {}
        for gid, blob in inputs:
            held[(gid.decode(), STEP, "action")] = ("done", bytes(blob))
        return held

    return await trace(build)


def _self_test() -> None:  # pragma: no cover - a quick look by hand
    inputs = barrier_inputs(1000)
    print(asyncio.run(barrier_store(inputs)), asyncio.run(barrier_dict(inputs)))


if __name__ == "__main__":
    _self_test()
