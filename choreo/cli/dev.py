"""``choreo dev kafka|redis up|down|status``: local servers for trying choreo out."""

from __future__ import annotations

import argparse

from choreo.local import kafka_broker, redis_server


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("dev", help="start or stop a local Kafka broker or Redis")
    parser.add_argument("server", choices=["kafka", "redis"])
    parser.add_argument("action", nargs=argparse.REMAINDER, help="up | down | status [--dir DIR]")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    module = kafka_broker if args.server == "kafka" else redis_server
    exit_code: int = module.main(list(args.action))
    return exit_code
