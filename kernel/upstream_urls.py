"""Where the gateway may send what an operator points it at: providers' `api_base`, alert webhooks.

A URL whose host is, or resolves to, a link-local or cloud metadata address is refused: anyone who
can edit a provider or a budget could otherwise make the gateway call 169.254.169.254 (AWS, GCP,
Azure metadata, with the machine's credentials) and read the answer back in an error message.
Refused: 169.254.0.0/16, fe80::/10 and AWS's IPv6 metadata address fd00:ec2::254, also written
as IPv4-mapped IPv6 or in the other spellings the resolver accepts (`http://2852039166/`).
Loopback and private ranges stay allowed, for self-hosted models (Ollama, vLLM on the LAN).
`GATEWAY_ALLOW_PRIVATE_UPSTREAMS=true` allows everything.

Checked when the URL is saved (the models' field validator, so the admin, the operator API and
`import_config` all refuse it), and for webhooks again when one is sent, since DNS can change.
A host name that does not resolve is let through at save time: it reaches nothing yet.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

REFUSED_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def url_destination_problem(url: str) -> str | None:
    """Why the gateway must not send to `url`, or None. Resolves the host name (blocking)."""
    if settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None  # not a URL at all: the field's own validator says so
    if not host:
        return None
    for address in _addresses(host):
        if _refused(address):
            return (f"{host} is a link-local or cloud metadata address ({address}); the gateway does "
                    "not send requests there unless GATEWAY_ALLOW_PRIVATE_UPSTREAMS=true.")
    return None


def upstream_url_validate(value: str) -> None:
    """Model field validator for `Provider.api_base` and `Budget.alert_webhook`."""
    if value and (problem := url_destination_problem(value)):
        raise ValidationError(problem, code="refused_destination")


def _addresses(host: str) -> set[Address]:
    literal = host.split("%", 1)[0]  # an IPv6 zone (fe80::1%eth0) says nothing about the address
    try:
        return {ipaddress.ip_address(literal)}
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # does not resolve (now): it reaches nothing
        return set()
    return {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found}


def _refused(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in REFUSED_NETWORKS)
