"""``choreo saga retry|compensate|resolve GID``: audited operator actions.

Each sends an ``AdminCommand`` through the tracker's API; the tracker records it (actor
and note) in the saga's timeline and acts on it. Nothing is sent without confirmation:
a question on a terminal, or ``--yes``; without a terminal and without ``--yes`` the
command refuses.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
import time

from choreo.cli.client import add_client_arguments, client_from
from choreo.cli.fmt import clean, waiting_on
from choreo.errors import UsageError
from choreo.system_events import MAX_ACTOR_CHARS, MAX_NOTE_CHARS

EFFECTS = {
    "retry": "re-publish the trigger of each pending step (RUNNING), or re-issue each "
    "unconfirmed compensation with a fresh retry budget (COMPENSATING, STUCK)",
    "compensate": "stop the saga and compensate the steps dispatched so far, newest first",
    "resolve": "mark the STUCK saga as resolved by hand; nothing is re-sent",
}


def register(saga_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action, effect in EFFECTS.items():
        parser = saga_commands.add_parser(action, help=effect.split(";")[0].split(" (")[0])
        parser.add_argument("gid")
        parser.add_argument(
            "--note",
            required=action == "resolve",
            default="",
            help=f"why (kept in the saga's timeline; at most {MAX_NOTE_CHARS} characters)"
            + ("; required: say what was fixed by hand" if action == "resolve" else ""),
        )
        parser.add_argument(
            "--actor", help=f"who is acting (default $USER@hostname; {MAX_ACTOR_CHARS} chars)"
        )
        parser.add_argument("-y", "--yes", action="store_true", help="do not ask to confirm")
        add_client_arguments(parser, json_flag=False)
        parser.set_defaults(func=command, action=action)


def default_actor() -> str:
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def confirm(yes: bool, question: str) -> bool:
    """True to go ahead; False when the person said no. Refuses without a terminal."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(
            "refusing to act without confirmation: stdin is not a terminal",
            hint="pass --yes to confirm from a script",
        )
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def command(args: argparse.Namespace) -> int:
    action: str = args.action
    if action == "resolve" and not args.note.strip():
        raise UsageError(
            "resolve needs a note", hint='say what was fixed: --note "refunded by hand"'
        )
    actor = args.actor or default_actor()
    bounds = {"--actor": (actor, MAX_ACTOR_CHARS), "--note": (args.note, MAX_NOTE_CHARS)}
    for name, (value, most) in bounds.items():
        if len(value) > most:
            raise UsageError(f"{name} is {len(value)} characters; the tracker keeps at most {most}")
    client = client_from(args)
    state = client.get(client.saga_path(args.gid))
    waits, _ = waiting_on(state, time.time())
    print(
        f"saga {clean(state['saga'])} {clean(state['gid'])} is {clean(state['status'])}"
        + (f", waiting on {clean(waits)}" if waits else "")
    )
    print(f"{action} will {EFFECTS[action]}.")
    if not confirm(args.yes, f"{action} this saga as {clean(actor)}?"):
        print("cancelled; nothing was sent")
        return 1
    sent = client.post(
        client.saga_path(args.gid, "/commands"),
        {"action": action, "actor": actor, "note": args.note},
    )
    print(
        f"{action} sent as command {clean(sent['event_id'])}; the tracker records it in the "
        f"saga's timeline: choreo saga show {clean(args.gid)}"
    )
    return 0
