"""Unit tests of the wireguard backend: keys, the UAPI protocol, the kernel path against a
fake pyroute2 WireGuard, the resources the backend describes, config/store fields."""

from __future__ import annotations

import base64
import os
import socket
import stat
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet import config
from crossnet.backends import get_backend
from crossnet.backends.base import HostContext, Peer
from crossnet.errors import ConfigError, CrossnetError
from crossnet.netlink.iproute import LinkInfo
from crossnet.plan.env import Env
from crossnet.plan.resources import Address, Resource, Route
from crossnet.store import NetworkConfig
from crossnet.wg import control, keys, uapi
from crossnet.wg.resources import WgDevice, WgPeer, kick

# RFC 7748 section 6.1: Alice's X25519 key pair
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
B64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
PEER_KEY = B64(bytes(range(32)))
PEER_KEY2 = B64(bytes(range(100, 132)))


# ---------------------------------------------------------------- keys


def test_public_key_is_x25519_of_the_private_key():
    assert keys.public_of(B64(ALICE_PRIV)) == B64(ALICE_PUB)


def test_key_file_is_0600_in_a_0700_dir_and_kept_until_rotated(tmp_path):
    pub, created = keys.ensure_key(tmp_path)
    path = keys.key_path(tmp_path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    private = path.read_text().strip()
    assert keys.check_key(private) is None and keys.public_of(private) == pub != private
    assert keys.ensure_key(tmp_path) == (pub, False)  # kept
    new, created = keys.ensure_key(tmp_path, rotate=True)
    assert created and new != pub and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_key_file_others_can_read_is_refused(tmp_path):
    keys.ensure_key(tmp_path)
    os.chmod(keys.key_path(tmp_path), 0o644)
    with pytest.raises(CrossnetError, match="readable by others"):
        keys.read_private(keys.key_path(tmp_path))


def test_missing_or_damaged_key_file(tmp_path):
    with pytest.raises(CrossnetError, match="crossnet keygen"):
        keys.read_private(tmp_path / "nope")
    assert keys.local_public(tmp_path) is None
    p = tmp_path / "k"
    p.write_text("not a key\n")
    os.chmod(p, 0o600)
    with pytest.raises(CrossnetError, match="damaged"):
        keys.read_private(p)


@given(st.binary(min_size=32, max_size=32))
def test_every_32_byte_key_is_valid_and_round_trips_hex(raw):
    k = B64(raw)
    assert keys.check_key(k) is None
    assert keys.hex_to_b64(keys.b64_to_hex(k)) == k


@given(st.binary(min_size=32, max_size=32), st.integers(1, 3))
def test_other_spellings_of_a_key_are_refused(raw, low_bits):
    # 43 base64 characters carry 258 bits: the last one's 2 low bits are padding, and
    # b64decode ignores them, so 4 strings decode to one key; only the canonical one is a key
    # (the kernel reports that one, and two records spelling one key differently are one peer)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    k = B64(raw)
    alias = k[:42] + alphabet[alphabet.index(k[42]) | low_bits] + "="
    assert alias != k and base64.b64decode(alias) == raw
    assert keys.check_key(alias) == "is not the canonical base64 of its 32 bytes (as `crossnet keygen` prints it)"


@given(st.binary(max_size=64).filter(lambda b: len(b) != 32))
def test_other_lengths_are_refused(raw):
    assert keys.check_key(B64(raw)) is not None


@pytest.mark.parametrize("bad", [None, 42, "", "x" * 44, "A" * 43 + "!", "A" * 44, PEER_KEY + "\n"])
def test_bad_keys_say_why(bad):
    assert keys.check_key(bad)


def test_validate_host_data_for_store_records():
    from crossnet.backends.wireguard import validate_host_data

    assert validate_host_data({}) is None
    assert validate_host_data({"vtep_mac": "x"}) is None
    assert validate_host_data({"wireguard_key": PEER_KEY}) is None
    assert validate_host_data({"wireguard_key": "short"}).startswith("data.wireguard_key ")


# ---------------------------------------------------------------- UAPI text protocol


def test_set_message_sends_keys_as_hex_and_replaces_allowed_ips():
    msg = uapi.set_message(
        private_key=B64(ALICE_PRIV), listen_port=51820,
        peers=[uapi.PeerConfig(PEER_KEY, "10.0.0.2:51820", ["10.32.1.0/24"], 0),
               uapi.PeerConfig(B64(ALICE_PUB), remove=True)],
    )
    assert msg.decode() == (
        "set=1\n"
        f"private_key={ALICE_PRIV.hex()}\n"
        "listen_port=51820\n"
        f"public_key={bytes(range(32)).hex()}\n"
        "endpoint=10.0.0.2:51820\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.32.1.0/24\n"
        f"public_key={ALICE_PUB.hex()}\n"
        "remove=true\n"
        "\n"
    )


def test_set_message_refuses_line_injection():
    with pytest.raises(ValueError):
        uapi.set_message(peers=[uapi.PeerConfig(PEER_KEY, "10.0.0.2:1\nprivate_key=00", [])])


GET_REPLY = (
    f"private_key={ALICE_PRIV.hex()}\n"
    "listen_port=51820\n"
    f"public_key={bytes(range(32)).hex()}\n"
    "preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
    "protocol_version=1\n"
    "endpoint=10.57.2.2:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=404\n"
    "rx_bytes=348\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.32.1.0/24\n"
    "allowed_ip=10.32.9.0/24\n"
    "errno=0\n\n"
)


def test_parse_get_turns_the_private_key_into_its_public_key():
    dev = uapi.parse_get(GET_REPLY)
    assert dev.public_key == B64(ALICE_PUB) and dev.listen_port == 51820
    p = dev.peers[PEER_KEY]
    assert (p.endpoint, p.allowed_ips, p.keepalive) == ("10.57.2.2:51820", ["10.32.1.0/24", "10.32.9.0/24"], 25)
    assert (p.rx_bytes, p.tx_bytes, p.last_handshake) == (348, 404, 1700000000.5)
    assert B64(ALICE_PRIV) not in repr(dev) and ALICE_PRIV.hex() not in repr(dev)


def test_parse_get_errors():
    with pytest.raises(CrossnetError, match="errno 19"):
        uapi.parse_get("errno=19\n\n")
    with pytest.raises(CrossnetError, match="malformed"):
        uapi.parse_get("garbage\n\n")


class FakeUapiServer:
    """A unix socket that answers like wireguard-go (get=1 / set=1), keeping state."""

    def __init__(self, path: str):
        self.path = path
        self.requests: list[str] = []
        self.state = GET_REPLY
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                text = buf.decode()
                self.requests.append(text)
                conn.sendall(self.state.encode() if text.startswith("get=1") else b"errno=0\n\n")

    def close(self):
        self.sock.close()


def test_uapi_control_over_a_socket(tmp_path):
    srv = FakeUapiServer(str(tmp_path / "wg.sock"))
    try:
        ctl = control.UapiControl(srv.path)
        assert ctl.get().peers[PEER_KEY].rx_bytes == 348
        ctl.set(listen_port=1234)
        assert srv.requests[-1] == "set=1\nlisten_port=1234\n\n"
        srv.state = "errno=0\n\n"
        assert ctl.get().peers == {}
    finally:
        srv.close()


def test_uapi_socket_missing_is_one_line(tmp_path):
    with pytest.raises(CrossnetError, match="wireguard UAPI socket"):
        uapi.get(str(tmp_path / "none.sock"))


# ---------------------------------------------------------------- kernel path (fake pyroute2.WireGuard)


class FakeWireGuard:
    """Records the calls crossnet makes on pyroute2.WireGuard; info() returns what was set."""

    calls: list = []
    devices: dict = {}

    def set(self, interface, listen_port=None, fwmark=None, private_key=None, peer=None):
        FakeWireGuard.calls.append(("set", interface, {"listen_port": listen_port, "private_key": private_key,
                                                       "peer": peer}))
        d = FakeWireGuard.devices.setdefault(interface, {"peers": {}})
        if private_key is not None:
            d["priv"] = private_key
        if listen_port is not None:
            d["port"] = listen_port
        if peer is not None:
            if peer.get("remove"):
                d["peers"].pop(peer["public_key"], None)
            else:
                d["peers"][peer["public_key"]] = peer

    def info(self, interface):
        FakeWireGuard.calls.append(("info", interface))
        d = FakeWireGuard.devices[interface]
        peers = [{
            "WGPEER_A_PUBLIC_KEY": p["public_key"].encode(),
            "WGPEER_A_ENDPOINT": {"addr": p["endpoint_addr"], "port": p["endpoint_port"]},
            "WGPEER_A_ALLOWEDIPS": [{"addr": a} for a in p["allowed_ips"]],
            "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL": p["persistent_keepalive"],
            "WGPEER_A_RX_BYTES": 7, "WGPEER_A_TX_BYTES": 9,
            "WGPEER_A_LAST_HANDSHAKE_TIME": {"tv_sec": 0, "tv_nsec": 0},
        } for p in d["peers"].values()]
        return [{"WGDEVICE_A_PRIVATE_KEY": d.get("priv", "").encode() or None,
                 "WGDEVICE_A_LISTEN_PORT": d.get("port", 0), "WGDEVICE_A_PEERS": peers}]

    def close(self):
        pass


class FakeIpr:
    """The few IPRoute calls WgDevice makes; links live in FakeEnv."""

    def __init__(self, env_links: dict, refuse_wireguard: bool = False):
        self.links = env_links
        self.calls: list = []
        self.refuse = refuse_wireguard

    def link(self, cmd, **kw):
        self.calls.append((cmd, kw))
        if cmd == "add":
            if self.refuse:
                from pyroute2.netlink.exceptions import NetlinkError

                raise NetlinkError(95, "Operation not supported")
            self.links[kw["ifname"]] = LinkInfo(len(self.links) + 10, kw["ifname"], kw["kind"], 1420, None, False, None, {})
        elif cmd == "set":
            name = next(n for n, li in self.links.items() if li.index == kw["index"])
            li = self.links[name]
            self.links[name] = LinkInfo(li.index, name, li.kind, kw.get("mtu", li.mtu), None,
                                        kw.get("state") == "up" or li.up, None, {})
        elif cmd == "del":
            name = next(n for n, li in self.links.items() if li.index == kw["index"])
            del self.links[name]


class FakeEnv(Env):
    def __init__(self, refuse_wireguard: bool = False):
        self._links: dict[str, LinkInfo] = {}
        super().__init__(FakeIpr(self._links, refuse_wireguard))

    def links(self):
        return dict(self._links)

    def addresses(self, index):
        return []


@pytest.fixture
def fake_wg(monkeypatch):
    FakeWireGuard.calls, FakeWireGuard.devices = [], {}
    monkeypatch.setattr(control, "wireguard_socket", FakeWireGuard)
    return FakeWireGuard


def test_kernel_device_created_through_pyroute2_and_configured_over_genetlink(tmp_path, fake_wg):
    pub, _ = keys.ensure_key(tmp_path)
    private = keys.read_private(keys.key_path(tmp_path))
    dev = WgDevice("cnwg0", 51820, 1420, str(keys.key_path(tmp_path)), str(tmp_path / "wireguard"))
    env = FakeEnv()
    assert not dev.check(env)
    dev.ensure(env)
    assert env.ipr.calls[0] == ("add", {"ifname": "cnwg0", "kind": "wireguard"})
    assert ("set", "cnwg0", {"listen_port": 51820, "private_key": private, "peer": None}) in fake_wg.calls
    assert env.ipr.calls[-1][0] == "set" and env.ipr.calls[-1][1]["mtu"] == 1420
    assert dev.saved["impl"] == "kernel"
    env.changed("wg:cnwg0")
    assert dev.check(env)
    # a peer: one genetlink request with pyroute2's peer structure (kick first: keepalive on, then off)
    peer = WgPeer("cnwg0", str(tmp_path / "wireguard"), "h2", PEER_KEY, "10.57.2.2:51820", ["10.32.1.0/24"])
    assert not peer.check(env)
    peer.ensure(env)
    sets = [c[2]["peer"] for c in fake_wg.calls if c[0] == "set" and c[2]["peer"]]
    assert sets[-1] == {"public_key": PEER_KEY, "replace_allowed_ips": True, "allowed_ips": ["10.32.1.0/24"],
                        "persistent_keepalive": 0, "endpoint_addr": "10.57.2.2", "endpoint_port": 51820}
    assert sets[-2]["persistent_keepalive"] == 25
    assert peer.check(env)
    peer.remove(env)
    assert fake_wg.calls[-1] == ("set", "cnwg0", {"listen_port": None, "private_key": None,
                                                  "peer": {"public_key": PEER_KEY, "remove": True}})
    assert not peer.check(env)
    dev.remove(env)
    assert env.ipr.calls[-1][0] == "del" and "cnwg0" not in env.links()
    assert pub  # (the public key is all the host ever prints)


def test_an_mtu_change_sends_the_device_nothing_else(tmp_path, fake_wg):
    """ensure on a running device sends key and port only when they differ: wireguard-go
    re-opens its UDP socket on every listen_port it is sent (packets arriving meanwhile are
    lost), and `apply --probe-mtu` changing the MTU needs nothing else."""
    keys.ensure_key(tmp_path)
    path, run = str(keys.key_path(tmp_path)), str(tmp_path / "wireguard")
    env = FakeEnv()
    WgDevice("cnwg0", 51820, 1420, path, run).ensure(env)

    def sets() -> list:
        return [c for c in fake_wg.calls if c[0] == "set"]

    before = len(sets())
    env.changed("links", "wg:cnwg0")
    narrow = WgDevice("cnwg0", 51820, 1340, path, run)
    assert not narrow.check(env)
    narrow.ensure(env)
    assert len(sets()) == before and env.ipr.calls[-1][1]["mtu"] == 1340
    env.changed("links", "wg:cnwg0")
    assert narrow.check(env)
    moved = WgDevice("cnwg0", 51821, 1340, path, run)  # another port: sent (with the key)
    moved.ensure(env)
    assert sets()[before:] == [("set", "cnwg0", {"listen_port": 51821, "private_key": keys.read_private(path),
                                                 "peer": None})]
    env.changed("links", "wg:cnwg0")
    assert moved.check(env)
    fake_wg.devices["cnwg0"]["priv"] = keys.generate_private()  # another key on the device: replaced
    env.changed("wg:cnwg0")
    assert not moved.check(env)
    moved.ensure(env)
    assert sets()[-1][2]["private_key"] == keys.read_private(path)


@pytest.mark.parametrize("recorded", [False, True])
def test_a_wireguard_device_crossnet_did_not_create_is_refused_and_never_reconfigured(tmp_path, fake_wg, recorded):
    """An admin's own kernel WireGuard device named like crossnet's (cnwg0, or the
    cluster's wireguard.device) used to be taken over: its private key and listen port
    replaced by crossnet's (the admin's tunnel dead), crossnet's peers added next to the
    admin's, and the device deleted by reset. Now refused before anything changes; a device
    crossnet recorded creating is still its own to repair."""
    from crossnet.errors import ApplyError
    from crossnet.plan.reconciler import reconcile

    keys.ensure_key(tmp_path)
    admin_key = base64.b64encode(bytes(range(1, 33))).decode()
    run_dir = str(tmp_path / "wireguard")
    dev = WgDevice("cnwg0", 51820, 1420, str(keys.key_path(tmp_path)), run_dir)
    peer = WgPeer("cnwg0", run_dir, "h2", PEER_KEY, "10.57.2.2:51820", ["10.32.1.0/24"])
    env = FakeEnv()
    env._links["cnwg0"] = LinkInfo(7, "cnwg0", "wireguard", 1420, None, True, None, {})
    admin_peer = {"public_key": PEER_KEY2, "endpoint_addr": "192.0.2.9", "endpoint_port": 51999,
                  "allowed_ips": ["172.16.0.0/12"], "persistent_keepalive": 0}
    fake_wg.devices["cnwg0"] = {"priv": admin_key, "port": 51999, "peers": {PEER_KEY2: admin_peer}}
    if not recorded:
        with pytest.raises(ApplyError) as exc:
            reconcile([dev, peer], [], env)
        assert str(exc.value) == (
            "interface cnwg0 already exists and was not created by crossnet (wireguard link); crossnet does not "
            "take over or delete links it did not create: remove or rename it (or choose another "
            "`wireguard.device`, or a named network's `vni`, in the cluster file), then apply again")
        assert [c for c in fake_wg.calls if c[0] == "set"] == [] and env.ipr.calls == []
        assert fake_wg.devices["cnwg0"] == {"priv": admin_key, "port": 51999, "peers": {PEER_KEY2: admin_peer}}
        return
    reconcile([dev, peer], [WgDevice("cnwg0", 51820, 1420, str(keys.key_path(tmp_path)), run_dir)], env)
    assert fake_wg.devices["cnwg0"]["port"] == 51820 and PEER_KEY in fake_wg.devices["cnwg0"]["peers"]


def test_kernel_refusal_with_implementation_kernel_is_one_error(tmp_path, fake_wg):
    from crossnet.errors import ApplyError

    keys.ensure_key(tmp_path)
    dev = WgDevice("cnwg0", 51820, 1420, str(keys.key_path(tmp_path)), str(tmp_path / "wireguard"), impl="kernel")
    with pytest.raises(ApplyError, match="kernel refused"):
        dev.ensure(FakeEnv(refuse_wireguard=True))


def test_device_without_a_key_file_changes_nothing(tmp_path, fake_wg):
    dev = WgDevice("cnwg0", 51820, 1420, str(tmp_path / "none"), str(tmp_path / "wireguard"))
    env = FakeEnv()
    with pytest.raises(CrossnetError, match="keygen"):
        dev.ensure(env)
    assert env.ipr.calls == [] and fake_wg.calls == []


def test_peer_dict_for_pyroute2():
    assert control.peer_dict(uapi.PeerConfig(PEER_KEY, None, [], 0, remove=True)) == {
        "public_key": PEER_KEY, "remove": True}
    with pytest.raises(ValueError):
        control.peer_dict(uapi.PeerConfig("short", "10.0.0.1:1", []))


def test_kick_turns_a_keepalive_on_then_off():
    cfg = uapi.PeerConfig(PEER_KEY, "10.0.0.2:51820", ["10.32.1.0/24"], 0)
    first, last = kick(cfg)
    assert first.keepalive == 25 and last is cfg
    assert kick(uapi.PeerConfig(PEER_KEY, "x:1", [], 10)) == [uapi.PeerConfig(PEER_KEY, "x:1", [], 10)]


# ---------------------------------------------------------------- the backend's resources


def ctx(tmp_path, peers=(), **wg) -> HostContext:
    return HostContext(
        cluster_name="c", backend="wireguard", host="h1", address=IPv4Address("10.57.1.2"), iface="eth0",
        subnet=IPv4Network("10.32.0.0/24"), network=IPv4Network("10.32.0.0/16"), gateway=IPv4Address("10.32.0.1"),
        prefixlen=24, bridge="cn0", underlay_mtu=1500, mtu=1420, masquerade=False, peers=list(peers),
        state_dir=str(tmp_path), wireguard=wg,
    )


def test_backend_resources(tmp_path):
    b = get_backend("wireguard")
    assert b.overhead == 80 and not b.needs_l2
    p2 = Peer("h2", IPv4Address("10.57.2.2"), IPv4Network("10.32.1.0/24"), {"wireguard_key": PEER_KEY})
    p3 = Peer("h3", IPv4Address("10.57.3.2"), IPv4Network("10.32.2.0/24"), {})  # key not published yet
    c = ctx(tmp_path, [p2, p3], port=5555, device="wgx", keepalive=15)
    local = b.local_resources(c)
    dev = next(r for r in local if isinstance(r, WgDevice))
    assert (dev.name, dev.port, dev.mtu, dev.impl) == ("wgx", 5555, 1420, "auto")
    assert dev.key_file == str(tmp_path / "wireguard" / "private.key")
    assert Address("wgx", "10.32.0.0/32") in local
    assert Route("10.32.0.0/16", dev="wgx") in local  # unknown peers: into WireGuard (dropped), never in clear
    assert b.peer_resources(c, p3) == []
    wp, route = b.peer_resources(c, p2)
    assert (wp.public_key, wp.endpoint, wp.allowed_ips, wp.keepalive) == (PEER_KEY, "10.57.2.2:5555", ["10.32.1.0/24"], 15)
    assert route == Route("10.32.1.0/24", dev="wgx")
    assert b.tunnel_device(c) == "wgx"
    # defaults
    d = next(r for r in b.local_resources(ctx(tmp_path)) if isinstance(r, WgDevice))
    assert (d.name, d.port) == ("cnwg0", 51820)


def test_no_private_key_in_descriptions_or_the_record(tmp_path):
    b = get_backend("wireguard")
    keys.ensure_key(tmp_path)
    private = keys.read_private(keys.key_path(tmp_path))
    p2 = Peer("h2", IPv4Address("10.57.2.2"), IPv4Network("10.32.1.0/24"), {"wireguard_key": PEER_KEY})
    res = b.resources(ctx(tmp_path, [p2]))
    text = " ".join(r.describe() for r in res) + repr([r.to_json() for r in res])
    assert private not in text and base64.b64decode(private).hex() not in text
    assert "private-key " + str(keys.key_path(tmp_path)) in text
    assert [Resource.from_json(r.to_json()) for r in res] == res  # applied.json round trip


def test_local_data_creates_the_key_unless_read_only(tmp_path):
    b = get_backend("wireguard")
    assert b.local_data(str(tmp_path), create=False) == {}
    assert not keys.key_path(tmp_path).exists()
    data = b.local_data(str(tmp_path))
    assert data == {"wireguard_key": keys.local_public(tmp_path)}


# ---------------------------------------------------------------- cluster file and store config

CLUSTER = {
    "backend": "wireguard", "network": "10.32.0.0/16",
    "hosts": [{"name": "h1", "address": "10.57.1.2", "wireguard_key": PEER_KEY},
              {"name": "h2", "address": "10.57.2.2", "wireguard_key": B64(ALICE_PUB)}],
}


def test_cluster_wireguard_section_and_keys():
    c = config.parse_cluster(CLUSTER)
    assert c.wireguard.model_dump() == {"port": 51820, "device": "cnwg0", "keepalive": 0, "implementation": "auto"}
    assert c.host("h2").published_data() == {"wireguard_key": B64(ALICE_PUB)}
    c = config.parse_cluster({**CLUSTER, "wireguard": {"port": 6000, "device": "wg7", "keepalive": 25}})
    assert (c.wireguard.port, c.wireguard.device, c.wireguard.keepalive) == (6000, "wg7", 25)


@pytest.mark.parametrize("patch, field", [
    ({"hosts": [{"name": "h1", "address": "10.57.1.2", "wireguard_key": "nope"}]}, "hosts[0].wireguard_key"),
    ({"wireguard": {"port": 0}}, "wireguard.port"),
    ({"wireguard": {"implementation": "magic"}}, "wireguard.implementation"),
    ({"wireguard": {"device": "x" * 16}}, "wireguard.device"),
    ({"wireguard": {"key": "x"}}, "wireguard.key"),
])
def test_bad_wireguard_fields_name_the_field(patch, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        config.parse_cluster({**CLUSTER, **patch})


def test_network_config_carries_wireguard_settings():
    cfg = NetworkConfig(network=IPv4Network("10.32.0.0/16"), backend="wireguard", wireguard={"port": 6000})
    assert NetworkConfig.from_json(cfg.to_json()) == cfg
    assert "wireguard" not in NetworkConfig(network=IPv4Network("10.32.0.0/16")).to_json()
    with pytest.raises(ConfigError, match="wireguard.port"):
        NetworkConfig(network=IPv4Network("10.32.0.0/16"), backend="wireguard", wireguard={"port": 70000})
    with pytest.raises(ConfigError, match=r"^config: wireguard\.psk: unknown key \(allowed: port, device, keepalive, implementation\)$"):
        NetworkConfig.from_json({"network": "10.32.0.0/16", "backend": "wireguard", "wireguard": {"psk": "x"}})


def test_apply_checks_keys_of_the_cluster_file(tmp_path):
    from crossnet.host import check_local_data

    b = get_backend("wireguard")
    missing = config.parse_cluster({**CLUSTER, "hosts": [CLUSTER["hosts"][0], {"name": "h2", "address": "10.57.2.2"}]})
    with pytest.raises(ConfigError, match=r"hosts\[1\]\.wireguard_key: required for backend wireguard"):
        check_local_data(missing, "h1", b, ctx(tmp_path), create=True)
    c = config.parse_cluster(CLUSTER)
    with pytest.raises(ConfigError, match=r"hosts\[0\]\.wireguard_key: is not this host's key"):
        check_local_data(c, "h1", b, ctx(tmp_path), create=True)  # the file's key is not the local one
    mine = keys.local_public(tmp_path)
    c = config.parse_cluster({**CLUSTER, "hosts": [{**CLUSTER["hosts"][0], "wireguard_key": mine}, CLUSTER["hosts"][1]]})
    check_local_data(c, "h1", b, ctx(tmp_path), create=True)


def test_trace_counts_wireguard_transport_datagrams():
    from crossnet.trace.verify import classify_frame

    eth = bytes(12) + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 60, 0, 0, 0, 0, 64, 17, 0, 0]) + bytes([10, 57, 1, 2]) + bytes([10, 57, 2, 2])
    udp = (40000).to_bytes(2, "big") + (51820).to_bytes(2, "big") + bytes(4)
    data = bytes([4, 0, 0, 0]) + bytes(28)
    frame = eth + ip + udp + data
    assert classify_frame(frame, "10.32.0.2", "10.32.1.2", wireguard_ports=[51820]) == "wireguard"
    assert classify_frame(frame, "10.32.0.2", "10.32.1.2") is None
    handshake = eth + ip + udp + bytes([1, 0, 0, 0]) + bytes(28)
    assert classify_frame(handshake, "10.32.0.2", "10.32.1.2", wireguard_ports=[51820]) is None


