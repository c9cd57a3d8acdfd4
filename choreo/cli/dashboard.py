"""``choreo dashboard``: a live terminal view of the tracker, refreshed in place.

The view itself (``Snapshot``, ``fetch``, ``render``) lives in ``choreo.dashboard``; this
module is the command around it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from rich.console import Console
from rich.live import Live

from choreo.cli.client import add_client_arguments, client_from
from choreo.dashboard import Snapshot, fetch, render
from choreo.errors import ChoreoError, UsageError

__all__ = ["Snapshot", "command", "fetch", "register", "render"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("dashboard", help="a live view of every saga in the tracker")
    add_client_arguments(parser, json_flag=False)
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between refreshes (default 2)",
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise UsageError(f"--interval must be > 0, got {args.interval}")
    client = client_from(args)
    snap = fetch(client)  # the first refresh fails loudly: wrong URL, token...
    console = Console()
    if not console.is_terminal:  # piped: no terminal to fit, keep gids and reasons whole
        console = Console(width=max(console.width, 160))
    if args.once:
        console.print(render(snap))
        return 0
    with Live(render(snap), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(args.interval)
            try:
                snap = fetch(client, snap)
            except ChoreoError as exc:  # keep showing the last view; the tracker may return
                snap = replace(snap, error=getattr(exc, "message", str(exc)))
            live.update(render(snap))
