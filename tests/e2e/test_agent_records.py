"""Hostile store records, end to end: a host with store credentials writes records
straight into etcd (the lab's etcd, over its unix socket) and must not be able to
change anything on the other hosts.

One lab per backend (vxlan and host-gw on l2, ovs-gre on l3; 3 hosts, lease TTL 5 s,
`lab up --store etcd`: an agent per host, one container each). For each test: the
kernel state of every host (routes of every table, permanent neighbours, static FDB
entries, links, addresses, nft; OVS ports, interfaces and flows) is
taken with the cluster whole, the hostile records are written, every agent has seen
them (its store revision passed theirs) and counted each as rejected; then the
kernel state of every host is unchanged and every container still reaches every
other one; the hostile keys deleted, the same holds again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from crossnet.agent import api as agentapi
from crossnet.store.etcd import EtcdStore, parse_subnet_key, subnet_key_part
from tests.e2e import kstate
from tests.e2e.agentlab import LabCluster, module_factory, wait_for
from tests.e2e.test_agent import PREFIX, _route_dsts
from tests.e2e.test_agent_restart import kernel_state

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

TTL = 5
HOSTS = ["h1", "h2", "h3"]
EVIL_MAC = "02:66:66:66:66:66"


PARAMS = [("vxlan", "l2"), ("host-gw", "l2"), ("ovs-gre", "l3")]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{b}-{u}" for b, u in PARAMS])
def cluster(request, lab_sweep) -> LabCluster:
    import shutil

    from crossnet.lab.etcdserver import etcd_available

    backend, underlay_kind = request.param
    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if backend.startswith("ovs") and not shutil.which("ovs-vswitchd"):
        pytest.skip("needs Open vSwitch (apt-get install openvswitch-switch)")
    lab = module_factory(request)(hosts=len(HOSTS), underlay=underlay_kind, backend=backend, containers=1,
                                  extra={"store": "etcd", "ttl": TTL})
    c = LabCluster(lab, ttl=TTL)
    c.load_containers()
    assert sorted(c.containers) == HOSTS
    return c


def underlay(cluster: LabCluster) -> IPv4Network:
    """h1's connected route on its underlay (the network of its underlay address)."""
    hp = cluster.host("h1")
    address = cluster.status("h1")["address"]  # OVS userspace datapath: on br-phy, not on the NIC
    routes = json.loads(subprocess.run(["ip", "-n", hp.netns, "-j", "-4", "route", "show", "proto", "kernel"],
                                       capture_output=True, text=True, check=True).stdout)
    return next(IPv4Network(r["dst"]) for r in routes if r.get("prefsrc") == address)


def whole(cluster: LabCluster) -> None:
    wait_for(lambda: cluster.all_programmed(HOSTS), 20, "every agent has both peers programmed", interval=0.2)
    assert cluster.mesh(HOSTS) == []


def host_state(cluster: LabCluster, h: str) -> dict:
    """The host's kernel state (routes of every table, permanent neighbours, static FDB
    entries, links, addresses, nft) and, with an OVS backend, its bridge's ports and flows."""
    snap = kernel_state(cluster.host(h).netns)
    if cluster.plan.backend.startswith("ovs"):
        ports = cluster.lab.run(h, ["ovs-vsctl", "list-ports", "cnovs0"], timeout=20)
        flows = cluster.lab.run(h, ["ovs-ofctl", "--names", "--no-stats", "dump-flows", "cnovs0"], timeout=20)
        assert ports.returncode == 0 and flows.returncode == 0, ports.stderr + flows.stderr
        snap["ovs_ports"] = sorted(ports.stdout.split())
        snap["ovs_flows"] = sorted(ln.strip() for ln in flows.stdout.splitlines() if "actions=" in ln)
        remote = cluster.lab.run(h, ["ovs-vsctl", "--columns=name,options", "list", "interface"], timeout=20)
        snap["ovs_interfaces"] = sorted(" ".join(rec.split()) for rec in remote.stdout.split("\n\n"))
    return snap


def states(cluster: LabCluster) -> dict[str, dict]:
    return {h: host_state(cluster, h) for h in HOSTS}


def diffs(cluster: LabCluster, before: dict[str, dict]) -> dict[str, list[str]]:
    out = {h: kstate.diff(before[h], host_state(cluster, h)) for h in HOSTS}
    return {h: d for h, d in out.items() if d}


def rejected(cluster: LabCluster, h: str) -> int:
    return int(cluster.status(h).get("rejected_records", -1))


def seen(cluster: LabCluster, revision: int) -> bool:
    return all(cluster.status(h)["revision"] >= revision for h in HOSTS)


