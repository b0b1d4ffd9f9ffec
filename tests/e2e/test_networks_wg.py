"""Isolated named networks with backends wireguard and auto, end to end (docs/networks.md;
the full matrix is vxlan: tests/e2e/test_networks.py). One lab: 2 hosts on a routed (l3)
underlay, 2 networks (``default`` and ``blue``), one container of each network per host,
wireguard-go per device (these machines have no kernel module).

* backend wireguard: each network has its own device and port (cnwg0:51820,
  cnwg2:51821), each peer's allowed-ips are its subnet of that network; every
  same-network pair pings across hosts, no cross-network pair does (the isolation
  counters count), `crossnet check --isolation` agrees; reset leaves no device, table,
  wireguard-go or state dir of either network;
* under a store (etcd, agents; a second lab): `etcd init --backend wireguard
  --network-name blue` added at run time; the agents lease and program blue on its own
  device; the same matrix;
* backend auto on the same hosts (`apply`, no prober: a routed underlay gives every peer
  vxlan, ``auto.encrypt`` WireGuard): blue follows the top-level choice on its own
  devices (cnvx2, then cnwg2); the matrix on vxlan, then blue pings across through
  cnwg2 and not into default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from tests.e2e.agentlab import wait_for
from tests.e2e.test_networks import apply_all, counters, each, iso_family, iso_hooked_devices, isolated_matrix, members

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

BLUE = "10.33.0.0/16"


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        pytest.skip("needs wireguard-go (apt-get install wireguard-go)")
    from tests.conftest import LabFactory

    lab = LabFactory.for_test(request)(hosts=2, underlay="l3", backend="wireguard", containers=2, apply=False)
    lab.cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    lab.netfile = Path(lab.plan.cluster_file).with_name("networks.yaml")
    return lab


def apply_and_attach(lab, **top) -> None:
    lab.netfile.write_text(yaml.safe_dump({**lab.cluster, **top, "networks": [{"name": "blue", "network": BLUE}]}))
    apply_all(lab)
    each(lambda h: (lab.crossnet(h.name, "attach", h.containers[0]),
                    lab.crossnet(h.name, "attach", h.containers[1], "--network", "blue")), lab.hosts)


def reset_all(lab) -> None:
    each(lambda h: lab.crossnet(h.name, "reset"), lab.hosts)
    for h in lab.hosts:
        links = lab.run(h.name, ["ip", "-o", "link"]).stdout
        assert not [x for x in ("cn0", "cn-blue", "cnwg", "cnvx") if x in links], links
        for family in ("inet", "netdev", "arp"):
            assert lab.run(h.name, ["nft", "list", "table", family, "crossnet_iso"]).returncode != 0
        assert not (Path(h.state_dir) / "networks").exists()
        assert "wireguard" not in lab.run(h.name, ["ss", "-Hunlp"]).stdout  # no wireguard-go left listening


def route_devs(lab) -> dict[str, str]:
    """host -> the device it routes the other host's blue subnet into."""
    subnets = {h.name: lab.status(h.name)["networks"]["blue"]["subnet"] for h in lab.hosts}
    out = {}
    for h, peer in zip(lab.hosts, lab.hosts[::-1]):
        routes = json.loads(lab.run(h.name, ["ip", "-j", "route", "show", subnets[peer.name]], check=True).stdout)
        assert len(routes) == 1, routes
        out[h.name] = routes[0]["dev"]
    return out


def test_wireguard_each_network_its_own_device_port_and_peers(lab):
    apply_and_attach(lab)
    h1, h2 = lab.hosts
    isolated_matrix(lab)
    listening = lab.run(h1.name, ["ss", "-Hunl"]).stdout
    assert ":51820 " in listening and ":51821 " in listening, listening
    # each device's peer is h2 with h2's subnet of that network only, on that network's port
    st2 = lab.status(h2.name)
    for dev, subnet, port in (("cnwg0", st2["subnet"], 51820), ("cnwg2", st2["networks"]["blue"]["subnet"], 51821)):
        assert wg_state(Path(h1.state_dir) / "wireguard", dev) == (port, [(f"{h2.address}:{port}", [subnet])])
    assert route_devs(lab) == {h1.name: "cnwg2", h2.name: "cnwg2"}
    reset_all(lab)


