"""The demo as a deployment: each service and the tracker its own process, on Kafka and
Redis.

    python -m services_demo.multiprocess [--orders 30] [--seed 0] [--engine faust|memory]
                                         [--kafka HOST:PORT --redis URL] [--run-dir DIR]
    python -m services_demo.multiprocess --attach TRACKER_URL --kafka HOST:PORT --redis URL

Without ``--kafka``/``--redis`` a broker and a Redis server are started (``choreo.local``)
in the run directory, and a PostgreSQL server for the payment service, whose ledger and
barrier live there (``--payment-store shared`` keeps it on Redis with the others).
Then ``choreo run services_demo.<name>:app`` runs for each service
and ``choreo tracker services_demo.contract:order_saga`` for the tracker, configured by
``CHOREO_BROKER``/``CHOREO_STORE`` and the ``CHOREO_DEMO_*`` knobs as in production; the
front desk places the orders and audits the books; every process started is stopped by
its pid. ``--attach`` starts nothing: it places orders on a deployment already running
(``docker compose run --rm shop``). The tracker's state API takes a bearer token: the one
in ``CHOREO_TRACKER_TOKEN``, else (when the tracker is started here) a random one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console

from choreo.client import TrackerClient
from choreo.local import (
    KafkaBroker,
    PostgresServer,
    RedisServer,
    cache_dir,
    free_port,
    redact_url,
)
from services_demo.embedded import SERVICES, DemoRun, OnProgress
from services_demo.frontdesk import place_and_audit
from services_demo.knobs import Knobs
from services_demo.processes import Child, spawn_choreo
from services_demo.report import progress_bar, summary
from services_demo.workload import build_workload, demo_knobs, namespace_for

Say = Callable[[str], None]


@contextlib.contextmanager
def infrastructure(
    run_dir: Path, kafka: str | None, redis: str | None, say: Say
) -> Iterator[tuple[str, str]]:
    """(broker URL, store URL): the given servers, or fresh ones in ``run_dir``."""
    with contextlib.ExitStack() as stack:
        if kafka is None:
            broker = KafkaBroker(run_dir / "kafka", die_with_parent=True)
            # Fresh: a run reuses the demo's gids, which a kept log and barrier would
            # take for duplicates of the last run's (the local servers restart in place).
            kafka = broker.start(fresh=True)
            stack.callback(broker.stop)
            say(f"kafka {kafka} started in {broker.startup_seconds:.1f}s")
        if redis is None:
            server = RedisServer(run_dir / "redis", die_with_parent=True)
            redis = server.start(fresh=True)
            stack.callback(server.stop)
            say(f"redis {redact_url(redis)} started")
        yield f"kafka://{kafka}", redis


LOCAL_POSTGRES = "local"


@contextlib.contextmanager
def local_postgres(run_dir: Path | None, say: Say) -> Iterator[str]:
    """A PostgreSQL server for the payment service, fresh for this run (the demo's
    ledger and the SQL barrier, docs/postgres.md), stopped by its pid at the end."""
    server = PostgresServer(
        (run_dir or cache_dir() / "run" / "demo") / "postgres", die_with_parent=True, persist=False
    )
    url = server.start(fresh=True)
    try:
        say(f"postgres {redact_url(url)} started (the payment service's store)")
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def fleet(
    broker: str,
    store: str,
    knobs: Knobs,
    engine: str,
    logs: Path,
    say: Say,
    token: str,
    payment_store: str | None = None,
) -> Iterator[str]:
    """Start the tracker (its API requiring ``token``) and the services; yields the
    tracker's API URL. On exit every child is stopped, the services before the tracker."""
    env = {"CHOREO_BROKER": broker, "CHOREO_STORE": store, **knobs.to_env()}
    tracker_env = {**env, "CHOREO_TRACKER_TOKEN": token}
    port = free_port()
    children: list[Child] = []
    try:
        tracker_args = ["tracker", "services_demo.contract:order_saga", "--broker", broker,
                        "--http", f"127.0.0.1:{port}", "--engine", engine]  # fmt: skip
        children.append(spawn_choreo("tracker", tracker_args, tracker_env, logs))
        for module in SERVICES:
            name = module.__name__.rsplit(".", 1)[-1]
            own = {"CHOREO_STORE": payment_store} if name == "payment" and payment_store else {}
            children.append(
                spawn_choreo(name, ["run", f"{module.__name__}:app"], {**env, **own}, logs)
            )
        for child in children:
            say(f"pid {child.proc.pid}: {child.command}")
        url = f"http://127.0.0.1:{port}"
        children[0].wait_for_http(f"{url}/healthz", timeout=60)
        for child in children[1:]:
            child.wait_for_output(f"choreo: {child.name} running", timeout=60)
        say(f"every process is up; logs in {logs}")
        yield url
    finally:
        for child in reversed(children):
            child.stop()


