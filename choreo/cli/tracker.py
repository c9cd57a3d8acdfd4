"""``choreo tracker module:contract ...``: follow sagas, fire deadlines, serve the state API.

Two engines: ``faust`` (the durable one: states in a changelogged table, needs Kafka) and
``memory`` (states in this process only; any broker). The default follows the broker:
faust for ``kafka://``, memory otherwise.

The state API needs a bearer token: ``--token`` or ``CHOREO_TRACKER_TOKEN``, else one is
generated and printed at start. ``--no-auth`` serves it open, on a loopback address only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from choreo.cli.alerts import TOKEN_ENV as WEBHOOK_TOKEN
from choreo.cli.http_options import (
    TokenSource,
    add_token_arguments,
    announce_token,
    api_token,
    parse_http,
)
from choreo.cli.loading import load_object, open_broker
from choreo.errors import UsageError
from choreo.redact import quiet_protocol_loggers, redact_url
from choreo.saga.contract import SagaContract
from choreo.telemetry import exporting
from choreo.tracker.view import StateView

if TYPE_CHECKING:
    from choreo.tracker.routing import Workers
from choreo.transport.base import Transport
from choreo.transport.kafka_config import security_from_env

DEFAULT_HTTP = "127.0.0.1:8088"
TOKEN_ENV = "CHOREO_TRACKER_TOKEN"
TOKEN = TokenSource(TOKEN_ENV, "state API", "act on sagas")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("tracker", help="run the saga tracker and its state API")
    parser.add_argument(
        "contracts",
        nargs="+",
        metavar="MODULE:CONTRACT",
        help="saga contracts to follow, e.g. services_demo.contract:order_saga",
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("CHOREO_BROKER", "memory://"),
        help="broker URL (env CHOREO_BROKER)",
    )
    parser.add_argument(
        "--stuck-webhook",
        metavar="URL",
        default=os.environ.get("CHOREO_WEBHOOK_URL") or None,
        help="POST every SagaStuck alert to this http(s) URL as JSON (env CHOREO_WEBHOOK_URL; "
        f"bearer token from {WEBHOOK_TOKEN}; docs/observability.md)",
    )
    parser.add_argument(
        "--http",
        default=os.environ.get("CHOREO_TRACKER_HTTP", DEFAULT_HTTP),
        help=f"HOST:PORT of the state API (env CHOREO_TRACKER_HTTP; {DEFAULT_HTTP})",
    )
    add_token_arguments(parser, TOKEN)
    parser.add_argument(
        "--engine",
        choices=["faust", "memory"],
        help="faust (durable, Kafka only) or memory; default from --broker",
    )
    parser.add_argument(
        "--group", default="choreo.tracker", help="consumer group of the memory engine"
    )
    parser.add_argument(
        "--app-id",
        default=os.environ.get("CHOREO_TRACKER_ID") or None,
        help="faust app id: names its consumer group, changelog and state subdirectory "
        "(env CHOREO_TRACKER_ID; choreo-tracker)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("CHOREO_TRACKER_DATA_DIR") or None,
        help="faust engine: base directory of its local table state, kept in the subdirectory "
        "named by the app id (env CHOREO_TRACKER_DATA_DIR; default <tmp>/choreo-tracker-<uid>; "
        "two workers of one app id on one machine need a base each)",
    )
    parser.add_argument(
        "--store",
        choices=["rocksdb", "memory"],
        default=os.environ.get("CHOREO_TRACKER_STORE") or "rocksdb",
        help="faust engine: table store, rocksdb (state on disk, a restart opens it) or "
        "memory (a start replays the changelog) (env CHOREO_TRACKER_STORE; rocksdb)",
    )
    parser.add_argument(
        "--retention",
        type=parse_duration,
        default=os.environ.get("CHOREO_TRACKER_RETENTION") or "6h",
        help="faust engine: how long a finished saga (a STUCK one once resolved or clear) "
        "stays before it is removed from the table: 90s, 30m, 6h, 2d, or 0 to keep every "
        "saga (env CHOREO_TRACKER_RETENTION; 6h)",
    )
    parser.add_argument(
        "--worker-url",
        default=os.environ.get("CHOREO_TRACKER_URL") or None,
        metavar="URL",
        help="faust engine, one of several workers of one --app-id: this worker's state API "
        "as the other workers reach it (env CHOREO_TRACKER_URL; default http://HOST:PORT of "
        "--http, this machine's name for 0.0.0.0); each worker needs its own URL, --data-dir "
        "and --http, and the same token; each then answers for every worker's sagas",
    )
    parser.add_argument(
        "--standby-replicas",
        type=int,
        default=os.environ.get("CHOREO_TRACKER_STANDBY_REPLICAS") or "0",  # parsed when used
        metavar="N",
        help="faust engine, several workers: how many other workers keep a warm copy of "
        "each partition's states, so a worker taking it over need not recover it from the "
        "changelog (env CHOREO_TRACKER_STANDBY_REPLICAS; 0)",
    )
    parser.add_argument(
        "--service-group",
        action="append",
        default=[],
        metavar="SERVICE=GROUP",
        help="a service's consumer group when it is not choreo.<service> (for `saga why`)",
    )
    parser.set_defaults(func=command)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str) -> float:
    """``90s``, ``30m``, ``6h``, ``2d`` or plain seconds, in seconds."""
    text = value.strip().lower()
    factor = _UNITS.get(text[-1:], 0.0)
    number = text[:-1] if factor else text
    try:
        seconds = float(number) * (factor or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration (90s, 30m, 6h, 2d)"
        ) from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (90s, 30m, 6h, 2d)")
    return seconds


def parse_groups(values: Sequence[str]) -> dict[str, str]:
    groups = {}
    for value in values:
        service, sep, group = value.partition("=")
        if not sep or not service or not group:
            raise UsageError(
                f"--service-group {value!r} is not SERVICE=GROUP",
                hint="e.g. --service-group inventory=shop.inventory",
            )
        groups[service] = group
    return groups


def command(args: argparse.Namespace) -> int:
    contracts = [load_object(spec, SagaContract, "saga contract") for spec in args.contracts]
    host, port = parse_http(args.http)
    groups = parse_groups(args.service_group)
    token, generated = api_token(args, host, TOKEN)
    api = StateApi(contracts, (host, port), token, groups, generated, args.stuck_webhook)
    engine = args.engine or ("faust" if args.broker.startswith("kafka://") else "memory")
    with exporting(args.app_id or os.environ.get("CHOREO_TRACKER_ID") or "choreo-tracker"):
        code = _run_engine(args, api, engine, host, port)
    print(
        f"choreo: tracker {'stopped cleanly' if code == 0 else f'exited with {code}'}", flush=True
    )
    return code


def _run_engine(args: argparse.Namespace, api: StateApi, engine: str, host: str, port: int) -> int:
    if engine == "memory":
        asyncio.run(serve_memory(api, args.broker, args.group))
        code = 0
    else:
        retention = args.retention or None  # 0: keep every saga
        url = check_worker_url(args.worker_url) if args.worker_url else worker_url(host, port)
        if args.standby_replicas < 0:
            raise UsageError(f"--standby-replicas must be >= 0, got {args.standby_replicas}")
        code = run_faust(
            api, args.broker, args.app_id, args.data_dir, args.store, retention, url=url,
            standby_replicas=args.standby_replicas,
        )  # fmt: skip
    return code


def check_worker_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(
            f"--worker-url {url!r} is not the URL of this worker's state API",
            hint="e.g. --worker-url http://tracker-1.internal:8088 (how other workers reach it)",
        )
    return url.rstrip("/")


def worker_url(host: str, port: int) -> str | None:
    """How other workers reach the state API served on ``host:port`` (None when the port
    is picked at start): a wildcard address by this machine's name."""
    if port == 0:
        return None
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True)
class StateApi:
    """The state API both engines serve: the contracts, its address and token, and the
    services' consumer groups (for ``why``)."""

    contracts: Sequence[SagaContract]
    http: tuple[str, int]
    token: str | None  # None: open (--no-auth, loopback only)
    groups: Mapping[str, str]
    generated: bool = False  # the token was generated here: print it
    webhook: str | None = None  # SagaStuck alerts are POSTed there (choreo.alerts)

    @contextlib.asynccontextmanager
    async def serving(
        self, view: StateView, transport: Transport, engine: str, workers: Workers | None = None
    ) -> AsyncIterator[int]:
        """Serve the API with its ops routes until the block exits; yields the port. With
        ``workers``, it answers for the sagas of every worker (``tracker.routing``)."""
        from choreo.tracker.api import serve_api
        from choreo.tracker.api_ops import OpsContext

        host, port = self.http
        ops = OpsContext(view, transport, list(self.contracts), dict(self.groups))
        open_access = self.token is None
        async with serve_api(
            view, host, port, self.token, ops, open_access=open_access, workers=workers
        ) as bound:
            shown = f"[{host}]" if ":" in host else host
            names = ", ".join(c.name for c in self.contracts)
            print(f"choreo: tracker {engine} following {names}; state API on "
                  f"http://{shown}:{bound}", flush=True)  # fmt: skip
            announce_token(self.token, self.generated, TOKEN)
            async with stuck_alerts(self.webhook, transport):
                yield bound


