"""Container DNS across hosts (issue 15), in a lab of 3 hosts on etcd (vxlan, one agent
and one container per host, `lab up --store etcd`): every agent answers on its container
gateway for every container of the cluster.

The containers are re-attached with names (h1 and h2: "web", h3: "db") and the queries are
real packets from the container namespaces to their host's gateway (a small dnslib client
run in the container's namespace; busybox nslookup through /etc/netns/NAME/resolv.conf).
The tests run in file order and each leaves the cluster as it found it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from crossnet.agent import api as agentapi
from tests.e2e.agentlab import LabCluster, module_factory, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

HOSTS = ["h1", "h2", "h3"]
NAMES = {"h1": "web", "h2": "web", "h3": "db"}
DOMAIN = "crossnet.local"
UPSTREAM_NAME = "far.upstream.test"
UPSTREAM_ADDR = "192.0.2.99"

QUERY = textwrap.dedent("""
    import json, sys
    from dnslib import DNSRecord
    name, qtype, server, tcp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "tcp"
    q = DNSRecord.question(name, qtype)
    r = DNSRecord.parse(q.send(server, 53, tcp=tcp, timeout=5))
    print(json.dumps({"rcode": r.header.rcode, "aa": r.header.aa, "id_ok": r.header.id == q.header.id,
                      "answers": [str(a.rdata) for a in r.rr]}))
""")

UPSTREAM = textwrap.dedent("""
    import socket, sys
    from dnslib import DNSRecord, RR, A, QTYPE
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 53))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        q = DNSRecord.parse(data)
        r = q.reply(aa=0)
        if str(q.q.qname).rstrip(".") == sys.argv[2]:
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(sys.argv[3]), ttl=30))
        else:
            r.header.rcode = 3
        with open(sys.argv[4], "a") as fh:
            fh.write(str(q.q.qname) + "\\n")
        s.sendto(r.pack(), peer)