def free_keys(cluster: LabCluster, n: int) -> list[IPv4Network]:
    held = {IPv4Network(cluster.status(h)["subnet"]) for h in HOSTS}
    subs = list(IPv4Network(str(cluster.plan.network)).subnets(new_prefix=24))
    return [s for s in reversed(subs) if s not in held][:n]


def hostile_records(cluster: LabCluster) -> dict[str, dict]:
    """key part -> value: each of the records the issue reproduced, and their kin."""
    net = IPv4Network(str(cluster.plan.network))
    under = underlay(cluster)
    h2 = cluster.status("h2")
    k = free_keys(cluster, 8)
    outside = IPv4Network(f"{net.broadcast_address + 1}/24")

    def rec(name, address, subnet, mac=EVIL_MAC):
        return {"name": name, "address": address, "subnet": str(subnet), "data": {"vtep_mac": mac}}

    out = {
        # the underlay's /20 under a cluster subnet key: replaced the underlay's connected route
        subnet_key_part(k[0]): rec("evil", "10.57.9.9", under),
        # another host's subnet under another key: re-pointed its permanent neighbour
        subnet_key_part(k[1]): rec("evil2", "10.57.9.10", h2["subnet"]),
        # outside the cluster network (key and value agree)
        subnet_key_part(outside): rec("evil3", "10.57.9.11", outside),
        subnet_key_part(k[2]): rec("evil4", "0.0.0.0", k[2], "02:66:66:66:66:04"),
        subnet_key_part(k[3]): rec("evil5", "255.255.255.255", k[3], "02:66:66:66:66:05"),
        subnet_key_part(k[4]): rec("evil6", "10.57.9.12", k[4], "ff:ff:ff:ff:ff:ff"),
        # a younger record with a live host's name (and its own subnet): the older one wins
        subnet_key_part(k[5]): rec("h2", "10.57.9.13", k[5], "02:66:66:66:66:06"),
        # a MAC with a trailing newline ("$" matched before it): pyroute2 could not encode it, and
        # that one peer's failure rolled back a restarted agent's whole first sync (every peer)
        subnet_key_part(k[7]): rec("evil8", "10.57.9.14", k[7], "02:66:66:66:66:08\n"),
    }
    if cluster.plan.underlay == "l2":  # on l3 each host's link has its own broadcast address
        # the shared underlay's broadcast address as the peer's address
        out[subnet_key_part(k[6])] = rec("evil7", str(under.broadcast_address), k[6], "02:66:66:66:66:07")
    return out


def test_hostile_records_change_nothing_and_their_removal_neither(cluster):
    whole(cluster)
    store = EtcdStore(cluster.etcd.client(), PREFIX)
    client = store.client
    before = states(cluster)
    counts = {h: rejected(cluster, h) for h in HOSTS}
    records = hostile_records(cluster)
    rev = 0
    for part, value in records.items():
        rev = client.put(store.subnets_prefix + part, json.dumps(value))
    try:
        wait_for(lambda: seen(cluster, rev), 20, f"every agent at store revision {rev}")
        assert diffs(cluster, before) == {}
        assert cluster.mesh(HOSTS) == []
        for h in HOSTS:
            assert rejected(cluster, h) >= counts[h] + len(records), cluster.status(h).get("rejected")
            reasons = {r["key"]: r["reason"] for r in cluster.status(h)["rejected"]}
            assert set(reasons) == set(records), reasons
            assert {p["name"] for p in cluster.status(h)["peers"]} == set(HOSTS) - {h}
        # one log line per rejected record (resyncs and later events do not repeat it)
        text = Path(cluster.log("h1")).read_text()
        for part in records:
            key = str(parse_subnet_key(part))
            assert text.count(f"rejected store record {key} ") == 1, key
        # a restarted agent's first full sync sees the hostile records in its snapshot
        cluster.stop("h3", signal.SIGTERM)
        cluster.start("h3")
        wait_for(lambda: len(cluster.status("h3")["rejected"]) == len(records), 10, "h3 rejects them at start")
        assert diffs(cluster, before) == {}
        whole(cluster)
    finally:
        for part in records:
            client.delete(store.subnets_prefix + part)
    wait_for(lambda: all(not cluster.status(h)["rejected"] for h in HOSTS), 20, "no rejected record left")
    assert diffs(cluster, before) == {}
    whole(cluster)


