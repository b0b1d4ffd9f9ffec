"""Container DNS (issue 15): every host answers for every container of the cluster.

This package's ``__init__`` is pure (no dnslib, no sockets): the name rules, the name
table the server answers from (names -> addresses with round robin, addresses -> names
for PTR), the reverse zones crossnet is authoritative for and the resolv.conf reader.
The wire format and the sockets live in :mod:`crossnet.dns.server`; the agent hook,
the store watch and `crossnet dns serve` in :mod:`crossnet.dns.service`.

Everything here reads hostile input (names published in the store by any host, names
from CNI_ARGS, queries): names are checked by :func:`name_problem` before they enter a
table, and a table never holds more than :data:`MAX_RECORDS` entries.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

DEFAULT_DOMAIN = "crossnet.local"
TTL = 1  # seconds: a detached container must stop resolving within 2 s everywhere
MAX_NAME = 63  # a container name: one or more labels, at most this many characters in all
MAX_DOMAIN = 120
MAX_RECORDS = 65_536  # containers a table takes (the rest are dropped and counted)
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # fullmatch: "$" accepts a trailing newline


def _labels_problem(text: str, limit: int) -> str | None:
    if not isinstance(text, str) or not text:
        return "must be a non-empty string"
    if len(text) > limit:
        return f"longer than {limit} characters"
    for label in text.split("."):
        if not _LABEL_RE.fullmatch(label):
            return (f"{label!r} is not a DNS label (1..63 letters, digits, '_' or '-', "
                    "not starting or ending with '-')")
    return None


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a container's DNS name (None: it can). A name is one or more
    dot-separated labels of letters, digits, '_' and '-', at most 63 characters."""
    return _labels_problem(name, MAX_NAME)  # type: ignore[arg-type]


def runtime_name(spec: str, given: str | None) -> str | None:
    """The DNS name `crossnet attach SPEC [--name NAME]` records: ``--name`` (checked:
    ConfigError naming it), else the container name of a ``podman:``/``docker:`` spec when
    it is a DNS name, else none."""
    if given is not None:
        why = name_problem(given)
        if why:
            from crossnet.errors import ConfigError

            raise ConfigError(f"--name: invalid container name {given[:40]!r}: {why}")
        return given
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("podman", "docker") and name_problem(rest) is None:
        return rest
    return None


def domain_problem(domain: object) -> str | None:
    """Why ``domain`` cannot be crossnet's DNS domain (None: it can)."""
    if isinstance(domain, str) and domain.endswith(".") and not domain.endswith(".."):
        domain = domain[:-1]  # the root label
    why = _labels_problem(domain, MAX_DOMAIN)  # type: ignore[arg-type]
    if why is None and str(domain).lower().rstrip(".").endswith("in-addr.arpa"):
        return "must not be a reverse zone"
    return why


def normalize(name: str) -> str:
    """Lower case, no trailing dot (DNS names compare case-insensitively)."""
    return name.rstrip(".").lower()


def reverse_name(address: IPv4Address | str) -> str:
    """``10.1.2.3`` -> ``3.2.1.10.in-addr.arpa``."""
    return IPv4Address(str(address)).reverse_pointer


def parse_reverse(qname: str) -> tuple[IPv4Network, IPv4Address | None] | None:
    """A name under in-addr.arpa -> (the network it names, the address when it names one
    whole address); None when it is not a well-formed reverse name."""
    name = normalize(qname)
    if not name.endswith("in-addr.arpa"):
        return None
    head = name[: -len("in-addr.arpa")].rstrip(".")
    parts = head.split(".") if head else []
    if len(parts) > 4 or any(not p.isdigit() or len(p) > 3 or int(p) > 255 or (len(p) > 1 and p[0] == "0")
                             for p in parts):
        return None
    octets = [int(p) for p in reversed(parts)]
    net = IPv4Network((int.from_bytes(bytes(octets + [0] * (4 - len(octets))), "big"), 8 * len(octets)))
    return net, (net.network_address if len(octets) == 4 else None)


def in_reverse_zones(qname: str, networks: Iterable[IPv4Network]) -> bool:
    """``qname`` is a reverse name inside (or above a part of) one of ``networks``: crossnet
    answers it itself, never forwards it (the addresses are the cluster's)."""
    parsed = parse_reverse(qname)
    if parsed is None:
        return False
    net, _ = parsed
    return any(net.subnet_of(n) for n in networks)


