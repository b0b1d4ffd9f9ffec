"""`crossnet validate -f FILE`: check a cluster file offline — no kernel, no Open vSwitch,
no peers. Everything `apply` checks in the file (the loader's bounds, every field, the
carve of the hosts' subnets, the keys a backend needs from every host) plus what only
shows across hosts: the container MTU each host would get (underlay MTU minus the
backend's overhead; per peer for backend auto) must be usable and the same on every host.

Returns a report (docs/json.md `validate`); never raises for a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossnet.errors import ConfigError

ASSUMED_NIC_MTU = 1500  # when the file leaves `mtu` unset, each host's NIC decides; this is assumed
MIN_CONTAINER_MTU = 576  # the smallest datagram every IPv4 host must accept (RFC 791)


def _problems_of(exc: Exception, path: str) -> list[dict[str, str]]:
    from pydantic import ValidationError

    from crossnet.config import Cluster
    from crossnet.netmodel import _format_error

    if isinstance(exc, ValidationError):
        return [{"field": f, "message": m} for f, m in dict.fromkeys(_format_error(e, Cluster) for e in exc.errors())]
    msg = str(exc).removeprefix(f"{path}: ")
    return [{"field": "(file)", "message": msg}]


def container_mtus(cluster: Any) -> dict[str, int]:
    """host -> the container MTU `apply` would give it (before any --probe-mtu), from
    the file's `mtu` or ASSUMED_NIC_MTU. Pure: a stand-in NIC, no kernel."""
    from crossnet import program
    from crossnet.backends import get_backend
    from crossnet.netlink.iproute import LinkInfo
    from crossnet.program import Peer
    from crossnet.transport import pmtu

    backend = get_backend(cluster.backend)
    subnets = cluster.host_subnets()
    settings = program.Settings.of_cluster(cluster)
    out = {}
    for host in cluster.hosts:
        nic = LinkInfo(index=0, name=host.iface, kind=None, mtu=cluster.mtu or ASSUMED_NIC_MTU, mac=None, up=True,
                       master=None, info_data={})
        peers = [Peer(p.name, p.address, subnets[p.name],
                      {**backend.host_data(cluster.name, p.name, p.address), **p.published_data()})
                 for p in cluster.peers_of(host.name)]
        ctx = program.context(settings, backend, host=host.name, address=host.address, iface=host.iface,
                              subnet=subnets[host.name], gateway=cluster.gateway_of(host.name), nic=nic, peers=peers)
        overhead = pmtu.peer_overheads(ctx, backend) if pmtu.probed(backend.name) else 0
        if isinstance(overhead, dict):
            out[host.name] = ctx.underlay_mtu - max(overhead.values(), default=0)
        else:
            out[host.name] = ctx.mtu
    return out


def mtu_findings(cluster: Any, mtus: dict[str, int]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(problems, warnings) about the hosts' container MTUs."""
    problems, warnings = [], []
    underlay = cluster.mtu or ASSUMED_NIC_MTU
    low = {h: m for h, m in mtus.items() if m < MIN_CONTAINER_MTU}
    if low:
        h, m = next(iter(low.items()))
        problems.append({"field": "mtu", "message": (
            f"underlay MTU {underlay}{'' if cluster.mtu else ' (assumed: mtu unset)'} leaves {m} bytes for "
            f"the containers of {', '.join(low)} after backend {cluster.backend}'s overhead of {underlay - m}: "
            f"at least {MIN_CONTAINER_MTU} needed (mtu: {MIN_CONTAINER_MTU + underlay - m} or more)")})
    by_mtu: dict[int, list[str]] = {}
    for h, m in mtus.items():
        by_mtu.setdefault(m, []).append(h)
    if len(by_mtu) > 1:
        parts = "; ".join(f"{', '.join(hs)}: {m}" for m, hs in sorted(by_mtu.items()))
        problems.append({"field": "mtu", "message": (
            f"hosts would give their containers different MTUs ({parts}): a packet that fits one host's "
            f"containers is dropped on the way to another's; give every host the same transports "
            f"(auto.encrypt, wireguard_key on every host)")})
    if cluster.mtu is None and not cluster.is_bridge:
        warnings.append({"field": "mtu", "message": (
            f"unset: each host takes its NIC's MTU (checked here as {ASSUMED_NIC_MTU}); hosts whose NICs "
            f"differ would give their containers different MTUs: set mtu: to the smallest underlay MTU")})
    return problems, warnings


def validate_file(path: str | Path) -> dict[str, Any]:
    """The report of one cluster file: ok, the cluster's name/backend/hosts, the
    container MTU per host, problems (each {field, message}) and warnings."""
    from pydantic import ValidationError

    from crossnet.config import Cluster, _read_bounded, load_yaml_text

    path = Path(path)
    report: dict[str, Any] = {"ok": False, "file": str(path), "cluster": None, "backend": None, "hosts": [],
                              "subnets": {}, "container_mtu": {}, "problems": [], "warnings": []}
    try:
        data = load_yaml_text(path, _read_bounded(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a cluster mapping at the top level")
        cluster = Cluster.model_validate(data)
    except (ConfigError, ValidationError) as exc:
        report["problems"] = _problems_of(exc, str(path))
        return report
    report.update(cluster=cluster.name, backend=cluster.backend, hosts=[h.name for h in cluster.hosts],
                  subnets={k: str(v) for k, v in cluster.host_subnets().items()})
    from crossnet.backends import get_backend

    backend = get_backend(cluster.backend)
    for j, h in enumerate(cluster.hosts):  # what `apply` asks of every host (crossnet.host.check_local_data)
        for k in backend.required_host_data:
            if k not in h.published_data():
                report["problems"].append({"field": f"hosts[{j}].{k}", "message": (
                    f"required for backend {backend.name} (run `crossnet keygen` on host {h.name} "
                    f"and paste the key it prints)")})
    if not report["problems"]:
        mtus = container_mtus(cluster)
        report["container_mtu"] = mtus
        problems, warnings = mtu_findings(cluster, mtus)
        report["problems"] += problems
        report["warnings"] += warnings
    report["ok"] = not report["problems"]
    return report
