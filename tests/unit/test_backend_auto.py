"""backend auto: the resources it describes per transport, its settings in the cluster
file and the store config, the prober driven by fake probe results and a fake clock, and
the connections table (crossnet.backends.auto, crossnet.transport.*)."""

from __future__ import annotations

import json
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from crossnet.backends import get_backend
from crossnet.backends.auto import probe_targets, transport_of, wg_probe_address
from crossnet.backends.base import HostContext, Peer
from crossnet.config import parse_cluster
from crossnet.errors import ConfigError
from crossnet.state import StateDir
from crossnet.store import NetworkConfig
from crossnet.transport import connections
from crossnet.transport.prober import Prober
from crossnet.transport.select import Timing
from crossnet.wg.keys import generate_private, public_of

KEY = public_of(generate_private())


def key() -> str:
    return KEY


def ctx(encrypt: bool = False, peers: list[Peer] | None = None) -> HostContext:
    return HostContext(
        cluster_name="c", backend="auto", host="h1", address=IPv4Address("10.0.1.2"), iface="eth0",
        subnet=IPv4Network("10.32.1.0/24"), network=IPv4Network("10.32.0.0/16"), gateway=IPv4Address("10.32.1.1"),
        prefixlen=24, bridge="cn0", underlay_mtu=1500, mtu=1420, masquerade=False, peers=peers or [],
        state_dir="/nonexistent", wireguard={}, auto={"encrypt": encrypt})


def peer(name="h2", transport="", with_key=True) -> Peer:
    return Peer(name, IPv4Address("10.0.2.2"), IPv4Network("10.32.2.0/24"),
                {"wireguard_key": key()} if with_key else {}, transport)


def described(res) -> list[str]:
    return [r.describe() for r in res]


def subnet_route(res) -> str:
    return next(d for d in described(res) if d.startswith("ip route replace 10.32.2.0/24"))


def test_each_transport_routes_the_peer_subnet_its_own_way_and_keeps_every_probe_path():
    b, c = get_backend("auto"), ctx()
    assert subnet_route(b.peer_resources(c, peer(transport="direct"))) == "ip route replace 10.32.2.0/24 via 10.0.2.2 dev eth0 proto 151"
    assert subnet_route(b.peer_resources(c, peer(transport="vxlan"))) == \
        "ip route replace 10.32.2.0/24 via 10.32.2.0 dev cnvx1 onlink proto 151"
    assert subnet_route(b.peer_resources(c, peer(transport="wireguard"))) == "ip route replace 10.32.2.0/24 dev cnwg0 proto 151"
    for t in ("direct", "vxlan", "wireguard"):
        d = described(b.peer_resources(c, peer(transport=t)))
        assert "ip route replace 10.32.2.0/32 dev cnvx1 proto 151" in d  # the vxlan probe path
        assert f"ip route replace {wg_probe_address(c, IPv4Network('10.32.2.0/24'))}/32 dev cnwg0 proto 151" in d
        assert sum(x.startswith("ip route replace 10.32.2.0/24") for x in d) == 1


def test_no_key_no_wireguard_and_unknown_choice_falls_to_vxlan():
    b, c = get_backend("auto"), ctx()
    d = described(b.peer_resources(c, peer(transport="wireguard", with_key=False)))
    assert not any("cnwg0" in x for x in d) and subnet_route(b.peer_resources(c, peer(with_key=False))).endswith("onlink proto 151")
    assert transport_of(c, peer(transport="bogus")) == "vxlan"


def test_encrypt_has_no_vxlan_and_routes_the_network_into_wireguard():
    b, c = get_backend("auto"), ctx(encrypt=True)
    local = described(b.local_resources(c))
    assert not any("cnvx" in x for x in local)
    assert "ip route replace 10.32.0.0/16 dev cnwg0 proto 151" in local
    p = peer(transport="vxlan")  # a recorded choice that encrypt no longer allows
    assert subnet_route(b.peer_resources(c, p)) == "ip route replace 10.32.2.0/24 dev cnwg0 proto 151"
    assert not any("cnvx" in x for x in described(b.peer_resources(c, p)))


def test_probe_addresses_are_per_host_and_per_transport():
    c = ctx()
    t = probe_targets(c, peer())
    assert t["direct"] == ("10.0.1.2", "10.0.2.2")
    assert t["vxlan"] == ("10.32.1.0", "10.32.2.0")
    assert t["wireguard"] == ("198.18.0.2", "198.18.0.3")  # subnet index + 1 in 198.18.0.0/15


def test_transport_survives_the_applied_record():
    c = ctx(peers=[peer(transport="wireguard")])
    again = HostContext.from_json(json.loads(json.dumps(c.to_json())))
    assert again.peers[0].transport == "wireguard" and again.auto == {"encrypt": False}


def cluster(**auto) -> dict:
    return {"backend": "auto", "network": "10.32.0.0/16", "auto": auto,
            "hosts": [{"name": "h1", "address": "10.0.1.2", "wireguard_key": key()}]}


