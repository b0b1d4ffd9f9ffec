"""CNI conformance of crossnet-cni, run as a runtime would run it: the wrapper that
`crossnet cni install` writes, executed inside a simulated host's namespace
(`nsenter --net`), with the spec's environment variables and JSON on stdin.

Every case checks the spec's exit status / error code and that nothing is left
behind (`left_as_found`): the host's links, addresses, routes, nft ruleset and IPAM as
before the test, compared while the test's container namespaces still exist (a veth
left behind would vanish with them), and nothing but `lo` in those namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from .kstate import diff, snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

NET = "crossnet"


class Host:
    def __init__(self, lab, bin_dir: Path, log: Path):
        self.lab = lab
        self.log = log  # every call (and the helper's start/stop) is logged here
        self.plan = lab.hosts[0]
        self.netns = self.plan.netns
        self.state_dir = self.plan.state_dir
        self.plugin = str(bin_dir / "crossnet-cni")
        applied = json.loads((Path(self.state_dir) / "applied.json").read_text())
        self.ctx = applied["context"]
        self._n = 0
        self.made: list[str] = []

    def conf(self, version: str = "1.0.0", **extra) -> dict:
        return {"cniVersion": version, "name": NET, "type": "crossnet-cni", "stateDir": self.state_dir,
                "logFile": str(self.log), **extra}

    def new_netns(self) -> str:
        self._n += 1
        name = f"{self.lab.name}-k{self._n}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        return f"/run/netns/{name}"

    def cni(self, command: str, conf: dict | bytes | None = None, *, cid: str | None = None,
            netns: str | None = None, ifname: str | None = "eth0", args: str | None = None,
            drop: tuple[str, ...] = ()) -> tuple[int, dict | None]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni"}
        if cid is not None:
            env["CNI_CONTAINERID"] = cid
        if netns is not None:
            env["CNI_NETNS"] = netns
        if ifname is not None:
            env["CNI_IFNAME"] = ifname
        if args is not None:
            env["CNI_ARGS"] = args
        for k in drop:
            env.pop(k, None)
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf if conf is not None else self.conf()).encode()
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", self.plugin], input=stdin,
                              env=env, capture_output=True, timeout=60)
        out = proc.stdout.decode().strip()
        data = json.loads(out) if out else None
        if proc.returncode != 0:
            assert isinstance(data, dict) and {"code", "msg"} <= set(data), (proc.returncode, out, proc.stderr)
        return proc.returncode, data

    def allocations(self) -> dict:
        path = Path(self.state_dir) / "ipam.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text())["allocations"]

    def kernel(self) -> dict:
        snap = snapshot(self.netns)
        # the ruleset without counters and quotas (they move with traffic)
        snap["nft"] = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-s", "list", "ruleset"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        # a Linux bridge takes a port's MAC while it has ports (not ours to judge here)
        snap["links"] = [link[:5] + (None,) + link[6:] if link[2] == "bridge" else link for link in snap["links"]]
        return snap

    def footprint(self) -> tuple[dict, dict]:
        return self.kernel(), self.allocations()


def one_host_lab(tmp_path_factory, make):
    """A 1-host vxlan lab with crossnet-cni installed: yields make(lab, bin_dir, log, info)
    and removes the lab afterwards, even on failure."""
    from crossnet.cni.install import install
    from crossnet.lab.manager import down, up
    from crossnet.lab.topology import LabOptions

    name = "fa" + secrets.token_hex(3)[:5]
    lab = up(LabOptions(name=name, hosts=1, containers=0, backend="vxlan"), owner_pid=os.getpid())
    try:
        bin_dir = tmp_path_factory.mktemp("cni-bin")
        info = install(lab.hosts[0].state_dir, conf_dir=str(tmp_path_factory.mktemp("net.d")), bin_dir=str(bin_dir))
        yield make(lab, bin_dir, tmp_path_factory.mktemp("log") / "cni.log", info)
    finally:
        down(name)


def container_links(name: str) -> list[str] | None:
    """Interface names in network namespace `name` (None if it is gone)."""
    if not os.path.exists(f"/run/netns/{name}"):
        return None
    out = subprocess.run(["ip", "-n", name, "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(link["ifname"] for link in json.loads(out or "[]"))


def left_as_found(host):
    """Generator for a fixture: asserts the test left the host exactly as it found it.

    Compared before the test's container namespaces are deleted (deleting a namespace
    deletes the veth pairs in it, hiding a leak): the host's links, addresses, routes and
    nft ruleset, and the IPAM; every container namespace that still exists holds only
    `lo`. The namespaces are deleted afterwards, pass or fail."""
    import time

    before = host.footprint()
    yield
    try:
        # deleting a veth or a namespace (test_del_after_netns_is_gone) completes in the
        # kernel asynchronously: a moment to settle, never enough to hide a leak
        deadline = time.monotonic() + 3
        while (after := host.footprint()) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after[1] == before[1], f"IPAM: before {before[1]}, after {after[1]}"
        assert after[0] == before[0], diff(before[0], after[0])
        leftovers = {ns: links for ns in host.made if (links := container_links(ns)) not in (None, ["lo"])}
        assert not leftovers, f"container namespaces hold more than lo: {leftovers}"
    finally:
        for ns in host.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        host.made.clear()


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    yield from one_host_lab(tmp_path_factory, lambda lab, bin_dir, log, info: Host(lab, bin_dir, log))


@pytest.fixture
def clean(host):
    """Asserts the test left the host exactly as it found it."""
    yield from left_as_found(host)


def cid() -> str:
    return secrets.token_hex(32)


def test_version(host):
    rc, out = host.cni("VERSION", {"cniVersion": "1.0.0"}, netns="dummy", ifname="dummy")
    assert rc == 0 and "1.0.0" in out["supportedVersions"] and "1.1.0" in out["supportedVersions"]


def test_add_check_del(host, clean):
    c, netns = cid(), host.new_netns()
    rc, res = host.cni("ADD", cid=c, netns=netns, args="IgnoreUnknown=1;K8S_POD_NAME=web")
    assert rc == 0, res
    assert res["cniVersion"] == "1.0.0"
    hostif, inner = res["interfaces"]
    assert inner == {"name": "eth0", "mac": inner["mac"], "sandbox": netns}
    assert "sandbox" not in hostif and hostif["name"].startswith("cnv")
    ip = res["ips"][0]
    assert ip["interface"] == 1 and ip["gateway"] == host.ctx["gateway"]
    addr = ip["address"]
    assert addr.endswith(f"/{host.ctx['prefixlen']}")
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": host.ctx["gateway"]}]
    # the kernel agrees with the result
    name = os.path.basename(netns)
    inside = json.loads(subprocess.run(["ip", "-n", name, "-j", "-4", "addr", "show", "eth0"],
                                       capture_output=True, text=True, check=True).stdout)
    assert f"{inside[0]['addr_info'][0]['local']}/{inside[0]['addr_info'][0]['prefixlen']}" == addr
    assert inside[0]["mtu"] == host.ctx["mtu"]
    assert hostif["name"] in {link[0] for link in host.kernel()["links"]}
    assert host.allocations()[c]["address"] == addr.split("/")[0]
    assert host.allocations()[c]["meta"]["cni"] == {"network": NET, "containerID": c, "ifname": "eth0"}
    # the gateway answers from inside
    ping = subprocess.run(["ip", "netns", "exec", name, "ping", "-c1", "-W2", host.ctx["gateway"]],
                          capture_output=True)
    assert ping.returncode == 0
    rc, out = host.cni("CHECK", host.conf(prevResult=res), cid=c, netns=netns)
    assert (rc, out) == (0, None)
    # ADD again is idempotent: same address
    rc, res2 = host.cni("ADD", cid=c, netns=netns)
    assert rc == 0 and res2["ips"][0]["address"] == addr
    rc, out = host.cni("DEL", host.conf(prevResult=res), cid=c, netns=netns)
    assert (rc, out) == (0, None)
    assert c not in host.allocations()
    links = subprocess.run(["ip", "-n", name, "-o", "link"], capture_output=True, text=True).stdout
    assert "eth0" not in links


def test_del_twice(host, clean):
    c, netns = cid(), host.new_netns()
    assert host.cni("ADD", cid=c, netns=netns)[0] == 0
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)


def test_del_without_add(host, clean):
    assert host.cni("DEL", cid=cid(), netns=host.new_netns()) == (0, None)
    assert host.cni("DEL", cid=cid(), drop=("CNI_NETNS",)) == (0, None)


def test_del_of_an_id_never_added_leaves_a_link_of_its_hashed_name(host, clean):
    """DEL for an id crossnet never attached deletes nothing, even a host link named like
    that id's veth (`cnv` + hash): the Docker plugin names its endpoints' veths the same way,
    so a DEL with CNI_CONTAINERID = a Docker endpoint id took that container off the network."""
    from crossnet.containers import host_ifname

    c = cid()
    name = host_ifname(c)
    subprocess.run(["ip", "-n", host.netns, "link", "add", name, "type", "veth", "peer", "name", "cnt" + name[3:]],
                   check=True)
    try:
        assert host.cni("DEL", cid=c, netns=host.new_netns()) == (0, None)
        assert host.cni("DEL", cid=c, drop=("CNI_NETNS",)) == (0, None)
        assert name in {link[0] for link in host.kernel()["links"]}, "DEL deleted a link crossnet has no record of"
        assert c not in host.allocations()
    finally:
        subprocess.run(["ip", "-n", host.netns, "link", "del", name], capture_output=True, check=False)


def test_del_leaves_an_attachment_crossnet_cni_did_not_make(host, clean):
    """`crossnet attach NAME` records the attachment under NAME, which is also a valid
    CNI_CONTAINERID: a DEL with it (and no CNI_NETNS, which DEL allows) detached a
    container the plugin never added. Only this network's crossnet-cni attachments go
    (as for GC); another network's DEL leaves them too."""
    from crossnet.lab.manager import crossnet_argv

    netns = host.new_netns()
    name = os.path.basename(netns)
    proc = host.lab.run(host.plan.name, crossnet_argv("attach", name, "-o", "json"))
    assert proc.returncode == 0, proc.stderr
    att = json.loads(proc.stdout)
    try:
        before = host.footprint()
        assert host.cni("DEL", cid=name, drop=("CNI_NETNS",)) == (0, None)
        assert host.cni("DEL", cid=name, netns=netns) == (0, None)
        assert host.footprint() == before, "DEL removed an attachment made by `crossnet attach`"
        # a CNI attachment of this network is left alone by another network's DEL
        c, cnetns = cid(), host.new_netns()
        assert host.cni("ADD", cid=c, netns=cnetns)[0] == 0
        made = host.footprint()
        assert host.cni("DEL", host.conf(name="other-net"), cid=c, netns=cnetns) == (0, None)
        assert host.footprint() == made and c in host.allocations()
        assert host.cni("DEL", cid=c, netns=cnetns) == (0, None)
        assert c not in host.allocations()
    finally:
        host.lab.run(host.plan.name, crossnet_argv("detach", name))
    assert att["id"] not in host.allocations()


