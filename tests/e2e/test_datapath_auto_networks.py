"""End to end: `backend: auto` with `datapath: ebpf` and two named networks (docs/datapath.md,
docs/networks.md), real packets in lab namespaces.

3 hosts, networks ``default`` and ``blue``, one container of each per host (the shared
helper ``with_blue``), once on an L2 underlay (auto picks ``direct`` for every peer: routes
via the NIC, where the to-container program runs) and once on an L3 underlay behind a
router (auto picks ``vxlan``: each network over its own ``cnvx<vni>``, programs there).
Every container has a routed veth (no bridge); every peer's subnet of each network is
routed over the transport auto picked; every same-network pair pings and answers TCP and
UDP across hosts, every cross-network attempt (ping, TCP, UDP, the other network's
gateways, a spoofed source) gets nothing and the isolation counters count it; TCP of both
networks is redirected by the programs on the sending and the receiving host; `status`
shows datapath ebpf; `check --isolation` agrees; `reset` leaves the hosts as they were,
with no tc filter and no pin.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil

import pytest

from tests.conftest import LabFactory

from .test_datapath_networks import ebpf_runs, reset_leaves_no_program, with_blue
from .test_datapath_routed import ip_json
from .test_foundation import tcp_transfer
from .test_networks import counters, members, probe, same_network_pings, spoofed_pings_fail

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

TRANSPORT = {"l2": "direct", "l3": "vxlan"}  # what auto picks for every peer on that underlay (no prober)


@pytest.fixture(scope="module", params=sorted(TRANSPORT))
def lab(request, lab_sweep):
    if not shutil.which("wireguard-go") and not os.path.exists("/sys/module/wireguard"):
        pytest.skip("needs wireguard-go (apt-get install wireguard-go): auto makes a WireGuard device per network")
    lab = LabFactory.for_test(request)(hosts=3, underlay=request.param, backend="auto", containers=2, apply=False,
                                       extra={"datapath": "ebpf"})
    lab.transport = TRANSPORT[request.param]
    return with_blue(lab)


def counters_of(lab) -> dict[str, dict[str, int]]:
    from crossnet.ebpf import host as ebpf_host

    return {h.name: ebpf_host.counters_at(h.state_dir) for h in lab.hosts}


def test_status_shows_ebpf_and_every_network_is_routed(lab):
    for h in lab.hosts:
        st = lab.status(h.name)
        assert st["backend"] == "auto"
        assert st["datapath"]["configured"] == "ebpf" and st["datapath"]["layout"] == "routed"
        assert st["datapath"]["datapath"] == ("ebpf" if ebpf_runs() else "kernel")
        text = lab.crossnet(h.name, "status").stdout
        assert f"datapath: {st['datapath']['datapath']} (routed container veths" in text, text
        blue = st["networks"]["blue"]
        assert blue["layout"] == "routed" and blue["bridge"] is None
        assert {(d["kind"], d["name"]) for d in blue["devices"]} >= {("vxlan", "cnvx2"), ("wireguard-device", "cnwg2")}
        links = ip_json(h.netns, "-d", "link", "show")
        assert not [l for l in links if (l.get("linkinfo") or {}).get("info_kind") == "bridge"]
        routes = {r["dst"]: r for r in ip_json(h.netns, "route", "show")}
        assert len(st["containers"]) == 1 and len(blue["containers"]) == 1
        for c in st["containers"] + blue["containers"]:
            assert routes[c["address"].split("/")[0]]["dev"] == c["host_if"]  # its /32 route
            assert "master" not in next(l for l in links if l["ifname"] == c["host_if"])
        lo = [a["local"] for a in ip_json(h.netns, "-4", "addr", "show", "dev", "lo")[0]["addr_info"]]
        assert st["gateway"] in lo and blue["gateway"] in lo


def test_each_network_is_carried_over_the_transport_auto_picked(lab):
    """Every peer's subnet of each network is routed over the transport auto picked for
    that peer: the NIC (direct) for both networks, or each network's own vxlan device."""
    st = {h.name: lab.status(h.name) for h in lab.hosts}
    for h in lab.hosts:
        routes = {r["dst"]: r for r in ip_json(h.netns, "route", "show")}
        for p in lab.hosts:
            if p is h:
                continue
            for net, vxlan in (("default", "cnvx1"), ("blue", "cnvx2")):
                subnet = st[p.name]["subnet"] if net == "default" else st[p.name]["networks"]["blue"]["subnet"]
                r = routes[subnet]
                if lab.transport == "direct":
                    assert (r["dev"], r.get("gateway")) == (h.ifname, p.address), (h.name, p.name, net, r)
                else:
                    assert r["dev"] == vxlan, (h.name, p.name, net, r)