def test_keygen_prints_the_public_key_only(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path), "keygen"],
                         capture_output=True, text=True, check=True)
    private = keys.read_private(keys.key_path(tmp_path))
    assert out.stdout.strip() == keys.public_of(private) and private not in out.stdout + out.stderr
    again = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path), "keygen", "-o", "json"],
                           capture_output=True, text=True, check=True)
    assert '"created": false' in again.stdout and out.stdout.strip() in again.stdout
    rot = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path), "keygen", "--rotate"],
                         capture_output=True, text=True, check=True)
    assert rot.stdout.strip() != out.stdout.strip()
    assert Path(keys.key_path(tmp_path)).read_text().strip() != private


def test_lab_cluster_file_carries_each_simulated_hosts_own_public_key(tmp_path):
    from crossnet.lab.manager import write_cluster_file
    from crossnet.lab.topology import LabOptions, plan_lab

    plan = plan_lab(LabOptions(name="wgu", hosts=3, backend="wireguard", underlay="l3"), 7, str(tmp_path / "lab"))
    write_cluster_file(plan)
    c = config.load_cluster(plan.cluster_file)
    for spec, h in zip(c.hosts, plan.hosts):
        assert spec.wireguard_key == keys.local_public(h.state_dir)  # made in that host's own state dir
        assert stat.S_IMODE(keys.key_path(h.state_dir).stat().st_mode) == 0o600
    assert len({h.wireguard_key for h in c.hosts}) == 3
    text = Path(plan.cluster_file).read_text()
    assert not [h for h in plan.hosts if keys.read_private(keys.key_path(h.state_dir)) in text]


