"""The CLI's side of the tracker client: ``--tracker`` / ``--token`` arguments and JSON output.

The CLI talks to a tracker only over HTTP (``choreo.client.TrackerClient``), so it works
the same against the faust tracker and the embedded one. Base URL: ``--tracker`` or
``CHOREO_TRACKER``; bearer token: ``--token`` or ``CHOREO_TRACKER_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from choreo.client import DEFAULT_TRACKER, UNKNOWN_GID_HINT, TrackerClient

__all__ = [
    "DEFAULT_TRACKER",
    "UNKNOWN_GID_HINT",
    "TrackerClient",
    "add_client_arguments",
    "client_from",
    "print_json",
]


def add_client_arguments(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    group = parser.add_argument_group("tracker")
    group.add_argument(
        "--tracker",
        metavar="URL",
        default=None,
        help=f"the tracker's state API (env CHOREO_TRACKER, default {DEFAULT_TRACKER})",
    )
    group.add_argument(
        "--token", default=None, help="bearer token of the state API (env CHOREO_TRACKER_TOKEN)"
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the API's JSON as is")


def client_from(args: argparse.Namespace) -> TrackerClient:
    url = args.tracker or os.environ.get("CHOREO_TRACKER") or DEFAULT_TRACKER
    if "://" not in url:
        url = f"http://{url}"  # HOST:PORT, as --http takes it on the serving side
    token = args.token or os.environ.get("CHOREO_TRACKER_TOKEN") or None
    return TrackerClient(url, token)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))
