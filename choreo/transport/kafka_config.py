"""Kafka connection settings that need no client: broker URLs and security options.

Kept apart from ``kafka.py`` so configuration errors are raised, and tested, without
importing aiokafka.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from choreo.errors import ConfigurationError
from choreo.redact import redact_url

DEFAULT_PORT = 9092

_CLIENT_SECURITY_KEYS = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
        "ssl_context",
    }
)
_SSL_FILE_KEYS = frozenset({"cafile", "capath", "cadata", "certfile", "keyfile", "password"})


def parse_kafka_url(url: str) -> list[str]:
    """``kafka://host:port[,host2:port2]`` -> ``["host:port", "host2:port2"]``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "kafka":
        raise ConfigurationError(
            f"not a Kafka URL: {redact_url(url)!r} (expected kafka://host:port[,host2:port2])"
        )
    rest = rest.split("?", 1)[0].rstrip("/")
    servers: list[str] = []
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
            display_host = f"[{host}]"
        else:
            host, _, port_text = item.partition(":")
            display_host = host
        if not host or "/" in item or "@" in item:
            raise ConfigurationError(
                f"bad broker address {item!r} in Kafka URL {redact_url(url)!r}"
            )
        if port_text and not port_text.isdigit():
            raise ConfigurationError(f"bad port in broker address {item!r} of {redact_url(url)!r}")
        port = int(port_text) if port_text else DEFAULT_PORT
        if not 0 < port < 65536:
            raise ConfigurationError(
                f"port out of range in broker address {item!r} of {redact_url(url)!r}"
            )
        servers.append(f"{display_host}:{port}")
    if not servers:
        raise ConfigurationError(f"no broker address in Kafka URL {redact_url(url)!r}")
    return servers


def security_options(security: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments every aiokafka client gets, built from ``security``."""
    if not security:
        return {}
    unknown = set(security) - _CLIENT_SECURITY_KEYS - _SSL_FILE_KEYS
    if unknown:
        raise ConfigurationError(
            f"unknown Kafka security option(s): {', '.join(sorted(unknown))}; "
            f"expected some of {', '.join(sorted(_CLIENT_SECURITY_KEYS | _SSL_FILE_KEYS))}"
        )
    options = {key: value for key, value in security.items() if key in _CLIENT_SECURITY_KEYS}
    files = {key: value for key, value in security.items() if key in _SSL_FILE_KEYS}
    if files:
        if options.get("ssl_context") is not None:
            raise ConfigurationError(
                "give either ssl_context or cafile/certfile/keyfile in Kafka security options, "
                "not both"
            )
        try:
            options["ssl_context"] = ssl_context(**files)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(f"cannot build the Kafka SSL context: {exc}") from exc
    if options.get("ssl_context") is not None:
        options.setdefault("security_protocol", "SSL")
    elif options.get("security_protocol") in ("SSL", "SASL_SSL"):
        # TLS asked for without a CA file: verify against the system's CAs, never fall
        # back to plaintext (aiokafka refuses SSL protocols without a context).
        options["ssl_context"] = ssl.create_default_context()
    return options


def ssl_context(
    cafile: str | None = None,
    capath: str | None = None,
    cadata: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the broker (and presents a client certificate when
    given), as aiokafka's ``create_ssl_context`` builds it."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=cafile, capath=capath, cadata=cadata
    )
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile, password)
    return context


# Environment variables a deployment sets instead of code (``choreo run``/``tracker``).
SECURITY_ENV = {
    "CHOREO_KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "CHOREO_KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "CHOREO_KAFKA_SASL_USERNAME": "sasl_plain_username",
    "CHOREO_KAFKA_SASL_PASSWORD": "sasl_plain_password",
    "CHOREO_KAFKA_SSL_CAFILE": "cafile",
    "CHOREO_KAFKA_SSL_CERTFILE": "certfile",
    "CHOREO_KAFKA_SSL_KEYFILE": "keyfile",
}


def security_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``security`` options named by ``CHOREO_KAFKA_*`` variables (empty: none set).
    Passwords come from the environment, never from a command line others can read."""
    return {option: environ[name] for name, option in SECURITY_ENV.items() if environ.get(name)}