def test_del_after_netns_is_gone(host, clean):
    c, netns = cid(), host.new_netns()
    assert host.cni("ADD", cid=c, netns=netns)[0] == 0
    subprocess.run(["ip", "netns", "del", os.path.basename(netns)], check=True)
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)
    assert c not in host.allocations()


def test_del_without_state(host, clean, tmp_path):
    conf = host.conf(stateDir=str(tmp_path / "no-state"))
    assert host.cni("DEL", conf, cid=cid(), netns=host.new_netns()) == (0, None)


def test_garbage_json(host, clean):
    netns = host.new_netns()
    for cmd in ("ADD", "DEL", "CHECK"):
        rc, out = host.cni(cmd, b"{this is not json", cid=cid(), netns=netns)
        assert rc != 0 and out["code"] == 6, out


def test_unknown_cni_version(host, clean):
    rc, out = host.cni("ADD", host.conf(version="4.2.0"), cid=cid(), netns=host.new_netns())
    assert rc != 0 and out["code"] == 1 and "4.2.0" in out["msg"]


@pytest.mark.parametrize("var", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_missing_env(host, clean, var):
    rc, out = host.cni("ADD", cid=cid(), netns=host.new_netns(), drop=(var,))
    assert rc != 0 and out["code"] == 4 and var in out["msg"]


def test_ip_inside_subnet(host, clean):
    import ipaddress

    subnet = ipaddress.ip_network(host.ctx["subnet"])
    want = str(subnet.network_address + 77)
    c, netns = cid(), host.new_netns()
    rc, res = host.cni("ADD", cid=c, netns=netns, args=f"IgnoreUnknown=1;IP={want};K8S_POD_NAME=x")
    assert rc == 0 and res["ips"][0]["address"] == f"{want}/{host.ctx['prefixlen']}"
    # taken by another container: plugin-specific IPAM error, the other one is untouched
    rc2, out = host.cni("ADD", cid=cid(), netns=host.new_netns(), args=f"IP={want}")
    assert rc2 != 0 and out["code"] == 101 and "taken" in out["msg"]
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)


