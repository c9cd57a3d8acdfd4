"""The fault suite's harness: a broker and a Redis of the scenario's own, every participant
and the tracker as OS processes, a seeded workload, and the history read back afterwards.

A scenario is ``await run_scenario(Scenario(...), workdir)``: it starts Kafka and Redis in
``workdir`` (fresh: the topics hold only this run), seeds the books, starts
``choreo tracker`` (faust engine) and ``choreo run tests.faults.app:<service>`` for each
participant, publishes the workload at a steady rate while the scenario's fault runs,
waits until every saga ended and every consumer caught up, reads every record of every
saga topic (read_committed), reads the store and the tracker's state API, and checks the
invariants offline (``tests.faults.checker``). Processes are signalled by their pid only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choreo import SagaState, Service
from choreo.client import TrackerClient
from choreo.deadletter import DLQ_TOPIC
from choreo.errors import ChoreoError, TransportError
from choreo.events import Envelope
from choreo.local import KafkaBroker, RedisServer
from choreo.local._process import free_port, pdeathsig_preexec, tail, terminate
from choreo.local.postgres_server import PostgresServer
from choreo.store.base import Put
from choreo.store.postgres import PostgresStore
from choreo.store.redis import RedisStore
from choreo.system_events import SYSTEM_TOPIC
from choreo.transport.base import Record, TopicPartition, Transport
from choreo.transport.kafka import KafkaTransport
from services_demo import payment as payment_books
from services_demo.contract import TOPIC, OrderPlaced
from tests.faults import app as faults_app
from tests.faults.app import order_saga
from tests.faults.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("inventory", "payment", "shipping")
TRACKER_ID = "faults-tracker"
TOPICS = (TOPIC, SYSTEM_TOPIC, DLQ_TOPIC)
PARTITIONS = 4
SKUS = {"widget": 10_000, "gadget": 10_000}
CUSTOMERS = {name: 1_000_000 for name in ("ann", "ben", "cat", "dan", "eve")}
MODE_WEIGHTS = {"ok": 60, "reject": 7, "decline": 11, "silent": 11, "late": 11}


# ---------------------------------------------------------------- workload


def build_orders(
    seed: int, count: int, run: str, mode_weights: Mapping[str, int] = MODE_WEIGHTS
) -> list[OrderPlaced]:
    """``count`` orders drawn with ``seed``; the mode is the order id's last part."""
    rng = random.Random(seed)
    modes, weights = list(mode_weights), list(mode_weights.values())
    orders = []
    for n in range(count):
        mode = rng.choices(modes, weights)[0]
        orders.append(
            OrderPlaced(
                order_id=f"{run}-{n:04d}-{mode}",
                customer=rng.choice(sorted(CUSTOMERS)),
                sku=rng.choice(sorted(SKUS)),
                qty=rng.randint(1, 3),
                amount=rng.randint(10, 300),
            )
        )
    return orders


# ---------------------------------------------------------------- processes


class Proc:
    """One ``choreo`` command as a child process; each life logs to ``<name>-<life>.log``."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, dict(env), logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.life = 0
        self.exits: list[int] = []  # return codes of the lives that ended
        self.paused = False
        self.supervised = True  # restarted by the fleet when it dies

    @property
    def log(self) -> Path:
        return self.logs / f"{self.name}-{self.life}.log"

    def start(self, extra_env: Mapping[str, str] | None = None) -> None:
        self.life += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, **(extra_env or {}), "PYTHONPATH": str(ROOT),
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "choreo.cli.main", *self.args],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> int | None:
        """The return code of a life that ended since the last call, else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.exits.append(code)
        self.proc = None
        return code

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (the fleet's supervisor restarts a supervised process)."""
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.paused:
            self.signal(signal.SIGCONT)
            self.paused = False
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGUSR1)  # the app prints its tasks' stacks
                time.sleep(1.0)
                terminate(self.proc.pid, 0.1, self.proc)
        return self.reap()

    def output(self) -> str:
        return "\n".join(
            f"--- {self.name}-{n}.log\n{tail(self.logs / f'{self.name}-{n}.log', 40)}"
            for n in range(1, self.life + 1)
        )

    def wait_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.output()}")
            time.sleep(0.1)


# Each life of a participant may carry a fault plan (the environment of that life).
LifePlan = dict[str, str]


