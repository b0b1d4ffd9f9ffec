"""`crossnet launch` end to end (docs/mesh.md): real etcd members in lab host namespaces,
formed by join tokens, the agent programming every host.

* `joins`: a 4-host L3 lab without any store; the tests type the user's commands:
  `crossnet launch` on h1, `crossnet launch --token T ADDR` on h2 while tcpdump
  watches h2's underlay link (TLS only: no plaintext HTTP/gRPC for the join *and* for
  etcd's client and peer traffic), refusals on h3 (token of another cluster, wrong
  secret, revoked, expired) that leave nothing behind on either side; h4 refused while
  two voters are killed (the line says the quorum is lost), then joining while one voter
  of three is killed.
* `mesh`: a 5-host L2 lab built by `crossnet lab up --store mesh` (the lab runs the same
  commands; h5 joins through the client h4): 3 voters + 2 clients, every container pair
  pings; quorum loss (two voters killed) keeps the
  data plane and `status` says so; `forget` promotes a client; `stop --release`
  removes a host everywhere (and the other client is promoted in its place); a host whose namespace is recreated with its state dir
  kept comes back with `crossnet launch`: same member, subnet, container address.
* `crossnet launch --backend auto --encrypt` (`lab up --store mesh --encrypt`, a 3-host L3
  lab of its own): every peer on WireGuard, all pairs ping, only WireGuard UDP on the wire.
The `mesh` tests run in file order, each leaving the mesh as the next expects.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossnet.lab import netns as labns
from crossnet.mesh import pki
from crossnet.mesh.token import JoinToken, Token, parse_join_token
from tests.e2e.agentlab import launched_lab, module_factory
from tests.e2e.pcap import Capture

DNS_DOMAIN = "mesh.example"  # the `mesh` lab's `launch --dns-domain`

pytestmark = pytest.mark.e2e


def _launch(lab, host, *args, check=True, timeout=120):
    return lab.crossnet(host, "launch", "--name", host, *args, timeout=timeout, check=check)


def _token_line(out: str) -> tuple[str, str]:
    line = next(ln for ln in out.splitlines() if "crossnet launch --token" in ln)
    parts = line.split()
    return parts[parts.index("--token") + 1], parts[-1]


def _status(lab, host) -> dict:
    return json.loads(lab.crossnet(host, "status", "-o", "json", timeout=60).stdout)["mesh"]


def _wait(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not true within {timeout}s (last: {last!r})")


def _tree(path: Path) -> dict:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))
            if "etcd" not in p.parts and not p.name.endswith(".log")}


# ---------------------------------------------------------------- pcap helpers

def _tcp_payloads(frames: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(sport, dport, payload) of every IPv4/TCP segment in ethernet frames."""
    out = []
    for f in frames:
        if len(f) < 34 or f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        ihl = (f[14] & 0x0F) * 4
        tcp = f[14 + ihl:]
        sport, dport = struct.unpack(">HH", tcp[:4])
        off = (tcp[12] >> 4) * 4
        out.append((sport, dport, tcp[off:]))
    return out


# ---------------------------------------------------------------- joins typed by hand

@pytest.fixture(scope="module")
def joins(request, lab_sweep):
    yield from launched_lab(request)  # 4 hosts, L3


