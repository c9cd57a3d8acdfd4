"""``choreo dlq list|show|replay``: the dead-letter topic, through the tracker's API.

A dead letter's id is ``partition:offset`` on the DLQ topic, e.g. ``2:17``. Replaying
re-sends the original record (bytes and headers as they were, its event id kept) to the
topic choreo recorded it came from, after a fix; the tracker refuses a topic that none of
its contracts uses, ``choreo.system`` included. Every consumer group of that topic gets
the record, not only the failed service's: handlers are idempotent, so for a service
that had handled it the replay is a duplicate its barrier recognises.
"""

from __future__ import annotations

import argparse
import urllib.parse

from choreo.cli.admin import confirm
from choreo.cli.client import add_client_arguments, client_from, print_json
from choreo.cli.fmt import clean, clock, table


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="list, show and replay dead letters")
    sub = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--gid", help="only this saga's")
    listing.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    add_client_arguments(listing)
    listing.set_defaults(func=list_command)
    show = sub.add_parser("show", help="one dead letter with its headers and payload")
    show.add_argument("id", help="partition:offset, as `choreo dlq list` shows")
    add_client_arguments(show)
    show.set_defaults(func=show_command)
    replay = sub.add_parser("replay", help="re-send dead letters to their original topics")
    replay.add_argument("ids", nargs="+", metavar="ID", help="partition:offset ids")
    replay.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm")
    add_client_arguments(replay)
    replay.set_defaults(func=replay_command)


def _path(dead_id: str) -> str:
    return "/dlq/" + urllib.parse.quote(dead_id, safe="")


def list_command(args: argparse.Namespace) -> int:
    client = client_from(args)
    found = client.get("/dlq", gid=args.gid, limit=args.limit)
    if args.json:
        print_json(found)
        return 0
    rows = [
        [
            d["id"],
            clock(d["dead_at"]),
            d["gid"],
            d["service"],
            d["event_type"],
            d["kind"],
            d["reason"],
        ]
        for d in found["items"]
    ]
    if rows:
        print(table(["ID", "AT", "GID", "SERVICE", "EVENT", "KIND", "REASON"], rows))
    print(f"{len(rows)} dead letter(s)" + (f" of saga {clean(args.gid)}" if args.gid else ""))
    return 0


def show_command(args: argparse.Namespace) -> int:
    client = client_from(args)
    dead = client.get(_path(args.id))
    if args.json:
        print_json(dead)
        return 0
    fields = [
        "id",
        "gid",
        "saga",
        "step",
        "op",
        "event_type",
        "event_id",
        "service",
        "handler",
        "kind",
        "attempts",
        "reason",
    ]
    lines = [f"{name:<11} {clean(dead.get(name, ''))}" for name in fields]
    lines.append(f"{'dead at':<11} {clock(dead['dead_at'], date=True)}")
    lines.append(f"{'from':<11} {clean(dead['topic'])}[{dead['partition']}]@{dead['offset']}")
    if dead.get("dropped"):
        lines.append(f"{'dropped':<11} {clean(dead['dropped'])}")
    headers = dead.get("headers", {}).items()
    lines += ["", "headers"] + [f"  {clean(k)}: {clean(v)}" for k, v in headers]
    cut = (
        f" (the first {len(dead.get('payload', '').encode())} shown)"
        if dead.get("payload_truncated")
        else ""
    )
    lines += ["", f"payload, {dead['size']} bytes{cut}", clean(dead.get("payload", ""), lines=True)]
    print(clean("\n".join(lines), lines=True))
    return 0


def replay_command(args: argparse.Namespace) -> int:
    client = client_from(args)
    ids = list(dict.fromkeys(args.ids))
    for dead_id in ids:
        dead = client.get(_path(dead_id))
        print(
            f"{clean(dead['id'])}: {clean(dead['event_type'])} of saga {clean(dead['gid'])} "
            f"to {clean(dead['topic'] or '?')} (dead-lettered by {clean(dead['service'])}: "
            f"{clean(dead['reason'])})"
        )
    if not confirm(args.yes, f"replay {len(ids)} dead letter(s)?"):
        print("cancelled; nothing was sent")
        return 1
    done = client.post("/dlq/replay", {"ids": ids})
    for sent in done["replayed"]:
        where = f"{clean(sent['topic'])}[{sent['partition']}]@{sent['offset']}"
        same = sent.get("same_as")
        same = f" (the record of {clean(same)}, sent once)" if same else ""
        print(f"replayed {clean(sent['id'])} to {where}{same}")
    return 0