def in_domain(qname: str, domain: str) -> bool:
    name, dom = normalize(qname), normalize(domain)
    return name == dom or name.endswith("." + dom)


@dataclass
class Table:
    """One immutable view of the cluster's names (swapped whole when the store changes).

    ``names``: fqdn (lower case) -> addresses, sorted; ``ptr``: address -> fqdns, sorted.
    ``rejected``: published entries left out (bad name, bad address, over the cap)."""

    domain: str = DEFAULT_DOMAIN
    networks: tuple[IPv4Network, ...] = ()
    names: dict[str, tuple[IPv4Address, ...]] = field(default_factory=dict)
    ptr: dict[IPv4Address, tuple[str, ...]] = field(default_factory=dict)
    rejected: int = 0
    hosts: int = 0

    @classmethod
    def build(cls, domain: str, hosts: Mapping[str, Iterable[Mapping]], networks: Iterable[IPv4Network] = ()
              ) -> Table:
        """The table of ``hosts`` (host name -> its published containers ``{"id", "address",
        "name"?}``); entries without a name have none, bad ones are counted in ``rejected``."""
        dom = normalize(domain)
        names: dict[str, set[IPv4Address]] = {}
        ptr: dict[IPv4Address, set[str]] = {}
        rejected = count = 0
        for items in hosts.values():
            for c in items or ():
                if not isinstance(c, Mapping) or not c.get("name"):
                    continue
                name = c.get("name")
                try:
                    addr = IPv4Address(str(c.get("address")).split("/")[0])
                except ValueError:
                    rejected += 1
                    continue
                if name_problem(name) is not None or count >= MAX_RECORDS:
                    rejected += 1
                    continue
                count += 1
                fqdn = f"{normalize(str(name))}.{dom}"
                names.setdefault(fqdn, set()).add(addr)
                ptr.setdefault(addr, set()).add(fqdn)
        return cls(domain=dom, networks=tuple(networks),
                   names={k: tuple(sorted(v)) for k, v in names.items()},
                   ptr={k: tuple(sorted(v)) for k, v in ptr.items()}, rejected=rejected, hosts=len(hosts))

    def authoritative(self, qname: str) -> bool:
        """crossnet answers ``qname`` itself (its domain, the reverse zones of its networks)."""
        return in_domain(qname, self.domain) or in_reverse_zones(qname, self.networks)

    def addresses(self, qname: str) -> tuple[IPv4Address, ...]:
        return self.names.get(normalize(qname), ())

    def pointers(self, qname: str) -> tuple[str, ...]:
        parsed = parse_reverse(qname)
        if parsed is None or parsed[1] is None:
            return ()
        return self.ptr.get(parsed[1], ())

    def exists(self, qname: str) -> bool:
        """The name has records (or is the domain itself): NODATA, not NXDOMAIN, for other types."""
        name = normalize(qname)
        return name == self.domain or name in self.names or bool(self.pointers(name))


class RoundRobin:
    """Rotates each name's addresses from one answer to the next (thread-safe)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def order(self, addresses: tuple[IPv4Address, ...]) -> list[IPv4Address]:
        if len(addresses) < 2:
            return list(addresses)
        with self._lock:
            n = next(self._counter)
        k = n % len(addresses)
        return list(addresses[k:] + addresses[:k])


def parse_resolv_conf(text: str, exclude: Iterable[IPv4Address | str] = (), limit: int = 3) -> list[str]:
    """The IPv4 ``nameserver`` lines of a resolv.conf (at most ``limit``, like libc), minus
    ``exclude`` (crossnet's own listen addresses: never forward to itself)."""
    skip = {str(a) for a in exclude}
    out = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = str(IPv4Address(parts[1]))
            except ValueError:
                continue
            if addr not in skip and addr not in out:
                out.append(addr)
    return out[:limit]


def resolv_conf_text(nameservers: Iterable[str], search: Iterable[str]) -> str:
    """The resolv.conf crossnet writes for a named netns (first line: the marker detach checks)."""
    lines = [MARKER, *(f"nameserver {n}" for n in nameservers)]
    search = list(search)
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


MARKER = "# written by crossnet attach (crossnet detach removes it)"

__all__ = ["DEFAULT_DOMAIN", "MARKER", "RoundRobin", "TTL", "Table", "domain_problem", "in_domain",
           "in_reverse_zones", "name_problem", "normalize", "parse_resolv_conf", "parse_reverse",
           "resolv_conf_text", "reverse_name", "runtime_name"]