@contextlib.asynccontextmanager
async def stuck_alerts(url: str | None, transport: Transport) -> AsyncIterator[None]:
    """With ``url``, deliver the SagaStuck alerts to it while the block runs: a task of
    its own on a consumer group of its own (``choreo.alerts``), so a webhook that is down
    never holds the tracker's stream; several workers share the group, so each alert goes
    out once."""
    if not url:
        yield
        return
    from choreo.alerts import StuckWebhook, shown

    webhook = StuckWebhook(url, transport=transport, token=os.environ.get(WEBHOOK_TOKEN) or None)
    stopping = asyncio.Event()
    task = asyncio.create_task(webhook.run(stopping), name="choreo-alerts")
    task.add_done_callback(_alerts_ended)
    print(f"choreo: SagaStuck alerts to {shown(url)}", flush=True)
    try:
        yield
    finally:
        stopping.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)


def _alerts_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # A bug, never an alert or a webhook (those are retried or dead-lettered): the
        # tracker keeps running, the log says alerts stopped.
        logging.getLogger("choreo.alerts").error(
            "SagaStuck alerts stopped", exc_info=task.exception()
        )


async def serve_memory(api: StateApi, broker: str, group: str) -> None:
    from choreo.tracker.memory import MemoryTracker

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if broker.startswith("memory://"):
        print(
            "choreo: note: a memory:// broker lives in this process, so the tracker sees "
            "only what is published here",
            file=sys.stderr,
        )
    transport = open_broker(broker)
    tracker = MemoryTracker(api.contracts, broker=transport, group=group)
    async with (
        transport,
        tracker.running(),
        api.serving(tracker.view(), transport, "(memory engine)"),
    ):
        await tracker.until_stopped(stopping)


