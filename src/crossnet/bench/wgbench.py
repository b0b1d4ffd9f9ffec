"""`crossnet bench wireguard`: crossnet's WireGuard layout against the same WireGuard
set up by hand, unencrypted crossnet and the underlay, all measured interleaved in the
same rounds.

Two labs up at the same time, one switch each (l2):

* lab A, 6 hosts: h1, h2 run `crossnet apply` (backend wireguard) with one container
  each; h3, h4 carry the hand-built twin (``manual.ManualWireguard``: wireguard-go,
  ``wg set``, ``ip route``); h5 → h6, never configured, is the underlay;
* lab B, 2 hosts: crossnet's unencrypted overlay (backend vxlan), container h1 → h2.

Every round runs iperf3 on the four paths one after the other (the order reversed every
other round), so load changes on this shared machine hit every path alike. crossnet's
layout and the hand-built one run back to back in every round: the target figure is the
median over pairs of rounds (one in each order) of crossnet ÷ hand-built (`median_ratio`;
both on the same underlay of the same minutes, so "both ÷ underlay" cancels to this).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from crossnet.bench.util import (
    RunContext,
    Skip,
    bench_lab,
    median_ratio,
    pair_ratios,
    ratio,
    round_ratios,
)

PATHS = ("wireguard", "manual-wireguard", "vxlan", "underlay")  # the order of a round (reversed every other one)


def _attached(lab: Any, host: Any) -> str:
    st = lab.status(host.name)
    return next(c for c in st["containers"] if c["netns"].endswith(host.containers[0]))["address"].split("/")[0]


def run(rc: RunContext, repeats: int = 6, duration: float = 3.0, ping_count: int = 50) -> dict[str, Any]:
    from crossnet.bench import manual
    from crossnet.bench.dataplane import at_once, crossnet_measured, paired
    from crossnet.lab.manager import APPLY_TIMEOUT, ATTACH_TIMEOUT

    for tool in ("iperf3", "wg"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed")
    if not shutil.which("wireguard-go") and not os.path.exists("/sys/module/wireguard"):
        raise Skip("no wireguard kernel module and wireguard-go not installed")
    t0 = time.monotonic()
    out: dict[str, Any] = {"suite": "wireguard", "status": "ok",
                           "params": {"repeats": repeats, "duration_s": duration, "ping_count": ping_count,
                                      "cpu": rc.cpu}}
    with bench_lab({"hosts": 6, "underlay": "l2", "backend": "wireguard", "containers": 1}, apply=False) as lab, \
            bench_lab({"hosts": 2, "underlay": "l2", "backend": "vxlan", "containers": 1}) as plain:
        h1, h2, h3, h4, h5, h6 = lab.hosts[:6]
        rc.log(f"wireguard: crossnet apply + attach on {h1.name}, {h2.name}")
        at_once(lambda h: crossnet_measured(lab, h, ["apply", "-f", lab.plan.cluster_file, "--host", h.name], APPLY_TIMEOUT),
              (h1, h2))
        at_once(lambda h: crossnet_measured(lab, h, ["attach", h.containers[0]], ATTACH_TIMEOUT), (h1, h2))
        layout = manual.ManualWireguard(lab, hosts=[h3, h4])
        layout.check_available()
        try:
            rc.log(f"wireguard: the hand-built twin on {h3.name}, {h4.name}")
            built = layout.build(1500)
            p1, p2 = plain.hosts[:2]
            paths = {
                "wireguard": (h1.containers[0], h2.containers[0], _attached(lab, h2)),
                "manual-wireguard": (built.client_ns, built.server_ns, built.server_addr),
                "vxlan": (p1.containers[0], p2.containers[0], _attached(plain, p2)),
                "underlay": (h5.netns, h6.netns, h6.address),
            }
            mtus = {"wireguard": lab.status(h2.name).get("mtu"), "manual-wireguard": built.container_mtu,
                    "vxlan": plain.status(p2.name).get("mtu"), "underlay": 1500}
            rc.log(f"wireguard: {repeats} interleaved rounds of {', '.join(PATHS)}")
            res = paired({k: paths[k] for k in PATHS}, repeats, duration, ping_count, cpu=rc.cpu)
        finally:
            layout.teardown()
    under = res["underlay"]["gbps"]
    rows = []
    for name in PATHS:
        r = res[name]
        rows.append({"name": name, "container_mtu": mtus[name], "gbps": r["gbps"], "rtt": r["rtt"],
                     "retransmits": r["retransmits"],
                     "ratio": ratio(r["gbps"]["median"], under["median"], 4),
                     "round_ratio": median_ratio(r["gbps"]["samples"], under["samples"])})
    out["rows"] = rows
    wg, mw = res["wireguard"]["gbps"]["samples"], res["manual-wireguard"]["gbps"]["samples"]
    out["vs_manual"] = {
        "median_round_ratio": median_ratio(wg, mw),
        "round_ratios": [round(x, 3) for x in round_ratios(wg, mw)],
        "pair_ratios": [round(x, 3) for x in pair_ratios(wg, mw)],
        "ratio_of_medians": ratio(res["wireguard"]["gbps"]["median"], res["manual-wireguard"]["gbps"]["median"]),
    }
    out["vs_unencrypted"] = median_ratio(wg, res["vxlan"]["gbps"]["samples"])
    out["steps"] = built.steps
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


__all__ = ["median_ratio", "pair_ratios", "round_ratios", "run"]
