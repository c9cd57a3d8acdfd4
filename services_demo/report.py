"""The closing summary of a demo run, as rich renderables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from choreo import dashboard
from choreo.dashboard import Snapshot
from services_demo.audit import Audit

STATUS_STYLE = {
    "COMPLETED": "green",
    "COMPENSATED": "yellow",
    "STUCK": "bold red",
    "RUNNING": "red",
    "COMPENSATING": "red",
    "MISSING": "red",
}


def saga_table(result: Audit) -> Table:
    table = Table(title="Sagas", title_justify="left")
    table.add_column("order (gid)", no_wrap=True)
    table.add_column("customer", no_wrap=True)
    table.add_column("items", no_wrap=True)
    table.add_column("amount", justify="right")
    table.add_column("saga", no_wrap=True)
    table.add_column("why", ratio=1)
    for outcome in result.outcomes:
        order, status = outcome.order, outcome.saga_status
        reason = outcome.saga.reason.removeprefix("step ") if outcome.saga and outcome.cause else ""
        table.add_row(  # what records say, as plain text: never markup, never escapes
            dashboard.plain_text(order.order_id),
            dashboard.plain_text(order.customer),
            dashboard.plain_text(f"{order.qty} {order.sku}"),
            str(order.amount),
            dashboard.plain_text(status, STATUS_STYLE.get(status, "")),
            dashboard.plain_text(reason),
        )
    return table


def totals_table(result: Audit) -> Table:
    table = Table(title="Outcomes", title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    counts = result.by_status()
    for status in sorted(counts, key=lambda s: list(STATUS_STYLE).index(s)):
        table.add_row(Text(status, style=STATUS_STYLE[status]), str(counts[status]))
        if status == "COMPENSATED":
            for cause, count in sorted(result.by_cause().items()):
                table.add_row(dashboard.plain_text(f"  {cause}"), str(count))
    table.add_row("compensations issued", str(result.compensations_issued()))
    return table


def books_table(result: Audit) -> Table:
    table = Table(title="Books (before = after + completed orders)", title_justify="left")
    for column in ("account", "before", "after", "completed", ""):
        table.add_column(column, justify="left" if column == "account" else "right")

    def row(name: str, before: int, after: int, moved: int, ok: bool) -> None:
        mark = Text("ok", style="green") if ok else Text("FAIL", style="bold red")
        table.add_row(name, str(before), str(after), str(moved), mark)

    for sku, (before, after, taken) in result.stock.items():
        row(f"stock {sku}", before, after, taken, before == after + taken)
    for customer, (before, after, paid) in result.money.items():
        row(f"balance {customer}", before, after, paid, before == after + paid)
    revenue, paid = result.revenue
    # Money flows the other way here: revenue after = before + what completed orders paid.
    row("shop revenue", 0, revenue, paid, revenue == paid)
    return table


def summary(
    result: Audit, elapsed: float, *, sagas: bool = True, snapshot: Snapshot | None = None
) -> RenderableType:
    """Every saga (unless ``sagas`` is false), the tracker's view (``snapshot``), the
    outcomes, the books and a verdict."""
    parts: list[RenderableType] = []
    if sagas:
        parts.append(saga_table(result))
    if snapshot is not None:
        parts.append(dashboard.render(snapshot))
    parts += [totals_table(result), books_table(result)]
    if result.ok:
        verdict = Text(f"every saga ended and the books balance ({elapsed:.1f}s)", "bold green")
    else:
        problems = "\n".join(dashboard.plain_text(p).plain for p in result.problems)
        verdict = Text(f"PROBLEMS:\n{problems}", style="bold red")
    parts.append(verdict)
    return Group(*parts)


@contextlib.contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Callable[[int, int], None]]:
    """A bar of ended sagas while the block runs; yields the runners' ``on_progress``."""
    columns = (TextColumn("sagas ended"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("sagas", total=total)
        yield lambda finished, _total: bar.update(task, completed=finished)
