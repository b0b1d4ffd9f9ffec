"""End to end: backend wireguard (wireguard-go, the userspace path: these machines have no
kernel module) in lab namespaces with real packets.

What the underlay carries is read with tcpdump (`--immediate-mode -U -w`, stopped with
SIGINT, then parsed here: no libpcap buffering in the way); replays use AF_PACKET
sockets in the lab's namespaces. Every lab has a unique name and is removed by the
fixture's finalizer, even when a test fails. Nothing here touches the root namespace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import Lab
from crossnet.netlink.ns import socket_in_netns
from tests.e2e.pcap import Capture, ipv4

from .agentlab import wait_for
from .test_foundation import container_addr, host, tcp_transfer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

WG_PORT = 51820
MARKER = b"CROSSNET-CLEARTEXT-MARKER-7f3a9c"


def ns_python(netns: str, code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def ping(netns: str, addr: str, count: int = 3, pattern: str | None = None) -> int:
    """Echo replies received."""
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", addr]
    if pattern:
        argv[-1:-1] = ["-p", pattern]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def marker_pings(sources: list[str], addr: str, count: int = 3) -> None:
    """`count` echoes carrying MARKER from every source namespace to `addr`, all answered."""
    for src in sources:
        assert ping(src, addr, count, pattern=MARKER[:16].hex()) == count, src


def link_stats(netns: str, ifname: str) -> tuple[int, int]:
    """(rx_packets, tx_packets) of ifname in netns."""
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", ifname], capture_output=True, text=True)
    if out.returncode != 0:
        return (-1, -1)
    s = json.loads(out.stdout)[0]["stats64"]
    return s["rx"]["packets"], s["tx"]["packets"]


def wg_pid(h) -> int | None:
    try:
        return int(Path(h.state_dir, "wireguard", "cnwg0.pid").read_text().split()[0])
    except (OSError, ValueError):
        return None


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def comm(pid: int | None) -> str:
    """The command name of a live process ("" when gone or a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, TypeError):
        return ""
    if stat[stat.rfind(")") + 2] in "ZX":
        return ""
    return stat[stat.index("(") + 1:stat.rfind(")")]


def all_pairs_ok(lab: Lab, settle: float = 12.0) -> None:
    """Every container pair pings. A pair may need one WireGuard handshake retry first:
    a host that initiates before its peer's wireguard-go runs (lab hosts are applied one
    after the other) retries after WireGuard's REKEY_TIMEOUT of 5 s, so the check is
    repeated for up to ``settle`` seconds (a loaded machine can miss the first retry)."""
    deadline = time.monotonic() + settle
    while True:
        pairs = lab.check(count=3)
        if (pairs and all(p.ok for p in pairs)) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    assert pairs and all(p.ok for p in pairs), [p for p in pairs if not p.ok]


def addresses(lab: Lab) -> dict[str, tuple[str, list[str]]]:
    return {h: (st["subnet"], sorted(c["address"] for c in st["containers"])) for h, st in lab.statuses().items()}


# ---- pcap -------------------------------------------------------------------------------------
TCP_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(30)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(30); got = b""
while True:
    d = c.recv(65536)
    if not d: break
    got += d
print(got.count(sys.argv[2].encode()), flush=True)
"""

TCP_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(sys.argv[3].encode() * 50); c.close()
"""


