"""``choreo db init|cleanup|sql|relay``: choreo's tables in your PostgreSQL database, and
the outbox relay run on its own (docs/postgres.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from choreo.errors import UsageError
from choreo.outbox import OutboxRelay
from choreo.redact import redact_url
from choreo.store.postgres import PostgresStore, Tables
from choreo.urls import open_transport


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "db", help="create choreo's PostgreSQL tables, or clean up expired barrier/outbox rows"
    )
    parser.add_argument("action", choices=["init", "cleanup", "sql", "relay"],
                        help="init: create the tables (idempotent); cleanup: delete expired "
                        "barrier records and sent outbox rows; sql: print the DDL; relay: "
                        "publish the outbox until SIGTERM/SIGINT")  # fmt: skip
    parser.add_argument("--broker", default=os.environ.get("CHOREO_BROKER"),
                        help="relay: the broker URL (env CHOREO_BROKER)")  # fmt: skip
    parser.add_argument("--url", default=os.environ.get("CHOREO_STORE"),
                        help="postgresql://user:pw@host:port/db (env CHOREO_STORE)")  # fmt: skip
    parser.add_argument("--table-prefix", default="choreo_", help="default: choreo_")
    parser.add_argument("--schema", default="public", help="default: public")
    parser.add_argument("--retention", type=int, default=None, metavar="SECONDS",
                        help="cleanup: sent outbox rows older than this go "
                        "(default: 7 days)")  # fmt: skip
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    tables = Tables(args.table_prefix, args.schema)
    if args.action == "sql":
        print(tables.ddl().strip())
        return 0
    url: str | None = args.url
    if not url or not url.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            "choreo db needs a PostgreSQL URL",
            hint="pass --url postgresql://user:password@host:port/db or set CHOREO_STORE",
        )
    if args.action == "relay" and not args.broker:
        raise UsageError("choreo db relay needs a broker", hint="pass --broker kafka://host:9092")
    return asyncio.run(_run(args.action, url, args))


async def _run(action: str, url: str, args: argparse.Namespace) -> int:
    store = PostgresStore(url, table_prefix=args.table_prefix, schema=args.schema,
                          create_schema=action == "init", pool_size=1)  # fmt: skip
    if action == "relay":
        store.pool_size = 2
    async with store:
        if action == "relay":
            await _relay(store, args.broker)
            return 0
        if action == "init":
            print(f"choreo tables ready in {redact_url(url)}: {store.tables.barrier}, "
                  f"{store.tables.outbox}, {store.tables.kv}, {store.tables.meta}")  # fmt: skip
            return 0
        removed = await store.cleanup(sent_older_than=args.retention)
        print(f"removed {removed} expired barrier records and sent outbox rows")
        return 0


async def _relay(store: PostgresStore, broker: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    transport = open_transport(broker)
    async with transport:
        print(f"choreo: relaying {store.tables.outbox} to {redact_url(broker)}", flush=True)
        await OutboxRelay(store, transport).run(stopping)
    print("choreo: relay stopped", flush=True)