@dataclass
class Fleet:
    broker: str
    store: str
    logs: Path
    plans: Mapping[str, list[LifePlan]] = field(default_factory=dict)
    service_env: Mapping[str, LifePlan] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    restarts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)

    @property
    def tracker_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> TrackerClient:
        return TrackerClient(self.tracker_url, self.token)

    def start(self) -> None:
        env = {"CHOREO_BROKER": self.broker, "FAULTS_STORE": self.store}
        tracker_env = {**env, "CHOREO_TRACKER_TOKEN": self.token,
                       "CHOREO_TRACKER_DATA_DIR": str(self.logs / "tracker-data")}  # fmt: skip
        args = ["tracker", "tests.faults.app:contract", "--broker", self.broker,
                "--engine", "faust", "--app-id", TRACKER_ID,
                "--http", f"127.0.0.1:{self.port}"]  # fmt: skip
        tracker = Proc("tracker", args, tracker_env, self.logs)
        tracker.supervised = False  # tracker kills are another suite's (test_tracker_restarts)
        self.procs["tracker"] = tracker
        tracker.start()
        for name in SERVICES:
            own = {**env, **self.service_env.get(name, {})}
            proc = Proc(name, ["run", f"tests.faults.app:{name}"], own, self.logs)
            self.procs[name] = proc
            proc.start(self._plan(name, proc.life + 1))
        for name in SERVICES:
            self.procs[name].wait_output(f"choreo: {name} running", 90)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client().get("/counts")
                break
            except (ChoreoError, OSError):
                if time.monotonic() > deadline or not tracker.alive():
                    raise RuntimeError(f"tracker API not up:\n{tracker.output()}") from None
                time.sleep(0.3)

    def _plan(self, name: str, life: int) -> LifePlan:
        plans = self.plans.get(name, [])
        return plans[life - 1] if life - 1 < len(plans) else {}

    def supervise(self) -> None:
        """Restart every supervised participant that died (as an orchestrator would)."""
        for name, proc in self.procs.items():
            if not proc.supervised or proc.paused:
                continue
            code = proc.reap()
            if code is None:
                continue
            if code != -signal.SIGKILL:
                self.unexpected_exits.append(f"{name} life {proc.life} exited {code}")
            self.restarts += 1
            proc.start(self._plan(name, proc.life + 1))

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name in (*SERVICES, "tracker"):
            if name in self.procs:
                self.procs[name].supervised = False
                codes[name] = self.procs[name].stop()
        return codes


# ---------------------------------------------------------------- the run


@dataclass
class Cluster:
    workdir: Path
    kafka: KafkaBroker = field(init=False)
    redis: RedisServer = field(init=False)
    redis_persist: bool = True
    proxied_port: int | None = None
    with_postgres: bool = False
    postgres: PostgresServer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.kafka = KafkaBroker(self.workdir / "kafka", die_with_parent=True, in_place=True,
                                 proxied_port=self.proxied_port)  # fmt: skip
        self.redis = RedisServer(
            self.workdir / "redis", die_with_parent=True, persist=self.redis_persist
        )
        if self.with_postgres:
            # Durable, as a payment ledger's database would be (fsync on).
            self.postgres = PostgresServer(self.workdir / "postgres", die_with_parent=True)

    def start(self) -> tuple[str, str]:
        self.kafka.start()
        self.redis.start()
        if self.postgres is not None:
            self.postgres.start()
        return f"kafka://{self.kafka.address()}", self.redis.address()

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
        self.redis.stop()
        self.kafka.stop()


@dataclass
class Run:
    """What a fault sees and may use while the workload runs."""

    cluster: Cluster
    fleet: Fleet
    rng: random.Random
    orders: list[OrderPlaced]
    published: list[Envelope] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    poison: list[tuple[str, str]] = field(default_factory=list)  # (marker key, kind)
    expect_stuck: bool = False
    allow_exits: bool = False  # a fault that makes participants exit on purpose
    done_publishing: asyncio.Event = field(default_factory=asyncio.Event)
    proxy: FaultProxy | None = None

    async def progress(self, share: float) -> None:
        """Until ``share`` of the workload is published (or publishing ended)."""
        while len(self.published) < share * len(self.orders):
            if self.done_publishing.is_set():
                return
            await asyncio.sleep(0.05)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  fault: {text}", flush=True)


Fault = Callable[[Run], Coroutine[Any, Any, None]]
# How the front desk starts one saga (its acknowledged start event); by default
# ``Service.publish``, a fault may write more records with it (``scenarios.reordering``).
Starter = Callable[[Service, OrderPlaced], Coroutine[Any, Any, Envelope]]


