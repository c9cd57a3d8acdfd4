"""The kit's verdict as a table, with the evidence of every rule not kept."""

from __future__ import annotations

from collections.abc import Sequence

from choreo.cli.fmt import clean
from choreo.conformance.checks import Check


def passed(checks: Sequence[Check], *, strict: bool = False) -> bool:
    """Every MUST kept (and with ``strict`` every SHOULD too)."""
    return all(c.ok or (c.level == "SHOULD" and not strict) for c in checks)


def render(checks: Sequence[Check], *, evidence: bool = False) -> str:
    """A row per check; then the evidence of each one not kept (of all with ``evidence``)."""
    head = ("scenario", "check", "rule", "level", "result")
    rows = [(c.scenario, c.name, c.rule, c.level, c.verdict) for c in checks]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [head, *rows]
    ]
    shown = [c for c in checks if evidence or not c.ok]
    if shown:
        lines.append("")
    for check in shown:
        lines.append(f"{check.verdict}: {check.scenario}: {check.name} (rule {check.rule})")
        lines += [f"    {clean(line)}" for line in check.evidence]
    kept = sum(c.ok for c in checks)
    lines += ["", f"{kept} of {len(checks)} checks kept"]
    return "\n".join(lines)