def test_an_unreadable_record_is_rejected_and_changes_nothing(cluster):
    """Garbage under a subnet key: rejected (named in every agent's status), no kernel
    change on any host, and none when it is deleted."""
    whole(cluster)
    store = EtcdStore(cluster.etcd.client(), PREFIX)
    before = states(cluster)
    evil_key = store.subnets_prefix + subnet_key_part(free_keys(cluster, 1)[0])
    rev = store.client.put(evil_key, b"{not json")
    try:
        wait_for(lambda: seen(cluster, rev), 20, f"every agent at store revision {rev}")
        assert diffs(cluster, before) == {}
        for h in HOSTS:
            assert any(r["reason"].startswith("value:") for r in cluster.status(h)["rejected"])
    finally:
        store.client.delete(evil_key)
    wait_for(lambda: all(not cluster.status(h)["rejected"] for h in HOSTS), 20, "no rejected record left")
    assert diffs(cluster, before) == {}
    whole(cluster)


def test_published_containers_outside_their_hosts_subnet_are_not_pinged(cluster):
    """`crossnet check` pings what the agent's /v1/containers lists: a host without a
    valid record, or an address outside the publishing host's subnet, is left out."""
    whole(cluster)
    store = EtcdStore(cluster.etcd.client(), PREFIX)
    under = underlay(cluster)
    h2_key = store.containers_key("h2")
    orig = store.client.get(h2_key)
    assert orig is not None
    value = json.loads(orig.value)
    value["containers"] = value["containers"] + [{"id": "evil", "address": str(under.network_address + 1)}]
    evil_key = store.containers_key("evil")
    try:
        store.client.put(h2_key, json.dumps(value))
        store.client.put(evil_key, json.dumps({"name": "evil", "subnet": str(under),
                                               "containers": [{"id": "x", "address": str(under.network_address + 2)}]}))
        got = agentapi.call(cluster.state("h1"), "GET", "/v1/containers")
        assert "evil" not in got["hosts"]
        addrs = {c["address"] for c in got["hosts"]["h2"]}
        assert addrs == {cluster.containers["h2"]}
        assert cluster.status("h1")["rejected_containers"] >= 1
    finally:
        store.client.delete(evil_key)
        store.client.put(h2_key, orig.value, lease=orig.lease)


def test_a_younger_claimant_is_ignored_until_the_older_record_goes(cluster):
    """Two records with one host name under two keys: only the older one is programmed
    (route on every host), the younger is rejected; the older deleted, the younger is
    programmed in its place; deleted too, every host is as before."""
    whole(cluster)
    store = EtcdStore(cluster.etcd.client(), PREFIX)
    before = states(cluster)
    under = underlay(cluster)
    address = str(under.network_address + 200) if cluster.plan.underlay == "l2" else "10.57.9.50"
    k1, k2 = free_keys(cluster, 2)
    keys = {k: store.subnets_prefix + subnet_key_part(k) for k in (k1, k2)}

    def routes_everywhere(present: set[IPv4Network], absent: set[IPv4Network]) -> bool:
        for h in HOSTS:
            dsts = _route_dsts(cluster.host(h).netns)
            if not ({str(k) for k in present} <= dsts and not {str(k) for k in absent} & dsts):
                return False
        return True

    def value(k, mac):
        return json.dumps({"name": "h9", "address": address, "subnet": str(k), "data": {"vtep_mac": mac}})

    try:
        store.client.put(keys[k1], value(k1, "02:99:00:00:00:01"))
        rev = store.client.put(keys[k2], value(k2, "02:99:00:00:00:02"))
        wait_for(lambda: seen(cluster, rev), 20, f"every agent at store revision {rev}")
        wait_for(lambda: routes_everywhere({k1}, {k2}), 10, f"{k1} programmed, {k2} not, on every host")
        for h in HOSTS:
            assert [r["reason"].split(":")[0] for r in cluster.status(h)["rejected"]] == ["name"]
        store.client.delete(keys[k1])
        wait_for(lambda: routes_everywhere({k2}, {k1}), 10, f"{k2} programmed in place of {k1} on every host")
        assert all(not cluster.status(h)["rejected"] for h in HOSTS)
    finally:
        for key in keys.values():
            store.client.delete(key)
    wait_for(lambda: routes_everywhere(set(), {k1, k2}), 10, "both gone on every host")
    wait_for(lambda: not diffs(cluster, before), 10, "every host as before")
    whole(cluster)


