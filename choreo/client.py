"""A small synchronous client of a tracker's state API, with errors for people.

    client = TrackerClient("http://127.0.0.1:8088", token=None)
    page = client.get("/sagas", status="STUCK", limit=20)
    state = client.get(client.saga_path(gid))

It speaks plain HTTP, so it works the same against the faust tracker and the embedded
one. Failures are ``UsageError`` (unreachable tracker, refused token, unknown gid, bad
request: something a person can fix) or ``ChoreoError`` (the tracker failed). The ``choreo``
commands that read a tracker are built on it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from choreo.errors import ChoreoError, UsageError
from choreo.redact import redact_url

__all__ = ["DEFAULT_TRACKER", "TrackerClient"]

DEFAULT_TRACKER = "http://127.0.0.1:8088"
UNKNOWN_GID_HINT = "`choreo sagas list` shows known ones"


class TrackerClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(
                f"{redact_url(url)!r} is not an http(s) URL",
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
                f"cannot reach the tracker at {redact_url(self.url)} ({reason})",
                hint="is `choreo tracker` running? pass --tracker URL or set CHOREO_TRACKER",
            ) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ChoreoError(
                f"{redact_url(self.url)}{path} did not answer JSON; is it a choreo tracker's "
                "state API?"
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
                f"the tracker at {redact_url(self.url)} does not serve {path.split('?')[0]}",
                hint="is it a choreo tracker of this version?",
            )
        if 400 <= status < 500:
            return UsageError(str(message or raw[:300].decode(errors="replace")), hint=str(hint))
        detail = message or raw[:300].decode(errors="replace")
        if status == 503:  # a worker that could not answer now (restart, rebalance)
            return UsageError(f"the tracker cannot answer now (503): {detail}", hint=str(hint))
        return ChoreoError(f"the tracker failed ({status}): {detail}")
