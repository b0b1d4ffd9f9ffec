"""crossnet docker-plugin's protocol handlers (crossnet.runtime.dockerplugin) with a fake
kernel and a real AddressPool in a temp dir: no Docker, no netlink."""

from __future__ import annotations

import ipaddress
import json
import threading
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossnet.errors import CrossnetError
from crossnet.ipam import AddressPool
from crossnet.runtime.dockerplugin import DockerPlugin
from tests.unit import planted

SUBNET = ipaddress.ip_network("10.32.1.0/24")
GW = ipaddress.ip_address("10.32.1.1")
POOL_ID = "crossnet/10.32.1.0/24"
NID = "a" * 64
EID = "b" * 64


class FakeKernel:
    def __init__(self):
        self.veths: dict[str, tuple[str, str]] = {}
        self.retired: set[str] = set()
        self.calls: list[tuple] = []

    def create_routed_veth(self, ctx, host_if, peer, mac, address):
        self.calls.append(("create-routed", host_if, peer, mac, address))
        self.veths[host_if] = (peer, mac)

    def create_veth(self, ctx, backend, host_if, peer, mac):
        self.calls.append(("create", host_if, peer, mac))
        self.veths[host_if] = (peer, mac)

    def delete_veth(self, ctx, backend, host_if):
        self.calls.append(("delete", host_if))
        return self.veths.pop(host_if, None) is not None

    def retire_veth(self, ctx, backend, host_if):  # as NetlinkKernel: routed veths go at once
        if getattr(ctx, "datapath", None) == "ebpf":
            self.delete_veth(ctx, backend, host_if)
            return None
        self.calls.append(("retire", host_if))
        if host_if not in self.veths:
            return None
        self.retired.add(host_if)
        return host_if

    def reap_veth(self, token):
        self.calls.append(("reap", token))
        self.retired.discard(token)
        self.veths.pop(token, None)


@pytest.fixture
def env(tmp_path):
    ctx = SimpleNamespace(subnet=SUBNET, gateway=GW, bridge="cn0", mtu=1450, backend="vxlan")
    pool = AddressPool(tmp_path / "ipam.json", SUBNET, reserved={GW})
    state = {"ready": True}

    def context():
        if not state["ready"]:
            raise CrossnetError("this host is not configured yet (no applied.json); run `crossnet apply` first")
        return ctx, None, pool

    kernel = FakeKernel()
    plugin = DockerPlugin(context, kernel, str(tmp_path / "docker-networks.json"))
    return SimpleNamespace(plugin=plugin, pool=pool, kernel=kernel, state=state, tmp=tmp_path)


def call(plugin, path, body=None, raw=None):
    status, answer = plugin.handle(path, raw if raw is not None else json.dumps(body or {}).encode())
    assert status == 200
    return answer