def test_a_host_gw_peer_on_link_through_another_device_is_skipped_not_fatal(cluster):
    """host-gw: a valid record whose address is on-link on h1 through another device than
    its underlay NIC (here a second link of h1, as docker0 or a second NIC would be) cannot
    be h1's next hop (`ip route replace ... via A dev eth0`: "Network is unreachable").
    h1 skips that peer, logged; its kernel is unchanged, and a restarted agent's first
    full sync programs every other peer (the failing route rolled the whole sync back)."""
    if cluster.plan.backend != "host-gw":
        pytest.skip("host-gw only: its peers' routes go through the underlay NIC")
    whole(cluster)
    store = EtcdStore(cluster.etcd.client(), PREFIX)
    other = IPv4Network("172.31.250.0/24")
    link = ["ip", "link", "add", "sa0", "type", "veth", "peer", "name", "sa1"]
    for cmd in (link, ["ip", "addr", "add", f"{other.network_address + 1}/{other.prefixlen}", "dev", "sa0"],
                ["ip", "link", "set", "sa0", "up"], ["ip", "link", "set", "sa1", "up"]):
        assert cluster.lab.run("h1", cmd, timeout=20).returncode == 0, cmd
    key = store.subnets_prefix + subnet_key_part(free_keys(cluster, 1)[0])
    value = {"name": "evil9", "address": str(other.network_address + 7), "subnet": str(free_keys(cluster, 1)[0]),
             "data": {"vtep_mac": "02:66:66:66:66:09"}}
    try:
        before = states(cluster)
        rev = store.client.put(key, json.dumps(value))
        wait_for(lambda: seen(cluster, rev), 20, f"every agent at store revision {rev}")
        assert diffs(cluster, before) == {}
        assert cluster.mesh(HOSTS) == []
        cluster.stop("h1", signal.SIGTERM)
        cluster.start("h1")
        whole(cluster)
        assert diffs(cluster, before) == {}
        text = Path(cluster.log("h1")).read_text()
        assert f"peer evil9 skipped: backend host-gw: peer evil9 ({value['address']}) is on-link through sa0" in text
    finally:
        store.client.delete(key)
        cluster.lab.run("h1", ["ip", "link", "del", "sa0"], timeout=20)
    whole(cluster)


def test_a_peer_named_like_an_older_peers_hashed_ovs_port_is_rejected(cluster):
    """OVS: a host name too long for `gre-<name>` gets the port `gre-<8 hex of its sha1>`,
    which is also the port of a peer named with those 8 hex digits. The younger record
    of the two is rejected on every host; the port keeps the older host's remote_ip."""
    import hashlib

    if not cluster.plan.backend.startswith("ovs"):
        pytest.skip("OVS tunnel port names")
    whole(cluster)
    store = EtcdStore(cluster.etcd.client(), PREFIX)
    k_old, k_young = free_keys(cluster, 2)
    victim = "worker-node-0001"
    twin = hashlib.sha1(victim.encode()).hexdigest()[:8]
    port = ("gre-" if cluster.plan.backend == "ovs-gre" else "vxl-") + twin
    keys = [store.subnets_prefix + subnet_key_part(k) for k in (k_old, k_young)]

    def remote_ip(h: str) -> str:
        got = cluster.lab.run(h, ["ovs-vsctl", "get", "interface", port, "options:remote_ip"], timeout=20)
        return got.stdout.strip().strip('"') if got.returncode == 0 else ""

    try:
        store.client.put(keys[0], json.dumps({"name": victim, "address": "10.57.9.60", "subnet": str(k_old),
                                              "data": {"gw_mac": "02:66:66:66:66:60"}}))
        rev = store.client.put(keys[1], json.dumps({"name": twin, "address": "10.57.9.61", "subnet": str(k_young),
                                                    "data": {"gw_mac": "02:66:66:66:66:61"}}))
        wait_for(lambda: seen(cluster, rev), 20, f"every agent at store revision {rev}")
        wait_for(lambda: all(remote_ip(h) == "10.57.9.60" for h in HOSTS), 10, f"{port} to the older host everywhere")
        for h in HOSTS:
            assert [r["reason"] for r in cluster.status(h)["rejected"]] == [
                f"name: {twin} needs the OVS tunnel port {port}, already claimed by the older record {k_old}"]
        assert cluster.mesh(HOSTS) == []
        # a restarted agent: the same in its first full sync
        cluster.stop("h3", signal.SIGTERM)
        cluster.start("h3")
        wait_for(lambda: len(cluster.status("h3")["rejected"]) == 1, 10, "h3 rejects it at start")
        assert remote_ip("h3") == "10.57.9.60"
    finally:
        for key in keys:
            store.client.delete(key)
    wait_for(lambda: all(not cluster.status(h)["rejected"] for h in HOSTS), 20, "no rejected record left")
    wait_for(lambda: all(remote_ip(h) == "" for h in HOSTS), 10, f"{port} gone everywhere")
    whole(cluster)
