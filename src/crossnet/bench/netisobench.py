"""`crossnet bench networks` (docs/networks.md): what the isolation between named
networks costs. One vxlan lab of 2 hosts, one container each, in the top-level network:

* "one network": the cluster file as the lab wrote it; iperf3 h1-c1 → h2-c1,
* "with isolation": the same file plus a second network (`networks:`, applied on both
  hosts: its bridge, VNI and the nftables isolation tables, which every packet of the
  first network now crosses); the same iperf3 path,

each divided by the underlay (h1 → h2 host to host) measured interleaved with it;
target: with isolation ≥ 0.97 × one network.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, ratio

SECOND = {"name": "bench", "network": "10.250.0.0/16"}


def _apply(lab: Any, path: str) -> None:
    from crossnet.bench.dataplane import _both

    _both(lambda h: lab.crossnet(h.name, "apply", "-f", path, "--host", h.name), lab.hosts)


def _throughput(lab: Any, label: str, repeats: int, duration: float, ping_count: int) -> dict[str, Any]:
    from crossnet.bench.dataplane import _finish, _paired

    h1, h2 = lab.hosts[0], lab.hosts[1]
    addr = lab.status(h2.name)["containers"][0]["address"].split("/")[0]
    row: dict[str, Any] = {"name": label, "status": "ok"}
    row.update(_paired({"overlay": (h1.containers[0], h2.containers[0], addr),
                        "underlay": (h1.netns, h2.netns, h2.address)}, repeats, duration, ping_count))
    return _finish(row)


def run(rc: RunContext, repeats: int = 3, duration: float = 3.0, ping_count: int = 50) -> dict[str, Any]:
    import yaml

    for tool in ("iperf3", "nft"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed")
    out: dict[str, Any] = {"suite": "networks", "status": "ok", "rows": []}
    t0 = time.monotonic()
    with bench_lab({"hosts": 2, "underlay": "l2", "backend": "vxlan", "containers": 1}) as lab:
        rc.log("networks: one network, h1-c1 → h2-c1")
        out["rows"].append(_throughput(lab, "one network", repeats, duration, ping_count))
        cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
        two = Path(lab.plan.cluster_file).with_name("two-networks.yaml")
        two.write_text(yaml.safe_dump({**cluster, "networks": [SECOND]}))
        _apply(lab, str(two))
        rc.log("networks: a second network and the isolation tables, same path")
        out["rows"].append(_throughput(lab, "with isolation", repeats, duration, ping_count))
    by = {r["name"]: r for r in out["rows"]}
    out["isolation_ratio"] = ratio(by["with isolation"].get("ratio"), by["one network"].get("ratio"))
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


__all__ = ["run"]
