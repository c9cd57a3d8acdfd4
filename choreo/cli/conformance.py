"""``choreo conformance --broker URL --service NAME --contract MODULE:CONTRACT``: drive a
running participant (any language) through the scenarios of ``choreo.conformance`` and
print each rule kept or broken; exit 0 only when every MUST is kept."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from choreo.cli.loading import load_object
from choreo.errors import UsageError
from choreo.saga.contract import SagaContract
from choreo.transport.kafka_config import security_from_env


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "conformance", help="check a running participant of any language against the wire rules"
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("CHOREO_BROKER"),
        help="kafka://HOST:PORT (env CHOREO_BROKER)",
    )
    parser.add_argument("--service", required=True, help="the participant's service name")
    parser.add_argument(
        "--contract",
        required=True,
        metavar="MODULE:CONTRACT",
        help="the saga contract whose step it plays",
    )
    parser.add_argument(
        "--step", help="the step it plays (default: the contract's step of --service)"
    )
    parser.add_argument("--group", help="its consumer group (default choreo.<service>)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for each scenario's outputs (default 30)",
    )
    parser.add_argument(
        "--payload",
        type=_json_object,
        default={},
        metavar="JSON",
        help="fields of a trigger whose action succeeds (the others: samples)",
    )
    parser.add_argument(
        "--failing-payload",
        type=_json_object,
        metavar="JSON",
        help="fields of a trigger whose action fails (adds the failure scenario)",
    )
    parser.add_argument("--strict", action="store_true", help="SHOULD rules fail the run too")
    parser.add_argument("--evidence", action="store_true", help="show the evidence of every check")
    parser.set_defaults(func=command)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def command(args: argparse.Namespace) -> int:
    # Imported here: the kit reads Kafka with aiokafka, which no other command loads at start.
    from choreo.conformance import Target, passed, pick_step, render, run, sample_payload

    if not args.broker or not args.broker.startswith("kafka://"):
        raise UsageError(
            f"--broker must be a kafka:// URL, got {args.broker!r}",
            hint="e.g. --broker kafka://127.0.0.1:9092",
        )
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    contract = load_object(args.contract, SagaContract, "saga contract")
    step = pick_step(contract, args.service, args.step)
    payload = sample_payload(step.on, args.payload)
    failing = None
    if args.failing_payload is not None:
        failing = sample_payload(step.on, {**payload, **args.failing_payload})
    target = Target(
        broker=args.broker,
        service=args.service,
        contract=contract,
        step=step,
        group=args.group or f"choreo.{args.service}",
        timeout=args.timeout,
        payload=payload,
        failing_payload=failing,
        security=security_from_env(os.environ) or None,
    )
    print(
        f"choreo conformance: service {args.service!r}, step {step.name!r} of saga "
        f"{contract.name!r}, group {target.group!r}",
        file=sys.stderr,
    )
    checks = asyncio.run(run(target))
    print(render(checks, evidence=args.evidence))
    return 0 if passed(checks, strict=args.strict) else 1