def make_network(plugin):
    assert call(plugin, "/IpamDriver.RequestPool", {"AddressSpace": "crossnet", "Pool": str(SUBNET)}) == \
        {"PoolID": POOL_ID, "Pool": str(SUBNET), "Data": {}}
    gw = call(plugin, "/IpamDriver.RequestAddress",
              {"PoolID": POOL_ID, "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert gw == {"Address": "10.32.1.1/24", "Data": {}}
    assert call(plugin, "/NetworkDriver.CreateNetwork",
                {"NetworkID": NID, "IPv4Data": [{"AddressSpace": "crossnet", "Pool": str(SUBNET),
                                                 "Gateway": "10.32.1.1/24"}]}) == {}


def test_activate_and_capabilities(env):
    assert call(env.plugin, "/Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert call(env.plugin, "/NetworkDriver.GetCapabilities")["Scope"] == "local"
    assert call(env.plugin, "/IpamDriver.GetDefaultAddressSpaces")["LocalDefaultAddressSpace"] == "crossnet"
    assert call(env.plugin, "/IpamDriver.GetCapabilities") == {"RequiresMACAddress": False,
                                                                "RequiresRequestReplay": False}


def test_full_lifecycle_shares_ipam_and_is_idempotent(env):
    p = env.plugin
    env.pool.allocate("some-attached-container")  # `crossnet attach` took 10.32.1.2
    make_network(p)
    make_network(p)  # idempotent
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": {}})["Address"]
    assert addr == "10.32.1.3/24"  # the shared pool: not the attached container's address
    ep = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr, "MacAddress": ""}}
    first = call(p, "/NetworkDriver.CreateEndpoint", ep)
    assert first["Interface"]["MacAddress"].startswith("0a:58:")
    assert call(p, "/NetworkDriver.CreateEndpoint", ep) == first  # retried: same answer
    join = call(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
    assert join["Gateway"] == "10.32.1.1" and join["InterfaceName"]["DstPrefix"] == "eth"
    [(kind, host_if, peer, mac)] = env.kernel.calls
    assert kind == "create" and host_if.startswith("cnv") and peer == join["InterfaceName"]["SrcName"]
    assert mac == first["Interface"]["MacAddress"]
    p.flush()  # the writer thread's job (the binding is written after the answer)
    key = next(k for k in env.pool.entries() if k.startswith("docker:"))
    assert env.pool.get(key).meta["endpoint"] == EID and env.pool.get(key).meta["host_if"] == host_if
    assert p.endpoint_exists(EID)
    p.set_name(EID, "web")
    assert env.pool.get(key).meta["name"] == "web"
    assert call(p, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})["Value"]["name"] == "web"
    assert call(p, "/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID}) == {}
    for _ in range(2):
        assert call(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID}) == {}
    p.flush()  # the writer thread's job (the veth is deleted after the answer)
    assert env.kernel.veths == {} and not p.endpoint_exists(EID)  # the name lookup stops
    for _ in range(2):
        assert call(p, "/IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": addr}) == {}
    assert set(env.pool.entries()) == {"some-attached-container"}
    for _ in range(2):
        assert call(p, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}
    assert call(p, "/IpamDriver.ReleasePool", {"PoolID": POOL_ID}) == {}


def test_routed_endpoint_datapath_ebpf(env):
    """datapath ebpf: the container gets a /32, Join a routed veth (the address for its
    /32 host route) and the link-local gateway with a connected route to it (libnetwork
    adds StaticRoutes before the default route via the gateway)."""
    p = env.plugin
    ctx, _backend, _pool = p.context()
    ctx.datapath = "ebpf"
    make_network(p)  # the network's gateway stays crossnet's (the host's address in its subnet)
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": {}})["Address"]
    assert addr == "10.32.1.2/32"
    call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                              "Interface": {"Address": addr, "MacAddress": ""}})
    join = call(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
    assert join["Gateway"] == "169.254.1.1"
    assert join["StaticRoutes"] == [{"Destination": "169.254.1.1/32", "RouteType": 1}]
    [(kind, _host_if, peer, _mac, address)] = env.kernel.calls
    assert (kind, address, peer) == ("create-routed", "10.32.1.2", join["InterfaceName"]["SrcName"])
    assert call(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID}) == {}
    assert env.kernel.veths == {}


def test_networks_survive_a_plugin_restart(env):
    make_network(env.plugin)
    again = DockerPlugin(env.plugin._context, env.kernel, env.plugin.networks_path)
    addr = call(again, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID})["Address"]
    assert "Err" not in call(again, "/NetworkDriver.CreateEndpoint",
                             {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})


