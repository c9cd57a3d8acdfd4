"""The faults, one function per scenario of issue 13, each returning a ``Scenario``."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from choreo import Service, codec
from choreo.errors import PoisonEvent
from choreo.events import Envelope, Message, derived_event_id
from choreo.transport.base import OutgoingRecord
from choreo.transport.kafka import KafkaTransport
from services_demo.contract import TOPIC, OrderPlaced, RefundPayment, ShipmentScheduled
from tests.faults.app import KILL_POINTS, mode_of, order_saga
from tests.faults.harness import (
    PARTITIONS,
    SERVICES,
    LifePlan,
    Proc,
    Run,
    Scenario,
    publish_order,
    read_history,
)


def kill_points(counts: tuple[int, int, int] = (20, 8, 20)) -> Scenario:
    """(1) Every participant dies by SIGKILL at each point in turn: its first life at the
    20th handler (before the effect is recorded), its second after the 8th
    batch's barrier commit (effect recorded, nothing sent), its third after the 20th
    acknowledged record (offsets not committed); its fourth lives on."""
    plans: dict[str, list[LifePlan]] = {
        name: [
            {"FAULTS_KILL_AT": point, "FAULTS_KILL_COUNT": str(count)}
            for point, count in zip(KILL_POINTS, counts, strict=True)
        ]
        for name in SERVICES
    }

    async def note(run: Run) -> None:
        run.note(f"self-SIGKILL at {'/'.join(KILL_POINTS)} in turn, x {len(SERVICES)} services")

    return Scenario("kill points", fault=note, plans=plans)


def kill_points_postgres(point: str, count: int = 60) -> Scenario:
    """(1, issue 14) The payment service keeps its ledger in PostgreSQL (its barrier rows,
    its accounts, revenue and effect counters written with ``ctx.db`` in one transaction)
    and SIGKILLs itself the ``count``-th time it reaches ``point``, under load; its second
    life lives on. (Killed again while it rejoins and works off its backlog, it stays
    away longer than the compensation budget and sagas end STUCK by design, see
    ``kill_loop``; run several seeds for more kills.) The other participants are on Redis
    and are not killed; the payment books are read back from PostgreSQL."""
    plans = {"payment": [{"FAULTS_KILL_AT": point, "FAULTS_KILL_COUNT": str(count)}]}

    async def note(run: Run) -> None:
        run.note(f"payment on PostgreSQL: self-SIGKILL at {point} (#{count})")

    return Scenario(f"kill points, payment on postgres: {point}", fault=note, plans=plans,
                    payment_on_postgres=True)  # fmt: skip


def kill_loop(every: tuple[float, float] = (3.0, 6.0), settled: float = 12.0) -> Scenario:
    """(1) Every 3-6 s (seeded) a random participant is SIGKILLed, among those up for at
    least ``settled`` seconds, from the start of the workload until 10 s after its end;
    the fleet restarts it as an orchestrator would. A participant killed again while it
    still rejoins its group (a restart costs the dead member's 10 s session) would be
    down longer than the compensation retry budget (about 23 s), and its sagas would end
    STUCK by design: that is not what this scenario is about."""

    async def loop(run: Run) -> None:
        kills = 0
        started = {name: time.monotonic() for name in SERVICES}
        lives = {name: run.fleet.procs[name].life for name in SERVICES}
        until: float | None = None
        while until is None or time.monotonic() < until:
            await asyncio.sleep(run.rng.uniform(*every))
            now = time.monotonic()
            for name in SERVICES:  # a restart (by the fleet) starts the clock again
                if run.fleet.procs[name].life != lives[name]:
                    lives[name], started[name] = run.fleet.procs[name].life, now
            ready = [n for n in SERVICES if now - started[n] >= settled
                     and run.fleet.procs[n].alive()]  # fmt: skip
            if ready:
                run.fleet.procs[run.rng.choice(ready)].kill()
                kills += 1
            if until is None and run.done_publishing.is_set():
                until = now + 10.0
        run.note(f"{kills} random SIGKILLs")

    return Scenario("kill loop", fault=loop)


# ---------------------------------------------------------------- (5) duplicates


async def _reset_groups(bootstrap: str, groups: list[str], topic: str) -> None:
    """What ``kafka-consumer-groups --reset-offsets --to-earliest --execute`` does: commit
    offset 0 for every partition of ``topic`` on behalf of each (empty) group."""
    for group in groups:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.commit({tp: 0 for tp in tps})
        finally:
            await consumer.stop()


def duplicates(republish: int = 150) -> Scenario:
    """(5) ``republish`` records of the saga topic sent again byte for byte (a producer's
    retry, a mirror, an operator's replay) at 40% of the workload; at 70% every
    participant stopped, its consumer group reset to the earliest offset, and started
    again, so it replays the whole topic."""

    async def duplicate(run: Run) -> None:
        await run.progress(0.4)
        history = await read_history(run.fleet.broker)
        sample = run.rng.sample(history[TOPIC], min(republish, len(history[TOPIC])))
        async with KafkaTransport(run.fleet.broker) as transport:
            await transport.send_many([
                OutgoingRecord(topic=r.topic, key=r.key, value=r.value, headers=r.headers)
                for r in sample
            ])  # fmt: skip
        run.note(f"{len(sample)} records republished")
        await run.progress(0.7)
        procs = [run.fleet.procs[name] for name in SERVICES]
        for proc in procs:
            proc.supervised = False
        await asyncio.gather(*(asyncio.to_thread(proc.stop) for proc in procs))
        bootstrap = run.cluster.kafka.address()
        await _reset_groups(bootstrap, [f"choreo.{name}" for name in SERVICES], TOPIC)
        for proc in procs:
            proc.start()
            proc.supervised = True
        run.note("all 3 groups reset to earliest (whole topic replayed)")

    return Scenario("duplicates + group reset", fault=duplicate)


# ---------------------------------------------------------------- (8) poison

NESTED = 200
TOPIC_MAX_BYTES = 2_000_000  # the saga topic takes records over choreo's 1 MiB limit


def poison_records() -> list[tuple[str, OutgoingRecord]]:
    """(kind, record): each record keyed (and gid'd) by its own marker."""
    made = []
    kinds = {
        "invalid JSON": b'{"order_id": ',
        "schema-invalid": b'{"order_id": "x", "qty": -1}',
        "unknown type": None,
        "oversized": b'{"order_id": "' + b"x" * 1_200_000 + b'"}',
        "deeply nested": b'{"order_id": ' + b"[" * NESTED + b"]" * NESTED + b"}",
        "non-UTF-8": b'{"order_id": "\xff\xfe\xfd"}',
        # Under choreo's 1 MiB limit, schema-invalid: its dead letter (the value plus
        # the reason's headers) would pass the DLQ topic's 1 MB limit.
        "just under the limit": b'{"order_id": "' + b"y" * 1_040_000 + b'"}',
    }
    for kind, value in kinds.items():
        marker = "poison-" + kind.replace(" ", "-").lower()
        order = OrderPlaced(order_id=marker, customer="ann", sku="widget", qty=1, amount=1)
        envelope = Envelope.first(order, gid=marker, saga="order", source="poisoner")
        record = codec.encode(Message(envelope, order, TOPIC))
        headers = record.headers
        if value is None:
            headers = tuple((k, b"faults.NoSuchEvent" if k == codec.H_TYPE else v)
                            for k, v in headers)  # fmt: skip
            value = record.value
        made.append((kind, OutgoingRecord(topic=TOPIC, key=marker.encode(), value=value,
                                          headers=headers)))  # fmt: skip
    return made


def poison() -> Scenario:
    """(8) Poison records mid-run on the saga topic that every participant and the tracker
    read: each must be dead-lettered with its reason while the sagas go on."""

    async def inject(run: Run) -> None:
        bootstrap = run.cluster.kafka.address()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, TOPIC,
                                      {"max.message.bytes": str(TOPIC_MAX_BYTES)})  # fmt: skip
            await admin.alter_configs([resource])
        finally:
            await admin.close()
        await run.progress(0.5)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    max_request_size=TOPIC_MAX_BYTES * 2)  # fmt: skip
        await producer.start()
        try:
            for kind, record in poison_records():
                await producer.send_and_wait(record.topic, record.value, key=record.key,
                                             headers=list(record.headers))  # fmt: skip
                run.poison.append((record.key.decode() if record.key else "", kind))
        finally:
            await producer.stop()
        run.note(f"{len(run.poison)} poison records: " + ", ".join(k for _, k in run.poison))

    return Scenario("poison", fault=inject)


# ---------------------------------------------------------------- (3) broker restarts


def broker_down_long(down_for: float = 45.0) -> Scenario:
    """(3) The broker stopped cleanly at 30% of the workload and restarted in place after
    ``down_for`` seconds, longer than aiokafka's 40 s request timeout: batches the
    producers had sent when it stopped expire on the client."""

    async def restart(run: Run) -> None:
        kafka = run.cluster.kafka
        address = kafka.address()
        await run.progress(0.3)
        began = time.monotonic()
        await asyncio.to_thread(kafka.stop)
        await asyncio.sleep(down_for)
        assert await asyncio.to_thread(kafka.start) == address
        run.note(f"broker stopped, restarted in place after {time.monotonic() - began:.0f} s")

    return Scenario("broker down 45 s", fault=restart, settle_timeout=120.0)


def broker_restarts(pause_for: float = 15.0) -> Scenario:
    """(3) The broker restarted in place (same data directory and port): a clean stop at
    20% of the workload, a SIGKILL at 50%, and at 75% SIGSTOP for ``pause_for`` seconds,
    longer than the consumers' 10 s session timeout, then SIGCONT."""

    async def restart(run: Run) -> None:
        kafka = run.cluster.kafka
        address = kafka.address()
        for share, how in ((0.2, "stop"), (0.5, "kill")):
            await run.progress(share)
            began = time.monotonic()
            await asyncio.to_thread(kafka.stop if how == "stop" else kafka.kill)
            stopped = time.monotonic() - began
            await asyncio.sleep(2.0)
            assert await asyncio.to_thread(kafka.start) == address
            run.note(f"broker {how} ({stopped:.0f} s) + restart in place, "
                     f"down {time.monotonic() - began:.0f} s")  # fmt: skip
        await run.progress(0.75)
        kafka.pause()
        await asyncio.sleep(pause_for)
        kafka.resume()
        run.note(f"broker SIGSTOPped {pause_for:.0f} s")

    return Scenario("broker restarts", fault=restart, settle_timeout=180.0)


# ---------------------------------------------------------------- (4) Redis restarts


def redis_restarts() -> Scenario:
    """(4) Redis with the recommended persistence (AOF, fsync every second) restarted in
    place: a clean stop at 30% of the workload and a SIGKILL at 60%; nothing may be lost,
    nothing applied twice."""

    async def restart(run: Run) -> None:
        redis = run.cluster.redis
        url = redis.address()
        for share, how in ((0.3, "stop"), (0.6, "kill")):
            await run.progress(share)
            await asyncio.to_thread(redis.stop if how == "stop" else redis.kill)
            await asyncio.sleep(2.0)
            assert await asyncio.to_thread(redis.start) == url
            run.note(f"redis {how} + restart (AOF everysec)")

    return Scenario("redis restarts (persistent)", fault=restart)


# ---------------------------------------------------------------- (9) network faults


def network(victim: str = "payment") -> Scenario:
    """(9) ``victim`` reaches the broker only through a FaultProxy (the broker advertises
    the proxy on that listener): 200 ms added to every chunk for 8 s at 20% of the
    workload, a blackhole for 15 s at 45% (bytes held, nothing closed), and at 70%
    every connection reset, new ones refused for 3 s."""

    async def disturb(run: Run) -> None:
        proxy = run.proxy
        assert proxy is not None
        await run.progress(0.2)
        proxy.delay = 0.2
        await asyncio.sleep(8)
        proxy.delay = 0.0
        await run.progress(0.45)
        proxy.blackhole = True
        await asyncio.sleep(15)
        proxy.blackhole = False
        await run.progress(0.7)
        proxy.refuse = True
        reset = proxy.reset()
        await asyncio.sleep(3)
        proxy.refuse = False
        run.note(f"{victim} via proxy: delay 0.2 s x 8 s, blackhole 15 s, {reset} connections "
                 f"reset + 3 s refused ({proxy.connections} connections in all)")  # fmt: skip

    return Scenario(f"network faults ({victim})", fault=disturb, proxied=victim)


# ---------------------------------------------------------------- (10) rebalance churn


def churn(extra: int = 2, rounds: int = 4) -> Scenario:
    """(10) Extra instances of every participant join and leave (SIGTERM: a clean leave,
    or SIGKILL: the coordinator waits for the session to time out) while the workload
    runs, so partitions move again and again."""

    async def churn_(run: Run) -> None:
        fleet = run.fleet
        joined = left = 0
        for n in range(rounds):
            await run.progress((n + 1) / (rounds + 1))
            name = SERVICES[n % len(SERVICES)]
            base = fleet.procs[name]
            extras = [Proc(f"{name}-x{n}-{i}", base.args, base.env, fleet.logs)
                      for i in range(extra)]  # fmt: skip
            for proc in extras:
                proc.supervised = False
                proc.start()
                joined += 1
            await asyncio.sleep(run.rng.uniform(3, 6))
            for i, proc in enumerate(extras):
                if i % 2:
                    proc.kill()
                else:
                    await asyncio.to_thread(proc.stop)
                left += 1
                if (code := proc.reap()) not in (None, 0, -signal.SIGKILL):
                    fleet.unexpected_exits.append(f"{proc.name} exited {code}")
        run.note(f"{joined} instances joined and left ({left // 2} killed)")

    return Scenario("rebalance churn", fault=churn_)


# ---------------------------------------------------------------- (7) slow and paused


def slow_and_paused(pause_for: float = 12.0) -> Scenario:
    """(7) Shipping is slow (every handler sleeps 0.3 s, so its partitions fall behind
    their deadlines under load) and payment is SIGSTOPped for ``pause_for`` seconds at
    40% of the workload, longer than the deadlines and the session timeout: it wakes and
    publishes late, its successes after their timeout compensations."""

    async def pause(run: Run) -> None:
        await run.progress(0.4)
        victim = run.fleet.procs["payment"]
        victim.paused = True
        victim.signal(signal.SIGSTOP)
        await asyncio.sleep(pause_for)
        victim.signal(signal.SIGCONT)
        victim.paused = False
        run.note(f"shipping handlers 0.3 s each; payment SIGSTOPped {pause_for:.0f} s")

    return Scenario("slow + paused participant", fault=pause,
                    plans={"shipping": [{"FAULTS_SLOW": "0.3"}] * 10})  # fmt: skip


# ---------------------------------------------------------------- (6) reordering

REORDERER = "faults-reorder"
REORDER_WEIGHTS = {"ok": 50, "decline": 10, "silent": 10, "hanging": 15, "overtaken": 15}


async def _start_reordered(desk: Service, order: OrderPlaced) -> Envelope:
    """A ``hanging`` saga's start event and, right behind it in the same batch (so in
    that order in the gid's partition), the payment step's compensation: payment reads
    the compensation before the trigger of its action, which inventory publishes only
    after reading the start."""
    if mode_of(order.order_id) != "hanging":
        return await publish_order(desk, order)
    start = Envelope.first(order, gid=order.order_id, saga=order_saga.name, source=desk.name)
    refund = RefundPayment(order_id=order.order_id, customer=order.customer, amount=order.amount)
    early = start.caused(refund, event_id=derived_event_id(start.event_id, REORDERER),
                         step="payment", op="compensate", source=REORDERER)  # fmt: skip
    await desk.transport.send_many([codec.encode(Message(start, order, TOPIC)),
                                    codec.encode(Message(early, refund, TOPIC))])  # fmt: skip
    return start


def reordering(patience: float = 60.0) -> Scenario:
    """(6) Records written in the order that breaks the happy path, on purpose:

    - ``hanging`` sagas: the payment step's compensation before its action (see
      ``_start_reordered``): a null compensation, then the hanging action refused;
    - ``overtaken`` sagas: shipping books but never confirms; once the tracker's timeout
      compensation (CancelShipment) is in the topic, this fault writes the confirmation
      that shipping would have published (same envelope, caused by PaymentDeducted)
      after it: a late success, never applied.

    The checker's ``reorder`` invariant proves each saga really saw its records in that
    order and what the barrier made of them."""

    async def overtake(run: Run) -> None:
        wanted = {o.order_id for o in run.orders if mode_of(o.order_id) == "overtaken"}
        causes: dict[str, Envelope] = {}
        sent = 0
        async with KafkaTransport(run.fleet.broker) as transport:
            consumer = transport.consumer(f"faults-reorder-{uuid.uuid4().hex[:8]}", [TOPIC])
            await consumer.start()
            try:
                limit: float | None = None
                while wanted:
                    if limit is None and run.done_publishing.is_set():
                        limit = time.monotonic() + patience
                    if limit is not None and time.monotonic() > limit:
                        break
                    for records in (await consumer.getmany(timeout=0.5)).values():
                        for record in records:
                            try:
                                env = codec.decode_envelope(record)
                            except PoisonEvent:
                                continue
                            if env.gid not in wanted:
                                continue
                            if env.event_type == "PaymentDeducted":
                                causes[env.gid] = env
                            elif env.event_type == "CancelShipment" and env.gid in causes:
                                await transport.send(_confirmation(causes[env.gid]))
                                wanted.discard(env.gid)
                                sent += 1
            finally:
                await consumer.stop()
        run.note(
            f"{sent} shipping confirmations written after their timeout compensation"
            + (f" ({len(wanted)} never compensated in {patience:.0f} s)" if wanted else "")
        )
        hanging = sum(mode_of(o.order_id) == "hanging" for o in run.orders)
        run.note(f"{hanging} payment compensations written before their action's trigger")

    return Scenario("reordering", fault=overtake, mode_weights=REORDER_WEIGHTS,
                    start=_start_reordered)  # fmt: skip


def _confirmation(deducted: Envelope) -> OutgoingRecord:
    """The record shipping's handler would have published for ``deducted`` had it
    confirmed at once (the dispatcher's envelope and event id)."""
    shipment = ShipmentScheduled(order_id=deducted.gid, shipment_id=f"shp-{deducted.gid}")
    event_id = derived_event_id(deducted.event_id, "shipping", "shipping", "action", "0")
    envelope = deducted.caused(shipment, event_id=event_id, step="shipping", op="action",
                               outcome="done", source="shipping")  # fmt: skip
    return codec.encode(Message(envelope, shipment, TOPIC))