def test_first_launch_then_join_is_tls_only_on_the_wire(joins, tmp_path):
    lab = joins
    out = _launch(lab, "h1").stdout
    token, addr = _token_line(out)
    assert addr == lab.plan.host("h1").address
    jt = parse_join_token(token)

    pcap = tmp_path / "join.pcap"
    cap = Capture(lab.plan.fabric.netns, lab.plan.host("h2").fabric_ifname, pcap, "tcp")
    try:
        res = _launch(lab, "h2", "--token", token, addr)
        assert "joined the mesh as a voter" in res.stdout, res.stdout
        time.sleep(1.0)  # some etcd heartbeats and agent keepalives too
    finally:
        frames = cap.stop()

    segs = _tcp_payloads(frames)
    ports = {p for s, d, _ in segs for p in (s, d)}
    # positive control: the join (6790), etcd client (2379) and peer (2380) traffic was captured
    assert {6790, 2379, 2380} <= ports, sorted(ports)
    data = [p for _, _, p in segs if p]
    assert data, "no payload captured"
    raw = b"".join(data)
    for plaintext in (b"HTTP/1.", b"PRI * HTTP/2.0", b"/v3/", b"/v1/join", b"etcdserverpb", b"/crossnet",
                      b"-----BEGIN", b"PRIVATE KEY", jt.token.secret.encode()):
        assert plaintext not in raw, plaintext
    # every payload of a new connection starts a TLS record
    assert all(p[0] in (0x14, 0x15, 0x16, 0x17) for p in data), {p[:8] for p in data if p[0] not in (0x14, 0x15,
                                                                                                     0x16, 0x17)}


def test_wrong_tokens_are_refused_and_leave_nothing(joins, tmp_path):
    lab = joins
    h1_dir = Path(lab.plan.host("h1").state_dir)
    h3_dir = Path(lab.plan.host("h3").state_dir)
    token, addr = _token_line(lab.crossnet("h1", "token", "create", "--ttl", "10m").stdout)
    good = parse_join_token(token)
    other = pki.create_ca(tmp_path / "other")
    revoked = parse_join_token(_token_line(lab.crossnet("h1", "token", "create").stdout)[0])
    lab.crossnet("h1", "token", "revoke", revoked.token.id)
    expired = parse_join_token(_token_line(lab.crossnet("h1", "token", "create", "--ttl", "1s").stdout)[0])
    _wait(lambda: {t["id"]: t["state"] for t in json.loads(lab.crossnet("h1", "token", "list", "-o", "json").stdout)
                   ["tokens"]}[expired.token.id] == "expired", 10, "token expired")
    members_before = lab.crossnet("h1", "status", "-o", "json").stdout
    tokens_before = lab.crossnet("h1", "token", "list", "-o", "json").stdout
    h1_before = _tree(h1_dir / "mesh")
    h3_before = sorted(p.name for p in h3_dir.iterdir()) if h3_dir.exists() else None
    cases = {
        "another cluster": (str(JoinToken(good.token, other.pin)), "belongs to another cluster"),
        "wrong secret": (str(JoinToken(Token(good.token.id, "x" * 16), good.pin)), "wrong secret"),
        "no pin": (f"{good.token}", "carries no CA pin"),
        "revoked": (str(revoked), f"token {revoked.token.id} was revoked at"),
        "expired": (str(expired), f"token {expired.token.id} expired at"),
    }
    for what, (tok, msg) in cases.items():
        res = _launch(lab, "h3", "--token", tok, addr, check=False)
        assert res.returncode in (1, 2), (what, res.returncode)
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("crossnet: error:") and msg in err[0], (what, err)
        assert (sorted(p.name for p in h3_dir.iterdir()) if h3_dir.exists() else None) == h3_before, what
        assert not (h3_dir / "mesh").exists(), what
        assert not subprocess.run(["ip", "netns", "pids", lab.plan.host("h3").netns], capture_output=True,
                                  text=True, check=True).stdout.split(), what  # no etcd, no launch process
    assert _tree(h1_dir / "mesh") == h1_before
    assert lab.crossnet("h1", "token", "list", "-o", "json").stdout == tokens_before
    members = [m["name"] for m in json.loads(members_before)["mesh"]["members"]]
    assert [m["name"] for m in _status(lab, "h1")["members"]] == members
    assert sorted(members) == ["h1", "h2"]