@pytest.mark.parametrize("which", ["outside", "gateway", "garbage"])
def test_ip_outside_subnet(host, clean, which):
    import ipaddress

    subnet = ipaddress.ip_network(host.ctx["subnet"])
    value = {"outside": str(subnet.broadcast_address + 10), "gateway": host.ctx["gateway"],
             "garbage": "10.1.2.300"}[which]
    rc, out = host.cni("ADD", cid=cid(), netns=host.new_netns(), args=f"IgnoreUnknown=1;IP={value}")
    assert rc != 0 and out["code"] == 4 and "IP" in out["msg"], out


@pytest.mark.parametrize("which", ["outside", "gateway", "garbage"])
def test_runtime_config_ip_outside_subnet(host, clean, which):
    """runtimeConfig.ips (podman/containerd capability) is network configuration: code 7,
    and the message names runtimeConfig.ips, not CNI_ARGS."""
    import ipaddress

    subnet = ipaddress.ip_network(host.ctx["subnet"])
    value = {"outside": str(subnet.broadcast_address + 10), "gateway": host.ctx["gateway"],
             "garbage": "10.1.2.300"}[which]
    conf = host.conf(runtimeConfig={"ips": [f"{value}/{host.ctx['prefixlen']}"]})
    rc, out = host.cni("ADD", conf, cid=cid(), netns=host.new_netns())
    assert rc != 0 and out["code"] == 7 and out["msg"].startswith("runtimeConfig.ips: "), out
    assert "CNI_ARGS" not in out["msg"]


