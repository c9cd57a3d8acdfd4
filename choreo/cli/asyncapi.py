"""``choreo asyncapi MODULE:SERVICE|CONTRACT... [--output FILE]``: the AsyncAPI 3.0
document of services and saga contracts (``choreo.asyncapi``), as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from choreo.app import Service
from choreo.asyncapi import document
from choreo.cli.loading import load_object
from choreo.errors import UsageError
from choreo.saga.contract import SagaContract


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "asyncapi", help="write the AsyncAPI 3.0 document of services and saga contracts"
    )
    parser.add_argument("objects", nargs="+", metavar="MODULE:OBJECT",
                        help="Service or SagaContract objects")  # fmt: skip
    parser.add_argument("--title", default="", help="the document's title")
    parser.add_argument("--version", default="1.0.0", help="the document's version")
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    services: list[Service] = []
    contracts: list[SagaContract] = []
    for spec in args.objects:
        obj = load_object(spec, object, "service or contract")
        if isinstance(obj, Service):
            services.append(obj)
        elif isinstance(obj, SagaContract):
            contracts.append(obj)
        else:
            raise UsageError(
                f"{spec} is a {type(obj).__name__}, not a Service or a SagaContract",
                hint="e.g. services_demo.inventory:app services_demo.contract:order_saga",
            )
    text = json.dumps(
        document(services, contracts, title=args.title, version=args.version), indent=2
    )
    if args.output is None:
        sys.stdout.write(text + "\n")
    else:
        args.output.write_text(text + "\n")
        print(f"choreo: wrote {args.output}", file=sys.stderr)
    return 0