def test_same_network_pairs_ping_and_tcp_cross_network_never(lab):
    nets = members(lab)
    assert len(nets["default"]) == 3 and len(nets["blue"]) == 3
    everyone = nets["default"] + nets["blue"]
    net_of = {e.name: n for n, eps in nets.items() for e in eps}
    before = {h.name: counters(lab, h.name) for h in lab.hosts}
    assert len(everyone) == 6
    same_network_pings(everyone, net_of, 10.0)  # the first packets resolve the neighbours on the way
    # TCP and UDP from every container to every other one: a same-network closed port
    # answers (refused: a packet came back), a cross-network one never does
    with cf.ThreadPoolExecutor(6) as ex:
        futs = {s.name: ex.submit(probe, lab, s.netns, [(k, d.address) for d in everyone if d is not s
                                                           for k in ("tcp", "udp")]) for s in everyone}
    for s in everyone:
        want = [("refused" if net_of[d.name] == net_of[s.name] else "timeout") for d in everyone if d is not s
                for _ in ("tcp", "udp")]
        assert futs[s.name].result() == want, s.name
    after = {h.name: counters(lab, h.name) for h in lab.hosts}
    for h in lab.hosts:
        for n in ("default", "blue"):
            assert after[h.name][f"ip:{n}_cross"] > before[h.name][f"ip:{n}_cross"], (h.name, n)


def test_tcp_of_both_networks_takes_the_fast_path(lab):
    """iperf3 across hosts in each network: the sender's from-container program redirects
    to the NIC / vxlan device, the receiver's to-container program into the container."""
    if not ebpf_runs():
        pytest.skip("this host cannot run the eBPF programs (the routed layout is tested above)")
    nets = members(lab)
    host_of = {e.name: e.name.split("/")[0] for eps in nets.values() for e in eps}
    for net, (i, j) in (("default", (0, 1)), ("blue", (1, 2)), ("blue", (2, 0))):
        src, dst = sorted(nets[net], key=lambda e: e.name)[i], sorted(nets[net], key=lambda e: e.name)[j]
        before = counters_of(lab)
        assert tcp_transfer(src.netns, dst.netns, dst.address) > 1e6
        after = counters_of(lab)
        s, d = host_of[src.name], host_of[dst.name]
        assert after[s]["redirect_neigh"] > before[s]["redirect_neigh"], (net, s, before[s], after[s])
        assert after[d]["redirect_peer"] > before[d]["redirect_peer"], (net, d, before[d], after[d])


def test_other_gateways_and_a_spoofed_source_get_nothing(lab):
    """A blue container reaches no address of the default network: not the default
    gateways (its own host's on lo, another host's), not the default containers from a
    spoofed default-network source (the routed veths' reverse-path rule counts it); its
    own gateway and network still answer."""
    h1, h2 = lab.hosts[0], lab.hosts[1]
    st1, st2 = lab.status(h1.name), lab.status(h2.name)
    blue_c = h1.containers[1]
    before = counters(lab, h1.name)
    got = probe(lab, blue_c, [("tcp", st1["gateway"]), ("udp", st1["gateway"]), ("tcp", st2["gateway"]),
                              ("tcp", st1["networks"]["blue"]["gateway"])])
    assert got == ["timeout", "timeout", "timeout", "refused"]
    mid = counters(lab, h1.name)
    assert mid["ip:blue_gateway"] > before["ip:blue_gateway"]  # its own host's default gateway
    assert mid["ip:blue_cross"] > before["ip:blue_cross"]  # another host's, forwarded
    targets = spoofed_pings_fail(lab, blue_c, st1, st2)
    assert counters(lab, h1.name)["ip:spoof"] >= mid["ip:spoof"] + targets
    blue_h2 = st2["networks"]["blue"]["containers"][0]["address"].split("/")[0]
    assert lab.run(blue_c, ["ping", "-c", "1", "-W", "2", blue_h2]).returncode == 0


def test_check_isolation_agrees(lab):
    iso = lab.crossnet(lab.hosts[0].name, "check", "--isolation", "-o", "json", check=False)
    assert iso.returncode == 0, iso.stdout + iso.stderr
    got = json.loads(iso.stdout)
    assert got["ok"] and got["isolation"] and not any(p["reached"] for p in got["isolation"])


def test_reset_leaves_no_pin_no_filter_and_the_hosts_as_they_were(lab):
    reset_leaves_no_program(lab, lab.before)
    for h in lab.hosts:
        assert "wireguard" not in lab.run(h.name, ["ss", "-Hunlp"]).stdout  # no wireguard-go left