@pytest.mark.parametrize("args,config,code", [
    ("IgnoreUnknown=1;IP=fd00::5", {}, 4),
    ("", {"runtimeConfig": {"ips": ["fd00::5/64"]}}, 7),
])
def test_ipv6_request_is_an_error(host, clean, args, config, code):
    """crossnet gives IPv4 only: an IPv6 address asked for is an error, not ignored in
    favour of a random IPv4 address."""
    c = cid()
    rc, out = host.cni("ADD", host.conf(**config), cid=c, netns=host.new_netns(), args=args or None)
    assert rc != 0 and out["code"] == code and "IPv6" in out["msg"], out
    assert c not in host.allocations()


def test_unknown_cni_args(host, clean):
    netns = host.new_netns()
    rc, out = host.cni("ADD", cid=cid(), netns=netns, args="FOO=bar")
    assert rc != 0 and out["code"] == 4 and "FOO" in out["msg"]
    c = cid()
    assert host.cni("ADD", cid=c, netns=netns, args="IgnoreUnknown=1;FOO=bar")[0] == 0
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)


def test_mac_and_old_version(host, clean):
    c, netns = cid(), host.new_netns()
    rc, res = host.cni("ADD", host.conf(version="0.4.0"), cid=c, netns=netns,
                       args="IgnoreUnknown=1;MAC=02:42:0a:00:00:99")
    assert rc == 0 and res["cniVersion"] == "0.4.0"
    assert res["interfaces"][1]["mac"] == "02:42:0a:00:00:99"
    assert res["ips"][0]["version"] == "4"
    link = subprocess.run(["ip", "-n", os.path.basename(netns), "-j", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout
    assert json.loads(link)[0]["address"] == "02:42:0a:00:00:99"
    assert host.cni("DEL", host.conf(version="0.4.0"), cid=c, netns=netns) == (0, None)


def test_second_interface(host, clean):
    c, netns = cid(), host.new_netns()
    assert host.cni("ADD", cid=c, netns=netns)[0] == 0
    rc, res = host.cni("ADD", cid=c, netns=netns, ifname="net1")
    assert rc == 0 and res["interfaces"][1]["name"] == "net1"
    assert f"{c}/net1" in host.allocations()
    assert host.cni("DEL", cid=c, netns=netns, ifname="net1") == (0, None)
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)


def test_one_container_in_two_networks_over_one_state_dir(host, clean):
    """An attachment is (network, container id, ifname). Network B's ADD of the (id,
    ifname) that network A's attachment holds was taken as A's idempotent re-ADD and
    re-recorded the entry as B's: B's DEL then removed A's container. Now it is refused
    (code 104, naming the interface), changing nothing; B with its own ifname works, and
    each network's CHECK, DEL and GC touch only their own."""
    a, b = host.conf(name="net-a"), host.conf(name="net-b")
    c, netns = cid(), host.new_netns()
    assert host.cni("ADD", a, cid=c, netns=netns)[0] == 0
    made = host.footprint()
    rc, out = host.cni("ADD", b, cid=c, netns=netns)
    assert rc != 0 and out["code"] == 104, out
    addr = host.allocations()[c]["address"]
    assert out["msg"] == (f"CNI_CONTAINERID {c}, CNI_IFNAME eth0: {c!r} (eth0) is already attached by network "
                          f"'net-a' with {addr}; detach it there first"), out
    assert host.footprint() == made
    assert host.allocations()[c]["meta"]["cni"]["network"] == "net-a"
    assert host.cni("CHECK", a, cid=c, netns=netns) == (0, None)  # still A's, as A made it
    rc, out = host.cni("CHECK", b, cid=c, netns=netns)
    assert rc != 0 and out["code"] == 3, out  # B has no such attachment
    assert host.cni("DEL", b, cid=c, netns=netns) == (0, None)  # the runtime cleaning up B's failed ADD
    assert host.footprint() == made
    # B through another interface: a second, independent attachment
    rc, res = host.cni("ADD", b, cid=c, netns=netns, ifname="eth1")
    assert rc == 0 and [i["name"] for i in res["interfaces"]][-1] == "eth1", res
    assert host.allocations()[f"{c}/eth1"]["meta"]["cni"]["network"] == "net-b"
    assert container_links(os.path.basename(netns)) == ["eth0", "eth1", "lo"]
    assert host.cni("CHECK", b, cid=c, netns=netns, ifname="eth1") == (0, None)
    # B's GC that knows none of its attachments removes B's, never A's
    gc_b = host.conf(version="1.1.0", name="net-b", **{"cni.dev/valid-attachments": []})
    assert host.cni("GC", gc_b, ifname=None) == (0, None)
    assert c in host.allocations() and f"{c}/eth1" not in host.allocations()
    assert container_links(os.path.basename(netns)) == ["eth0", "lo"]
    assert host.allocations()[c]["meta"]["cni"]["network"] == "net-a"
    assert host.cni("DEL", a, cid=c, netns=netns) == (0, None)
    assert c not in host.allocations()


def test_check_failures(host, clean):
    c, netns = cid(), host.new_netns()
    rc, out = host.cni("CHECK", cid=c, netns=netns)
    assert rc != 0 and out["code"] == 3
    rc, res = host.cni("ADD", cid=c, netns=netns)
    assert rc == 0
    name = os.path.basename(netns)
    subprocess.run(["ip", "-n", name, "addr", "flush", "dev", "eth0"], check=True)
    rc, out = host.cni("CHECK", host.conf(prevResult=res), cid=c, netns=netns)
    assert rc != 0 and out["code"] == 103 and "address" in out["msg"]
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)