async def publish_order(desk: Service, order: OrderPlaced) -> Envelope:
    return await desk.publish(order, gid=order.order_id)


@dataclass
class Scenario:
    name: str
    fault: Fault | None = None
    sagas: int = 200
    seed: int = 13
    rate: float = 12.0  # sagas started per second
    plans: Mapping[str, list[LifePlan]] = field(default_factory=dict)
    settle_timeout: float = 120.0
    redis_persist: bool = True
    proxied: str | None = None  # this participant reaches the broker through a FaultProxy
    mode_weights: Mapping[str, int] = field(default_factory=lambda: dict(MODE_WEIGHTS))
    start: Starter = publish_order
    payment_on_postgres: bool = False  # payment's store (its ledger, ctx.db) is PostgreSQL


@dataclass
class Outcome:
    scenario: Scenario
    orders: list[OrderPlaced]
    published: list[Envelope]
    history: dict[str, list[Record]]
    states: dict[str, SagaState]
    replayed: dict[str, SagaState]
    store: dict[str, Any]
    barrier: dict[str, list[tuple[str, str, str]]]
    poison: list[tuple[str, str]]
    notes: list[str]
    restarts: int
    unexpected_exits: list[str]
    expect_stuck: bool
    duration: float
    logs: Path


PUBLISH_PATIENCE = 90.0  # the front desk gives up an order it could not publish that long


async def _publish(desk: Service, run: Run, rate: float, start: Starter) -> None:
    interval = 1.0 / rate
    began = time.monotonic()
    try:
        for n, order in enumerate(run.orders):
            await asyncio.sleep(max(0.0, began + n * interval - time.monotonic()))
            first_try = time.monotonic()
            while True:
                try:
                    run.published.append(await start(desk, order))
                    break
                except TransportError as exc:  # the broker is down (a fault): retry
                    if time.monotonic() - first_try > PUBLISH_PATIENCE:
                        run.note(f"front desk gave up after {PUBLISH_PATIENCE:.0f} s of "
                                 f"failed sends ({len(run.orders) - n} orders never "
                                 f"started): {exc}")  # fmt: skip
                        run.orders[n:] = []
                        return
                    await asyncio.sleep(0.5)
    finally:
        run.done_publishing.set()


async def seed_books(store_url: str, ledger_url: str | None = None) -> None:
    """Stock in Redis; the customers' balances and the revenue in Redis, or in the
    payment service's PostgreSQL tables (``ledger_url``)."""
    async with RedisStore(store_url) as store:
        puts = [Put(faults_app.stock_key(s), str(q)) for s, q in SKUS.items()]
        if ledger_url is None:
            puts += [Put(faults_app.balance_key(c), str(b)) for c, b in CUSTOMERS.items()]
            puts.append(Put(faults_app.REVENUE, "0"))
        assert await store.apply(puts) == ""
    if ledger_url is not None:
        async with PostgresStore(ledger_url) as ledger:
            await payment_books.seed_balances(ledger, CUSTOMERS)
            assert isinstance(ledger, PostgresStore)
            await ledger.pool.execute(faults_app.SQL_TABLES)


async def _supervise(fleet: Fleet, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        fleet.supervise()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.2)


