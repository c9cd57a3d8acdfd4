"""A small synchronous client of the tracker's state API, with errors for people.

The CLI talks to a tracker only over HTTP, so it works the same against the faust tracker
and the embedded one. Base URL: ``--tracker`` or ``CHOREO_TRACKER``; bearer token:
``--token`` or ``CHOREO_TRACKER_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from choreo.errors import ChoreoError, UsageError

DEFAULT_TRACKER = "http://127.0.0.1:8088"
UNKNOWN_GID_HINT = "`choreo sagas list` shows known ones"


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
    token = args.token or os.environ.get("CHOREO_TRACKER_TOKEN") or None
    return TrackerClient(url, token)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


class TrackerClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(
                f"{url!r} is not an http(s) URL",
                hint=f"pass the tracker's API like --tracker {DEFAULT_TRACKER}",
            )
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None and v != ""}
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def saga_path(self, gid: str, suffix: str = "") -> str:
        return f"/sagas/{urllib.parse.quote(gid, safe='')}{suffix}"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._http_error(exc.code, exc.read(), path) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(
                f"cannot reach the tracker at {self.url} ({reason})",
                hint="is `choreo tracker` running? pass --tracker URL or set CHOREO_TRACKER",
            ) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ChoreoError(
                f"{self.url}{path} did not answer JSON; is {self.url} a choreo tracker's state API?"
            ) from None

    def _http_error(self, status: int, raw: bytes, path: str) -> ChoreoError:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        message = body.get("error") if isinstance(body, dict) else None
        hint = body.get("hint", "") if isinstance(body, dict) else ""
        if status in (401, 403):
            given = "was refused" if self.token else "is required"
            return UsageError(
                f"the tracker's token {given} ({status})",
                hint="pass --token or set CHOREO_TRACKER_TOKEN",
            )
        if status == 404 and path.startswith("/sagas/"):
            gid = urllib.parse.unquote(path.split("/")[2].split("?")[0])
            return UsageError(f"no saga with gid {gid!r}", hint=UNKNOWN_GID_HINT)
        if status == 404 and not message:
            return UsageError(
                f"the tracker at {self.url} does not serve {path.split('?')[0]}",
                hint="is it a choreo tracker of this version?",
            )
        if 400 <= status < 500:
            return UsageError(str(message or raw[:300].decode(errors="replace")), hint=str(hint))
        detail = message or raw[:300].decode(errors="replace")
        return ChoreoError(f"the tracker failed ({status}): {detail}")