""")


@pytest.fixture(scope="module")
def dns_lab(request, lab_sweep) -> LabCluster:
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    lab = module_factory(request)(hosts=len(HOSTS), underlay="l2", backend="vxlan", containers=1,
                                  extra={"store": "etcd", "ttl": 5})
    cluster = LabCluster(lab, ttl=5)
    cluster.load_containers()
    assert sorted(cluster.containers) == HOSTS
    for h in HOSTS:  # every agent serves DNS once it is ready
        wait_for(lambda h=h: _served(cluster, h), 30, f"{h}'s dns.json")
    for h in HOSTS:
        name_container(cluster, h, NAMES[h])
    return cluster


def _served(cluster, h):
    from crossnet.dns.resolv import served
    from crossnet.state import StateDir

    return served(StateDir(cluster.state(h)))


def cont(cluster, h) -> str:
    return cluster.host(h).containers[0]


def gateway(cluster, h) -> str:
    return _served(cluster, h)["listen"][0]


def name_container(cluster, h, name) -> dict:
    """`crossnet attach CONTAINER --name NAME` on host h (through its agent)."""
    from tests.e2e.agentlab import crossnet_in

    out = crossnet_in(cluster.host(h).netns, cluster.state(h), "attach", cont(cluster, h), "--name", name,
                      "-o", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    cluster.containers[h] = data["address"]
    return data


def query(cluster, h, name, qtype="A", tcp=False, server=None) -> dict:
    """One query from h's container to its host's DNS (real packets in the lab)."""
    out = subprocess.run(["ip", "netns", "exec", cont(cluster, h), sys.executable, "-c", QUERY, name, qtype,
                          server or gateway(cluster, h), "tcp" if tcp else "udp"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr[-800:]
    data = json.loads(out.stdout)
    assert data["id_ok"]
    return data


def addresses(cluster, h, name) -> set[str]:
    return set(query(cluster, h, name)["answers"])


def test_every_host_answers_for_every_container(dns_lab):
    c = dns_lab
    web = {c.containers["h1"], c.containers["h2"]}
    for h in HOSTS:
        wait_for(lambda h=h: addresses(c, h, f"web.{DOMAIN}") == web, 10, f"web on {h}")
        assert addresses(c, h, f"db.{DOMAIN}") == {c.containers["h3"]}
        r = query(c, h, f"DB.{DOMAIN}.", tcp=True)  # TCP too; names are case-insensitive
        assert r["answers"] == [c.containers["h3"]] and r["aa"]
        assert query(c, h, f"nobody.{DOMAIN}")["rcode"] == 3  # NXDOMAIN, never forwarded


def test_same_name_round_robin(dns_lab):
    c = dns_lab
    firsts = [query(c, "h3", f"web.{DOMAIN}")["answers"][0] for _ in range(4)]
    assert set(firsts) == {c.containers["h1"], c.containers["h2"]}


def test_reverse_lookup(dns_lab):
    c = dns_lab
    from crossnet.dns import reverse_name

    for h in HOSTS:
        r = query(c, h, reverse_name(c.containers["h3"]), "PTR")
        assert r["answers"] == [f"db.{DOMAIN}."], r
    # an address of the container network nobody has: answered here, not forwarded
    assert query(c, "h1", reverse_name("10.32.255.250"), "PTR")["rcode"] in (0, 3)


def test_status_says_cluster_wide(dns_lab):
    from tests.e2e.agentlab import crossnet_in

    out = crossnet_in(dns_lab.host("h1").netns, dns_lab.state("h1"), "status", "-o", "json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)["dns"]
    assert st["served"] and st["scope"] == "cluster" and st["domain"] == DOMAIN
    assert st["listen"] == [json.loads(out.stdout)["gateway"]]


def test_named_netns_gets_resolv_conf_and_loses_it_at_detach(dns_lab):
    """attach of a named netns wrote /etc/netns/NAME/resolv.conf (what `ip netns exec`
    uses): busybox nslookup inside resolves a container of another host by name; detach
    removes the file (and the directory crossnet made); attach again writes it again. A
    directory the admin made before attach stays at detach (it was removed when empty)."""
    from crossnet.dns import MARKER

    c = dns_lab
    name = cont(c, "h2")
    path = f"/etc/netns/{name}/resolv.conf"
    text = open(path).read()
    assert text.startswith(MARKER) and f"nameserver {gateway(c, 'h2')}\n" in text and f"search {DOMAIN}" in text
    busybox = shutil.which("busybox")
    if busybox:
        out = subprocess.run(["ip", "netns", "exec", name, busybox, "nslookup", f"db.{DOMAIN}"],
                             capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 0 and c.containers["h3"] in out.stdout, out.stdout + out.stderr
    res = agentapi.call(c.state("h2"), "POST", "/v1/detach", {"container": name})
    assert res["detached"]
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    os.mkdir(os.path.dirname(path))  # the admin's, empty
    try:
        name_container(c, "h2", "web")
        assert open(path).read().startswith(MARKER)
        assert agentapi.call(c.state("h2"), "POST", "/v1/detach", {"container": name})["detached"]
        assert not os.path.exists(path) and os.listdir(os.path.dirname(path)) == []
    finally:
        os.rmdir(os.path.dirname(path))
    name_container(c, "h2", "web")
    assert open(path).read().startswith(MARKER)


def test_detached_container_leaves_dns_on_every_host(dns_lab):
    c = dns_lab
    name = cont(c, "h3")
    addr = c.containers["h3"]
    t0 = time.monotonic()
    res = agentapi.call(c.state("h3"), "POST", "/v1/detach", {"container": name})
    assert res["detached"]
    try:
        for h in ["h1", "h2"]:  # the store watch: gone from every other host's answers (bound: generous)
            wait_for(lambda h=h: query(c, h, f"db.{DOMAIN}")["rcode"] == 3, 10, f"db gone on {h}", interval=0.05)
        took = time.monotonic() - t0
        from crossnet.dns import reverse_name

        assert query(c, "h1", reverse_name(addr), "PTR")["answers"] == []
    finally:
        name_container(c, "h3", "db")
    print(f"db gone on every other host {took:.2f}s after detach")
    wait_for(lambda: addresses(c, "h1", f"db.{DOMAIN}") == {c.containers["h3"]}, 10, "db back on h1")


def test_other_names_forwarded_to_the_hosts_resolver(dns_lab, tmp_path):
    """h1's /etc/resolv.conf (its /etc/netns/<h1 namespace>/resolv.conf, which `ip netns
    exec` gives the agent) names a fake upstream running in h2's namespace: a name outside
    crossnet's domain is forwarded there; crossnet's own names are not."""
    c = dns_lab
    h1ns, h2 = c.host("h1").netns, c.host("h2")
    up_addr = str(h2.address)
    etc = f"/etc/netns/{h1ns}"
    seen = tmp_path / "upstream.log"
    assert not os.path.exists(etc)
    up = subprocess.Popen(["ip", "netns", "exec", h2.netns, sys.executable, "-c", UPSTREAM, up_addr, UPSTREAM_NAME,
                           UPSTREAM_ADDR, str(seen)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stdout.readline().strip() == "ready", up.stderr.read() if up.poll() is not None else ""
        os.makedirs(etc)
        with open(f"{etc}/resolv.conf", "w") as fh:
            fh.write(f"nameserver {up_addr}\n")
        t0 = time.monotonic()
        c.stop("h1")
        stopped = time.monotonic() - t0
        assert not _served(c, "h1")  # dns.json removed at stop
        c.start("h1")
        wait_for(lambda: _served(c, "h1") and _served(c, "h1")["upstreams"] == [up_addr], 30, "h1's dns forwarding")
        # the DNS threads never hold the agent's exit (a watch blocked on etcd is broken at stop)
        assert stopped < 4.5, f"agent took {stopped:.1f}s to stop"
        r = wait_for(lambda: (q := query(c, "h1", UPSTREAM_NAME))["answers"] and q, 10, "forwarded answer")
        assert r["answers"] == [UPSTREAM_ADDR] and not r["aa"]
        assert query(c, "h1", "unknown.upstream.test")["rcode"] == 3  # upstream's NXDOMAIN passed on
        assert query(c, "h1", f"nobody.{DOMAIN}")["rcode"] == 3
        from crossnet.dns import reverse_name

        query(c, "h1", reverse_name(c.containers["h2"]), "PTR")
        asked = seen.read_text().split()
        assert f"{UPSTREAM_NAME}." in asked
        assert not [n for n in asked if DOMAIN in n or "in-addr.arpa" in n], asked  # never crossnet's own
    finally:
        up.kill()
        up.wait(5)
        shutil.rmtree(etc, ignore_errors=True)
        c.stop("h1")
        c.start("h1")
    wait_for(lambda: _served(c, "h1") and _served(c, "h1")["upstreams"] != [up_addr], 30, "h1 back on its own resolvers")


FROM_UNDERLAY = textwrap.dedent("""
    import json, socket, struct, sys
    from dnslib import DNSRecord
    server, source, name = sys.argv[1], sys.argv[2], sys.argv[3]
    wire = DNSRecord.question(name).pack()
    out = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((source, 0))
        u.settimeout(2)
        u.sendto(wire, (server, 53))
        try:
            out["udp"] = len(u.recv(4096))
        except TimeoutError:
            out["udp"] = None
    with socket.create_connection((server, 53), timeout=5, source_address=(source, 0)) as t:
        out["tcp_connected"] = True  # the gateway is reachable from here
        try:
            t.sendall(struct.pack("!H", len(wire)) + wire)
            out["tcp"] = len(t.recv(4096)) or None
        except OSError:
            out["tcp"] = None
    print(json.dumps(out))
""")


def test_the_underlay_gets_no_answer_from_a_hosts_dns(dns_lab):
    """h2 routes h1's gateway address to h1's underlay address (as any host on the
    underlay can) and asks from its own underlay address: TCP reaches the server, which
    closes the connection; neither UDP nor TCP gets an answer (it had been an open
    resolver for the underlay). h2's container still gets h1's answer."""
    c = dns_lab
    h1, h2 = c.host("h1"), c.host("h2")
    gw1 = gateway(c, "h1")
    assert query(c, "h2", f"db.{DOMAIN}", server=gw1)["answers"] == [c.containers["h3"]]  # a container is served
    subprocess.run(["ip", "-n", h2.netns, "route", "add", f"{gw1}/32", "via", str(h1.address)], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", h2.netns, sys.executable, "-c", FROM_UNDERLAY, gw1,
                              str(h2.address), f"db.{DOMAIN}"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr[-800:]
        assert json.loads(out.stdout) == {"udp": None, "tcp_connected": True, "tcp": None}
    finally:
        subprocess.run(["ip", "-n", h2.netns, "route", "del", f"{gw1}/32", "via", str(h1.address)], check=True)


def test_lab_netns_removal_removes_crossnets_resolv_conf(tmp_path):
    """`ip netns del` leaves /etc/netns/NAME behind: removing a lab namespace takes the
    resolv.conf crossnet attach wrote with it (and nothing else)."""
    import secrets

    from crossnet.dns import resolv as dns_resolv
    from crossnet.lab import netns as labns
    from crossnet.state import StateDir

    state = StateDir(tmp_path / "state")
    dns_resolv.write_info(state, {"pid": os.getpid(), "domain": DOMAIN, "listen": ["10.32.0.1"], "scope": "host"})
    held = dns_resolv.hold(state)  # as the server does
    name = f"fgdns{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    try:
        path = dns_resolv.install(state, f"/run/netns/{name}")["resolv_conf"]
        assert path == f"/etc/netns/{name}/resolv.conf" and os.path.exists(path)
        assert labns.remove_netns(name)
        assert not os.path.exists(os.path.dirname(path))
    finally:
        os.close(held)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


def test_cni_add_gives_the_resolver_and_the_pod_name(dns_lab):
    """crossnet-cni ADD on h1 (through h1's agent): the result's dns names h1's DNS and
    crossnet's domain; K8S_POD_NAME (with IgnoreUnknown, as podman sends it) becomes a
    name every host answers; DEL takes it away everywhere."""
    import secrets

    c = dns_lab
    h1 = c.host("h1")
    ns = f"{c.lab.name}-k{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    conf = json.dumps({"cniVersion": "1.0.0", "name": "crossnet", "type": "crossnet-cni", "stateDir": h1.state_dir,
                       "dns": {"nameservers": ["192.0.2.53"]}})

    def cni(command):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": f"dns-{ns}",
               "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=api",
               "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        out = subprocess.run(["ip", "netns", "exec", h1.netns, sys.executable, "-c",
                              "from crossnet.cni.plugin import main; main()"], input=conf, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    try:
        result = cni("ADD")
        assert result["dns"] == {"nameservers": [gateway(c, "h1"), "192.0.2.53"], "search": [DOMAIN]}
        addr = result["ips"][0]["address"].split("/")[0]
        for h in HOSTS:
            wait_for(lambda h=h: addresses(c, h, f"api.{DOMAIN}") == {addr}, 10, f"api on {h}")
        cni("DEL")
        for h in HOSTS:
            wait_for(lambda h=h: query(c, h, f"api.{DOMAIN}")["rcode"] == 3, 10, f"api gone on {h}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)


@pytest.fixture(scope="module")
def static_lab(request, lab_sweep):
    """2 hosts on the cluster file (no store), `lab up --dns`: `crossnet dns serve` per host."""
    c = _Static(module_factory(request)(hosts=2, underlay="l2", backend="vxlan", containers=1, extra={"dns": True}))
    for h in ("h1", "h2"):
        wait_for(lambda h=h: _served(c, h), 30, f"{h}'s dns serve")
    return c


class _Static:
    """The few LabCluster helpers the queries need, on a lab without agents."""

    def __init__(self, lab):
        self.lab, self.plan, self.containers = lab, lab.plan, {}

    def host(self, h):
        return self.plan.host(h)

    def state(self, h):
        return self.host(h).state_dir


def test_static_file_host_answers_for_its_own_containers(static_lab):
    """No store: each host answers for its own containers only, and status says so."""
    from tests.e2e.agentlab import crossnet_in

    c = static_lab
    name_container(c, "h1", "solo")
    name_container(c, "h2", "other")
    wait_for(lambda: addresses(c, "h1", f"solo.{DOMAIN}") == {c.containers["h1"]}, 10, "solo on h1")
    assert query(c, "h1", f"other.{DOMAIN}")["rcode"] == 3  # h2's container: unknown on h1
    wait_for(lambda: addresses(c, "h2", f"other.{DOMAIN}") == {c.containers["h2"]}, 10, "other on h2")
    out = crossnet_in(c.host("h1").netns, c.state("h1"), "status", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dns"]["scope"] == "host"
    text = crossnet_in(c.host("h1").netns, c.state("h1"), "status").stdout
    assert "this host's containers only" in text
    assert os.path.exists(f"/etc/netns/{cont(c, 'h1')}/resolv.conf")
    out = crossnet_in(c.host("h1").netns, c.state("h1"), "detach", cont(c, "h1"))
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(f"/etc/netns/{cont(c, 'h1')}/resolv.conf")


def test_container_whose_namespace_dies_leaves_dns_on_every_host(dns_lab):
    """No detach: the named container's namespace is deleted. Its host's agent republishes
    without it, and every host stops answering for it (bound: generous)."""
    import secrets

    c = dns_lab
    ns = f"{c.lab.name}-d{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        att = agentapi.call(c.state("h2"), "POST", "/v1/attach", {"container": ns, "name": "ephemeral"})
        for h in HOSTS:
            wait_for(lambda h=h: addresses(c, h, f"ephemeral.{DOMAIN}") == {att["address"]}, 10, f"ephemeral on {h}")
        t0 = time.monotonic()
        subprocess.run(["ip", "netns", "del", ns], check=True, timeout=20)
        for h in HOSTS:
            wait_for(lambda h=h: query(c, h, f"ephemeral.{DOMAIN}")["rcode"] == 3, 15, f"ephemeral gone on {h}",
                     interval=0.05)
        print(f"dead container gone on every host {time.monotonic() - t0:.2f}s after its namespace")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)
        agentapi.call(c.state("h2"), "POST", "/v1/gc", {})


def test_bridge_backend_serves_on_the_hosts_lan_address(request, lab_sweep):
    """Backend bridge (containers on the LAN): the host's DNS listens on its own LAN
    address, and its containers resolve each other there."""
    from tests.e2e.agentlab import crossnet_in

    c = _Static(module_factory(request)(hosts=1, underlay="l2", backend="bridge", containers=1, extra={"dns": True}))
    st = json.loads(crossnet_in(c.host("h1").netns, c.state("h1"), "status", "-o", "json").stdout)
    wait_for(lambda: _served(c, "h1"), 30, "h1's dns serve")
    assert _served(c, "h1")["listen"] == [st["address"]]
    name_container(c, "h1", "lan")
    wait_for(lambda: addresses(c, "h1", f"lan.{DOMAIN}") == {c.containers["h1"]}, 10, "lan on h1")