def _inside(netns: str) -> dict:
    """eth0 of a container namespace: {"mac", "cidr", "mtu"} (None if there is none)."""
    out = subprocess.run(["ip", "-n", os.path.basename(netns), "-j", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True).stdout
    data = json.loads(out or "[]")
    if not data:
        return None
    a = [x for x in data[0]["addr_info"] if x.get("family") == "inet"]
    return {"mac": data[0]["address"], "mtu": data[0]["mtu"], "up": "UP" in data[0]["flags"],
            "cidr": [f"{x['local']}/{x['prefixlen']}" for x in a]}


def test_second_add_into_another_live_netns_is_refused(host, clean):
    """ADD of a container id that is attached to another, still alive, namespace (no DEL
    between): a clear error, the first container untouched (was: error 199, the first
    container's veth deleted, IPAM still pointing at the first namespace)."""
    c, n1, n2 = cid(), host.new_netns(), host.new_netns()
    rc, res = host.cni("ADD", cid=c, netns=n1)
    assert rc == 0, res
    first = _inside(n1)
    alloc = host.allocations()[c]
    kernel = host.kernel()
    rc, out = host.cni("ADD", cid=c, netns=n2)
    assert rc != 0 and out["code"] == 104, out
    assert "CNI_CONTAINERID" in out["msg"] and n1 in out["msg"], out
    # the first container is exactly as it was, the second namespace got nothing
    assert _inside(n1) == first and host.allocations()[c] == alloc and host.kernel() == kernel
    assert container_links(os.path.basename(n2)) == ["lo"]
    # the runtime cleans up its failed ADD with DEL: nothing of ours is in n2, the first stays
    assert host.cni("DEL", cid=c, netns=n2) == (0, None)
    assert _inside(n1) == first and host.allocations()[c] == alloc and host.kernel() == kernel
    assert host.cni("CHECK", host.conf(prevResult=res), cid=c, netns=n1) == (0, None)
    assert host.cni("DEL", cid=c, netns=n1) == (0, None)


def test_add_again_after_the_first_netns_is_gone(host, clean):
    """The first namespace died without DEL (its veth with it): ADD into a new namespace
    takes the container over, with the same address."""
    c, n1, n2 = cid(), host.new_netns(), host.new_netns()
    rc, res = host.cni("ADD", cid=c, netns=n1)
    assert rc == 0, res
    subprocess.run(["ip", "netns", "del", os.path.basename(n1)], check=True)
    rc, res2 = host.cni("ADD", cid=c, netns=n2)
    assert rc == 0, res2
    assert res2["ips"] == res["ips"] and res2["interfaces"][1]["sandbox"] == n2
    assert host.allocations()[c]["meta"]["netns"] == n2
    assert host.cni("CHECK", host.conf(prevResult=res2), cid=c, netns=n2) == (0, None)
    assert host.cni("DEL", cid=c, netns=n2) == (0, None)


@pytest.mark.parametrize("how", ["renamed", "moved-to-host"])
def test_add_repairs_half_of_a_pair(host, clean, how):
    """The host end of the veth exists, its peer is not eth0 of the container any more
    (renamed inside it, or moved out to the host): ADD deletes the pair and makes a new
    one (was: AttributeError, error 199)."""
    c, netns = cid(), host.new_netns()
    name = os.path.basename(netns)
    rc, res = host.cni("ADD", cid=c, netns=netns)
    assert rc == 0, res
    subprocess.run(["ip", "-n", name, "link", "set", "eth0", "down"], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "eth0", "name", "old0"], check=True)
    if how == "moved-to-host":
        subprocess.run(["ip", "-n", name, "link", "set", "old0", "netns", host.netns], check=True)
    rc, res2 = host.cni("ADD", cid=c, netns=netns)
    assert rc == 0, res2
    assert res2["ips"] == res["ips"]
    assert container_links(name) == ["eth0", "lo"]
    assert host.cni("CHECK", host.conf(prevResult=res2), cid=c, netns=netns) == (0, None)
    assert host.cni("DEL", cid=c, netns=netns) == (0, None)


