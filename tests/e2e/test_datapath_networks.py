"""End to end: `datapath: ebpf` with named networks and with backend auto (docs/datapath.md,
docs/networks.md), real packets in lab namespaces.

One vxlan lab (2 hosts, networks ``default`` and ``blue``, one container of each per host,
`lab up --datapath ebpf` style): every container has a routed veth (no bridge at all); the
same-network pairs reach each other across hosts and the programs' redirect counters move
for both networks (cn_config holds both); every cross-network pair fails whichever host
(the fast path never carries a packet across, the isolation tables drop it on the slow
path) and `check --isolation` agrees; a container sending from another address is dropped
by the routed reverse-path rule; reset leaves no pin and no tc filter. Then one auto lab
(2 hosts behind a router: per-peer transport vxlan): routed, the redirect counters move.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from crossnet.check import ping_matrix
from tests.conftest import LabFactory

from .kstate import diff, snapshot
from .test_datapath_routed import ip_json
from .test_foundation import ping, tcp_transfer
from .test_networks import BLUE, apply_all, counters, each, members, spoofed_pings_fail

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def ebpf_runs() -> bool:
    from crossnet import ebpf

    return ebpf.problem() is None


def redirects(lab) -> dict[str, int]:
    from crossnet.ebpf import host as ebpf_host

    return {h.name: ebpf_host.counters_at(h.state_dir).get("redirect", 0) for h in lab.hosts}


def with_blue(lab):
    """A `datapath: ebpf` lab made with ``apply=False`` and 2 containers per host: its
    cluster file plus network ``blue`` (``lab.netfile``), the hosts' kernel state before
    (``lab.before``), applied on every host, then per host container 0 attached to the
    top-level network and container 1 to blue. Returns the lab."""
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    assert cluster["datapath"] == "ebpf"
    cluster["networks"] = [{"name": "blue", "network": BLUE}]
    lab.netfile = Path(lab.plan.cluster_file).with_name("networks.yaml")
    lab.netfile.write_text(yaml.safe_dump(cluster))
    lab.before = {h.name: snapshot(h.netns) for h in lab.hosts}
    apply_all(lab)
    each(lambda h: (lab.crossnet(h.name, "attach", h.containers[0]),
                    lab.crossnet(h.name, "attach", h.containers[1], "--network", "blue")), lab.hosts)
    return lab


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    return with_blue(LabFactory.for_test(request)(hosts=2, underlay="l3", backend="vxlan", containers=2, apply=False,
                                                  extra={"datapath": "ebpf"}))


def test_every_network_is_routed(lab):
    for h in lab.hosts:
        st = lab.status(h.name)
        assert st["datapath"]["layout"] == "routed"
        assert st["datapath"]["datapath"] == ("ebpf" if ebpf_runs() else "kernel")
        links = ip_json(h.netns, "-d", "link", "show")
        assert not [l for l in links if (l.get("linkinfo") or {}).get("info_kind") == "bridge"]
        routes = {r["dst"]: r for r in ip_json(h.netns, "route", "show")}
        blue = st["networks"]["blue"]
        for c in st["containers"] + blue["containers"]:
            address = c["address"].split("/")[0]
            assert routes[address]["dev"] == c["host_if"]
            veth = next(l for l in links if l["ifname"] == c["host_if"])
            assert "master" not in veth
        lo = [a["local"] for a in ip_json(h.netns, "-4", "addr", "show", "dev", "lo")[0]["addr_info"]]
        assert st["gateway"] in lo and blue["gateway"] in lo  # each network's host address, routed


def test_same_network_pairs_take_the_fast_path_cross_pairs_never_pass(lab):
    nets = members(lab)
    assert len(nets["default"]) == 2 and len(nets["blue"]) == 2
    before_iso = {h.name: counters(lab, h.name) for h in lab.hosts}
    pairs = ping_matrix(nets["default"] + nets["blue"], count=1, timeout=1.0, workers=12)
    net_of = {e.name: n for n, eps in nets.items() for e in eps}
    assert len(pairs) == 4 * 3
    wrong = [(p.src, p.dst, p.ok) for p in pairs if p.ok != (net_of[p.src] == net_of[p.dst])]
    assert not wrong, wrong  # with the programs attached: they never carried a packet across networks
    after_iso = {h.name: counters(lab, h.name) for h in lab.hosts}
    for h in lab.hosts:
        for n in ("default", "blue"):
            assert after_iso[h.name][f"ip:{n}_cross"] > before_iso[h.name][f"ip:{n}_cross"], (h.name, n)
    for net in ("default", "blue"):  # both networks' entries of cn_config: the flow is redirected on both hosts
        src, dst = nets[net]
        before = redirects(lab)
        assert tcp_transfer(src.netns, dst.netns, dst.address) > 1e6
        if ebpf_runs():
            after = redirects(lab)
            assert all(after[h] > before[h] for h in after), (net, before, after)
    iso = lab.crossnet(lab.hosts[0].name, "check", "--isolation", "-o", "json", check=False)
    assert iso.returncode == 0, iso.stdout + iso.stderr
    got = json.loads(iso.stdout)
    assert got["ok"] and got["isolation"] and not any(p["reached"] for p in got["isolation"])


def test_a_spoofed_source_is_dropped_on_the_routed_veth(lab):
    """A blue container sending from a default-network address (no container holds it)
    reaches no default container; the routed veths' reverse-path rule counts it. An ARP
    request for the default network's gateway from the blue veth is dropped."""
    h1, h2 = lab.hosts
    st1, st2 = lab.status(h1.name), lab.status(h2.name)
    blue_c = h1.containers[1]
    before = counters(lab, h1.name)
    targets = spoofed_pings_fail(lab, blue_c, st1, st2)
    mid = counters(lab, h1.name)
    assert mid["ip:spoof"] >= before["ip:spoof"] + targets
    # ARP: a request for the other network's gateway (this host's address on lo) from the
    # blue veth is dropped and counted (the host's own ARP for its containers works: the
    # pairs above); the ping gets nothing either way
    gw_default = st1["gateway"]
    lab.run(blue_c, ["ip", "route", "add", f"{gw_default}/32", "dev", "eth0"], check=True)
    lab.run(blue_c, ["ip", "neigh", "del", gw_default, "dev", "eth0"])  # learnt from the host's own request, if any
    try:
        assert lab.run(blue_c, ["ping", "-c", "2", "-W", "1", gw_default]).returncode != 0
    finally:
        lab.run(blue_c, ["ip", "route", "del", f"{gw_default}/32", "dev", "eth0"])
    assert counters(lab, h1.name)["arp:blue_arp"] > mid["arp:blue_arp"]
    blue_h2 = st2["networks"]["blue"]["containers"][0]["address"].split("/")[0]
    assert ping(blue_c, blue_h2, count=2)  # its own network still works


