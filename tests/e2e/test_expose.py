"""`crossnet expose` / `crossnet hide` (issue 15, docs/expose.md) in 3-host labs, real packets.

One lab per backend (module-scoped): host-gw on the cluster file (`crossnet apply`) and vxlan
on etcd (`crossnet agent` on every host). Every container runs a tiny TCP server that answers
with the address it sees the client as; h1 runs one on all its addresses.

Before expose h1 already reaches every container (measured; docs/expose.md) but remote
containers see it as its underlay address (host-gw: outside the network) or its subnet's
`.0`, the VXLAN device's address (vxlan). Exposed, h1 pings and fetches every container of
every host from an address of its own subnet (host-gw: now the gateway; vxlan: the `.0`
routing already picks is kept), and every container reaches h1 on its gateway; `apply` / the agent's syncs
keep it; hide brings back exactly the first picture; reset leaves nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.e2e.agentlab import module_factory, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

PORT = 8080
SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(64)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        c.sendall(peer[0].encode())
        c.close()
""")
FETCH = textwrap.dedent("""
    import json, socket, sys
    seen = []
    for dst in sys.argv[2:]:
        try:
            with socket.create_connection((dst, int(sys.argv[1])), timeout=5) as s:
                seen.append(s.recv(64).decode())
        except OSError:
            seen.append(None)
    print(json.dumps(seen))
""")


class ExposeLab:
    def __init__(self, lab, store: str):
        self.lab, self.store = lab, store
        self.procs: list[subprocess.Popen] = []
        self.addr = {c: _container_address(c) for h in lab.hosts for c in h.containers}

    def serve(self, netns: str, bind: str = "0.0.0.0") -> None:
        p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, bind, str(PORT)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)

    def crossnet(self, h: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.crossnet(h, *args, check=check)

    def fetch(self, netns: str, *dsts: str) -> list[str | None]:
        """The address each of `dsts`' servers saw this namespace as (None: no connection)."""
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", FETCH, str(PORT), *dsts],
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)

    def sources(self) -> dict[str, str | None]:
        """container -> the address it sees h1 as (one TCP connection each, from h1)."""
        return dict(zip(self.addr, self.fetch(self.h1.netns, *self.addr.values())))

    @property
    def h1(self):
        return self.lab.hosts[0]

    def applied(self, h: str = "h1") -> dict:
        with open(os.path.join(self.lab.plan.host(h).state_dir, "applied.json")) as fh:
            return json.load(fh)

    def gateway(self) -> str:
        return self.applied()["context"]["gateway"]

    def nft_table(self) -> bool:
        out = subprocess.run(["ip", "netns", "exec", self.h1.netns, "nft", "list", "table", "ip", "crossnet-expose"],
                             capture_output=True, text=True, check=False)
        return out.returncode == 0

    def recorded(self) -> bool:
        return any(r.get("kind") == "nft-table" and r.get("name") == "crossnet-expose"
                   for r in self.applied().get("resources", []))


