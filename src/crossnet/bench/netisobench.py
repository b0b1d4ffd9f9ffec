"""`crossnet bench networks` (docs/networks.md): what the isolation between named
networks costs, as a crossover experiment.

One vxlan lab of 4 hosts on one switch, one container each, all in the top-level
network; two host pairs carry a path each: P = h1-c1 → h2-c1, Q = h3-c1 → h4-c1. In every
round one pair runs with a second network (`networks:` in its cluster file: its bridge, VNI
and the nftables isolation tables, which every packet of the first network then crosses),
the other with the cluster file as the lab wrote it; before the round the hosts whose role
changes re-apply the other file, and the tables are checked on all four hosts (present on
the pair with isolation, absent on the other). Each round measures both paths once
(iperf3, the order reversed every other round).

Roles go in blocks of 4 rounds, Q P P Q ("ABBA"): per round r = isolated path ÷ plain
path, and ln r = cost ± the bias between the two pairs (their hosts and veths are not
equal), + for Q, − for P. The mean of ln r over a block cancels the pair bias, a drift
of it that is linear over the block, and the order effect (the isolated path runs second
in the first two rounds of a block and first in the last two). The figure is exp of the
mean over blocks, with a bootstrap interval over blocks; target: ≥ 0.97 (≤ 3 % cost).

``--datapath ebpf`` builds the lab with routed container veths and the tc programs
(docs/datapath.md): same-network packets are redirected by the programs and never reach
the nftables hooks, so the isolation's tables cost only what the programs hand to the
stack. The programs' counters after the rounds (each host's `status` datapath part) show
that the fast path ran; a host that fell back to kernel forwarding fails the bench.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from crossnet.bench.util import RunContext, Skip, bench_lab, percentile, summary

SECOND = {"name": "bench", "network": "10.250.0.0/16"}
BLOCK = ("Q", "P", "P", "Q")  # which pair carries the second network, round by round
BOOTSTRAP = 2000


def roles(rounds: int) -> list[str]:
    """The pair with isolation in each round: whole ABBA blocks (rounds a multiple of 4)."""
    if rounds < len(BLOCK) or rounds % len(BLOCK):
        raise ValueError(f"rounds: {rounds} is not a positive multiple of {len(BLOCK)}")
    return [BLOCK[i % len(BLOCK)] for i in range(rounds)]


def block_estimates(round_ratios: Sequence[float]) -> list[float]:
    """Per complete block of 4 rounds, exp(mean ln r): the isolation's factor with the
    pair bias cancelled. Rounds of an incomplete block (a run cut short) are left out."""
    n = len(BLOCK)
    out = []
    for i in range(0, len(round_ratios) - n + 1, n):
        block = round_ratios[i:i + n]
        if all(r > 0 for r in block):
            out.append(math.exp(sum(math.log(r) for r in block) / n))
    return out


def crossover(round_ratios: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """The estimate over blocks: exp(mean of the blocks' ln), its 95 % bootstrap interval
    (blocks resampled with replacement; a fixed seed, so the same data gives the same
    interval), and the blocks themselves. None figures when there is no complete block."""
    blocks = block_estimates(round_ratios)
    if not blocks:
        return {"blocks": [], "ratio": None, "ci95": [None, None]}
    logs = [math.log(b) for b in blocks]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(logs) for _ in logs) / len(logs) for _ in range(BOOTSTRAP))
    return {"blocks": [round(b, 4) for b in blocks],
            "ratio": round(math.exp(sum(logs) / len(logs)), 3),
            "ci95": [round(math.exp(percentile(means, 2.5)), 3), round(math.exp(percentile(means, 97.5)), 3)]}


def plain_pair(isolated: str) -> str:
    """The pair that ran without the second network in a round where ``isolated`` had it."""
    return "P" if isolated == "Q" else "Q"


def by_role(per_round: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Each round's Gbit/s of the isolated pair and of the plain pair, in round order."""
    return ([r["gbps"][r["isolated"]] for r in per_round],
            [r["gbps"][plain_pair(r["isolated"])] for r in per_round])


def cross_checks(per_round: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Two plainer figures next to the crossover's: the median of the rounds' ratios and
    the ratio of the medians (isolated ÷ plain Gbit/s). They keep the pair bias, but a
    round where one pair falls into a second throughput mode moves them less than it
    moves a block (docs/benchmarks.md, session 18)."""
    ratios = [r["ratio"] for r in per_round if r["ratio"] > 0]
    iso, plain = by_role(per_round)
    mid_plain = percentile(plain, 50) if plain else 0.0
    return {"median_round_ratio": round(percentile(ratios, 50), 3) if ratios else None,
            "ratio_of_medians": round(percentile(iso, 50) / mid_plain, 3) if mid_plain > 0 else None}


DATAPATHS = ("kernel", "ebpf")


def run(rc: RunContext, rounds: int = 24, duration: float = 3.0, datapath: str = "kernel") -> dict[str, Any]:
    import yaml

    from crossnet.bench import traffic
    from crossnet.bench.datapathbench import datapath_status, ebpf_unavailable, lab_opts
    from crossnet.bench.dataplane import at_once

    plan = roles(rounds)
    if datapath not in DATAPATHS:
        raise ValueError(f"datapath: {datapath!r} is not one of {', '.join(DATAPATHS)}")
    for tool in ("iperf3", "nft"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed")
    if datapath == "ebpf":
        why = ebpf_unavailable()
        if why:
            raise Skip(f"datapath ebpf: {why}")
    out: dict[str, Any] = {"suite": "networks", "status": "ok", "method": "crossover", "rounds": rounds,
                           "duration_s": duration, "datapath": datapath, "cpu": rc.cpu}
    t0 = time.monotonic()
    with bench_lab(lab_opts("vxlan", 1500, 4, datapath), apply=False) as lab:
        one = lab.plan.cluster_file
        two = Path(one).with_name("two-networks.yaml")
        two.write_text(yaml.safe_dump({**yaml.safe_load(Path(one).read_text()), "networks": [SECOND]}))
        h1, h2, h3, h4 = lab.hosts[:4]
        pairs = {"P": (h1, h2), "Q": (h3, h4)}
        applied: dict[str, str] = {}

        def apply(hosts: Sequence[Any], file: str) -> None:
            todo = [h for h in hosts if applied.get(h.name) != file]
            if not todo:
                return
            at_once(lambda h: lab.crossnet(h.name, "apply", "-f", file, "--host", h.name), tuple(todo))
            applied.update({h.name: file for h in todo})

        def tables(host: Any) -> bool:  # vxlan's isolation table: netdev (ebpf datapath: inet; crossnet.netiso)
            return any(lab.run(host.name, ["nft", "list", "table", family, "crossnet_iso"]).returncode == 0
                       for family in ("netdev", "inet"))

        def set_roles(iso: str) -> None:
            for name, hosts in pairs.items():
                apply(hosts, str(two) if name == iso else one)
            wrong = [h.name for name, hosts in pairs.items() for h in hosts if tables(h) != (name == iso)]
            if wrong:
                raise RuntimeError(f"isolation tables not as planned on {', '.join(wrong)} (pair {iso} isolated)")

        rc.log(f"networks: {rounds} rounds, pairs h1→h2 and h3→h4 taking turns with a second network (Q P P Q)")
        apply(lab.hosts[:4], one)
        at_once(lambda h: lab.crossnet(h.name, "attach", h.containers[0]), lab.hosts)
        addr = {h.name: lab.status(h.name)["containers"][0]["address"].split("/")[0] for h in (h2, h4)}
        paths = {name: (a.containers[0], b.containers[0], addr[b.name]) for name, (a, b) in pairs.items()}
        servers = [traffic.IperfServer(b.containers[0], cpu=rc.cpu) for _a, b in pairs.values()]
        per_round: list[dict[str, Any]] = []
        try:
            for srv in servers:
                srv.start()
            for i, iso in enumerate(plan):
                set_roles(iso)
                for client, _server, a in paths.values():
                    traffic.wait_reachable(client, a)
                gbps = {}
                for name in (("P", "Q") if i % 2 == 0 else ("Q", "P")):
                    client, _server, a = paths[name]
                    gbps[name], _retr = traffic.iperf_gbps(client, a, duration, cpu=rc.cpu)
                plain = plain_pair(iso)
                per_round.append({"isolated": iso, "gbps": gbps,
                                  "ratio": round(gbps[iso] / gbps[plain], 4) if gbps[plain] > 0 else 0.0})
                rc.log(f"networks: round {i + 1}/{rounds}: isolated {iso} {gbps[iso]:.2f}, "
                       f"plain {gbps[plain]:.2f} Gbit/s")
            if datapath == "ebpf":
                out["datapath_status"] = fast = datapath_status(lab, lab.hosts[:4])
                slow = [n for n, d in fast.items() if (d or {}).get("datapath") != "ebpf"]
                if slow:
                    raise RuntimeError(f"datapath ebpf not running on {', '.join(slow)}: "
                                       + "; ".join(str((fast[n] or {}).get("why")) for n in slow))
        finally:
            for srv in servers:
                srv.stop()
    out["per_round"] = per_round
    isolated, plain = by_role(per_round)
    out["one_network_gbps"], out["with_isolation_gbps"] = summary(plain), summary(isolated)
    est = crossover([r["ratio"] for r in per_round])
    out.update(cross_checks(per_round))
    out["blocks"] = est["blocks"]
    out["isolation_ratio"] = est["ratio"]
    out["isolation_ratio_min"], out["isolation_ratio_max"] = est["ci95"]
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


__all__ = ["DATAPATHS", "block_estimates", "cross_checks", "crossover", "roles", "run"]