def run_faust(
    api: StateApi,
    broker: str,
    app_id: str | None,
    data_dir: str | None = None,
    store: str = "rocksdb",
    retention: float | None = 6 * 3600.0,
    *,
    url: str | None = None,
    standby_replicas: int = 0,
) -> int:
    """Run the faust tracker in this process until SIGTERM or SIGINT; returns the exit code.

    ``app_id`` is the faust app id: the consumer group and the changelog topic's prefix,
    so two trackers with one id share (and split) the work. Unset, it is read from
    ``CHOREO_TRACKER_ID`` (default ``choreo-tracker``). ``data_dir`` (``--data-dir`` or
    ``CHOREO_TRACKER_DATA_DIR``) holds the table's local state, ``store`` says which
    (``rocksdb`` or ``memory``); faust's log level from ``CHOREO_TRACKER_LOGLEVEL``.
    aiokafka's, faust's and mode's own loggers stay at WARNING whatever that level is,
    unless ``CHOREO_LOG_PROTOCOL`` names them (their debug output holds SASL passwords).
    ``url`` is this worker's state API as the other workers of its app id reach it;
    ``standby_replicas`` how many other workers keep a warm copy of each partition.
    """
    if not broker.startswith("kafka://"):
        raise UsageError(
            f"the faust engine needs a kafka:// broker, not {redact_url(broker)!r}",
            hint="pass --broker kafka://HOST:PORT or --engine memory",
        )
    try:
        import faust

        from choreo.tracker.faust_app import DEFAULT_APP_ID, FaustTracker
    except ModuleNotFoundError as exc:
        if exc.name not in ("choreo.tracker.faust_app", "faust", "mode"):
            raise
        raise UsageError(
            f"the faust engine is not available here ({exc})",
            hint="install faust-streaming, or use --engine memory",
        ) from exc
    app_id = app_id or os.environ.get("CHOREO_TRACKER_ID") or DEFAULT_APP_ID
    tracker = FaustTracker(
        api.contracts,
        broker=broker,
        app_id=app_id,
        data_dir=data_dir or os.environ.get("CHOREO_TRACKER_DATA_DIR") or None,
        security=security_from_env(os.environ),
        store=store,
        retention=retention,
        url=url,
        standby_replicas=standby_replicas,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(tracker.prepare())
    except BaseException:
        loop.run_until_complete(tracker.transport.stop())
        loop.close()
        raise
    app = tracker.build_app(loop)
    loop.run_until_complete(tracker.check_local_state())

    async def serve(*_: Any) -> None:
        quiet_protocol_loggers(os.environ)  # again, after faust set its logging up
        tracker.rebuild()  # before the first tick, so the API never starts empty
        engine = f"{app_id} (faust engine)"
        async with api.serving(tracker.view(), tracker.transport, engine, tracker.workers()):
            await asyncio.Event().wait()  # cancelled when the app stops

    app.task(serve)
    loglevel = os.environ.get("CHOREO_TRACKER_LOGLEVEL") or "warning"
    quiet_protocol_loggers(os.environ)
    worker = faust.Worker(app, loop=loop, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # no terminal animation in logs
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1 if exc.code else 0
    return 0
