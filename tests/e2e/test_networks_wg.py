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
  devices (cnvx2, then cnwg2), and stays isolated.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from crossnet.check import ping_matrix
from tests.e2e.test_networks import apply_all, counters, each, members

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
        for family in ("inet", "arp"):
            assert lab.run(h.name, ["nft", "list", "table", family, "crossnet_iso"]).returncode != 0
        assert not (Path(h.state_dir) / "networks").exists()
        assert "wireguard" not in lab.run(h.name, ["ss", "-Hunlp"]).stdout  # no wireguard-go left listening


def isolated_matrix(lab, settle: float = 20.0) -> None:
    """Same-network pairs ping (after at most ``settle`` s: a WireGuard handshake started
    before the peer's device existed is retried after 5 s), cross-network pairs never."""
    nets = members(lab)
    assert len(nets["default"]) == 2 and len(nets["blue"]) == 2
    net_of = {e.name: n for n, eps in nets.items() for e in eps}
    before = {h.name: counters(lab, h.name) for h in lab.hosts}
    deadline = time.monotonic() + settle
    while True:
        pairs = ping_matrix(nets["default"] + nets["blue"], count=1, timeout=1.0, workers=12)
        assert len(pairs) == 4 * 3
        crossed = [(p.src, p.dst) for p in pairs if p.ok and net_of[p.src] != net_of[p.dst]]
        assert not crossed, crossed
        missing = [(p.src, p.dst) for p in pairs if not p.ok and net_of[p.src] == net_of[p.dst]]
        if not missing:
            break
        assert time.monotonic() < deadline, f"same-network pairs that do not ping: {missing}"
        time.sleep(1.0)
    after = {h.name: counters(lab, h.name) for h in lab.hosts}
    for h in lab.hosts:
        for n in ("default", "blue"):
            assert after[h.name][f"inet:{n}_cross"] > before[h.name][f"inet:{n}_cross"], (h.name, n)
    iso = lab.crossnet(lab.hosts[0].name, "check", "--isolation", "-o", "json", check=False)
    assert iso.returncode == 0, iso.stdout + iso.stderr
    got = json.loads(iso.stdout)
    assert got["ok"] and got["isolation"] and not any(p["reached"] for p in got["isolation"])


def blue_route_dev(lab, h, peer) -> str:
    """The device h routes peer's blue subnet into."""
    subnet = lab.status(peer.name)["networks"]["blue"]["subnet"]
    routes = json.loads(lab.run(h.name, ["ip", "-j", "route", "show", subnet], check=True).stdout)
    assert len(routes) == 1, routes
    return routes[0]["dev"]


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
    assert blue_route_dev(lab, h1, h2) == "cnwg2"
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
    assert blue_route_dev(lab, h1, h2) == "cnvx2" and blue_route_dev(lab, h2, h1) == "cnvx2"
    isolated_matrix(lab)
    lab.netfile.write_text(yaml.safe_dump({**lab.cluster, "backend": "auto", "auto": {"encrypt": True},
                                           "networks": [{"name": "blue", "network": BLUE}]}))
    apply_all(lab)  # encrypt: every peer on WireGuard, blue on its own device
    assert blue_route_dev(lab, h1, h2) == "cnwg2" and blue_route_dev(lab, h2, h1) == "cnwg2"
    isolated_matrix(lab)
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
    from tests.e2e.agentlab import wait_for
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
    wait_for(lambda: blue_route_dev(lab, h1, h2) == "cnwg2", 15, "h1 routes h2's blue subnet into cnwg2")
    isolated_matrix(lab)
    st2 = lab.status(h2.name)
    blue2 = st2["networks"]["blue"]["subnet"]
    assert wg_state(Path(h1.state_dir) / "wireguard", "cnwg2") == (51821, [(f"{h2.address}:51821", [blue2])])