def test_errors(env):
    p = env.plugin
    # the IPAM protocol's error key is "Error", the network driver's "Err"
    assert "not this host's crossnet subnet" in call(p, "/IpamDriver.RequestPool", {"Pool": "10.99.0.0/24"})["Error"]
    assert "IPv4" in call(p, "/IpamDriver.RequestPool", {"Pool": str(SUBNET), "V6": True})["Error"]
    assert "unknown pool" in call(p, "/IpamDriver.RequestAddress", {"PoolID": "other"})["Error"]
    # a network made for the subnet this host had before a new lease: say what to do
    moved = call(p, "/IpamDriver.RequestAddress", {"PoolID": "crossnet/10.32.7.0/24"})["Error"]
    assert "made for subnet 10.32.7.0/24" in moved and "now 10.32.1.0/24" in moved and "docker network rm" in moved
    make_network(p)
    taken = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.32.1.9"})["Address"]
    assert taken == "10.32.1.9/24"
    again = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.32.1.9"})
    assert "10.32.1.9 is in use" in again["Error"]
    assert "outside" in call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.9.9.9"})["Error"]
    gw_opts = {"RequestAddressType": "com.docker.network.gateway"}
    assert call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.32.1.1", "Options": gw_opts}) \
        == {"Address": "10.32.1.1/24", "Data": {}}
    assert "leave --gateway out" in call(p, "/IpamDriver.RequestAddress",
                                         {"PoolID": POOL_ID, "Address": "10.32.1.254", "Options": gw_opts})["Error"]
    other = "c" * 64
    assert "unknown network" in call(p, "/NetworkDriver.CreateEndpoint",
                                     {"NetworkID": other, "EndpointID": EID, "Interface": {"Address": taken}})["Err"]
    assert "not handed out" in call(p, "/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.32.1.77/24"}})["Err"]
    assert "unknown endpoint" in call(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID})["Err"]
    assert "IPv4Data" in call(p, "/NetworkDriver.CreateNetwork", {
        "NetworkID": other, "IPv4Data": [{"Pool": "172.17.0.0/16"}]})["Err"]
    env.state["ready"] = False
    assert call(p, "/IpamDriver.RequestPool", {"Pool": str(SUBNET)})["Error"] == \
        "this host has no crossnet subnet yet: run crossnet apply/launch first"
    assert env.kernel.calls == []


def test_delete_of_an_unknown_endpoint_never_touches_another_attachments_veth(env):
    """DeleteEndpoint for an endpoint the plugin has no binding of falls back to the veth
    name of that id (a plugin killed before it wrote the binding), but never to a veth
    the IPAM records for another attachment: crossnet-cni and `crossnet attach` name a
    container's veth the same way (`cnv` + hash of its id), and a 64-hex CNI container id
    is a valid EndpointID, so a Delete with it took that container off the network."""
    from crossnet.containers import host_ifname

    make_network(env.plugin)
    cni_id = "c" * 64  # a container attached by crossnet-cni under this id
    env.pool.allocate(cni_id, meta={"host_if": host_ifname(cni_id), "ifname": "eth0",
                                    "cni": {"network": "crossnet", "containerID": cni_id, "ifname": "eth0"}})
    env.kernel.veths[host_ifname(cni_id)] = ("eth0", "0a:58:0a:20:01:02")
    before = env.pool.entries()
    assert call(env.plugin, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": cni_id}) == {}
    env.plugin.flush()
    assert host_ifname(cni_id) in env.kernel.veths and not env.kernel.retired
    assert env.kernel.calls == [] and env.pool.entries() == before
    # an endpoint id whose binding was lost: its own veth (no record names it) still goes
    lost = "d" * 64
    env.kernel.veths[host_ifname(lost)] = ("tmp", "0a:58:0a:20:01:03")
    assert call(env.plugin, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": lost}) == {}
    env.plugin.flush()
    assert host_ifname(lost) not in env.kernel.veths and host_ifname(cni_id) in env.kernel.veths


@pytest.mark.parametrize("path,raw,want", [
    ("/NetworkDriver.Join", b'{"NetworkID": "../../etc/passwd", "EndpointID": "x"}', "NetworkID: expected an id"),
    ("/NetworkDriver.Join", b'{"NetworkID": 7}', "NetworkID: expected an id"),
    ("/NetworkDriver.CreateNetwork", b"not json", "not JSON"),
    ("/NetworkDriver.CreateNetwork", b"[]", "JSON object"),
    ("/NetworkDriver.CreateNetwork", b"{" + b" " * 70000 + b"}", "larger than"),
    ("/IpamDriver.RequestAddress", b'{"PoolID": "crossnet/10.32.1.0/24", "Address": "10.32.1.300"}',
     "not an IPv4 address"),
    ("/NetworkDriver.CreateEndpoint", b'{"NetworkID": "' + NID.encode() + b'", "EndpointID": "e", "Interface": 5}',
     "Interface: expected an object"),
])
def test_hostile_requests_get_one_line_errors(env, path, raw, want):
    make_network(env.plugin)
    answer = call(env.plugin, path, raw=raw)
    err = answer.get("Err") or answer.get("Error")
    assert want in err and "\n" not in err and len(err) <= 400
    assert env.kernel.calls == []


def test_unknown_path_is_404(env):
    status, answer = env.plugin.handle("/Nope\n", b"{}")
    assert status == 404 and "\n" not in answer["Err"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                    max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    k: JSON | st.just(v) for k, v in {"NetworkID": NID, "EndpointID": EID, "PoolID": POOL_ID,
                                      "Address": "10.32.1.5/24", "Pool": str(SUBNET), "V6": False,
                                      "Interface": {"Address": "10.32.1.5/24"}, "Options": {}}.items()})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(DockerPlugin(lambda: None, FakeKernel(), "/nonexistent").routes)), body=FIELDS)