async def run_scenario(scenario: Scenario, workdir: Path) -> Outcome:
    began = time.monotonic()
    proxy_port = free_port() if scenario.proxied else None
    cluster = Cluster(workdir, redis_persist=scenario.redis_persist, proxied_port=proxy_port,
                      with_postgres=scenario.payment_on_postgres)  # fmt: skip
    broker, store_url = await asyncio.to_thread(cluster.start)
    ledger_url = cluster.postgres.address() if cluster.postgres is not None else None
    proxy = None
    service_env: dict[str, LifePlan] = {}
    if scenario.proxied and proxy_port is not None:
        host, target = cluster.kafka.proxied_address().rsplit(":", 1)
        proxy = FaultProxy(("127.0.0.1", proxy_port), (host, int(target)))
        await proxy.start()
        service_env[scenario.proxied] = {"CHOREO_BROKER": f"kafka://127.0.0.1:{proxy_port}"}
    if ledger_url is not None:
        service_env["payment"] = {**service_env.get("payment", {}), "FAULTS_STORE": ledger_url}
    try:
        async with KafkaTransport(broker) as transport:
            await transport.ensure_topics(list(TOPICS), PARTITIONS)
        await seed_books(store_url, ledger_url)
        fleet = Fleet(broker, store_url, workdir / "logs", scenario.plans, service_env)
        try:
            await asyncio.to_thread(fleet.start)
            orders = build_orders(scenario.seed, scenario.sagas, uuid.uuid4().hex[:6],
                                  scenario.mode_weights)  # fmt: skip
            run = Run(cluster, fleet, random.Random(scenario.seed), orders, proxy=proxy)
            stopping = asyncio.Event()
            supervisor = asyncio.create_task(_supervise(fleet, stopping))
            desk = Service("front-desk", contracts=[order_saga])
            async with desk.running(broker=broker, store="memory://"):
                tasks = [asyncio.create_task(_publish(desk, run, scenario.rate, scenario.start))]
                if scenario.fault is not None:
                    tasks.append(asyncio.create_task(scenario.fault(run)))
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for task in tasks:
                        task.cancel()
            states = await settle(run, scenario.settle_timeout)
            stopping.set()
            await supervisor
            kills = sum(p.exits.count(-signal.SIGKILL) for p in fleet.procs.values())
            if kills or fleet.restarts:
                run.note(f"{kills} SIGKILLed, {fleet.restarts} restarted")
            history = await read_history(broker)
            store, barrier = await read_store(store_url, run.orders, ledger_url)
        finally:
            codes = await asyncio.to_thread(fleet.stop)  # the loop keeps any proxy going
        for name in SERVICES:  # a clean stop of the survivors, or their logs say why not
            code = codes.get(name)
            if code == -signal.SIGKILL:
                fleet.unexpected_exits.append(
                    f"{name} did not stop within 20 s of SIGTERM (SIGKILLed); "
                    f"log {fleet.procs[name].log}"
                )
            elif code not in (0, None) and not run.allow_exits:
                fleet.unexpected_exits.append(f"{name} stopped with {code}")
        from tests.faults.checker import replay  # the pure machine over the topics

        return Outcome(
            scenario=scenario,
            orders=run.orders,
            published=run.published,
            history=history,
            states=states,
            replayed=replay(history),
            store=store,
            barrier=barrier,
            poison=run.poison,
            notes=run.notes,
            restarts=fleet.restarts,
            unexpected_exits=fleet.unexpected_exits,
            expect_stuck=run.expect_stuck,
            duration=time.monotonic() - began,
            logs=workdir / "logs",
        )
    finally:
        if proxy is not None:
            await proxy.stop()
        await asyncio.to_thread(cluster.stop)


# ---------------------------------------------------------------- after the run


def _summaries(client: TrackerClient) -> dict[str, str]:
    found: dict[str, str] = {}
    offset: int | None = 0
    while offset is not None:
        page = client.get("/sagas", saga=order_saga.name, limit=1000, offset=offset)
        found.update((item["gid"], item["status"]) for item in page["items"])
        offset = page["next"]
    return found


def _saga(client: TrackerClient, gid: str) -> Any:
    return client.get(client.saga_path(gid))


async def _api(run: Run, call: Callable[[TrackerClient], Any]) -> Any:
    """One state API call; the tracker may be briefly unreachable under a fault."""
    for _ in range(50):
        try:
            return await asyncio.to_thread(call, run.fleet.client())
        except (ChoreoError, OSError):
            await asyncio.sleep(0.5)
    return await asyncio.to_thread(call, run.fleet.client())


async def settle(run: Run, timeout: float) -> dict[str, SagaState]:
    """Until every saga is terminal in the tracker (or ``timeout``), the late confirmations
    are out and every consumer group has committed every record; the tracker's states."""
    gids = {order.order_id for order in run.orders}
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        known: dict[str, str] = await _api(run, _summaries)
        if all(known.get(gid) in ("COMPLETED", "COMPENSATED", "STUCK") for gid in gids):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(faults_app.LATE_BY + 0.5)
    async with KafkaTransport(run.fleet.broker) as transport:
        await caught_up(transport, min(30.0, max(5.0, limit - time.monotonic())))
    states = {}
    for gid in sorted(gids):
        try:
            data = await _api(run, functools.partial(_saga, gid=gid))
        except ChoreoError:  # unknown to the tracker: the checker reports it
            continue
        states[gid] = SagaState.model_validate(data)
    return states