@pytest.mark.parametrize("underlay", ["l2", "l3"])
def test_all_pairs_tcp_trace_and_only_wireguard_on_the_underlay(make_lab, underlay, tmp_path):
    lab = make_lab(hosts=3, underlay=underlay, backend="wireguard", containers=1)
    all_pairs_ok(lab)
    st = lab.status("h1")
    assert st["backend"] == "wireguard" and st["mtu"] == 1500 - 80 and not st["drift"]
    assert st["wireguard"]["running"] and st["wireguard"]["implementation"] == "userspace"
    assert all(p["programmed"] for p in st["peers"]) and len(st["wireguard"]["peers"]) == 2
    h1, h2, h3 = (host(lab, n) for n in ("h1", "h2", "h3"))
    c1, c2, c3 = h1.containers[0], h2.containers[0], h3.containers[0]
    a1, a2, a3 = (container_addr(lab, h.name, c) for h, c in ((h1, c1), (h2, c2), (h3, c3)))
    link = json.loads(subprocess.run(["ip", "-n", c1, "-j", "link", "show", "eth0"], capture_output=True,
                                     text=True).stdout)[0]
    assert link["mtu"] == 1420

    # what h2's underlay NIC carries while containers talk to h2 (ICMP with a marker, TCP with a marker)
    cap = Capture(h2.netns, h2.ifname, tmp_path / "h2.pcap")
    try:
        srv = ns_python(c2, TCP_SERVER, "5301", MARKER.decode())
        assert srv.stdout.readline().strip() == "ready"
        assert ping(c1, a2, 3, pattern=MARKER[:16].hex()) == 3
        assert ping(c3, a2, 3, pattern=MARKER[:16].hex()) == 3
        cli = ns_python(c1, TCP_CLIENT, a2, "5301", MARKER.decode())
        assert cli.wait(timeout=30) == 0, cli.stderr.read()
        out, err = srv.communicate(timeout=30)
        assert out.strip() == "50", err  # the marker really crossed, 50 times
    finally:
        frames = cap.stop()
    underlay_addrs = {h.address for h in lab.hosts}
    wg = [f for f in frames if (ip := ipv4(f)) and ip[0] == 17 and WG_PORT in (ip[3], ip[4])]
    assert len(wg) >= 12, f"only {len(wg)} WireGuard datagrams captured"
    for f in frames:
        ip = ipv4(f)
        if ip is not None:
            proto, src, dst, sport, dport = ip
            assert proto == 17 and WG_PORT in (sport, dport), f"non-WireGuard IPv4 on the underlay: {ip}"
            if underlay == "l2":
                assert {src, dst} <= underlay_addrs, ip
            assert not {src, dst} & {a1, a2, a3}, ip
        assert MARKER not in f and MARKER[:16] not in f, "payload marker in clear on the underlay"

    # real TCP throughput through the tunnel
    assert tcp_transfer(c1, c3, a3) > 1e6

    # trace --verify names the transport and shows the WireGuard counters
    proc = subprocess.run([sys.executable, "-m", "crossnet", "lab", "trace", "--name", lab.name, c1, c3,
                           "--verify", "--count", "5", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["transport"] == "wireguard" and res["verified"] and res["tunnel"] == "cnwg0"
    enc = [h for h in res["hops"] if h["kind"] == "wireguard" and h["host"] == "h1"]
    assert enc and enc[0]["extra"]["peer"] == "h3" and enc[0]["extra"]["tx_bytes_delta"] >= 5 * 84
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", enc[0]["extra"]["last_handshake"])  # RFC 3339 UTC
    nic = next(h for h in res["hops"] if h["kind"] == "nic" and h["host"] == "h1")
    assert nic["capture"]["wireguard"] >= 5 and nic["capture"]["plain"] == 0


def test_replayed_datagram_delivers_nothing(make_lab):
    lab = make_lab(hosts=2, underlay="l2", backend="wireguard", containers=1)
    all_pairs_ok(lab)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    c1, c2 = h1.containers[0], h2.containers[0]
    a1 = container_addr(lab, "h1", c1)
    # capture WireGuard transport datagrams arriving at h1 while h2's container pings h1's
    tap = socket_in_netns(h1.netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    tap.bind((h1.ifname, 0x0003))
    tap.settimeout(0.2)
    pinger = subprocess.Popen(["ip", "netns", "exec", c2, "ping", "-n", "-q", "-c", "3", "-i", "0.2", a1],
                              stdout=subprocess.DEVNULL)
    captured = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(captured) < 3:
        try:
            frame, addr = tap.recvfrom(65535)
        except TimeoutError:
            continue
        ip = ipv4(frame)
        if addr[2] != 4 and ip and ip[0] == 17 and ip[4] == WG_PORT and frame[14 + 28] == 4:
            captured.append(frame)  # incoming, WireGuard message type 4 (transport data)
    pinger.wait(timeout=10)
    tap.close()
    assert captured, "no WireGuard datagram captured"
    time.sleep(0.5)
    a2 = container_addr(lab, "h2", c2)
    seen = socket_in_netns(c1, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # what c1 receives
    seen.bind(("eth0", 0x0003))
    seen.setblocking(False)
    nic0, wg0 = link_stats(h1.netns, h1.ifname), link_stats(h1.netns, "cnwg0")
    # replay: the same frames again onto the wire, from h2's side of the LAN
    out = socket_in_netns(h2.netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    out.bind((h2.ifname, 0))
    for _ in range(3):
        for f in captured:
            out.send(f)
    out.close()
    time.sleep(1.0)
    nic1, wg1 = link_stats(h1.netns, h1.ifname), link_stats(h1.netns, "cnwg0")
    from_c2 = 0
    while True:
        try:
            frame, addr = seen.recvfrom(65535)
        except BlockingIOError:
            break
        ip = ipv4(frame)
        from_c2 += addr[2] != 4 and ip is not None and ip[1] == a2
    seen.close()
    assert nic1[0] - nic0[0] >= 3 * len(captured), "the replayed frames did not reach h1"
    assert wg1[0] == wg0[0], "a replayed datagram was decrypted and delivered"
    assert from_c2 == 0, "the container received packets of the replay"
    # control: fresh traffic does come out of the device
    assert ping(c2, a1, 2) == 2
    assert link_stats(h1.netns, "cnwg0")[0] >= wg1[0] + 2


def test_wrong_key_delivers_nothing_and_rotation_keeps_addresses(make_lab, tmp_path):
    lab = make_lab(hosts=3, underlay="l2", backend="wireguard", containers=1)
    all_pairs_ok(lab)
    before = addresses(lab)
    h1, h3 = host(lab, "h1"), host(lab, "h3")
    c1, c3 = h1.containers[0], h3.containers[0]
    a1 = container_addr(lab, "h1", c1)
    # h3 takes a new key; only its own copy of the cluster file knows it
    new = lab.crossnet("h3", "keygen", "--rotate").stdout.strip()
    doc = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    old = doc["hosts"][2]["wireguard_key"]
    assert new != old
    doc["hosts"][2]["wireguard_key"] = new
    mine = tmp_path / "h3.yaml"
    mine.write_text(yaml.safe_dump(doc))
    # apply with the shared (now wrong) file is refused, naming the field, and changes nothing
    bad = lab.crossnet("h3", "apply", "-f", lab.plan.cluster_file, "--host", "h3", check=False)
    assert bad.returncode == 2 and "hosts[2].wireguard_key: is not this host's key" in bad.stderr
    lab.crossnet("h3", "apply", "-f", str(mine), "--host", "h3")
    wg0 = link_stats(h1.netns, "cnwg0")
    assert ping(c3, a1, 5) == 0
    assert link_stats(h1.netns, "cnwg0")[0] == wg0[0], "h1 decrypted packets from a host with a wrong key"
    assert ping(c1, container_addr(lab, "h3", c3), 3) == 0
    # finish the rotation: every host gets the new key; addresses stay, traffic flows again
    Path(lab.plan.cluster_file).write_text(yaml.safe_dump(doc))
    for h in ("h1", "h2", "h3"):
        lab.apply(h)
    wait_for(lambda: ping(c3, a1, 1) == 1, 10, "h3 -> h1 after the rotation")
    all_pairs_ok(lab)
    assert addresses(lab) == before


def test_wireguard_go_killed_reapply_repairs_and_reset_leaves_nothing(make_lab):
    lab = make_lab(hosts=3, underlay="l3", backend="wireguard", containers=1)
    all_pairs_ok(lab)
    before = addresses(lab)
    h2 = host(lab, "h2")
    pid = wg_pid(h2)
    assert pid and comm(pid) == "wireguard-go" and pid in netns_pids(h2.netns)
    # the UAPI socket is private to wireguard-go's mount namespace, not the machine's /run/wireguard
    assert os.path.exists(f"/proc/{pid}/root/run/wireguard/cnwg0.sock")
    assert not os.path.exists("/run/wireguard/cnwg0.sock")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: comm(pid) != "wireguard-go", 5, "wireguard-go to die")
    st = lab.status("h2")
    assert st["drift"] and not st["wireguard"]["running"]
    out = lab.crossnet("h2", "apply", "-f", lab.plan.cluster_file, "--host", "h2").stdout
    assert "repair" in out
    new = wg_pid(h2)
    assert new and new != pid and comm(new) == "wireguard-go"
    all_pairs_ok(lab)
    assert addresses(lab) == before
    assert not lab.status("h2")["drift"]
    # reset: no device, no process, no socket, no pidfile (the key stays: the host's identity)
    lab.crossnet("h2", "reset")
    assert subprocess.run(["ip", "-n", h2.netns, "link", "show", "cnwg0"], capture_output=True).returncode != 0
    assert comm(new) != "wireguard-go" and not [p for p in netns_pids(h2.netns) if comm(p) == "wireguard-go"]
    assert not os.path.exists(f"/proc/{new}/root/run/wireguard/cnwg0.sock")
    assert not Path(h2.state_dir, "wireguard", "cnwg0.pid").exists()
    assert Path(h2.state_dir, "wireguard", "private.key").exists()


FLOW_SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5302)); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
while True:
    d = c.recv(4096)
    if not d: break
    c.sendall(d)
"""

FLOW_CLIENT = r"""
import socket, sys, time, json
c = socket.create_connection((sys.argv[1], 5302), timeout=5)
c.settimeout(30)  # TCP retransmits through an outage; only a broken connection fails
end = time.monotonic() + float(sys.argv[2]); last = time.monotonic(); gap = 0.0; n = 0
while time.monotonic() < end:
    c.sendall(b"x" * 64); got = b""
    while len(got) < 64:
        d = c.recv(64 - len(got))
        if not d: raise SystemExit("connection closed")
        got += d
    now = time.monotonic(); gap = max(gap, now - last); last = now; n += 1
    time.sleep(0.05)
c.close(); print(json.dumps({"max_gap": gap, "round_trips": n}), flush=True)
"""


def test_agent_restarts_wireguard_go_and_rotation_keeps_a_tcp_flow(make_lab):
    lab = make_lab(hosts=3, underlay="l3", backend="wireguard", containers=1, extra={"store": "etcd"})
    all_pairs_ok(lab)
    before = addresses(lab)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    c1, c2 = h1.containers[0], h2.containers[0]
    srv = ns_python(c2, FLOW_SERVER)
    assert srv.stdout.readline().strip() == "ready"
    cli = ns_python(c1, FLOW_CLIENT, container_addr(lab, "h2", c2), "14")
    try:
        time.sleep(2)
        pid = wg_pid(h2)
        os.kill(pid, signal.SIGKILL)  # the agent notices within a second and starts it again
        wait_for(lambda: (wg_pid(h2) or pid) != pid and comm(wg_pid(h2)) == "wireguard-go", 10,
                 "the agent to restart wireguard-go")
        time.sleep(3)
        old_key = lab.status("h2")["wireguard"]["peers"]
        new_key = lab.crossnet("h1", "keygen", "--rotate").stdout.strip()
        wait_for(lambda: new_key in [p["public_key"] for p in lab.status("h2")["wireguard"]["peers"]], 10,
                 "h2 to learn h1's new key through etcd")
        assert new_key not in [p["public_key"] for p in old_key]
        out, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
        srv.kill()
    assert cli.returncode == 0, err[-1000:]
    flow = json.loads(out)
    # the established connection survived both; the longest stall stays within one handshake
    # (REKEY_TIMEOUT 5 s) plus the agent's 1 s check
    assert flow["round_trips"] > 50 and flow["max_gap"] < 6.0, flow
    assert lab.status("h1")["wireguard"]["public_key"] == new_key
    all_pairs_ok(lab)
    assert addresses(lab) == before


def test_a_wireguard_go_device_crossnet_did_not_start_is_refused_and_left_alone(make_lab):
    """An admin's own wireguard-go named cnwg0 (its socket in its own /run, its own key,
    port and peer) on h1: apply and apply --dry-run refuse with one line naming it before
    anything changes (before: refused only when the device's turn came, after the rest of
    the plan had run), its configuration untouched, and reset leaves it running."""
    from crossnet.wg import uapi

    lab = make_lab(hosts=2, underlay="l2", backend="wireguard", containers=0, apply=False)
    h1 = host(lab, "h1")
    admin = subprocess.Popen(
        ["ip", "netns", "exec", h1.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs admin-wg /run && exec wireguard-go -f cnwg0'],
        env={"PATH": os.environ["PATH"], "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = f"/proc/{admin.pid}/root/run/wireguard/cnwg0.sock"
        wait_for(lambda: os.path.exists(sock), 5, "the admin's wireguard-go socket")
        admin_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
        peer = uapi.PeerConfig("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "192.0.2.9:51999", ["172.16.0.0/12"])
        uapi.set_(sock, uapi.set_message(private_key=admin_key, listen_port=51999, peers=[peer]))

        def config() -> tuple:
            st = uapi.get(sock)
            return st.public_key, st.listen_port, {k: (p.endpoint, p.allowed_ips) for k, p in st.peers.items()}

        def footprint() -> tuple[str, ...]:
            return tuple(subprocess.run(["ip", "-n", h1.netns, *cmd], capture_output=True, text=True,
                                        check=True).stdout for cmd in (["-o", "link"], ["-o", "-4", "addr"], ["route"]))

        before_wg, before_host = config(), footprint()
        assert before_wg[2] == {peer.public_key: ("192.0.2.9:51999", ["172.16.0.0/12"])}
        for extra in ((), ("--dry-run",)):
            proc = lab.crossnet("h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", *extra, check=False)
            assert proc.returncode == 1, (extra, proc.stdout, proc.stderr)
            assert proc.stderr.strip() == (
                "crossnet: error: interface cnwg0 already exists and was not created by crossnet (tun link); "
                "crossnet does not take over or delete links it did not create: remove or rename it (or choose "
                "another `wireguard.device`, or a named network's `vni`, in the cluster file), then apply again"), \
                (extra, proc.stderr)
            assert config() == before_wg and footprint() == before_host, extra
        lab.crossnet("h1", "reset")
        assert admin.poll() is None and config() == before_wg and footprint() == before_host
    finally:
        admin.terminate()
        admin.wait(timeout=10)