def test_any_request_gets_an_answer_or_one_line_error(env, path, body):
    status, answer = env.plugin.handle(path, json.dumps(body).encode())
    assert status == 200 and isinstance(answer, dict)
    err = answer.get("Err") or answer.get("Error")
    assert err is None or (isinstance(err, str) and "\n" not in err and "Traceback" not in err)
    for _, host_if, *_ in (c for c in env.kernel.calls if c[0] == "create"):
        assert host_if.startswith("cnv") and len(host_if) <= 15


def test_network_without_subnet_gets_the_any_pool_and_crossnets_gateway(env):
    """`docker network create -d crossnet --ipam-driver crossnet crossnet` (no --subnet):
    libnetwork's route-overlap loop skips the pool 0.0.0.0/0 and takes the gateway from the
    pool's data (then asks no gateway address); endpoints still get the host's subnet."""
    p = env.plugin
    answer = call(p, "/IpamDriver.RequestPool", {"AddressSpace": "crossnet", "Pool": "", "SubPool": ""})
    assert answer == {"PoolID": POOL_ID, "Pool": "0.0.0.0/0", "Data": {"com.docker.network.gateway": "10.32.1.1/24"}}
    assert call(p, "/NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": [
        {"AddressSpace": "crossnet", "Pool": "0.0.0.0/0", "Gateway": "10.32.1.1/24"}]}) == {}
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "", "Options": {}})["Address"]
    assert addr == "10.32.1.2/24"
    assert "Err" not in call(p, "/NetworkDriver.CreateEndpoint",
                             {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})
    # the any-pool with another gateway is not crossnet's network
    other = "b" * 64
    for gw in ("10.32.1.9/24", "10.32.1.1/16", "", "x" * 200):
        err = call(p, "/NetworkDriver.CreateNetwork", {"NetworkID": other, "IPv4Data": [
            {"AddressSpace": "crossnet", "Pool": "0.0.0.0/0", "Gateway": gw}]})["Err"]
        assert "gateway" in err and "\n" not in err
    assert "unknown network" in call(p, "/NetworkDriver.CreateEndpoint",
                                     {"NetworkID": other, "EndpointID": "c" * 64, "Interface": {}})["Err"]


# ---- the request path's cost (crossnet bench docker-run) ----------------------------------
def _stamp(path):
    st_ = path.stat()
    return st_.st_ino, st_.st_mtime_ns