async def caught_up(transport: Transport, timeout: float) -> None:
    """Until the participants' and the tracker's groups have committed the topics' ends
    twice in a row a second apart (nothing left in flight)."""
    groups = {f"choreo.{name}": [TOPIC] for name in SERVICES}
    groups[TRACKER_ID] = [TOPIC, SYSTEM_TOPIC]
    limit = time.monotonic() + timeout
    quiet = 0
    last: dict[TopicPartition, int] = {}
    while quiet < 2 and time.monotonic() < limit:
        tps = await transport.topic_partitions([TOPIC, SYSTEM_TOPIC])
        ends = await transport.end_offsets(tps)
        behind = False
        for group, topics in groups.items():
            try:
                offsets = await transport.group_offsets(group)
            except TransportError:
                behind = True
                continue
            behind |= any(offsets.get(tp, 0) < end for tp, end in ends.items()
                          if tp.topic in topics and end)  # fmt: skip
        quiet = quiet + 1 if not behind and ends == last else 0
        last = ends
        await asyncio.sleep(1.0)


async def read_history(broker: str) -> dict[str, list[Record]]:
    """Every record of every saga topic (and the DLQ), in offset order per partition,
    read with read_committed (choreo's consumer setting)."""
    history: dict[str, list[Record]] = {t: [] for t in TOPICS}
    async with KafkaTransport(broker) as transport:
        tps = await transport.topic_partitions(list(TOPICS))
        ends = await transport.end_offsets(tps)
        consumer = transport.consumer(f"faults-history-{uuid.uuid4().hex[:8]}", list(TOPICS))
        await consumer.start()
        seen: dict[TopicPartition, int] = {}
        limit = time.monotonic() + 60
        try:
            while any(seen.get(tp, 0) < end for tp, end in ends.items()):
                if time.monotonic() > limit:
                    raise AssertionError(f"could not read the topics to {ends}: at {seen}")
                batch = await consumer.getmany(timeout=0.5)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < ends.get(tp, 0):
                            history[tp.topic].append(record)
                        seen[tp] = record.offset + 1
        finally:
            await consumer.stop()
    for records in history.values():
        records.sort(key=lambda r: (r.partition, r.offset))
    return history


async def read_store(
    store_url: str, orders: list[OrderPlaced], ledger_url: str | None = None
) -> tuple[dict[str, Any], dict[str, list[tuple[str, str, str]]]]:
    """The books, every effect counter and every saga's barrier records (with
    ``ledger_url``, the payment service's from its PostgreSQL database)."""
    values: dict[str, Any] = {}
    barrier: dict[str, list[tuple[str, str, str]]] = {}
    async with RedisStore(store_url) as store:
        keys = [*map(faults_app.stock_key, SKUS)]
        if ledger_url is None:
            keys += [*map(faults_app.balance_key, CUSTOMERS), faults_app.REVENUE]
        for key in keys:
            values[key] = await store.get_int(key)
        for order in orders:
            gid = order.order_id
            values[faults_app.shipment_key(gid)] = await store.get(faults_app.shipment_key(gid))
            for step in ("stock", "payment", "shipping"):
                for op in ("action", "compensate"):
                    key = faults_app.applied_key(gid, step, op)
                    values[key] = await store.get_int(key)
            records = await store.records(gid)
            barrier[gid] = [(r.key.step, r.key.op, r.status) for r in records]
    if ledger_url is not None:
        await _read_ledger(ledger_url, orders, values, barrier)
    return values, barrier


async def _read_ledger(
    url: str,
    orders: list[OrderPlaced],
    values: dict[str, Any],
    barrier: dict[str, list[tuple[str, str, str]]],
) -> None:
    """The payment service's books, effect counters and barrier rows, from PostgreSQL."""
    async with PostgresStore(url, create_schema=False) as store:
        assert isinstance(store, PostgresStore)
        balances = await payment_books.balances(store, list(CUSTOMERS))
        values.update((faults_app.balance_key(c), b) for c, b in balances.items())
        values[faults_app.REVENUE] = await payment_books.revenue(store)
        for row in await store.pool.fetch("SELECT gid, step, op, n FROM faults_applied"):
            values[faults_app.applied_key(row["gid"], row["step"], row["op"])] = row["n"]
        for order in orders:
            records = await store.records(order.order_id)
            barrier[order.order_id] += [(r.key.step, r.key.op, r.status) for r in records]


@contextlib.asynccontextmanager
async def transport_for(broker: str) -> AsyncIterator[Transport]:
    async with KafkaTransport(broker) as transport:
        yield transport