def test_second_container_id_into_an_attached_netns(host, clean):
    """Another container id, same namespace and CNI_IFNAME: the spec requires an error for
    an existing interface; the message names the container that has it."""
    c1, c2, netns = cid(), cid(), host.new_netns()
    assert host.cni("ADD", cid=c1, netns=netns)[0] == 0
    first = _inside(netns)
    rc, out = host.cni("ADD", cid=c2, netns=netns)
    assert rc != 0 and out["code"] == 104 and c1 in out["msg"], out
    assert c2 not in host.allocations() and c1 in host.allocations()
    assert _inside(netns) == first
    assert host.cni("DEL", cid=c2, netns=netns) == (0, None)  # DEL after a failed ADD: c1 is left alone
    assert _inside(netns) == first
    assert host.cni("DEL", cid=c1, netns=netns) == (0, None)


def test_host_not_applied_is_try_again_later(host, clean, tmp_path):
    rc, out = host.cni("ADD", host.conf(stateDir=str(tmp_path / "not-yet")), cid=cid(), netns=host.new_netns())
    assert rc != 0 and out["code"] == 11 and "try again later" in out["msg"], out


def test_bridge_missing_is_try_again_later(host, clean, tmp_path):
    """The container bridge is missing (`crossnet apply` still running): code 11, nothing
    allocated or created. (A copy of the host's state naming a bridge that does not exist:
    the lab itself is not changed.)"""
    state = tmp_path / "state"
    state.mkdir()
    applied = json.loads((Path(host.state_dir) / "applied.json").read_text())
    applied["context"]["bridge"] = "fanobr0"
    (state / "applied.json").write_text(json.dumps(applied))
    conf = host.conf(stateDir=str(state), server=False)
    c = cid()
    rc, out = host.cni("ADD", conf, cid=c, netns=host.new_netns())
    assert rc != 0 and out["code"] == 11 and "fanobr0" in out["msg"] and "try again later" in out["msg"], out
    ipam = state / "ipam.json"
    assert not ipam.exists() or c not in json.loads(ipam.read_text())["allocations"]


def test_crossnet_attach_same_netns_by_path_and_by_name(host, clean):
    """`crossnet attach /run/netns/X` then `crossnet attach X` (two ids, one namespace):
    the second recognises the first attachment and says so, exit 0, same address."""
    netns = host.new_netns()
    name = os.path.basename(netns)
    first = json.loads(host.lab.crossnet(host.plan.name, "attach", netns, "-o", "json").stdout)
    assert first["id"] == netns
    again = host.lab.crossnet(host.plan.name, "attach", name)
    assert again.returncode == 0
    assert f"(already attached as {netns})" in again.stdout and first["cidr"] in again.stdout, again.stdout
    again = json.loads(host.lab.crossnet(host.plan.name, "attach", name, "-o", "json").stdout)
    assert (again["id"], again["asked_as"], again["cidr"], again["changed"]) == (netns, name, first["cidr"], False)
    assert name not in host.allocations() and netns in host.allocations()
    # the same, asking for another address: refused, nothing changed
    other = host.lab.crossnet(host.plan.name, "attach", name, "--ip", "10.32.0.250", check=False)
    assert other.returncode != 0 and f"already attached as '{netns}'" in other.stderr, other.stderr
    assert container_links(name) == ["eth0", "lo"]
    host.lab.crossnet(host.plan.name, "detach", netns)


