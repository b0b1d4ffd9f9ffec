"""A container cannot reach another network through a tunnel (docs/networks.md, the tunnel rule).

A host's tunnel takes packets on every address of the host and cannot tell who sent them.
A container of network ``default`` sends a hand-made tunnel packet -- ``blue``'s VNI (GRE
key), the MAC the receiving host's blue tunnel takes, an inner datagram from one of
blue's addresses to a blue container -- to its gateway, its host's underlay address,
and the other host's gateway and underlay address. Before the isolation tables' tunnel
rule each of these reached the blue container with kernel vxlan (both datapaths; and
auto, whose peers on a routed underlay are on vxlan); with
ovs-vxlan and ovs-gre the one to the other host's underlay address did (masquerading
gives it this host's address, the source OVS's tunnel port accepts). Now none arrives,
and the sending host's ``default_tunnel`` counter counts every packet.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_networks import counters

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

BLUE = "10.33.0.0/16"
PORT = 7777  # where the blue containers listen for the injected datagram

# run in the attacker's netns: argv = tunnel (vxlan / gre), tunnel address, UDP port, vni
# (the GRE key), inner dst MAC, inner source, inner destination
INJECT = r"""
import socket, struct, sys
kind, to, port, vni, mac, src, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
payload = b"injected"
udp = struct.pack("!HHHH", 40000, LISTEN_PORT, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("02000000aa01") + b"\x08\x00"
if kind == "vxlan":
    head, s = struct.pack("!II", 0x08000000, vni << 8), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
else:  # GRE with a key, transparent Ethernet bridging
    head, s = struct.pack("!HHI", 0x2000, 0x6558, vni), socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
for _ in range(3):
    s.sendto(head + eth + ip + udp, (to, port))
""".replace("LISTEN_PORT", str(PORT))

LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", LISTEN_PORT)); s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    data, peer = s.recvfrom(2048)
    print("got", peer[0], data.decode(errors="replace"), flush=True)
except (socket.timeout, TimeoutError):
    print("nothing", flush=True)
""".replace("LISTEN_PORT", str(PORT))


@pytest.fixture(scope="module", params=["vxlan", "vxlan-ebpf", "auto", "ovs-vxlan", "ovs-gre"])
def lab(request, lab_sweep):
    from tests.conftest import LabFactory

    backend = request.param.removesuffix("-ebpf")
    factory = LabFactory.for_test(request)
    # auto: a routed underlay and no prober, so every peer is on vxlan (tests/e2e/test_networks_wg.py)
    underlay = "l3" if backend == "auto" else "l2"
    lab = factory(hosts=2, underlay=underlay, backend=backend, containers=2, apply=False)
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    # masquerading: what leaves for another host's underlay address carries this host's
    # address, the source an OVS tunnel port accepts (it matches its peer's address)
    cluster["masquerade"] = True
    cluster["networks"] = [{"name": "blue", "network": BLUE}]
    if request.param.endswith("-ebpf"):
        cluster["datapath"] = "ebpf"
    path = Path(lab.plan.cluster_file).with_name("networks.yaml")
    path.write_text(yaml.safe_dump(cluster))
    for h in lab.hosts:
        lab.crossnet(h.name, "apply", "-f", str(path), "--host", h.name)
        lab.crossnet(h.name, "attach", h.containers[0])
        lab.crossnet(h.name, "attach", h.containers[1], "--network", "blue")
    return lab


def tunnel_of(lab, host: str, blue: dict) -> dict:
    """Where blue's tunnel on ``host`` takes packets in: the kind, UDP port, VNI / key and
    the MAC an inner frame needs to be taken by the host (``blue``: status's network)."""
    if lab.plan.backend in ("vxlan", "auto"):  # a vxlan device per network
        dev = next(d["name"] for d in blue["devices"] if d["kind"] == "vxlan")
        link = json.loads(lab.run(host, ["ip", "-j", "-d", "link", "show", dev], check=True).stdout)[0]
        data = link["linkinfo"]["info_data"]
        return {"kind": "vxlan", "mac": link["address"], "vni": data["id"], "port": data["port"]}
    # OVS: the network's OVS bridge sends what its tunnels bring to the container bridge
    link = json.loads(lab.run(host, ["ip", "-j", "link", "show", blue["bridge"]], check=True).stdout)[0]
    return {"kind": lab.plan.backend.removeprefix("ovs-"), "mac": link["address"], "vni": blue["vni"], "port": 4789}


def heard(listener_ns: str, send) -> str:
    """What a listener in ``listener_ns`` got within 3 s of ``send()``: "got SOURCE TEXT" or "nothing"."""
    listen = subprocess.Popen(["ip", "netns", "exec", listener_ns, "python3", "-c", LISTEN, "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert listen.stdout.readline().strip() == "ready"
        send()
        out, _ = listen.communicate(timeout=10)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.wait()
    return out.strip()


def injected(lab, listener_ns: str, attacker_ns: str, to: str, tunnel: dict, src: str, dst: str) -> str:
    """The attacker sends a VXLAN packet for ``tunnel`` (inner: src -> dst, UDP to PORT) to ``to``."""
    argv = ["python3", "-c", INJECT, tunnel["kind"], to, str(tunnel["port"]), str(tunnel["vni"]), tunnel["mac"], src, dst]
    return heard(listener_ns, lambda: lab.run(attacker_ns, argv, check=True))


def test_tunnel_packets_from_a_container_reach_no_other_network(lab):
    h1, h2 = lab.hosts[0], lab.hosts[1]
    st1, st2 = lab.status(h1.name), lab.status(h2.name)
    blue1 = st1["networks"]["blue"]["containers"][0]["address"].split("/")[0]
    blue2 = st2["networks"]["blue"]["containers"][0]["address"].split("/")[0]
    t1, t2 = tunnel_of(lab, h1.name, st1["networks"]["blue"]), tunnel_of(lab, h2.name, st2["networks"]["blue"])
    attacker = h1.containers[0]  # network default, on h1
    before = counters(lab, h1.name).get("ip:default_tunnel")  # None: no tunnel rule
    # (the blue container, the tunnel address, its vtep, the inner source and destination)
    tries = {
        "h1's gateway": (h1.containers[1], st1["gateway"], t1, blue2, blue1),
        "h1's underlay address": (h1.containers[1], lab.plan.hosts[0].address, t1, blue2, blue1),
        "h2's gateway": (h2.containers[1], st2["gateway"], t2, blue1, blue2),
        "h2's underlay address": (h2.containers[1], lab.plan.hosts[1].address, t2, blue1, blue2),
    }
    results = {what: injected(lab, ns, attacker, to, t, src, dst) for what, (ns, to, t, src, dst) in tries.items()}
    assert results == {what: "nothing" for what in tries}
    # every try was dropped on h1, 3 packets each (on h2 nothing of it arrived)
    assert before is not None and counters(lab, h1.name)["ip:default_tunnel"] == before + 3 * len(tries)
    # the same listener hears a datagram its blue peer sends it (the probe works)
    send = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'plain', ('{blue1}', {PORT}))"
    assert heard(h1.containers[1], lambda: lab.run(h2.containers[1], ["python3", "-c", send], check=True)) \
        == f"got {blue2} plain"
