"""The options of every command that serves HTTP (``choreo tracker``, ``choreo demo
--serve``, ``choreo run --http``): an address, and a bearer token taken from an option or
an environment variable, generated and printed when neither gives one; ``--no-auth``
serves open, refused beyond the loopback interface."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from choreo.errors import ConfigurationError, UsageError
from choreo.http_guard import check_token, is_loopback, new_token


@dataclass(frozen=True)
class TokenSource:
    """Whose token: ``env`` names the variable, ``what`` the surface in messages, and
    ``risk`` what anyone could do were it served open beyond this machine."""

    env: str
    what: str
    risk: str


def add_token_arguments(parser: argparse.ArgumentParser, source: TokenSource) -> None:
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token the {source.what} requires (env {source.env}; "
        "default: a random one, printed at start)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help=f"serve the {source.what} without a token (on a loopback address only)",
    )


def api_token(
    args: argparse.Namespace, host: str, source: TokenSource, option: str = "--http"
) -> tuple[str | None, bool]:
    """(token, generated) for a surface on ``host``: ``--token``, else the environment
    variable, else a new random one; (None, False) with ``--no-auth``, which is refused
    beyond the loopback interface."""
    given = args.token or os.environ.get(source.env) or None
    if args.no_auth:
        if args.token:
            raise UsageError("--no-auth and --token contradict each other")
        if not is_loopback(host):
            raise UsageError(
                f"--no-auth is refused on {host}: anyone who can reach it could {source.risk}",
                hint=f"serve on 127.0.0.1 ({option} 127.0.0.1:PORT) or keep the token",
            )
        return None, False
    if given is None:
        return new_token(), True
    try:
        return check_token(given), False
    except ConfigurationError as exc:
        raise UsageError(str(exc), hint="leave --token out to get a random one") from None


def announce_token(token: str | None, generated: bool, source: TokenSource) -> None:
    """Say how clients get in; a generated token is printed, once, so they can."""
    if token is None:
        print(f"choreo: the {source.what} is open (--no-auth): no token needed", flush=True)
    elif generated:
        print(
            f"choreo: {source.what} token (generated): {token}\n"
            f"  clients: export {source.env}={token}  (or pass --token)",
            flush=True,
        )


def parse_http(value: str, option: str = "--http") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")  # [::1]:8088
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(
            f"{option} {value!r} is not HOST:PORT", hint=f"e.g. {option} 127.0.0.1:8088"
        )
    return host, int(port)
