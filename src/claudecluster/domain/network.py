"""What network a plan may grant its tasks: ``host:port`` destinations, checked once.

A confined attempt reaches the model API and nothing else, unless its plan lists more
destinations (``network: {allow: ["pypi.org:443", "127.0.0.1:5432"]}``, for the whole
plan or one task). Each destination is one TCP address: the sandbox gets a forwarder for
it on an address of its own loopback, and the destination's name is mapped to that
address in the sandbox's ``/etc/hosts``, so the agent connects to ``pypi.org:443`` as
usual and reaches that and only that.

So a destination is a host *name* (the worker resolves it, its own ``/etc/hosts``
included) or a loopback address: a bare non-loopback IP address cannot be given a
forwarder inside the sandbox (its network namespace has only a loopback interface), so it
is refused with a message saying to name the host. Nothing wider than one address and one
port is allowed: no wildcards, no port ranges, no CIDR blocks.

Every door checks a submission with :func:`allowance_problem` (through
:func:`~claudecluster.domain.submission.submission_problem`), the driver's core again,
and the worker once more before it runs a work item.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_ALLOWED_DESTINATIONS",
    "Destination",
    "allowance_problem",
    "parse_destination",
]

#: Destinations one task may be allowed (its own and its plan's together).
MAX_ALLOWED_DESTINATIONS: Final = 32

#: One DNS label (RFC 1123): letters, digits and inner hyphens, 1 to 63 characters.
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_MAX_NAME: Final = 253


@dataclass(frozen=True, slots=True, order=True)
class Destination:
    """One TCP address an attempt may reach besides the model API.

    Attributes:
        host: a lower-case host name, or a loopback IPv4 address.
        port: the TCP port, 1 to 65535.
    """

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is a loopback address (or ``localhost``)."""
        return self.host == "localhost" or _is_ipv4(self.host)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def parse_destination(entry: str) -> Destination:
    """The destination ``entry`` (``host:port``) names.

    Raises:
        ValueError: the entry is not one host name (or loopback address) and one port;
            the message says what is wrong with it.
    """
    shown = repr(entry) if len(entry) <= 80 else repr(entry[:80] + "...")
    if "://" in entry:
        raise ValueError(f"{shown} is a URL; give host:port (for example pypi.org:443)")
    if entry.startswith("["):
        raise ValueError(
            f"{shown}: IPv6 addresses are not supported; name the host instead (host:port)"
        )
    host, colon, port_text = entry.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{shown} is not of the form host:port (for example pypi.org:443)")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{shown}: the port must be a number from 1 to 65535")
    host = host.lower()
    if ":" in host:
        raise ValueError(
            f"{shown}: IPv6 addresses are not supported; name the host instead (host:port)"
        )
    if _is_ipv4(host):
        if not ipaddress.IPv4Address(host).is_loopback:
            raise ValueError(
                f"{shown}: a bare IP address outside loopback cannot be forwarded into the "
                "sandbox (it has only a loopback interface); name the host instead (the "
                "worker resolves it, its /etc/hosts included)"
            )
        return Destination(host=host, port=int(port_text))
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > _MAX_NAME or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{shown}: {host!r} is not a host name (letters, digits, hyphens and dots; "
            "no wildcards, spaces or schemes)"
        )
    if labels[-1].isdigit():
        raise ValueError(f"{shown}: {host!r} is neither a host name nor an IPv4 address")
    return Destination(host=name, port=int(port_text))


def allowance_problem(entries: Iterable[str]) -> str | None:
    """What is wrong with a list of allowed destinations, or None if nothing is.

    Too many entries, or the first entry that is not a destination (see
    :func:`parse_destination`).
    """
    listed = tuple(entries)
    if len(listed) > MAX_ALLOWED_DESTINATIONS:
        return (
            f"{len(listed)} destinations, more than the limit of "
            f"{MAX_ALLOWED_DESTINATIONS} per task"
        )
    for index, entry in enumerate(listed):
        try:
            parse_destination(entry)
        except ValueError as exc:
            return f"entry {index}: {exc}"
    return None