def _container_address(netns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()[3].split("/")[0]


def _ping(netns: str, dst: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c1", "-W2", dst], capture_output=True,
                          timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module", params=["host-gw", "vxlan"])
def xlab(request, lab_sweep):
    extra = {}
    if request.param == "vxlan":  # the agent's path: etcd
        from crossnet.lab.etcdserver import etcd_available

        if not etcd_available():
            pytest.skip("needs etcd (apt-get install etcd-server)")
        extra = {"store": "etcd", "ttl": 5}
    lab = module_factory(request)(hosts=3, underlay="l2", backend=request.param, containers=1, extra=extra)
    x = ExposeLab(lab, extra.get("store", "static"))
    try:
        for h in lab.hosts:
            x.serve(h.containers[0])
        x.serve(x.h1.netns)
        yield x
    finally:
        x.close()


def test_expose_hide(xlab):
    x = xlab
    gw = x.gateway()
    subnet = ipaddress.ip_network(x.applied()["context"]["subnet"])
    local = x.h1.containers[0]
    remote = [c for c in x.addr if c != local]
    # before: h1 reaches every container, remote ones see it outside the network (host-gw)
    # or as its VXLAN device's address (vxlan, the subnet's .0), never as the gateway
    before = x.sources()
    assert before[local] == gw
    expected = x.h1.address if x.lab.plan.backend == "host-gw" else str(subnet.network_address)
    assert all(before[c] == expected for c in remote), before
    assert not x.nft_table()

    dry = x.crossnet("h1", "expose", "--dry-run").stdout
    assert "table ip crossnet-expose" in dry and f"snat to {gw}" in dry
    assert not x.nft_table()  # a dry run changes nothing

    out = json.loads(x.crossnet("h1", "expose", "-o", "json").stdout)
    assert out["exposed"] and out["address"] == gw and out["changed"]
    assert out["agent_resync"] == (x.store == "etcd")
    assert x.nft_table() and x.recorded()
    # h1 pings and fetches every container on every host from an address of its own subnet:
    # the gateway, unless routing already picked the subnet's .0 (vxlan: kept) ...
    assert all(_ping(x.h1.netns, a) for a in x.addr.values())
    exposed = {c: gw if c == local or x.lab.plan.backend == "host-gw" else str(subnet.network_address)
               for c in x.addr}
    assert x.sources() == exposed
    # ... and every container reaches h1 there (the server sees the container's own address)
    for c, a in x.addr.items():
        assert _ping(c, gw) and x.fetch(c, gw) == [a]
    st = json.loads(x.crossnet("h1", "status", "-o", "json").stdout)["expose"]
    assert st["networks"] == [{"network": x.lab.name, "exposed": True, "address": gw, "programmed": True}]
    assert f"this host is {gw}" in x.crossnet("h1", "status").stdout
    assert json.loads(x.crossnet("h1", "expose", "-o", "json").stdout)["changed"] is False  # idempotent

    # re-syncs keep it: `apply` again / the agent's full sync (asked for again, then recorded)
    if x.store == "static":
        assert "up to date" in x.lab.crossnet("h1", "apply", "-f", x.lab.plan.cluster_file, "--host", "h1").stdout
    else:
        path = os.path.join(x.h1.state_dir, "applied.json")
        mtime = os.stat(path).st_mtime_ns
        x.crossnet("h1", "expose")
        wait_for(lambda: os.stat(path).st_mtime_ns != mtime, 20, "the agent's re-sync")
    assert x.nft_table() and x.recorded() and x.sources() == exposed

    # bad input: one line naming the option, exit 2, nothing changed
    bad = x.crossnet("h1", "expose", "--network", "nope", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--network" in bad.stderr
    assert x.nft_table()

    # hide: exactly the picture from before
    assert "nft delete table ip crossnet-expose" in x.crossnet("h1", "hide", "--dry-run").stdout
    assert x.nft_table()  # a dry run changes nothing
    assert json.loads(x.crossnet("h1", "hide", "-o", "json").stdout)["changed"]
    assert not x.nft_table() and not x.recorded()
    assert not os.path.exists(os.path.join(x.h1.state_dir, "expose.json"))
    assert x.sources() == before
    assert json.loads(x.crossnet("h1", "status", "-o", "json").stdout)["expose"]["networks"][0]["exposed"] is False
    assert json.loads(x.crossnet("h1", "hide", "-o", "json").stdout)["changed"] is False


def test_reset_removes_expose(xlab):
    x = xlab
    x.crossnet("h1", "expose")
    if x.store != "static":  # a running agent would program the host again: stop h1's agent first
        from crossnet.lab.etcd import stop_agent

        assert stop_agent(x.h1.state_dir)
    assert x.nft_table()
    x.crossnet("h1", "reset")
    assert not x.nft_table()
    assert not os.path.exists(os.path.join(x.h1.state_dir, "expose.json"))
    rules = subprocess.run(["ip", "netns", "exec", x.h1.netns, "nft", "list", "ruleset"], capture_output=True,
                           text=True, check=True).stdout
    assert "crossnet" not in rules