def _apply_set(state: dict, msg: str) -> None:
    """What wireguard-go does with a `set=1` message (the subset crossnet sends), on a dict."""
    peer = None
    for line in msg.splitlines()[1:]:
        if not line:
            break
        k, _, v = line.partition("=")
        if k == "public_key":
            peer = state.setdefault(v, {"allowed": [], "endpoint": None, "ka": 0})
            cur = v
        elif k == "remove":
            state.pop(cur)
            peer = None
        elif k == "endpoint":
            peer["endpoint"] = v
        elif k == "persistent_keepalive_interval":
            peer["ka"] = int(v)
        elif k == "replace_allowed_ips":
            peer["allowed"] = []
        elif k == "allowed_ip":
            peer["allowed"].append(v)


def _get_reply(state: dict) -> str:
    out = [f"private_key={ALICE_PRIV.hex()}", "listen_port=51820"]
    for k, p in state.items():
        out += [f"public_key={k}", f"persistent_keepalive_interval={p['ka']}", "rx_bytes=0", "tx_bytes=0"]
        out += [f"endpoint={p['endpoint']}"] if p["endpoint"] else []
        out += [f"allowed_ip={a}" for a in p["allowed"]]
    return "\n".join(out + ["errno=0", "", ""])


peer_configs = st.lists(
    st.builds(
        uapi.PeerConfig,
        public_key=st.binary(min_size=32, max_size=32).map(B64),
        endpoint=st.tuples(st.integers(1, 2**32 - 2), st.integers(1, 65535)).map(
            lambda t: f"{IPv4Address(t[0])}:{t[1]}"),
        allowed_ips=st.lists(st.integers(0, 2**24 - 1).map(lambda n: f"{IPv4Address(n << 8)}/24"),
                             max_size=3, unique=True),
        keepalive=st.integers(0, 65535),
    ),
    max_size=5, unique_by=lambda p: p.public_key,
)


@given(peer_configs)
def test_what_set_sends_get_reads_back(peers):
    state: dict = {}
    _apply_set(state, uapi.set_message(peers=peers).decode())
    dev = uapi.parse_get(_get_reply(state))
    assert dev.public_key == B64(ALICE_PUB)
    assert {k: (p.endpoint, p.allowed_ips, p.keepalive) for k, p in dev.peers.items()} == {
        p.public_key: (p.endpoint, p.allowed_ips, p.keepalive) for p in peers}
    _apply_set(state, uapi.set_message(peers=[uapi.PeerConfig(p.public_key, remove=True) for p in peers]).decode())
    assert uapi.parse_get(_get_reply(state)).peers == {}


def test_etcd_init_wireguard_options_are_checked_before_contacting_etcd(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "crossnet", "--state-dir", str(tmp_path), "etcd", "init",
                          "--etcd", "http://127.0.0.1:9", "--network", "10.32.0.0/16", "--backend", "wireguard",
                          "--wireguard-port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["crossnet: error: --wireguard-port: 0 is out of range 1..65535"]
