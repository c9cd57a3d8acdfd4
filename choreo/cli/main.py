"""Entry point of the ``choreo`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from choreo.cli import (
    alerts,
    asyncapi,
    conformance,
    dashboard,
    db,
    demo,
    dev,
    dlq,
    graph,
    new,
    run,
    sagas,
    tracker,
)
from choreo.cli.fmt import clean
from choreo.errors import ChoreoError, UsageError
from choreo.redact import PROTOCOL_ENV, quiet_protocol_loggers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="choreo", description="Choreographed sagas over Kafka: services, tracker, dashboard."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"log at debug level (the Kafka clients' own logs too only if {PROTOCOL_ENV} "
        "names them: they hold SASL credentials)",
    )
    parser.add_argument(
        "--tracker",
        metavar="URL",
        dest="global_tracker",
        default=None,
        help="the tracker's state API, for the commands that talk to one (also accepted "
        "after the command)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = (
        new,
        run,
        dev,
        db,
        demo,
        tracker,
        alerts,
        sagas,
        dashboard,
        dlq,
        graph,
        asyncapi,
        conformance,
    )
    for module in modules:
        module.register(commands)
    return parser


def configure_logging(verbose: bool, environ: Mapping[str, str] = os.environ) -> None:
    """Debug or warnings to stderr; aiokafka's, faust's and mode's loggers at WARNING
    unless ``CHOREO_LOG_PROTOCOL`` names them (see ``choreo.redact``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_protocol_loggers(environ)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if args.global_tracker is not None:
        if not hasattr(args, "tracker"):
            print(f"choreo: error: `choreo {args.command}` does not talk to a tracker; "
                  "drop --tracker", file=sys.stderr)  # fmt: skip
            return 2
        args.tracker = args.tracker or args.global_tracker
    try:
        return int(args.func(args))
    except UsageError as exc:  # messages may quote the tracker's answers: cleaned
        print(f"choreo: error: {clean(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {clean(exc.hint)}", file=sys.stderr)
        return 2
    except ChoreoError as exc:
        print(f"choreo: error: {clean(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
