"""``choreo graph MODULE:APP ... [--contract MODULE:CONTRACT ...]``: the choreography map.

Mermaid (a flowchart to paste into docs) or text; ``--lint`` prints only the findings and
exits 1 when there is an error (``--strict``: or a warning), so it can gate CI. The levels
are documented in ``choreo.graph``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from choreo.app import Service
from choreo.asyncapi import edges_of
from choreo.cli.loading import load_object
from choreo.errors import UsageError
from choreo.graph import TRACKER, Choreography, Finding, build, lint
from choreo.saga.contract import SagaContract

_ARROWS = {
    "handles": "-->",
    "emits": "-->",
    "declared": "-.->",
    "compensates": "-.->",
    "fails": "-.->",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("graph", help="draw (and lint) the choreography of services")
    parser.add_argument("apps", nargs="*", metavar="MODULE:APP", help="services to include")
    parser.add_argument(
        "--contract",
        action="append",
        default=[],
        metavar="MODULE:CONTRACT",
        help="a saga contract (those attached to the services are included)",
    )
    parser.add_argument("--format", choices=("mermaid", "text"), default="text")
    parser.add_argument(
        "--lint", action="store_true", help="print only the findings; exit 1 on an error"
    )
    parser.add_argument("--strict", action="store_true", help="with --lint: warnings fail too")
    parser.add_argument(
        "--asyncapi",
        type=Path,
        metavar="FILE",
        help="draw (and lint) an AsyncAPI document (choreo asyncapi's, or a team's own)",
    )
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.asyncapi is not None:
        if args.apps or args.contract:
            raise UsageError("--asyncapi draws the document alone: drop MODULE:APP/--contract")
        return from_document(args)
    if not args.apps and not args.contract:
        raise UsageError(
            "nothing to draw",
            hint="name services like `services_demo.inventory:app`"
            " and/or --contract module:contract",
        )
    services = [load_object(spec, Service, "service") for spec in args.apps]
    contracts = [load_object(spec, SagaContract, "saga contract") for spec in args.contract]
    names = [s.name for s in services]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"services given twice: {', '.join(twice)}")
    graph = build(services, contracts)
    findings = lint(graph)
    if args.lint:
        print(lint_report(findings))
        failing = {"error", "warning"} if args.strict else {"error"}
        return 1 if any(f.level in failing for f in findings) else 0
    print(mermaid(graph) if args.format == "mermaid" else text(graph, findings))
    return 0


def lint_report(findings: list[Finding]) -> str:
    errors = sum(f.level == "error" for f in findings)
    lines = [f"{f.level}: {f.message}" for f in findings]
    lines.append(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return "\n".join(lines)


def _node_ids(graph: Choreography) -> dict[str, str]:
    ids: dict[str, str] = {}
    taken: set[str] = set()
    names = [("s", s.name) for s in graph.services] + [("e", e) for e in graph.events]
    names += [("t", TRACKER)] if graph.contracts else []
    names += [("x", n) for e in graph.edges for n in (e.source, e.target)]
    for prefix, name in names:
        if name in ids:
            continue
        base = f"{prefix}_" + re.sub(r"\W", "_", name)
        node, n = base, 1
        while node in taken:
            n += 1
            node = f"{base}_{n}"
        ids[name] = node
        taken.add(node)
    return ids


def _label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(graph: Choreography) -> str:
    ids, starts = _node_ids(graph), graph.start_events()
    lines = ["flowchart LR"]
    for name, node in ids.items():
        if name in graph.events:
            shape = f"([{_label(name)}])"
            style = "start" if name in starts else "event"
        elif name == TRACKER and graph.contracts:
            shape, style = f"{{{{{_label(name)}}}}}", "tracker"
        else:
            service = any(s.name == name for s in graph.services)
            shape, style = f"[[{_label(name)}]]", "service" if service else "external"
        lines.append(f"  {node}{shape}:::{style}")
    for edge in graph.edges:
        label = {
            "compensates": f"undo {edge.label}",
            "fails": f"fails {edge.label}",
            "declared": f"{edge.label} (contract)",
        }.get(edge.kind, edge.label)
        arrow = _ARROWS[edge.kind] + (f"|{_label(label)}|" if label else "")
        lines.append(f"  {ids[edge.source]} {arrow} {ids[edge.target]}")
    lines += [
        "  classDef event fill:#eef3ff,stroke:#5570aa",
        "  classDef start fill:#e3f7e3,stroke:#3a8a3a",
        "  classDef service fill:#fff6d6,stroke:#aa8000",
        "  classDef tracker fill:#fde6ef,stroke:#aa3366",
        "  classDef external fill:#eeeeee,stroke:#888888",
    ]
    return "\n".join(lines)


def text(graph: Choreography, findings: list[Finding]) -> str:
    lines = [
        f"choreography: {len(graph.services)} service(s), {len(graph.events)} event(s), "
        f"{len(graph.contracts)} saga(s)"
    ]
    for contract in graph.contracts:
        lines += ["", f"saga {contract.name} (starts with {contract.start.event_type})"]
        for n, step in enumerate(contract.steps, 1):
            replies = " | ".join(c.event_type for c in (*step.done, *step.failed))
            undo = "no compensation"
            if step.compensation is not None:
                confirmed = " | ".join(c.event_type for c in step.compensated) or "?"
                built = " (compensate_with)" if step.compensate_with is not None else ""
                undo = f"undo {step.compensation.event_type}{built} -> {confirmed}"
            lines.append(
                f"  {n}. {step.name} by {step.service or '?'}: "
                f"{step.on.event_type} -> {replies}; {undo}; deadline {step.deadline:g}s"
            )
    for service in graph.services:
        lines += ["", f"service {service.name} (group {service.group})"]
        for handler in service.resolved_handlers():
            emits = " | ".join(c.event_type for c in handler.emits) or "nothing"
            lines.append(
                f"  {handler.event.event_type} -> {handler.name} -> {emits}"
                f"  [{handler.step} {handler.op}]"
            )
    lines += ["", "events"]
    for name in sorted(graph.events):
        by = sorted({e.source for e in graph.producers(name)})
        by = by or (["outside (saga start)"] if name in graph.start_events() else ["nobody"])
        to = sorted(
            {e.target for e in graph.consumers(name)}
            | ({TRACKER} if name in graph.tracked() else set())
        )
        lines.append(f"  {name}: from {', '.join(by)} to {', '.join(to) or 'nobody'}")
    return "\n".join([*lines, "", lint_report(findings)])


def from_document(args: argparse.Namespace) -> int:
    """The map of an AsyncAPI document: who receives and who sends each message. Lint: a
    message some participant receives that none sends (warning unless it is a saga's
    start, which comes from outside), and one sent that none receives (warning)."""
    try:
        doc = json.loads(args.asyncapi.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {args.asyncapi}: {exc}") from None
    if not isinstance(doc, dict) or not str(doc.get("asyncapi", "")).startswith("3."):
        raise UsageError(f"{args.asyncapi} is not an AsyncAPI 3 document")
    edges = edges_of(doc)
    sent = {target for _, target, kind in edges if kind == "emits"}
    received = {source for source, _, kind in edges if kind == "handles"}
    starts = {m["name"] for m in doc.get("components", {}).get("messages", {}).values()
              if m.get("x-choreo-start")}  # fmt: skip
    findings = [
        Finding("warning", f"{event} is received but nobody in the document sends it")
        for event in sorted(received - sent - starts)
    ] + [
        Finding("warning", f"{event} is sent but nobody in the document receives it")
        for event in sorted(sent - received)
    ]
    if args.lint:
        print(lint_report(findings))
        failing = {"error", "warning"} if args.strict else {"error"}
        return 1 if any(f.level in failing for f in findings) else 0
    if args.format == "mermaid":
        names = sorted({n for source, target, _ in edges for n in (source, target)})
        ids = {name: f"n{index}" for index, name in enumerate(names)}
        events = sent | received
        lines = ["flowchart LR"]
        for name in names:
            shape = f"([{_label(name)}])" if name in events else f"[[{_label(name)}]]"
            lines.append(f"  {ids[name]}{shape}")
        lines += [f"  {ids[source]} --> {ids[target]}" for source, target, _ in edges]
        print("\n".join(lines))
        return 0
    print(f"choreography of {args.asyncapi}: {len(edges)} edge(s)")
    for source, target, kind in edges:
        print(f"  {source} {'->' if kind == 'emits' else '=>'} {target}")
    print(lint_report(findings))
    return 0