def test_the_request_path_writes_the_ipam_twice(env, monkeypatch):
    """On the request path only RequestAddress (file fsync'd, not its directory) and
    ReleaseAddress (both) write the IPAM; CreateEndpoint's binding is written after the
    answer (the writer thread: flush), DeleteEndpoint writes nothing."""
    import os

    p = env.plugin
    make_network(p)
    woken = []
    monkeypatch.setattr(p, "_write_soon", lambda: woken.append(1))  # the writer thread, driven by hand here
    syncs = []
    real_fsync = os.fsync
    me = threading.get_ident()  # the request path runs here (other threads of the worker may fsync too)

    def fsync(fd):
        if threading.get_ident() == me:
            syncs.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID})["Address"]
    assert syncs == [False]
    before = _stamp(env.tmp / "ipam.json")
    call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})
    assert woken == [1] and _stamp(env.tmp / "ipam.json") == before  # not written yet: Join works all the same
    join = call(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
    assert join["InterfaceName"]["SrcName"] and env.kernel.veths
    assert call(p, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})["Value"]["host_if"]
    p.flush()
    assert syncs == [False, False]
    [key] = [k for k in env.pool.entries() if k.startswith("docker:")]
    assert env.pool.get(key).meta["endpoint"] == EID
    again = DockerPlugin(p._context, env.kernel, p.networks_path)  # a restarted plugin finds it on disk
    assert again.endpoint_exists(EID)
    before = _stamp(env.tmp / "ipam.json")
    assert call(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID}) == {}
    assert _stamp(env.tmp / "ipam.json") == before and not p.endpoint_exists(EID)
    # the veth: marked on the request path, deleted by the writer thread after the answer
    [host_if] = env.kernel.veths
    assert env.kernel.retired == {host_if} and env.kernel.calls[-1] == ("retire", host_if) and woken == [1, 1]
    assert call(p, "/IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": addr}) == {}
    assert not any(k.startswith("docker:") for k in env.pool.entries())
    assert syncs == [False, False, False, True]  # the release: file + directory
    p.flush()
    assert env.kernel.veths == {} and env.kernel.retired == set() and env.kernel.calls[-1] == ("reap", host_if)
    assert call(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID}) == {}  # idempotent
    assert env.kernel.calls[-1] == ("retire", host_if) and not p._reap  # gone already: nothing to reap


def test_a_binding_released_before_it_was_written_is_not_resurrected(env, monkeypatch):
    p = env.plugin
    make_network(p)
    monkeypatch.setattr(p, "_write_soon", lambda: None)
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID})["Address"]
    call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})
    call(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
    call(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID})
    call(p, "/IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": addr})
    p.flush()
    assert not any(k.startswith("docker:") for k in env.pool.entries()) and not p._pending
    # the same address handed out again binds to the new endpoint, not the old one
    addr2 = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": addr.split("/")[0]})["Address"]
    other = "d" * 64
    assert "Err" not in call(p, "/NetworkDriver.CreateEndpoint",
                             {"NetworkID": NID, "EndpointID": other, "Interface": {"Address": addr2}})
    assert p.endpoint_exists(other) and not p.endpoint_exists(EID)


def test_the_writer_thread_writes_the_binding(env):
    p = env.plugin
    make_network(p)
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID})["Address"]
    call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(a.meta.get("endpoint") == EID for a in env.pool.entries().values()):
        time.sleep(0.01)
    assert any(a.meta.get("endpoint") == EID for a in env.pool.entries().values())


def test_reads_are_cached_until_the_file_changes(env, monkeypatch):
    """Join re-reads neither docker-networks.json nor the IPAM file while they are
    unchanged, and sees a change made by another process (a new file: rename)."""
    from crossnet.ipam import AddressPool as Pool

    p = env.plugin
    make_network(p)
    addr = call(p, "/IpamDriver.RequestAddress", {"PoolID": POOL_ID})["Address"]
    call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})
    call(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"})
    import time

    deadline = time.monotonic() + 10  # the writer thread's binding write reads the file: let it finish first
    while p._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    call(p, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})  # re-reads the written file once
    reads = []
    real = Pool._read
    monkeypatch.setattr(Pool, "_read", lambda self: (reads.append(1), real(self))[1])
    for _ in range(3):
        call(p, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})
    assert reads == []
    other = Pool(env.tmp / "ipam.json", SUBNET, reserved={GW})  # another process renames a new file in
    key = next(k for k in other.entries() if k.startswith("docker:"))
    other.update_meta(key, {"name": "renamed"})
    assert call(p, "/NetworkDriver.EndpointOperInfo",
                {"NetworkID": NID, "EndpointID": EID})["Value"]["name"] == "renamed"


def test_timings_report_per_request(env):
    make_network(env.plugin)
    status, report = env.plugin.handle("/crossnet.Timings", b"")
    assert status == 200
    assert report["NetworkDriver.CreateNetwork"]["n"] == 1 and report["NetworkDriver.CreateNetwork"]["mean_ms"] >= 0
    assert report["IpamDriver.RequestAddress"]["n"] == 1  # the gateway