def reset_leaves_no_program(lab, before: dict | None = None) -> None:
    """reset on every host: no pin, no crossnet filter on any device (and, given the
    snapshots taken before apply, the host exactly as it was)."""
    from crossnet.ebpf import host as ebpf_host

    for h in lab.hosts:
        res = lab.crossnet(h.name, "reset", check=False)
        assert res.returncode == 0, res.stderr
        if before is not None:
            assert diff(before[h.name], snapshot(h.netns)) == []
        assert not ebpf_host.loaded(h.state_dir)
        for dev in [h.ifname, *(l["ifname"] for l in ip_json(h.netns, "link", "show"))]:
            tc = subprocess.run(["ip", "netns", "exec", h.netns, "tc", "filter", "show", "dev", dev, "ingress"],
                                capture_output=True, text=True)
            assert "crossnet" not in tc.stdout, (h.name, dev)


def test_reset_leaves_no_pin_and_no_filter(lab):
    reset_leaves_no_program(lab, lab.before)


def test_auto_with_ebpf(request, lab_sweep):
    """backend auto, datapath ebpf, 2 hosts behind a router (each peer over vxlan): routed
    veths, both containers reach each other, TCP is redirected by the programs on both hosts;
    reset leaves no pin and no filter."""
    lab = LabFactory.for_test(request)(hosts=2, underlay="l3", backend="auto", containers=1,
                                       extra={"datapath": "ebpf"})
    for h in lab.hosts:
        st = lab.status(h.name)
        assert st["backend"] == "auto" and st["datapath"]["layout"] == "routed"
        links = ip_json(h.netns, "-d", "link", "show")
        assert not [l for l in links if (l.get("linkinfo") or {}).get("info_kind") == "bridge"]
    pairs = lab.check(count=2)
    assert len(pairs) == 2 and all(p.ok for p in pairs), pairs
    (a,), (b,) = (h.containers for h in lab.hosts)
    dst = lab.status(lab.hosts[1].name)["containers"][0]["address"].split("/")[0]
    before = redirects(lab)
    assert tcp_transfer(a, b, dst) > 1e6
    if ebpf_runs():
        after = redirects(lab)
        assert all(after[h] > before[h] for h in after), (before, after)
    reset_leaves_no_program(lab)