def test_cluster_file_auto_section():
    c = parse_cluster(cluster(encrypt=True))
    assert c.auto.encrypt is True and str(c.auto.probe_network) == "198.18.0.0/15"
    with pytest.raises(ConfigError, match=r"auto\.probe_network: 10\.32\.0\.0/24 overlaps network 10\.32\.0\.0/16"):
        parse_cluster(cluster(probe_network="10.32.0.0/24"))
    with pytest.raises(ConfigError, match=r"auto\.probe_network: 198\.18\.0\.0/30 is too small"):
        parse_cluster(cluster(probe_network="198.18.0.0/30"))
    with pytest.raises(ConfigError, match=r"auto\.nope: unknown key"):
        parse_cluster(cluster(nope=1))


def test_store_config_auto_section():
    cfg = NetworkConfig(network="10.32.0.0/16", backend="auto", auto={"encrypt": True})
    assert cfg.to_json()["auto"] == {"encrypt": True}
    assert NetworkConfig.from_json(cfg.to_json()).auto.encrypt is True
    for bad, where in (({"encrypt": "maybe"}, "auto.encrypt"), ({"x": 1}, "auto.x"),
                       ({"probe_network": "10.32.5.0/24"}, "auto.probe_network")):
        with pytest.raises(ConfigError, match=rf"config: {where}: "):
            NetworkConfig(network="10.32.0.0/16", backend="auto", auto=bad)


# ---- prober: fake probe results, fake clock ------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_prober_switches_a_peer_once_logs_and_counts(tmp_path, caplog):
    clock, notified, blocked = FakeClock(), [], {"10.32.2.0"}
    sent = []

    def echo(dst, size, *, timeout, df=True, netns=None, src=None):
        sent.append((dst, size, df, src))
        return None if dst in blocked else 0.0005

    c = ctx()
    p = Prober(tmp_path, lambda: c, lambda: [IPv4Network("10.0.1.0/24")], notified.append, threading.Event(),
               Timing(), echo=echo, clock=clock)
    pe = p.annotate(peer())
    assert pe.transport == "vxlan"  # not on a connected subnet: vxlan first
    for _ in range(8):
        p.round()
        clock.t += 0.5
    assert notified == [IPv4Network("10.32.2.0/24")] and p.switches == 1
    assert p.annotate(peer()).transport == "wireguard"
    assert {(d, s, df) for d, s, df, _ in sent} >= {("10.32.2.0", 1420, True), ("198.18.0.3", 1420, True)}
    assert [r.message for r in caplog.records if "transport" in r.message] == \
        ["peer h2: transport vxlan -> wireguard (vxlan unanswered for 2.0 s)"]
    doc = json.loads((tmp_path / "transport.json").read_text())
    assert doc["switches"] == 1 and doc["peers"]["h2"]["transport"] == "wireguard"
    # connections table from what the prober wrote
    c.peers = [peer(transport="wireguard")]
    rows = connections.rows(StateDir(tmp_path), c)
    assert rows[0]["transport"] == "wireguard" and rows[0]["encrypted"] is True
    assert rows[0]["state"] == "established" and rows[0]["rtt_ms"] == 0.5
    assert connections.text_rows(rows)[0][4] == "-"  # no path MTU measured
    # the peer goes away: forgotten
    p.live = lambda: set()
    p.round()
    assert p.selectors == {}


def test_on_link_peer_starts_direct_and_connections_without_agent(tmp_path):
    c = ctx()
    p = Prober(tmp_path, lambda: c, lambda: [IPv4Network("10.0.2.0/24")], lambda s: None, threading.Event())
    assert p.annotate(peer()).transport == "direct"
    c.peers = [peer(transport="direct")]
    rows = connections.rows(StateDir(tmp_path), c)  # no transport.json: the recorded choice, unprobed
    assert rows == [{"peer": "h2", "address": "10.0.2.2", "transport": "direct", "encrypted": False, "pmtu": None,
                     "rtt_ms": None, "state": "unprobed", "since": None}]

    # a measured path MTU (crossnet.transport.pmtu's record) fills the column
    rows = connections.rows(StateDir(tmp_path), c, {"h2": 1400})
    assert rows[0]["pmtu"] == 1400 and connections.text_rows(rows)[0][4] == "1400"


def test_lab_cluster_file_carries_encrypt():
    from crossnet.lab.topology import LabOptions, plan_lab

    plan = plan_lab(LabOptions(name="x", backend="auto", extra={"encrypt": True}), 0, "/nonexistent")
    assert plan.cluster_dict()["auto"] == {"encrypt": True}
    assert "auto" not in plan_lab(LabOptions(name="x", backend="auto"), 0, "/nonexistent").cluster_dict()


def test_lab_encrypt_needs_backend_auto():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "crossnet", "lab", "up", "--name", "zqbad", "--backend", "vxlan",
                           "--encrypt"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "crossnet: error: --encrypt: only with --backend auto, not 'vxlan'"
