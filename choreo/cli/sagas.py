"""``choreo sagas list`` and ``choreo saga show|why GID``: reading sagas from the tracker.

Every command takes ``--json`` to print the API's JSON unchanged. The admin actions
(``choreo saga retry|compensate|resolve``) live in ``choreo.cli.admin``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from choreo.cli import admin
from choreo.cli.client import add_client_arguments, client_from, print_json
from choreo.cli.fmt import clean, clock, duration, parse_duration, table, waiting_on

STATES = ("RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "STUCK")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sagas = commands.add_parser("sagas", help="list sagas known to the tracker")
    sagas_commands = sagas.add_subparsers(dest="sagas_command", metavar="COMMAND", required=True)
    listing = sagas_commands.add_parser("list", help="sagas, newest first")
    listing.add_argument("--state", type=str.upper, choices=STATES, help="only this state")
    listing.add_argument("--saga", metavar="NAME", help="only sagas of this contract")
    listing.add_argument("--since", metavar="DURATION", help="updated in the last 10m, 2h...")
    listing.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    listing.add_argument("--offset", type=int, default=0, help="skip the first N")
    add_client_arguments(listing)
    listing.set_defaults(func=list_command)

    saga = commands.add_parser("saga", help="one saga: show, why, retry, compensate, resolve")
    saga_commands = saga.add_subparsers(dest="saga_command", metavar="COMMAND", required=True)
    for name, func, help_text in (
        ("show", show_command, "the saga's state and timeline"),
        ("why", why_command, "what the saga waits on and why it may be stuck"),
    ):
        parser = saga_commands.add_parser(name, help=help_text)
        parser.add_argument("gid")
        add_client_arguments(parser)
        parser.set_defaults(func=func)
    admin.register(saga_commands)


def list_command(args: argparse.Namespace) -> int:
    client = client_from(args)
    since = None if args.since is None else time.time() - parse_duration(args.since)
    page = client.get(
        "/sagas",
        status=args.state,
        saga=args.saga,
        since=since,
        limit=args.limit,
        offset=args.offset,
    )
    if args.json:
        print_json(page)
        return 0
    now = time.time()
    rows = []
    for state in page["items"]:
        waits, overdue = waiting_on(state, now)
        late = f" (overdue {duration(overdue)})" if overdue is not None else ""
        rows.append(
            [
                state["gid"],
                state["saga"],
                state["status"],
                duration(now - state["started_at"]),
                (waits or "-") + late,
            ]
        )
    if rows:
        print(table(["GID", "SAGA", "STATUS", "AGE", "WAITING ON"], rows))
    following = page.get("next", page.get("next_offset"))
    more = f"; next page: --offset {following}" if following else ""
    print(f"{len(rows)} of {page['total']} saga(s){more}")
    warn_unanswered(page)
    return 0


def warn_unanswered(answer: dict[str, Any]) -> None:
    """Name the tracker workers whose sagas an answer lacks (they did not answer)."""
    for gone in answer.get("unanswered", []):
        print(
            clean(
                f"choreo: warning: tracker worker {gone.get('worker')} did not answer "
                f"({gone.get('error')}); its sagas are missing from this list"
            ),
            file=sys.stderr,
        )


def show_command(args: argparse.Namespace) -> int:
    client = client_from(args)
    state = client.get(client.saga_path(args.gid))
    if args.json:
        print_json(state)
        return 0
    print(clean(describe(state, time.time()), lines=True))
    return 0


def describe(state: dict[str, Any], now: float) -> str:
    waits, overdue = waiting_on(state, now)
    lines = [
        f"saga {clean(state['saga'])}  {clean(state['gid'])}",
        f"status    {clean(state['status'])}"
        + (f"  ({clean(state['reason'])})" if state.get("reason") else ""),
    ]
    lines.append(
        f"started   {clock(state['started_at'], date=True)}  "
        f"({duration(now - state['started_at'])} ago)"
    )
    if state.get("finished_at"):
        lines.append(f"finished  {clock(state['finished_at'], date=True)}")
    if waits:
        late = f"  (deadline passed {duration(overdue)} ago)" if overdue is not None else ""
        lines.append(f"waiting   {clean(waits)}{late}")
    if state.get("resolved"):
        by, note = clean(state["resolved_by"]), clean(state.get("resolved_note", ""))
        lines.append(f"resolved  by {by}: {note}")
    steps = []
    for name, step in state.get("steps", {}).items():
        took = None
        if step.get("finished_at") and step.get("dispatched_at"):
            took = step["finished_at"] - step["dispatched_at"]
        steps.append(
            [
                name,
                step["status"],
                clock(step.get("dispatched_at")),
                clock(step.get("finished_at")),
                duration(took),
                step.get("compensation_attempts") or "-",
                step.get("outcome_note") or "",
            ]
        )
    if steps:
        headers = ["STEP", "STATUS", "DISPATCHED", "FINISHED", "TOOK", "UNDO TRIES", "NOTE"]
        lines += ["", "steps", table(headers, steps, indent="  ")]
    events = []
    for entry in state.get("timeline", []):
        outcome = "/".join(x for x in (entry.get("op"), entry.get("outcome")) if x)
        events.append(
            [
                clock(entry["at"]),
                entry.get("source") or "-",
                entry.get("event_type") or "-",
                entry.get("step") or "-",
                outcome or "-",
                entry.get("note", ""),
            ]
        )
    headers = ["TIME", "SOURCE", "EVENT", "STEP", "OP/OUTCOME", "NOTE"]
    lines += ["", "timeline", table(headers, events, indent="  ")]
    return "\n".join(lines)


def why_command(args: argparse.Namespace) -> int:
    client = client_from(args)
    why = client.get(client.saga_path(args.gid, "/why"))
    if args.json:
        print_json(why)
        return 0
    lines = [
        f"saga {clean(why['saga'])}  {clean(why['gid'])}",
        clean(why["summary"]),
        f"age {duration(why['age_s'])}, last change {duration(why['idle_s'])} ago",
    ]
    for w in why["waiting"]:
        lag = (
            "-"
            if w.get("partition") is None
            else (
                f"{w['lag']} on {clean(w['topic'])}[{w['partition']}] "
                f"(committed {w['committed']}, end {w['end_offset']})"
            )
        )
        due = w["deadline_at"] if w["op"] == "action" else w["next_retry_at"]
        lines += [
            "",
            f"step {clean(w['step'])}: waits for {clean(w['service'] or '?')} to handle "
            f"{clean(w['event_type'])} ({clean(w['op'])}), for {duration(w['waited_s'])}",
            f"  group     {clean(w['group'] or '-')}",
            f"  lag       {lag}",
            f"  due       {clock(due)}"
            + (f" (overdue {duration(w['overdue_s'])})" if w.get("overdue_s") else ""),
            f"  why       {clean(w['diagnosis'])}",
        ]
    if why["dead_letters"]:
        rows = [
            [d["id"], clock(d["dead_at"]), d["service"], d["event_type"], d["kind"], d["reason"]]
            for d in why["dead_letters"]
        ]
        lines += [
            "",
            "dead letters of this saga (`choreo dlq show ID`, `choreo dlq replay ID`)",
            table(["ID", "AT", "SERVICE", "EVENT", "KIND", "REASON"], rows, indent="  "),
        ]
    if why["next_deadline"] is not None:
        left = why["next_deadline_in_s"]
        when = f"in {duration(left)}" if left >= 0 else f"{duration(-left)} ago"
        lines += ["", f"next deadline {clock(why['next_deadline'])} ({when})"]
    print(clean("\n".join(lines), lines=True))
    return 0