def test_raw_veth_messages():
    """The fast path's netlink messages: a veth pair with both ends here (no
    IFLA_NET_NS_FD) and the kernel's MAC for the host end; a delete by name."""
    import struct

    from crossnet.netlink import raw as nlraw
    from crossnet.netlink.const import IFLA_ADDRESS, IFLA_NET_NS_FD, RTM_DELLINK

    def attrs(body, start=16):
        out, off = [], start
        while off + 4 <= len(body):
            length, kind = struct.unpack_from("=HH", body, off)
            out.append((kind & 0x7FFF, body[off + 4:off + length]))
            off += (length + 3) & ~3
        return out

    _t, _f, body, _w = nlraw.veth_create("cnvabc", 1450, None, 7, "tmpabc", "0a:58:0a:20:01:03", None)
    assert IFLA_ADDRESS not in [k for k, _ in attrs(body)]  # the host end: the kernel's MAC
    _t, _f, with_ns, _w = nlraw.veth_create("cnvabc", 1450, "0a:58:0a:20:01:04", 7, "tmpabc", "0a:58:0a:20:01:03", 5)
    assert IFLA_ADDRESS in [k for k, _ in attrs(with_ns)]
    # the peer's attributes (inside IFLA_LINKINFO/IFLA_INFO_DATA/VETH_INFO_PEER): no netns fd when None
    ns_attr = struct.pack("=HHI", 8, IFLA_NET_NS_FD, 5)
    assert ns_attr in with_ns and struct.pack("=HH", 8, IFLA_NET_NS_FD) not in body
    assert len(with_ns) == len(body) + 12 + 8  # + the host end's MAC, + the peer's netns fd
    mtype, _flags, body, what = nlraw.link_del("cnvabc")
    assert mtype == RTM_DELLINK and b"cnvabc\0" in body and "cnvabc" in what


def test_bench_report_lists_the_plugins_time_per_request():
    from crossnet.bench.report import docker_run_section

    dk = {"status": "ok", "runs": 2, "backend": "vxlan", "load_before": [1.0],
          "run_s": {"none": {"n": 2, "median": 1.0, "min": 1.0, "max": 1.0},
                    "crossnet driver": {"n": 2, "median": 1.1, "min": 1.1, "max": 1.1}},
          "added_s": {"crossnet driver": 0.1},
          "plugin_ms": {"NetworkDriver.Join": {"n": 3, "mean_ms": 4.5}, "Plugin.Activate": {"n": 1, "mean_ms": 0.01},
                        "NetworkDriver.DeleteEndpoint": {"n": 3, "mean_ms": 17.0}}}
    text = "\n".join(docker_run_section(dk))
    assert "time per request (mean ms, HTTP not included): DeleteEndpoint 17.0, Join 4.5." in text
    assert "Activate" not in text  # once per plugin, not per container


def test_bench_row_compares_with_a_user_defined_docker_bridge_too():
    """dockerd gives every user-defined network (crossnet's too) its embedded DNS
    (a setup-resolver re-exec and 11 iptables runs per container); the default bridge
    skips it: the row measures Docker's own user-defined bridge in the same run and
    reports crossnet's driver over it next to the target's ratio."""
    from crossnet.bench import dockerbench
    from crossnet.bench.report import docker_run_section
    from crossnet.bench.targets import evaluate

    assert dockerbench.NETWORKS["docker user bridge"] == dockerbench.USER_BRIDGE
    assert dockerbench.NETWORKS["docker bridge"] == "bridge" and dockerbench.NETWORKS["none"] == "none"
    added = {"docker bridge": 0.05, "docker user bridge": 0.16, "crossnet driver": 0.12}
    assert dockerbench.user_ratio(added) == 0.75
    assert dockerbench.user_ratio({**added, "docker user bridge": -0.01}) is None  # noise: no ratio
    assert dockerbench.user_ratio({"crossnet driver": 0.1}) is None

    run_s = {k: {"n": 2, "median": 1.0 + a, "min": 1.0, "max": 1.2} for k, a in added.items()}
    dk = {"status": "ok", "runs": 2, "backend": "vxlan", "load_before": [1.0],
          "run_s": {"none": {"n": 2, "median": 1.0, "min": 1.0, "max": 1.0}, **run_s},
          "added_s": added, "added_ratio": 2.4, "added_ratio_user": 0.75}
    text = "\n".join(docker_run_section(dk))
    assert "crossnet's driver / Docker's user-defined bridge, time added over `none`: **0.75×**" in text
    assert "| docker user bridge | 2 |" in text
    t = next(t for t in evaluate({"control": {"docker": dk}}) if t["id"] == "docker-run")
    assert t["value"] == 2.4 and t["met"] is False  # the target stays the default bridge
    assert t["also"] == "0.75× Docker's own user-defined bridge network"
    dk.pop("added_ratio_user")
    t = next(t for t in evaluate({"control": {"docker": dk}}) if t["id"] == "docker-run")
    assert t["also"] is None