def test_wireguard_a_peer_tunnelling_into_another_network_is_dropped_where_it_enters(lab):
    """Backend wireguard checks each network's packets on its own devices (the netdev
    layout: a chain on each bridge and each WireGuard device). A peer that sends another
    network's destination through blue's tunnel -- h2 given h1's default container in
    blue's allowed-ips, as a misconfigured or hostile host could -- gets nothing into
    default on h1: blue's chain on cnwg2 drops it (blue_cross), while the same path still
    carries blue's own packets."""
    from crossnet.wg import proc, uapi

    apply_and_attach(lab)
    h1, h2 = lab.hosts
    for h in lab.hosts:
        assert iso_family(lab, h.name) == "netdev", h.name
        assert iso_hooked_devices(lab, h.name) == ["cn-blue", "cn0", "cnwg0", "cnwg2"]
    st1, st2 = lab.status(h1.name), lab.status(h2.name)
    default_dst = st1["containers"][0]["address"].split("/")[0]
    blue_dst = st1["networks"]["blue"]["containers"][0]["address"].split("/")[0]
    src = str(ipaddress.ip_network(st2["networks"]["blue"]["subnet"]).network_address + 1)  # h2's blue gateway
    sock = proc.socket_path(proc.read_pid(Path(h2.state_dir) / "wireguard", "cnwg2"), "cnwg2")
    (peer,) = uapi.get(sock).peers.values()
    uapi.set_(sock, uapi.set_message(peers=[uapi.PeerConfig(
        peer.public_key, peer.endpoint, [*peer.allowed_ips, f"{default_dst}/32"])]))
    lab.run(h2.name, ["ip", "route", "add", f"{default_dst}/32", "dev", "cnwg2", "src", src], check=True)

    def ping(dst: str) -> bool:
        return lab.run(h2.name, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", src, dst],
                       timeout=15).returncode == 0

    assert ping(blue_dst)  # the path works: blue's own packet, from h2's blue address through cnwg2
    before = counters(lab, h1.name)["ip:blue_cross"]
    assert not ping(default_dst)
    assert counters(lab, h1.name)["ip:blue_cross"] >= before + 3
    # h1's wireguard-go of cnwg2 dies (its device goes), apply starts a new one: the chain,
    # bound to the name, hooks the new device without any change to the table
    os.kill(proc.read_pid(Path(h1.state_dir) / "wireguard", "cnwg2"), signal.SIGKILL)
    wait_for(lambda: lab.run(h1.name, ["ip", "link", "show", "cnwg2"]).returncode != 0, 10, "cnwg2 gone on h1")
    (again,) = apply_all(lab, hosts=[h1])
    assert not [c for c in again["changes"] if "crossnet_iso" in c["command"]], again["changes"]
    wait_for(lambda: ping(blue_dst), 30, "blue through h1's new cnwg2")
    before = counters(lab, h1.name)["ip:blue_cross"]
    assert not ping(default_dst)
    assert counters(lab, h1.name)["ip:blue_cross"] >= before + 3
    reset_all(lab)


def wg_state(run_dir: Path, dev: str) -> tuple[int, list[tuple[str | None, list[str]]]]:
    """(listen port, [(endpoint, allowed-ips)]) of the wireguard-go serving ``dev``, over its UAPI socket."""
    from crossnet.wg import proc, uapi

    pid = proc.read_pid(str(run_dir), dev)
    assert pid, f"no wireguard-go for {dev}"
    st = uapi.get(proc.socket_path(pid, dev))
    return st.listen_port, [(p.endpoint, p.allowed_ips) for p in st.peers.values()]


def test_auto_named_network_follows_the_per_peer_choice(lab):
    h1, h2 = lab.hosts
    apply_and_attach(lab, backend="auto")  # routed underlay, no prober: every peer on vxlan
    assert route_devs(lab) == {h1.name: "cnvx2", h2.name: "cnvx2"}
    isolated_matrix(lab)
    lab.netfile.write_text(yaml.safe_dump({**lab.cluster, "backend": "auto", "auto": {"encrypt": True},
                                           "networks": [{"name": "blue", "network": BLUE}]}))
    apply_all(lab)  # encrypt: every peer on WireGuard, blue on its own device
    assert route_devs(lab) == {h1.name: "cnwg2", h2.name: "cnwg2"}
    # blue across the hosts through cnwg2 (the isolation tables are the ones checked above)
    nets = members(lab)
    b1, b2 = sorted(nets["blue"], key=lambda e: e.name)
    d2 = sorted(nets["default"], key=lambda e: e.name)[1]
    wait_for(lambda: lab.run(b1.netns, ["ping", "-c", "1", "-W", "1", b2.address]).returncode == 0, 20,
             "blue h1 -> blue h2 through cnwg2")
    assert lab.run(b1.netns, ["ping", "-c", "2", "-W", "1", d2.address]).returncode != 0
    reset_all(lab)


@pytest.fixture(scope="module")
def store_lab(request, lab_sweep):
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        pytest.skip("needs wireguard-go (apt-get install wireguard-go)")
    from crossnet.lab.etcd import lab_etcd
    from tests.e2e.agentlab import module_factory

    lab = module_factory(request)(hosts=2, underlay="l3", backend="wireguard", containers=2,
                                  extra={"store": "etcd", "ttl": 5})
    lab.etcd_url = lab_etcd(lab.plan).url
    return lab


def test_store_agents_program_each_network_on_its_own_device(store_lab):
    from tests.e2e.test_networks_store import NETS, init, put

    lab = store_lab
    assert NETS["blue"] == BLUE
    got = init(lab, "blue")  # the lab's settings (backend wireguard) + blue
    assert [n["name"] for n in got["config"]["networks"]] == ["blue"], got

    def ready() -> bool:
        for h in lab.hosts:
            nets = lab.status(h.name).get("networks") or {}
            if "blue" not in nets or "cnwg2" not in lab.run(h.name, ["ip", "-o", "link"]).stdout:
                return False
        return True

    wait_for(ready, 30, "every agent programs blue")
    each(lambda h: put(lab, h, h.containers[1], "blue"), lab.hosts)
    h1, h2 = lab.hosts
    wait_for(lambda: route_devs(lab) == {h1.name: "cnwg2", h2.name: "cnwg2"}, 15, "blue routed into cnwg2")
    isolated_matrix(lab)
    st2 = lab.status(h2.name)
    blue2 = st2["networks"]["blue"]["subnet"]
    assert wg_state(Path(h1.state_dir) / "wireguard", "cnwg2") == (51821, [(f"{h2.address}:51821", [blue2])])