def run_multiprocess(
    *,
    count: int = 30,
    seed: int = 0,
    knobs: Knobs | None = None,
    kafka: str | None = None,
    redis: str | None = None,
    attach: str | None = None,
    run_dir: Path | None = None,
    engine: str = "faust",
    namespace: str | None = None,
    timeout: float = 90.0,
    on_progress: OnProgress | None = None,
    say: Say = lambda line: None,
    payment_store: str | None = None,
) -> DemoRun:
    """The whole multi-process demo. ``kafka`` (host:port) and ``redis`` (URL) reuse
    running servers instead of starting them; the run then gets a fresh namespace unless
    one is given. ``attach`` (the tracker's URL) starts no process at all.
    ``payment_store``: the payment service's own store (a ``postgresql://`` URL), when
    its ledger does not live in the shared one."""
    knobs = knobs or demo_knobs(seed)
    if namespace is None:
        namespace = "" if redis is None else namespace_for(redis)
    workload = build_workload(count, seed, namespace)
    run_dir = run_dir or cache_dir() / "run" / "demo"
    if attach is not None:
        if kafka is None or redis is None:
            raise ValueError("attaching to a deployment needs its kafka and redis addresses")
        deployment: contextlib.AbstractContextManager[tuple[str, str]]
        deployment = contextlib.nullcontext((f"kafka://{kafka}", redis))
    else:
        deployment = infrastructure(run_dir, kafka, redis, say)
    token = os.environ.get("CHOREO_TRACKER_TOKEN") or None
    if attach is None:
        token = token or secrets.token_urlsafe(24)  # passed in the environment, never argv
    with deployment as (broker, store), contextlib.ExitStack() as stack:
        api = attach or stack.enter_context(
            fleet(broker, store, knobs, engine, run_dir / "logs", say, token or "", payment_store)
        )
        tracker = TrackerClient(api, token)
        return asyncio.run(
            place_and_audit(
                workload,
                knobs,
                broker,
                store,
                tracker,
                timeout=timeout,
                on_progress=on_progress,
                payment_store=payment_store,
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services_demo.multiprocess", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--orders", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=["faust", "memory"], default="faust",
                        help="the tracker's engine (default faust)")  # fmt: skip
    parser.add_argument("--kafka", help="use this broker (host:port) instead of starting one")
    parser.add_argument("--redis", help="use this Redis (URL) instead of starting one")
    parser.add_argument("--attach", metavar="TRACKER_URL",
                        help="start nothing: place orders on a running deployment")  # fmt: skip
    parser.add_argument("--payment-store", metavar="URL", default=LOCAL_POSTGRES,
                        help="the payment service's own store: a postgresql:// URL, "
                        f"'{LOCAL_POSTGRES}' (default: a PostgreSQL started in the run "
                        "directory, its ledger and barrier in SQL) or 'shared' (the Redis "
                        "store of the others)")  # fmt: skip
    parser.add_argument("--run-dir", type=Path, help="servers' data and every process's log")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    if args.attach and not (args.kafka and args.redis):
        parser.error("--attach needs --kafka and --redis")
    console = Console()

    def say(line: str) -> None:
        console.print(line, style="dim", markup=False)

    with contextlib.ExitStack() as stack, progress_bar(console, args.orders) as on_progress:
        payment_store = args.payment_store
        if payment_store == LOCAL_POSTGRES and not args.attach:
            payment_store = stack.enter_context(local_postgres(args.run_dir, say))
        elif payment_store in (LOCAL_POSTGRES, "shared"):
            payment_store = None  # attached: the deployment's payment service decides
        run = run_multiprocess(
            count=args.orders,
            seed=args.seed,
            # Attached, the deployment's services decide; read the same variables they do.
            knobs=Knobs.from_env() if args.attach else None,
            kafka=args.kafka,
            redis=args.redis,
            attach=args.attach,
            run_dir=args.run_dir,
            engine=args.engine,
            timeout=args.timeout,
            on_progress=on_progress,
            say=say,
            payment_store=payment_store,
        )
    console.print(summary(run.audit, run.elapsed, snapshot=run.dashboard))
    return 0 if run.audit.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
