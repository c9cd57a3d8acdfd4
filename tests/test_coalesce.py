"""Calls made in one turn of the event loop go out as one (choreo.store.coalesce), and the
Redis store's lanes share their round trips that way."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from choreo.store.base import BarrierKey, BarrierResult, Commit, Decision, Incr
from choreo.store.coalesce import Coalesced
from choreo.store.redis import RedisStore


class Recorder:
    """A batch operation that answers each item with its double and fails on a poisoned
    item (its whole call fails, as a script error would)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        await self.release.wait()
        if 13 in items:
            raise ValueError("13 is poison")
        return [2 * item for item in items]


async def test_calls_of_one_turn_are_sent_together_each_answered_its_own() -> None:
    send = Recorder()
    call = Coalesced(send)

    answers = await asyncio.gather(call([1, 2]), call([3]), call([4, 5, 6]))

    assert answers == [[2, 4], [6], [8, 10, 12]]
    assert send.calls == [[1, 2, 3, 4, 5, 6]]


async def test_calls_of_later_turns_are_sent_apart() -> None:
    send = Recorder()
    call = Coalesced(send)

    assert await call([1]) == [2]
    assert await call([2]) == [4]
    assert send.calls == [[1], [2]]


async def test_a_joint_failure_is_sent_again_part_by_part() -> None:
    send = Recorder()
    call = Coalesced(send)

    good, bad, other = await asyncio.gather(
        call([1]), call([13, 2]), call([3]), return_exceptions=True
    )

    assert good == [2]
    assert other == [6]
    assert isinstance(bad, ValueError)
    assert send.calls == [[1, 13, 2, 3], [1], [13, 2], [3]]


async def test_a_caller_cancelled_before_the_call_has_nothing_sent() -> None:
    send = Recorder()
    call = Coalesced(send)
    gone = asyncio.ensure_future(call([1]))
    await asyncio.sleep(0)  # it is waiting, nothing sent yet
    kept = asyncio.ensure_future(call([2]))
    gone.cancel()

    assert await kept == [4]
    assert send.calls == [[2]]
    assert gone.cancelled()


async def test_a_caller_cancelled_while_the_call_runs_leaves_the_others_answered() -> None:
    send = Recorder()
    send.release.clear()
    call = Coalesced(send)
    gone = asyncio.ensure_future(call([1]))
    kept = asyncio.ensure_future(call([2]))
    while not send.calls:
        await asyncio.sleep(0)
    gone.cancel()
    send.release.set()

    assert await kept == [4]
    assert send.calls == [[1, 2]]
    with pytest.raises(asyncio.CancelledError):
        await gone


# -- on Redis ------------------------------------------------------------------------


async def _script_calls(store: RedisStore) -> int:
    stats = await store.client.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval")
    )


@pytest.mark.redis
async def test_redis_lanes_of_one_turn_share_one_check_and_one_commit(redis_url: str) -> None:
    ns = uuid.uuid4().hex
    keys = [BarrierKey(f"gid-{ns}-{lane}", "reserve", "action") for lane in range(4)]
    async with RedisStore(redis_url) as store:
        assert isinstance(store, RedisStore)
        # The scripts are loaded (a script's first call loads it: two calls).
        warm = BarrierKey(f"gid-{ns}-warm", "reserve", "action")
        await store.check_many([warm])
        await store.commit_many([Commit(warm, "done", b"", (), b"")])
        before = await _script_calls(store)

        checks = await asyncio.gather(*(store.check_many([key]) for key in keys))
        commits = await asyncio.gather(
            *(
                store.commit_many(
                    [Commit(key, "done", f"out-{i}".encode(), (Incr(f"{ns}:n", 1),), b"")]
                )
                for i, key in enumerate(keys)
            )
        )
        again = await asyncio.gather(*(store.check_many([key]) for key in keys))

        assert checks == [[BarrierResult(Decision.RUN)]] * 4
        assert [c[0].decision for c in commits] == [Decision.APPLIED] * 4
        assert again == [[BarrierResult(Decision.DUPLICATE, f"out-{i}".encode())] for i in range(4)]
        assert await store.get(f"{ns}:n") == "4"
        assert await _script_calls(store) - before == 3
