"""DNS of the named networks under the agent (docs/dns.md, "Named networks"), end to end:
real etcd, 2 hosts (vxlan, `lab up --store etcd`), two named networks added at run time
(`etcd init --force --network-name blue … red …`) plus the top-level network, one named
container per network per host. Real packets: busybox `nslookup NAME.crossnet.local
GATEWAY` from the containers' namespaces.

* a container of blue on h2 resolves blue's container of h1 through blue's gateway on h2
  (each agent serves one DNS server per named network, started when the network came);
* a name of blue is NXDOMAIN from red's and the top-level network's containers (each
  network's server answers for its own containers only);
* `attach --network blue` of a named netns gets blue's gateway in its resolv.conf;
* `crossnet etcd show` lists each host's named-network leases;
* a detached blue container stops resolving on the other host within a bounded poll.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from crossnet.lab.etcd import lab_etcd
from tests.e2e.agentlab import module_factory, wait_for
from tests.e2e.test_networks_store import NETS, init, programmed

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

DOMAIN = "crossnet.local"
NETWORKS = ("default", "blue", "red")


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not shutil.which("busybox"):
        pytest.skip("needs busybox (nslookup)")
    lab = module_factory(request)(hosts=2, underlay="l2", backend="vxlan", containers=3,
                                  extra={"store": "etcd", "ttl": 5})
    lab.etcd_url = lab_etcd(lab.plan).url
    init(lab, "blue", "red")
    wait_for(lambda: programmed(lab, ["blue", "red"]), 60, "blue and red on both hosts")
    lab.addr = {}  # (host, network) -> its container's address
    for h in lab.hosts:
        for i, net in enumerate(NETWORKS):
            attach(lab, h, i, net)
    for h in lab.hosts:  # every agent serves each network's DNS on that network's gateway
        for net in NETWORKS:
            wait_for(lambda h=h, net=net: served(lab, h.name, net), 30, f"{h.name}'s dns of {net}")
    return lab


def name(h, net: str) -> str:
    return f"{net[0]}{h.name}"  # dh1, bh1, rh2...


def attach(lab, h, i: int, net: str) -> None:
    c = h.containers[i]
    lab.crossnet(h.name, "detach", c)
    lab.crossnet(h.name, "attach", c, "--name", name(h, net), *(["--network", net] if net != "default" else []))
    st = lab.status(h.name)
    items = st["containers"] if net == "default" else st["networks"][net]["containers"]
    lab.addr[(h.name, net)] = next(x for x in items if x["id"] == c)["address"].split("/")[0]


def served(lab, host: str, net: str) -> dict | None:
    from crossnet import networks
    from crossnet.dns.resolv import served as dns_served
    from crossnet.state import StateDir

    hp = next(x for x in lab.plan.hosts if x.name == host)
    return dns_served(networks.state_of(StateDir(hp.state_dir), net))


def nslookup(lab, h, net: str, target: str) -> tuple[bool, str]:
    """busybox nslookup TARGET.crossnet.local from h's container of `net` to its gateway."""
    c = h.containers[NETWORKS.index(net)]
    gw = served(lab, h.name, net)["listen"][0]
    out = subprocess.run(["ip", "netns", "exec", c, "busybox", "nslookup", f"{target}.{DOMAIN}", gw],
                         capture_output=True, text=True, timeout=30, check=False)
    return out.returncode == 0, out.stdout + out.stderr


def test_each_network_resolves_its_own_names_across_hosts_only(lab):
    h1, h2 = lab.hosts
    for net in NETWORKS:  # from h2, the same network's container of h1 (the store watch: bounded poll)
        want = lab.addr[("h1", net)]
        wait_for(lambda net=net, want=want: (r := nslookup(lab, h2, net, name(h1, net)))[0] and want in r[1],
                 15, f"{name(h1, net)} from h2's {net} container")
    for net in NETWORKS:  # another network's name: NXDOMAIN from its server
        for other in NETWORKS:
            if other == net:
                continue
            ok, text = nslookup(lab, h2, net, name(h1, other))
            assert not ok and "NXDOMAIN" in text and lab.addr[("h1", other)] not in text, (net, other, text)
    assert served(lab, "h2", "blue")["listen"] != served(lab, "h2", "red")["listen"]


def test_attach_network_gets_its_gateway_in_resolv_conf(lab):
    h2 = lab.hosts[1]
    for net in NETWORKS:
        with open(f"/etc/netns/{h2.containers[NETWORKS.index(net)]}/resolv.conf") as fh:
            text = fh.read()
        assert f"nameserver {served(lab, 'h2', net)['listen'][0]}\n" in text, (net, text)


def test_etcd_show_lists_named_network_leases(lab):
    statuses = {h.name: lab.status(h.name)["networks"] for h in lab.hosts}
    text = lab.crossnet("h1", "etcd", "show", "--etcd", lab.etcd_url).stdout
    data = json.loads(lab.crossnet("h1", "etcd", "show", "--etcd", lab.etcd_url, "-o", "json").stdout)
    for h in lab.hosts:
        line = next(ln for ln in text.splitlines() if ln.split() and ln.split()[0] == h.name)
        for net in ("blue", "red"):
            sub = statuses[h.name][net]["subnet"]
            assert f"{net} {sub}" in line and sub.startswith(NETS[net][:6]), line
        rec = next(r for r in data["hosts"] if r["name"] == h.name)
        assert rec["networks"] == {n: statuses[h.name][n]["subnet"] for n in ("blue", "red")}


def test_a_detached_container_stops_resolving_on_the_other_host(lab):
    h1, h2 = lab.hosts
    lab.crossnet("h1", "detach", h1.containers[1], "--network", "blue")
    try:
        wait_for(lambda: "NXDOMAIN" in nslookup(lab, h2, "blue", name(h1, "blue"))[1], 10,
                 "bh1 gone from h2's blue dns", interval=0.1)
        assert nslookup(lab, h2, "blue", name(h2, "blue"))[0]  # the others still resolve
    finally:
        attach(lab, h1, 1, "blue")


def test_check_pings_only_the_top_level_networks_published_containers(lab):
    """The named networks' containers are published too (with their network): `crossnet
    check` of the top-level network must not take them for its own (they are isolated)."""
    out = lab.crossnet("h2", "check", "--network", "default", "-o", "json", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    dsts = {p["dst"] for p in json.loads(out.stdout)["pairs"]}
    assert dsts == {"h1/dh1"}, dsts  # h1's top-level container; never bh1 or rh1 (published by h1 too)
