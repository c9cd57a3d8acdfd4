"""Systems (c), (d) and (e): the 3-step chain as three choreo services, public API only.

    BENCH_SBS_PREFIX=<prefix> choreo run benchmarks.saga_side_by_side.choreo_app:step1 \\
        --broker kafka://HOST:PORT --store redis://HOST:PORT/0
    BENCH_SBS_PREFIX=<prefix> choreo tracker benchmarks.saga_side_by_side.choreo_app:saga \\
        --broker kafka://HOST:PORT --http 127.0.0.1:0 --no-auth --app-id <prefix>.tracker

Each step is its own process and consumer group; each handler does one ``ctx.tx.incr``
(applied atomically with the Redis barrier record) and returns the next event; in (e),
``step2pg`` replaces step2: the PostgreSQL barrier, its effect an upsert of the same
counter through ``ctx.db`` (committed with the barrier row and the outgoing event). The
topic names come from ``BENCH_SBS_PREFIX`` (fresh topics for every round).
"""

from __future__ import annotations

import os

from benchmarks.saga_side_by_side.wire import CHOREO_SAGA, PARTITIONS, topics
from choreo import Context, Event, SagaContract, Service, Step

PREFIX = os.environ.get("BENCH_SBS_PREFIX", "sbs")
TOPICS = topics(PREFIX)
#: keys each step's counter effect spreads over (a handful of hot keys, like stock per SKU)
COUNTER_KEYS = 16


class Start(Event, type="bench.Start", topic=TOPICS["start"]):
    order_id: str
    amount: int


class Step1Done(Event, type="bench.Step1Done", topic=TOPICS["s1"]):
    order_id: str
    amount: int


class Step2Done(Event, type="bench.Step2Done", topic=TOPICS["s2"]):
    order_id: str
    amount: int


class Done(Event, type="bench.Done", topic=TOPICS["done"]):
    order_id: str
    amount: int


# Deadlines far beyond any run: a saturated closed loop must not make the tracker time
# sagas out (that would add compensation traffic to what is measured).
saga = SagaContract(
    CHOREO_SAGA,
    start=Start,
    steps=[
        Step("step1", on=Start, done=Step1Done, deadline=3600.0, service="step1"),
        Step("step2", on=Step1Done, done=Step2Done, deadline=3600.0, service="step2"),
        Step("step3", on=Step2Done, done=Done, deadline=3600.0, service="step3"),
    ],
)


def _service(name: str) -> Service:
    return Service(
        name,
        broker=os.environ.get("CHOREO_BROKER", "memory://"),
        store=os.environ.get("CHOREO_STORE", "memory://"),
        contracts=[saga],
        partitions=PARTITIONS,
        group=f"{PREFIX}.{name}",
    )


step1 = _service("step1")
step2 = _service("step2")
step3 = _service("step3")


@step1.on_event(Start)
async def first(event: Start, ctx: Context) -> Step1Done:
    ctx.tx.incr(f"{PREFIX}:step1:{event.amount % COUNTER_KEYS}", 1)
    return Step1Done(order_id=event.order_id, amount=event.amount)


@step2.on_event(Step1Done)
async def second(event: Step1Done, ctx: Context) -> Step2Done:
    ctx.tx.incr(f"{PREFIX}:step2:{event.amount % COUNTER_KEYS}", 1)
    return Step2Done(order_id=event.order_id, amount=event.amount)


@step3.on_event(Step2Done)
async def third(event: Step2Done, ctx: Context) -> Done:
    ctx.tx.incr(f"{PREFIX}:step3:{event.amount % COUNTER_KEYS}", 1)
    return Done(order_id=event.order_id, amount=event.amount)


# (e): step2 on the PostgreSQL barrier (``--store postgresql://...``); the same service
# name and group, so the contract and the topics are unchanged.
step2pg = _service("step2")


@step2pg.on_event(Step1Done)
async def second_in_sql(event: Step1Done, ctx: Context) -> Step2Done:
    await ctx.db.execute(
        "INSERT INTO bench_counters (k, n) VALUES ($1, 1)"
        " ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1",
        f"{PREFIX}:step2:{event.amount % COUNTER_KEYS}",
    )
    return Step2Done(order_id=event.order_id, amount=event.amount)
