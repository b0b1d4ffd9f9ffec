"""`crossnet bench networks` (docs/networks.md): what the isolation between named
networks costs. One vxlan lab of 4 hosts on one switch, one container each, all in the
top-level network:

* h1, h2 apply the cluster file as the lab wrote it ("one network");
* h3, h4 apply the same file plus a second network (`networks:`: its bridge, VNI and
  the nftables isolation tables, which every packet of the first network now crosses:
  "with isolation");

iperf3 h1-c1 → h2-c1 and h3-c1 → h4-c1 interleaved run by run (load changes on this
shared machine hit both alike); target: with isolation ≥ 0.97 × one network.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from crossnet.bench.util import RunContext, Skip, bench_lab, ratio

SECOND = {"name": "bench", "network": "10.250.0.0/16"}


def run(rc: RunContext, repeats: int = 3, duration: float = 3.0, ping_count: int = 50) -> dict[str, Any]:
    import yaml

    from crossnet.bench.dataplane import _both, _paired

    for tool in ("iperf3", "nft"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed")
    out: dict[str, Any] = {"suite": "networks", "status": "ok"}
    t0 = time.monotonic()
    with bench_lab({"hosts": 4, "underlay": "l2", "backend": "vxlan", "containers": 1}, apply=False) as lab:
        one = lab.plan.cluster_file
        two = Path(one).with_name("two-networks.yaml")
        two.write_text(yaml.safe_dump({**yaml.safe_load(Path(one).read_text()), "networks": [SECOND]}))
        files = dict(zip([h.name for h in lab.hosts], [one, one, str(two), str(two)]))
        rc.log("networks: h1, h2 with one network; h3, h4 with a second, isolated one")
        _both(lambda h: lab.crossnet(h.name, "apply", "-f", files[h.name], "--host", h.name), lab.hosts)
        _both(lambda h: lab.crossnet(h.name, "attach", h.containers[0]), lab.hosts)
        h1, h2, h3, h4 = lab.hosts[:4]
        addr = {h.name: lab.status(h.name)["containers"][0]["address"].split("/")[0] for h in (h2, h4)}
        out["isolation_tables"] = lab.run(h3.name, ["nft", "list", "table", "inet", "crossnet_iso"]).returncode == 0
        if not out["isolation_tables"]:
            raise RuntimeError("h3 has no isolation table after applying two networks")
        rc.log("networks: iperf3 h1-c1 → h2-c1 and h3-c1 → h4-c1, interleaved")
        out["paths"] = _paired({"one network": (h1.containers[0], h2.containers[0], addr[h2.name]),
                                "with isolation": (h3.containers[0], h4.containers[0], addr[h4.name])},
                               repeats, duration, ping_count)
    a, b = out["paths"]["one network"]["gbps"], out["paths"]["with isolation"]["gbps"]
    out["isolation_ratio"] = ratio(b["median"], a["median"])
    out["isolation_ratio_min"] = ratio(b["min"], a["max"])
    out["isolation_ratio_max"] = ratio(b["max"], a["min"])
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


__all__ = ["run"]