def test_raw_retire_messages():
    """DeleteEndpoint's mark (the alias, no NUL: as iproute2) and the writer's delete by index."""
    import struct

    from crossnet.netlink import raw as nlraw
    from crossnet.netlink.const import IFLA_IFALIAS, RTM_DELLINK, RTM_NEWLINK
    from crossnet.runtime.dockerplugin import RETIRED_ALIAS

    mtype, flags, body, what = nlraw.link_alias(42, RETIRED_ALIAS, "cnvabc")
    assert (mtype, flags) == (RTM_NEWLINK, 0) and "cnvabc" in what
    assert struct.unpack_from("=i", body, 4)[0] == 42  # ifinfomsg.ifi_index
    alias = RETIRED_ALIAS.encode()
    assert body[16:] == struct.pack("=HH", 4 + len(alias), IFLA_IFALIAS) + alias + b"\0" * (-len(alias) % 4)
    mtype, _flags, body, _what = nlraw.link_del_index(42, "cnvabc")
    assert mtype == RTM_DELLINK and body == struct.pack("=BxHiII", 0, 0, 42, 0, 0)


def test_serve_never_replaces_a_socket_another_process_serves(tmp_path):
    """A live socket at --socket (another docker-plugin, or whatever else dockerd reaches
    as `crossnet`) used to be unlinked and replaced, and removed again at exit. Now refused
    in one line naming it; the other socket keeps its path. A stale one is replaced."""
    import os
    import signal
    import socket

    from crossnet.errors import ConfigError
    from crossnet.runtime.dockerplugin import serve

    path = str(tmp_path / "crossnet.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)
    other.listen(1)
    ino = os.stat(path).st_ino
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    served = []

    def ready():  # the old code got here: stop at once
        served.append(os.stat(path).st_ino)
        os.kill(os.getpid(), signal.SIGTERM)

    plugin = SimpleNamespace(flush=lambda: None)
    try:
        with pytest.raises(ConfigError) as err:
            serve(plugin, path, ready=ready)
        assert str(err.value) == (f"--socket: {path} is served by a running process (another crossnet "
                                  "docker-plugin?); stop it first, or choose another --socket")
        assert served == [] and os.stat(path).st_ino == ino
        other.close()  # now a stale socket: replaced, and removed at exit
        serve(plugin, path, ready=ready)
        assert served and not os.path.exists(path)
    finally:
        other.close()
        for s, h in saved.items():
            signal.signal(s, h)


@pytest.mark.parametrize("kind", planted.KINDS)
def test_serve_refuses_a_path_that_is_not_a_socket_and_leaves_it(tmp_path, kind):
    """--socket naming a regular file, a directory or a symlink (even to a stale socket):
    one line naming it, nothing removed or followed, nothing served."""
    import socket

    from crossnet.errors import ConfigError
    from crossnet.runtime.dockerplugin import serve

    path = tmp_path / "crossnet.sock"
    target = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(target))
    s.close()
    planted.plant(path, kind, target)

    def ready():  # never reached
        raise AssertionError("served")

    with pytest.raises(ConfigError) as err:
        serve(SimpleNamespace(flush=lambda: None), str(path), ready=ready)
    assert str(err.value) == f"--socket: {path} exists and is not a socket"
    assert planted.left_as_planted(path, kind) and target.is_socket()