def test_a_member_that_cannot_start_is_taken_back_then_the_join_works(joins):
    """h3 would be the 3rd voter but its peer port is taken: its etcd cannot start. The
    launch fails with one line, the member it added is removed again (else the cluster,
    1 of 2 voters started, would have lost its quorum) and nothing is left on h3; once
    the port is free the same token works (through h2: any live host serves joins)."""
    lab = joins
    token, _ = _token_line(lab.crossnet("h1", "token", "create", "--ttl", "10m").stdout)
    h3 = lab.plan.host("h3")
    blocker = subprocess.Popen(lab.argv("h3", [sys.executable, "-c", BLOCK, h3.address, "2380"]),
                               stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline().strip() == "listening"
        res = _launch(lab, "h3", "--token", token, lab.plan.host("h1").address, check=False)
    finally:
        blocker.kill()
        blocker.wait()
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crossnet: error:") and "exited" in err[0], err
    assert not (Path(h3.state_dir) / "mesh").exists()
    st = _wait(lambda: (s := _status(lab, "h1"))["store"] == "ok" and s, 20, "store ok")
    assert sorted(m["name"] for m in st["members"]) == ["h1", "h2"]
    res = _launch(lab, "h3", "--token", token, lab.plan.host("h2").address)
    assert "joined the mesh as a voter" in res.stdout
    _wait(lambda: len(_status(lab, "h1")["members"]) == 3, what="3 voters")


BLOCK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
sys.stdin.read()
"""


def _kill(lab, host: str) -> None:
    """A crash: SIGKILL to every process of the host (the supervisor with the agent inside,
    its etcd member); the kernel state (the data plane) stays as it is."""
    pids = subprocess.run(["ip", "netns", "pids", lab.plan.host(host).netns], capture_output=True, text=True,
                          check=True).stdout.split()
    assert len(pids) == 2, (host, pids)  # supervisor (with the agent inside), etcd
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)


def test_join_refused_without_quorum_and_working_with_a_voter_down(joins):
    lab = joins
    h4_dir = Path(lab.plan.host("h4").state_dir)
    h4_before = sorted(p.name for p in h4_dir.iterdir()) if h4_dir.exists() else None
    token, _ = _token_line(lab.crossnet("h1", "token", "create", "--ttl", "10m").stdout)
    h1 = lab.plan.host("h1").address
    for h in ("h2", "h3"):
        _kill(lab, h)
    res = _launch(lab, "h4", "--token", token, h1, check=False)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "store unavailable: quorum lost (1/3 voters)" in err[0], err
    assert (sorted(p.name for p in h4_dir.iterdir()) if h4_dir.exists() else None) == h4_before
    for h in ("h2", "h3"):
        _launch(lab, h)
    _wait(lambda: _status(lab, "h1")["store"] == "ok", 60, "quorum back")
    # one voter of three killed (a crash): the others keep the quorum, a new host joins (through h3)
    _kill(lab, "h1")
    res = _launch(lab, "h4", "--token", token, lab.plan.host("h3").address)
    assert "joined the mesh as a client" in res.stdout, res.stdout
    st = _status(lab, "h4")
    assert st["store"] == "ok" and st["role"] == "client"
    assert {m["name"]: m["healthy"] for m in st["members"] if m["role"] == "voter"} == \
        {"h1": False, "h2": True, "h3": True}
    res = _launch(lab, "h1")  # after the crash: same member back (stale pid file ignored)
    assert "back in the mesh as a voter" in res.stdout
    _wait(lambda: all(m["healthy"] for m in _status(lab, "h4")["members"]), 30, "h1 back")


# ---------------------------------------------------------------- a mesh built by the lab

@pytest.fixture(scope="module")
def mesh(request, lab_sweep):
    factory = module_factory(request)
    return factory(hosts=5, underlay="l2", backend="vxlan", containers=1,
                   extra={"store": "mesh", "dns_domain": DNS_DOMAIN})


def test_five_hosts_three_voters_two_clients_all_pairs_ping(mesh):
    lab = mesh
    st = _status(lab, "h4")
    assert st["role"] == "client" and st["store"] == "ok"
    roles = {m["name"]: m["role"] for m in st["members"]}
    assert roles == {"h1": "voter", "h2": "voter", "h3": "voter", "h4": "client", "h5": "client"}, roles
    assert sum(m["leader"] for m in st["members"]) == 1
    assert all(m["healthy"] for m in st["members"])
    assert {p["name"]: p["state"] for p in st["peers"]} == {f"h{i}": "up" for i in range(1, 6)}
    assert all(p["subnet"] and p["address"] for p in st["peers"])
    # L2 underlay: every peer is reached directly on the segment
    assert {p["name"]: p["via"]["text"] for p in st["peers"]} == {
        **{f"h{i}": "vxlan, direct on the underlay segment" for i in (1, 2, 3, 5)}, "h4": "this host"}
    assert all(p.ok for p in lab.check())
    # the joins were signed and the CRL written by the helper process: the long-running
    # `crossnet launch` processes (voter h1 served the joins, client h4) never load
    # `cryptography` (~8 MB of the RSS budget, docs/mesh.md "Resources"); nor pydantic
    # (~9 MB): their agents' network config was validated in crossnet.netconfig's helper
    for h in ("h1", "h4"):
        pid = int((Path(lab.plan.host(h).state_dir) / "mesh" / "launch.pid").read_text())
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "cryptography" not in maps and "pydantic" not in maps, h
    # h1 started alone; as h2 and h3 became voters its agent was handed their endpoints
    # and kept running (a restart took its API socket away: `crossnet attach` failed)
    log1 = Path(lab.plan.host("h1").state_dir) / "mesh" / "launch.log"
    _wait(lambda: "etcd endpoints changed: the agent uses" in log1.read_text(), 30, "h1's agent given new endpoints")
    assert log1.read_text().count("agent started on") == 1, log1.read_text()[-2000:]
    # launch again: says so, changes nothing
    pid = (Path(lab.plan.host("h2").state_dir) / "mesh" / "launch.pid").read_text()
    res = _launch(lab, "h2")
    assert "already running" in res.stdout and "nothing changed" in res.stdout
    assert (Path(lab.plan.host("h2").state_dir) / "mesh" / "launch.pid").read_text() == pid


def test_launch_dns_domain_answers_on_every_host(mesh):
    """`crossnet launch --dns-domain` (h1 created the mesh with it): every host's agent
    answers NAME.<domain> for a container of another host, on its own gateway (real
    queries from each host's container); the default domain is not crossnet's then."""
    from crossnet.dns.resolv import served as dns_served
    from crossnet.state import StateDir
    from tests.e2e.test_dns import QUERY

    lab = mesh
    web = lab.plan.host("h5").containers[0]
    att = json.loads(lab.crossnet("h5", "attach", web, "--name", "web", "-o", "json").stdout)
    for h in lab.plan.hosts:
        served = dns_served(StateDir(h.state_dir))  # <state-dir>/dns.json: this host's DNS
        assert served["domain"] == DNS_DOMAIN
        gw = served["listen"][0]

        def answers(name, h=h, gw=gw) -> list[str]:
            out = subprocess.run(["ip", "netns", "exec", h.containers[0], sys.executable, "-c", QUERY, name, "A",
                                  gw, "udp"], capture_output=True, text=True, timeout=30, check=False)
            assert out.returncode == 0, out.stderr[-500:]
            return json.loads(out.stdout)["answers"]

        _wait(lambda answers=answers: answers(f"web.{DNS_DOMAIN}") == [att["address"]], 15, f"web on {h.name}")


def _pair_ok(lab, src, dst) -> bool:
    ip = next(p for p in lab.check() if p.src.endswith(src) and p.dst.endswith(dst))
    return ip.ok


def test_quorum_loss_keeps_the_data_plane_and_recovers(mesh):
    """Two voters of three killed (SIGKILL: etcd member and launch process): h1 keeps
    running and comes back to `ok` by itself once the killed voters are launched again."""
    lab = mesh
    h1_pid = (Path(lab.plan.host("h1").state_dir) / "mesh" / "launch.pid").read_text()
    for h in ("h2", "h3"):
        _kill(lab, h)
    st = _wait(lambda: (s := _status(lab, "h1"))["store"].startswith("store unavailable") and s, 20, "quorum lost")
    assert st["store"] == "store unavailable: quorum lost (1/3 voters)", st["store"]
    text = lab.crossnet("h1", "status").stdout
    assert "store unavailable: quorum lost (1/3 voters)" in text
    # data plane kept everywhere: every pair still pings (the stopped hosts included)
    assert all(p.ok for p in lab.check())
    for h in ("h2", "h3"):
        lab.crossnet(h, "launch", timeout=120)  # no arguments: the state dir says who it is
    _wait(lambda: _status(lab, "h1")["store"] == "ok", 60, "store back")
    _wait(lambda: {p["state"] for p in _status(lab, "h4")["peers"]} == {"up"}, 60, "every peer up")
    assert all(m["healthy"] for m in _status(lab, "h1")["members"])
    assert all(p.ok for p in lab.check())
    assert (Path(lab.plan.host("h1").state_dir) / "mesh" / "launch.pid").read_text() == h1_pid  # no restart


def _routes(lab, host) -> str:
    return lab.run(host, ["ip", "route", "show"], check=True).stdout


def _fdb_neigh(lab, host) -> str:
    return (lab.run(host, ["bridge", "fdb", "show"], check=True).stdout
            + lab.run(host, ["ip", "neigh", "show"], check=True).stdout)


def test_forget_removes_the_host_everywhere_and_promotes_the_client(mesh):
    lab = mesh
    gone = next(p for p in _status(lab, "h1")["peers"] if p["name"] == "h3")
    vtep_mac = lab.run("h3", ["ip", "-o", "link", "show", "type", "vxlan"], check=True).stdout.split("link/ether ")[1][:17]
    lab.crossnet("h3", "stop")
    # positive control: the peers' vxlan FDB and neighbour tables name h3 (address, VTEP MAC)
    assert f"dst {gone['address']} " in _fdb_neigh(lab, "h1") and vtep_mac in _fdb_neigh(lab, "h1")
    res = lab.crossnet("h1", "forget", "h3")
    assert "etcd member" in res.stdout and "subnet" in res.stdout
    for h in ("h1", "h2", "h4", "h5"):
        _wait(lambda h=h: gone["subnet"] not in _routes(lab, h), 20, f"{h}: route to h3 removed")
        _wait(lambda h=h: f"dst {gone['address']} " not in (t := _fdb_neigh(lab, h)) and vtep_mac not in t, 20,
              f"{h}: vxlan FDB/neighbour entries of h3 removed")
    # h4 (the live client with the smallest name) becomes a voter, h5 stays a client
    _wait(lambda: json.loads((Path(lab.plan.host("h4").state_dir) / "mesh" / "launch.json").read_text())["role"]
          == "voter", 40, "h4 promoted")
    st = _wait(lambda: (s := _status(lab, "h1"))["store"] == "ok" and len(s["members"]) == 4
               and all(m["healthy"] for m in s["members"]) and s, 40, "3 healthy voters + 1 client")
    assert {m["name"]: m["role"] for m in st["members"]} == {"h1": "voter", "h2": "voter", "h4": "voter",
                                                             "h5": "client"}
    assert "h3" not in {p["name"] for p in st["peers"]}
    assert _pair_ok(lab, "h1-c1", "h4-c1")


def _recreate_host(lab, name: str) -> None:
    """The host 'reboots': its namespace (and its containers') removed and made again,
    wired to the switch as before; the state dir is kept."""
    plan = lab.plan
    h = plan.host(name)
    from pyroute2 import IPRoute

    with IPRoute(netns=labns.netns_path(plan.fabric.netns)) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=h.fabric_ifname)[0])  # (namespace cleanup is asynchronous)
    for c in h.containers:
        labns.remove_netns(c)
    labns.remove_netns(h.netns)
    labns.create_netns(h.netns)
    with IPRoute(netns=labns.netns_path(plan.fabric.netns)) as ipr:
        ipr.link("add", ifname=h.fabric_ifname, kind="veth",
                 peer={"ifname": h.ifname, "net_ns_fd": labns.netns_path(h.netns)})
        idx = ipr.link_lookup(ifname=h.fabric_ifname)[0]
        ipr.link("set", index=idx, master=ipr.link_lookup(ifname=plan.fabric.bridge)[0])
        ipr.link("set", index=idx, state="up")
    labns._setup_host(plan, h, {})
    for c in h.containers:
        labns.create_netns(c)


def test_restart_with_the_state_dir_kept_brings_back_member_subnet_and_addresses(mesh):
    lab = mesh
    before = next(p for p in _status(lab, "h2")["peers"] if p["name"] == "h2")
    c = lab.plan.host("h2").containers[0]
    addr_before = json.loads(lab.crossnet("h2", "status", "-o", "json").stdout)["containers"][0]["address"]
    lab.crossnet("h2", "stop")
    _recreate_host(lab, "h2")
    res = lab.crossnet("h2", "launch", timeout=120)
    assert "back in the mesh as a voter" in res.stdout
    lab.crossnet("h2", "attach", c)
    st = _status(lab, "h2")
    after = next(p for p in st["peers"] if p["name"] == "h2")
    assert after["subnet"] == before["subnet"]
    assert json.loads(lab.crossnet("h2", "status", "-o", "json").stdout)["containers"][0]["address"] == addr_before
    assert sorted(m["name"] for m in st["members"]) == ["h1", "h2", "h4", "h5"]
    _wait(lambda: _status(lab, "h1")["store"] == "ok", 30, "store ok")
    pairs = [p for p in lab.check() if "h3-" not in p.src + p.dst]  # h3 was forgotten above
    assert len(pairs) == 12 and all(p.ok for p in pairs), [p for p in pairs if not p.ok]


def test_stop_release_removes_the_host_everywhere(mesh):
    lab = mesh
    gone = next(p for p in _status(lab, "h1")["peers"] if p["name"] == "h4")
    res = lab.crossnet("h4", "stop", "--release")
    assert "left the mesh" in res.stdout
    assert not (Path(lab.plan.host("h4").state_dir) / "mesh").exists()
    for h in ("h1", "h2", "h5"):
        _wait(lambda h=h: gone["subnet"] not in _routes(lab, h), 20, f"{h}: route to h4 removed")
    # a voter left: the remaining client is promoted
    st = _wait(lambda: (s := _status(lab, "h1"))["store"] == "ok"
               and [m["role"] for m in s["members"]].count("voter") == 3
               and all(m["healthy"] for m in s["members"]) and s, 40, "3 healthy voters")
    assert {m["name"]: m["role"] for m in st["members"]} == {"h1": "voter", "h2": "voter", "h5": "voter"}
    assert "h4" not in {p["name"] for p in st["peers"]}
    assert "vxlan" not in lab.run("h4", ["ip", "-o", "link"], check=True).stdout


def _etcd_pid(lab, host: str, exclude: int, missing_ok: bool = False) -> int | None:
    """The pid of the etcd member in the host's namespace (not the supervisor ``exclude``)."""
    for pid in labns.netns_pids([lab.plan.host(host).netns]).get(lab.plan.host(host).netns, []):
        if pid == exclude:
            continue
        try:
            exe = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if exe == "etcd":
            return pid
    assert missing_ok, f"no etcd in {host}"
    return None


def test_foreground_first_launch_for_systemd(lab_factory):
    """`crossnet launch --foreground` on a new host: creates the mesh, prints the join
    command, stays in the foreground (the supervisor itself); an etcd member killed alone
    is started again by it; SIGTERM stops it (data plane kept) with exit 0."""
    lab = lab_factory(hosts=2, underlay="l2", backend="vxlan", containers=0, apply=False)
    proc = subprocess.Popen(lab.argv("h1", [sys.executable, "-m", "crossnet", "launch", "--foreground",
                                            "--name", "h1"]),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "crossnet launch --token" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        token, addr = _token_line(out)
        assert addr == lab.plan.host("h1").address
        res = _launch(lab, "h1")
        assert "already running" in res.stdout
        res = _launch(lab, "h2", "--token", token, addr)
        assert "joined the mesh as a voter" in res.stdout
        st = _wait(lambda: (s := _status(lab, "h2"))["store"] == "ok" and len(s["peers"]) == 2 and s, 30, "2 peers")
        assert {p["name"]: p["state"] for p in st["peers"]} == {"h1": "up", "h2": "up"}
        # etcd dies alone: the supervisor (asleep until its next tick, woken by etcd's
        # pidfd) starts it again and h1's agent reads the store through it
        etcd = _etcd_pid(lab, "h1", exclude=proc.pid)
        os.kill(etcd, signal.SIGKILL)
        again = _wait(lambda: (p := _etcd_pid(lab, "h1", exclude=proc.pid, missing_ok=True)) not in (None, etcd) and p,
                      30, "etcd started again")
        assert proc.poll() is None and again != etcd
        _wait(lambda: _status(lab, "h1")["store"] == "ok", 30, "h1's store ok again")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        lab.crossnet("h2", "stop", check=False)
    assert rc == 0
    assert not (Path(lab.plan.host("h1").state_dir) / "mesh" / "launch.pid").exists()


def test_lab_demo_store_mesh_on_an_l3_underlay(lab_factory):
    """`crossnet lab demo --store mesh` (the CLI path, L3 underlay: hosts behind a
    router): every host launched by token, every container pair pings, lab removed."""
    from crossnet.lab.manager import lab_dir

    name = lab_factory.new_name()
    res = subprocess.run([sys.executable, "-m", "crossnet", "lab", "demo", "--store", "mesh", "--name", name,
                          "--hosts", "3", "--containers", "1", "--underlay", "l3", "-o", "json"],
                         capture_output=True, text=True, timeout=180, env=lab_factory.env, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["lab"] == name
    assert len(data["pairs"]) == 6 and all(p["ok"] for p in data["pairs"])
    assert len({h["subnet"] for h in data["hosts"]}) == 3
    assert not lab_dir(name).exists()


def test_launch_backend_auto_encrypt_all_pairs_over_wireguard_nothing_in_clear(lab_factory, tmp_path):
    """`crossnet launch --backend auto --encrypt` (the lab's mesh service types it on h1, the
    others join by token) on an L3 lab: every peer on WireGuard, every container pair
    pings, and on h2's underlay link the only UDP is WireGuard's, with no container address
    and no payload marker in clear (the mesh's own etcd/join traffic is TLS over TCP)."""
    from crossnet.lab.etcd import wait_agent_ready
    from tests.e2e.pcap import assert_nothing_in_clear, captured_while
    from tests.e2e.test_wireguard import MARKER, marker_pings

    lab = lab_factory(hosts=3, underlay="l3", backend="auto", containers=1, apply=True,
                      extra={"store": "mesh", "encrypt": True})
    cfg = json.loads(lab.crossnet("h1", "status", "-o", "json", timeout=60).stdout)
    assert cfg["backend"] == "auto"
    for h in lab.hosts:
        wait_agent_ready(h.state_dir, timeout=60)

    def on_wireguard():
        sts = lab.statuses()
        conns = {(h, c["peer"]): (c["transport"], c["state"]) for h, st in sts.items() for c in st["connections"]}
        return sts if len(conns) == 6 and set(conns.values()) == {("wireguard", "established")} else None

    sts = _wait(on_wireguard, 60, "every peer established on wireguard")
    assert all(c["encrypted"] for st in sts.values() for c in st["connections"])
    _wait(lambda: all(p.ok for p in lab.check(count=1, timeout=2)), 30, "every container pair pings")
    addrs = {h: st["containers"][0]["address"].split("/")[0] for h, st in sts.items()}
    h2 = lab.plan.host("h2")
    c1, c3 = lab.plan.host("h1").containers[0], lab.plan.host("h3").containers[0]
    frames = captured_while(h2.netns, h2.ifname, tmp_path / "h2.pcap", lambda: marker_pings([c1, c3], addrs["h2"]))
    assert_nothing_in_clear(frames, set(addrs.values()), MARKER)  # launch's WireGuard port, 51820
