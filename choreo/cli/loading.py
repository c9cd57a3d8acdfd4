"""Explicit discovery: ``module:attribute`` strings, resolved with errors for people."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, TypeVar

from choreo.errors import UsageError
from choreo.transport.base import Transport
from choreo.transport.kafka_config import security_from_env
from choreo.urls import open_transport

T = TypeVar("T")


def load_object(spec: str, kind: type[T], what: str) -> T:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"{spec!r} is not of the form module:attribute",
            hint=f"name the {what} like `services_demo.inventory:app`",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project's own modules
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"cannot import module {module_name!r}: {exc}",
            hint="run from the project's directory, or install it into this environment",
        ) from exc
    try:
        obj: Any = getattr(module, attribute)
    except AttributeError as exc:
        raise UsageError(
            f"module {module_name!r} has no attribute {attribute!r}",
            hint=f"check the name of the {what} in {getattr(module, '__file__', module_name)}",
        ) from exc
    if not isinstance(obj, kind):
        raise UsageError(
            f"{spec} is a {type(obj).__name__}, not a {kind.__name__}",
            hint=f"point at the {what} object itself",
        )
    return obj


def open_broker(url: str) -> Transport:
    """The transport of a command's ``--broker``, with the deployment's Kafka security
    settings from the environment (``CHOREO_KAFKA_*``, docs/cli.md) when there are any."""
    security = security_from_env(os.environ)
    return open_transport(url, security=security) if security else open_transport(url)