def test_unsupported_ipam_field(host, clean):
    rc, out = host.cni("ADD", host.conf(ipam={"type": "host-local"}), cid=cid(), netns=host.new_netns())
    assert rc != 0 and out["code"] == 2


def test_status_and_gc(host, clean):
    conf11 = host.conf(version="1.1.0")
    assert host.cni("STATUS", conf11, ifname=None) == (0, None)
    keep, drop = cid(), cid()
    n1, n2 = host.new_netns(), host.new_netns()
    assert host.cni("ADD", conf11, cid=keep, netns=n1)[0] == 0
    assert host.cni("ADD", conf11, cid=drop, netns=n2)[0] == 0
    gc = host.conf(version="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]})
    assert host.cni("GC", gc, ifname=None) == (0, None)
    assert keep in host.allocations() and drop not in host.allocations()
    assert host.cni("DEL", conf11, cid=keep, netns=n1) == (0, None)


def test_status_unconfigured(host, tmp_path):
    rc, out = host.cni("STATUS", host.conf(version="1.1.0", stateDir=str(tmp_path)), ifname=None)
    assert rc != 0 and out["code"] == 50


def test_shares_ipam_with_crossnet_attach(host, clean):
    """An address given by `crossnet attach` is never handed out by the plugin."""
    netns = host.new_netns()
    name = os.path.basename(netns)
    host.lab.crossnet(host.plan.name, "attach", name)
    taken = host.allocations()[name]["address"]
    rc, out = host.cni("ADD", cid=cid(), netns=host.new_netns(), args=f"IP={taken}")
    assert rc != 0 and out["code"] == 101
    host.lab.crossnet(host.plan.name, "detach", name)


# ---- the warm helper (crossnet.cni.server): same results, only when safe


def _log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(pred, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_server_serves_later_calls(host, clean, tmp_path):
    from crossnet.cni import client as server

    log = tmp_path / "cni.log"
    conf = host.conf(logFile=str(log))
    c1, n1 = cid(), host.new_netns()
    assert host.cni("ADD", conf, cid=c1, netns=n1)[0] == 0
    sock = Path(server.socket_path(host.state_dir))
    assert _wait_for(sock.exists), "no helper socket after the first ADD"
    c2, n2 = cid(), host.new_netns()
    rc, res = host.cni("ADD", conf, cid=c2, netns=n2)
    assert rc == 0 and res["interfaces"][1]["sandbox"] == n2
    assert host.cni("DEL", conf, cid=c2, netns=n2) == (0, None)
    assert host.cni("DEL", conf, cid=c1, netns=n1) == (0, None)
    calls = [x for x in _log_lines(log) if x.get("command")]
    assert [x["via"] for x in calls][-3:] == ["server"] * 3, calls
    # errors come back the same way
    rc, out = host.cni("ADD", conf, cid=cid(), netns=host.new_netns(), args="IP=10.1.2.300")
    assert rc != 0 and out["code"] == 4
    assert _log_lines(log)[-1]["via"] == "server"


def _lock_free(path: str) -> bool:
    import fcntl
    import os

    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_external_helper_is_never_spawned_and_socket_activation_serves(host, clean, tmp_path):
    """`"helper": "external"` (what `crossnet cni install` writes): the plugin starts no
    helper; the one systemd starts on the first call (crossnet-cni-helper.socket, here
    systemd-socket-activate with the unit's command `crossnet cni serve`) serves the calls."""
    import os
    import shutil
    import signal
    import sys

    from crossnet.cni import socket_path

    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("needs systemd-socket-activate (package systemd)")
    log = tmp_path / "cni.log"
    conf = host.conf(logFile=str(log), helper="external")
    sock = Path(socket_path(host.state_dir))
    # a helper the earlier tests' calls spawned exits once its socket is gone (and frees its lock)
    sock.unlink(missing_ok=True)
    assert _wait_for(lambda: _lock_free(str(sock) + ".lock"), timeout=30.0)
    c1, n1 = cid(), host.new_netns()
    assert host.cni("ADD", conf, cid=c1, netns=n1)[0] == 0
    assert not _wait_for(sock.exists, timeout=3.0), "the plugin started a helper"
    env = [f"-E{k}={os.environ[k]}" for k in ("PATH", "PYTHONPATH") if k in os.environ]
    proc = subprocess.Popen(["ip", "netns", "exec", host.netns, activate, "-l", str(sock), *env, sys.executable,
                             "-m", "crossnet", "--state-dir", host.state_dir, "cni", "serve", "--idle", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert _wait_for(sock.exists), proc.stderr
        c2, n2 = cid(), host.new_netns()
        assert host.cni("ADD", conf, cid=c2, netns=n2)[0] == 0
        assert host.cni("DEL", conf, cid=c2, netns=n2) == (0, None)
        assert host.cni("DEL", conf, cid=c1, netns=n1) == (0, None)
        calls = [x["via"] for x in _log_lines(log) if x.get("command")]
        assert calls[-4:] == ["process", "server", "server", "server"], calls
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        sock.unlink(missing_ok=True)


def test_spawned_helper_never_takes_a_live_socket_and_replaces_a_stale_one(host, clean, tmp_path):
    """A live listener holds cni.sock (here one that answers nothing usable, like
    systemd's activation socket whose helper answers `stale`): the plugin runs the call
    itself and the helper it spawns exits 0 leaving that socket serving (was: the helper
    unlinked it and took the path). Once that listener is gone (a stale socket file), the
    next spawned helper replaces it and serves the calls."""
    import socket
    import threading

    from crossnet.cni import socket_path

    log = tmp_path / "cni.log"
    conf = host.conf(logFile=str(log))
    sock = Path(socket_path(host.state_dir))
    sock.unlink(missing_ok=True)  # a helper the earlier tests spawned exits once its socket is gone
    assert _wait_for(lambda: _lock_free(str(sock) + ".lock"), timeout=30.0)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(sock))
    other.listen(16)
    other.settimeout(0.2)
    ino = sock.lstat().st_ino
    done = threading.Event()

    def answer_nothing() -> None:
        while not done.is_set():
            try:
                conn, _ = other.accept()
            except OSError:
                continue
            conn.close()

    t = threading.Thread(target=answer_nothing, daemon=True)
    t.start()
    try:
        c1, n1 = cid(), host.new_netns()
        assert host.cni("ADD", conf, cid=c1, netns=n1)[0] == 0
        assert _wait_for(lambda: any(x.get("server") == "stop" for x in _log_lines(log)), timeout=30.0), \
            _log_lines(log)
        stops = [x for x in _log_lines(log) if x.get("server") in ("start", "stop")]
        assert [x["server"] for x in stops] == ["stop"], stops
        assert stops[0]["reason"] == f"{sock} is served by a running process"
        assert sock.lstat().st_ino == ino  # still the other listener's socket
        assert host.cni("DEL", conf, cid=c1, netns=n1) == (0, None)
        calls = [x["via"] for x in _log_lines(log) if x.get("command")]
        assert calls == ["process", "process"], calls
    finally:
        done.set()
        t.join(timeout=5)
        other.close()  # the socket file stays: stale
    assert sock.exists() and sock.lstat().st_ino == ino
    c2, n2 = cid(), host.new_netns()
    assert host.cni("ADD", conf, cid=c2, netns=n2)[0] == 0  # in-process; spawns a helper that replaces it
    assert _wait_for(lambda: [x["server"] for x in _log_lines(log) if x.get("server")][-1] == "start"), \
        "no helper replaced the stale socket"
    assert host.cni("DEL", conf, cid=c2, netns=n2) == (0, None)
    calls = [x["via"] for x in _log_lines(log) if x.get("command")]
    assert calls[-2:] == ["process", "server"], calls


def test_server_disabled(host, clean, tmp_path):
    log = tmp_path / "cni.log"
    conf = host.conf(logFile=str(log), server=False)
    c, n = cid(), host.new_netns()
    assert host.cni("ADD", conf, cid=c, netns=n)[0] == 0
    assert host.cni("DEL", conf, cid=c, netns=n) == (0, None)
    assert {x["via"] for x in _log_lines(log) if x.get("command")} == {"process"}


def test_server_refuses_other_namespace_and_other_code(host, clean):
    import crossnet.cni as server  # the client's request/transport code (socket_path, call, code_id)

    c, n = cid(), host.new_netns()
    assert host.cni("ADD", cid=c, netns=n)[0] == 0
    sock = Path(server.socket_path(host.state_dir))
    assert _wait_for(sock.exists)
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": c, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    stdin = json.dumps(host.conf()).encode()
    # this test runs in the root namespace, the helper in the host's: it must not serve us
    assert server.call(host.state_dir, env, stdin) is None
    assert c in host.allocations()
    # a client running other code makes the helper step down (it removes its socket)
    real = server.code_id
    try:
        server.code_id = lambda: "other-code"
        assert server.call(host.state_dir, env, stdin) is None
    finally:
        server.code_id = real
    assert _wait_for(lambda: not sock.exists())
    assert c in host.allocations()
    assert host.cni("DEL", cid=c, netns=n) == (0, None)
