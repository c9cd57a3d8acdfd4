"""``choreo dev kafka|redis|postgres up|down|status``: local servers for trying choreo out."""

from __future__ import annotations

import argparse

from choreo.local import kafka_broker, postgres_server, redis_server


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dev", help="start or stop a local Kafka broker, Redis or PostgreSQL"
    )
    parser.add_argument("server", choices=["kafka", "redis", "postgres"])
    parser.add_argument("action", nargs=argparse.REMAINDER, help="up | down | status [--dir DIR]")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    modules = {"kafka": kafka_broker, "redis": redis_server, "postgres": postgres_server}
    exit_code: int = modules[args.server].main(list(args.action), f"choreo dev {args.server}")
    return exit_code
