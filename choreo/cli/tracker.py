"""``choreo tracker module:contract ...``: follow sagas, fire deadlines, serve the state API.

Two engines: ``faust`` (the durable one: states in a changelogged table, needs Kafka) and
``memory`` (states in this process only; any broker). The default follows the broker:
faust for ``kafka://``, memory otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from choreo.cli.loading import load_object
from choreo.errors import UsageError
from choreo.saga.contract import SagaContract
from choreo.transport.kafka_config import security_from_env
from choreo.urls import open_transport

DEFAULT_HTTP = "127.0.0.1:8088"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        "--http",
        default=os.environ.get("CHOREO_TRACKER_HTTP", DEFAULT_HTTP),
        help=f"HOST:PORT of the state API (env CHOREO_TRACKER_HTTP; {DEFAULT_HTTP})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CHOREO_TRACKER_TOKEN") or None,
        help="bearer token the state API requires (env CHOREO_TRACKER_TOKEN)",
    )
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
        help="faust app id: names its consumer group and changelog (env CHOREO_TRACKER_ID)",
    )
    parser.add_argument(
        "--service-group",
        action="append",
        default=[],
        metavar="SERVICE=GROUP",
        help="a service's consumer group when it is not choreo.<service> (for `saga why`)",
    )
    parser.set_defaults(func=command)


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


def parse_http(value: str, option: str = "--http") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")  # [::1]:8088
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(
            f"{option} {value!r} is not HOST:PORT", hint=f"e.g. {option} 127.0.0.1:8088"
        )
    return host, int(port)


def command(args: argparse.Namespace) -> int:
    contracts = [load_object(spec, SagaContract, "saga contract") for spec in args.contracts]
    host, port = parse_http(args.http)
    groups = parse_groups(args.service_group)
    if host not in LOOPBACK and not args.token:
        print(
            f"choreo: warning: the state API on {host} is open to anyone who can reach it; "
            "set --token",
            file=sys.stderr,
        )
    engine = args.engine or ("faust" if args.broker.startswith("kafka://") else "memory")
    if engine == "memory":
        asyncio.run(
            serve_memory(contracts, args.broker, host, port, args.token, args.group, groups)
        )
        return 0
    if not args.broker.startswith("kafka://"):
        raise UsageError(
            f"the faust engine needs a kafka:// broker, not {args.broker!r}",
            hint="pass --broker kafka://HOST:PORT or --engine memory",
        )
    try:
        from choreo.tracker import faust_app
    except ModuleNotFoundError as exc:
        if exc.name not in ("choreo.tracker.faust_app", "faust", "mode"):
            raise
        raise UsageError(
            f"the faust engine is not available here ({exc})",
            hint="install faust-streaming, or use --engine memory",
        ) from exc
    return int(
        faust_app.run(
            contracts,
            broker=args.broker,
            http=(host, port),
            token=args.token,
            app_id=args.app_id,
            service_groups=groups,
            security=security_from_env(os.environ),
        )
    )


async def serve_memory(
    contracts: Sequence[SagaContract],
    broker: str,
    host: str,
    port: int,
    token: str | None,
    group: str,
    service_groups: Mapping[str, str] | None = None,
) -> None:
    from choreo.tracker.api import serve_api
    from choreo.tracker.api_ops import OpsContext
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
    security = security_from_env(os.environ)
    transport = open_transport(broker, security=security) if security else open_transport(broker)
    tracker = MemoryTracker(contracts, broker=transport, group=group)
    names = ", ".join(c.name for c in contracts)
    async with transport, tracker.running():
        assert tracker.transport is not None
        ops = OpsContext(
            tracker.view(), tracker.transport, list(contracts), dict(service_groups or {})
        )
        async with serve_api(tracker.view(), host, port, token, ops) as bound:
            shown = f"[{host}]" if ":" in host else host
            print(
                f"choreo: tracker (memory engine) following {names}; "
                f"state API on http://{shown}:{bound}",
                flush=True,
            )
            await stopping.wait()
    print("choreo: tracker stopped cleanly", flush=True)
