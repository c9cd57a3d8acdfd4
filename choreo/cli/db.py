"""``choreo db init|cleanup|sql``: choreo's tables in your PostgreSQL database
(docs/postgres.md)."""

from __future__ import annotations

import argparse
import asyncio
import os

from choreo.errors import UsageError
from choreo.redact import redact_url
from choreo.store.postgres import PostgresStore, Tables


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "db", help="create choreo's PostgreSQL tables, or clean up expired barrier/outbox rows"
    )
    parser.add_argument("action", choices=["init", "cleanup", "sql"],
                        help="init: create the tables (idempotent); cleanup: delete expired "
                        "barrier records and sent outbox rows; sql: print the DDL")  # fmt: skip
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
    return asyncio.run(_run(args.action, url, args))


async def _run(action: str, url: str, args: argparse.Namespace) -> int:
    store = PostgresStore(url, table_prefix=args.table_prefix, schema=args.schema,
                          create_schema=action == "init", pool_size=1)  # fmt: skip
    async with store:
        if action == "init":
            print(f"choreo tables ready in {redact_url(url)}: {store.tables.barrier}, "
                  f"{store.tables.outbox}, {store.tables.kv}, {store.tables.meta}")  # fmt: skip
            return 0
        removed = await store.cleanup(sent_older_than=args.retention)
        print(f"removed {removed} expired barrier records and sent outbox rows")
        return 0
