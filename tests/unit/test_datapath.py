"""`datapath:` (docs/datapath.md) without a kernel: the model's validation (cluster file,
store config, its JSON), the context carrying it, the desired resources of both datapaths
for host-gw and vxlan, the kernel fallback when crossnet.ebpf is missing, the raw netlink
messages of the routed attach, and the CNI result of a routed attachment. The kernel side:
tests/e2e/test_datapath_routed.py."""

from __future__ import annotations

import logging
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossnet import backends, datapath, program
from crossnet.backends.base import HostContext, gateway_mac
from crossnet.config import parse_cluster
from crossnet.errors import ConfigError
from crossnet.netlink import raw as nlraw
from crossnet.netlink.const import IFLA_MASTER, RTNH_F_ONLINK
from crossnet.plan.resources import Address, Bridge, Fdb, Neigh, Resource, Route, Vxlan
from crossnet.store import NetworkConfig

from tests.unit.test_backend_resources import cluster_file, ctx_of, nic  # noqa: F401 - nic: autouse fixture


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_ebpf_is_accepted_for_routed_backends(backend):
    assert parse_cluster(cluster_file(backend, datapath="ebpf")).datapath == "ebpf"
    cfg = NetworkConfig(network="10.32.0.0/16", backend=backend, datapath="ebpf")
    assert cfg.to_json()["datapath"] == "ebpf"
    assert NetworkConfig.from_json(cfg.to_json()).datapath == "ebpf"


@pytest.mark.parametrize("backend", ["bridge", "wireguard", "ovs-gre", "ovs-vxlan"])
def test_ebpf_is_refused_elsewhere_with_one_line_naming_the_field(backend):
    doc = cluster_file(backend, datapath="ebpf")
    with pytest.raises(ConfigError) as exc:
        parse_cluster(doc)
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and "datapath" in msg and backend in msg


def test_default_is_kernel_and_old_records_load():
    cfg = NetworkConfig(network="10.32.0.0/16")
    assert cfg.datapath == "kernel" and "datapath" not in cfg.to_json()  # records written before keep their bytes
    old = {"name": "c", "network": "10.32.0.0/16", "subnet_len": 24, "backend": "vxlan", "ttl": 60}
    assert NetworkConfig.from_json(old).datapath == "kernel"


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.text(max_size=200), st.sampled_from(["kernel", "ebpf", "EBPF", "xdp", ""])),
       backend=st.sampled_from(sorted(backends.BACKENDS)))
def test_any_datapath_value_is_valid_or_one_short_line(value, backend):
    doc = cluster_file(backend, datapath=value)
    try:
        cluster = parse_cluster(doc)
    except ConfigError as exc:
        msg = str(exc)
        assert "datapath" in msg and len(msg.splitlines()) == 1 and len(msg) < 400
        assert backends.datapath_problem(backend, value) is not None
    else:
        assert cluster.datapath == value and backends.datapath_problem(backend, value) is None
    try:
        NetworkConfig.parse({"network": "10.32.0.0/16", "backend": "vxlan", "datapath": value}, "config")
    except ConfigError as exc:
        assert str(exc).startswith("config: datapath: ")
    else:
        assert value in backends.DATAPATHS


# ---------------------------------------------------------------- context and resources


def test_context_carries_the_datapath_from_both_models():
    ctx, _ = ctx_of("vxlan", datapath="ebpf")
    assert ctx.datapath == "ebpf"
    cfg = NetworkConfig(network="10.32.0.0/16", backend="vxlan", datapath="ebpf")
    assert program.Settings.of_config(cfg).datapath == "ebpf"
    assert HostContext.from_json(ctx.to_json()).datapath == "ebpf"
    old = ctx.to_json()
    del old["datapath"]  # an applied.json written before the field existed
    assert HostContext.from_json(old).datapath == "kernel"


def test_host_gw_resources_of_both_datapaths():
    kernel, b = ctx_of("host-gw")
    ebpf, _ = ctx_of("host-gw", datapath="ebpf")
    peers = [Route("10.32.1.0/24", gateway="10.56.0.12", dev="eth0"),
             Route("10.32.2.0/24", gateway="10.56.0.13", dev="eth0")]
    assert b.resources(kernel) == [Bridge("cn0", 1500, mac=gateway_mac(kernel)), Address("cn0", "10.32.0.1/24"),
                                   *peers]
    assert b.resources(ebpf) == [Address("lo", "10.32.0.1/32"), *peers]  # no bridge, same peer routes


def test_vxlan_resources_of_both_datapaths():
    kernel, b = ctx_of("vxlan")
    ebpf, _ = ctx_of("vxlan", datapath="ebpf")
    k, e = b.resources(kernel), b.resources(ebpf)
    assert [type(r) for r in k[:2]] == [Bridge, Address]
    assert e[0] == Address("lo", "10.32.0.1/32")
    assert e[1:] == k[2:]  # vxlan device, its address, per peer FDB + neighbour + route: unchanged
    assert [type(r) for r in e[1:]] == [Vxlan, Address] + [Fdb, Neigh, Route] * 2
    assert not any(isinstance(r, Bridge) or getattr(r, "dev", None) == "cn0" for r in e)


def test_dry_run_text_and_json_round_trip_of_a_routed_host():
    ctx, b = ctx_of("vxlan", datapath="ebpf", masquerade=True)
    res = program.desired_resources(ctx, b)
    text = [r.describe() for r in res]
    assert "ip addr add 10.32.0.1/32 dev lo" in text
    assert not any("type bridge" in t for t in text)
    assert [Resource.from_json(r.to_json()) for r in res] == res


# ---------------------------------------------------------------- the eBPF hooks and the fallback


def test_a_host_that_cannot_run_ebpf_gets_kernel_with_one_log_line(monkeypatch, caplog):
    from crossnet import ebpf

    monkeypatch.setattr(ebpf, "problem", lambda: "no bpftool to load the eBPF programs")
    monkeypatch.setattr(datapath, "_why_not", {})
    ctx, b = ctx_of("host-gw", datapath="ebpf")
    with caplog.at_level(logging.WARNING, logger="crossnet.datapath"):
        assert datapath.active(ctx) == "kernel"
        assert datapath.active(ctx) == "kernel"
        d = datapath.describe(ctx)
        assert datapath.host_resources(ctx) == []  # no programs: the routed layout, kernel forwarding
    assert d["datapath"] == "kernel" and d["configured"] == "ebpf" and d["layout"] == "routed"
    assert d["why"] == "no bpftool to load the eBPF programs"
    lines = [r for r in caplog.records if r.name == "crossnet.datapath"]
    assert len(lines) == 1 and "no bpftool" in lines[0].getMessage()


def test_ebpf_runs_when_the_module_says_the_host_can_and_its_programs_come_after_the_devices(monkeypatch, tmp_path):
    from crossnet import ebpf
    from crossnet.ebpf import build
    from crossnet.ebpf import host as ebpf_host

    monkeypatch.setattr(ebpf, "problem", lambda: None)
    monkeypatch.setattr(datapath, "_why_not", {})
    obj = tmp_path / "crossnet_tc.o"
    obj.write_bytes(b"an object")  # its pin directory is named by a hash of its content
    monkeypatch.setattr(build, "find_object", lambda build=True: (obj, None))
    monkeypatch.setattr(ebpf_host, "loaded", lambda state_dir: False)
    ebpf_ctx, b = ctx_of("vxlan", datapath="ebpf")
    kernel, _ = ctx_of("vxlan")
    assert datapath.active(ebpf_ctx) == "ebpf" and datapath.describe(ebpf_ctx)["why"] is None
    assert datapath.active(kernel) == "kernel" and datapath.describe(kernel)["layout"] == "bridge"
    local = b.local_resources(ebpf_ctx)
    kinds = [type(r) for r in local]
    assert kinds[:3] == [Address, Vxlan, Address]  # lo /32, the vxlan device, its address ...
    progs = [r for r in local if isinstance(r, ebpf_host.TcProgram)]
    assert {p.dev for p in progs} == {"cnvx1", "eth0"}  # ... then the programs on the device and the NIC
    assert min(local.index(p) for p in progs) > kinds.index(Vxlan)
    assert datapath.host_resources(kernel) == [] and not any(isinstance(r, ebpf_host.TcProgram)
                                                           for r in b.local_resources(kernel))


def test_status_of_a_host_whose_programs_are_pinned_asks_no_feature_probe(monkeypatch):
    """`status` runs in its own process: with the programs pinned (apply/agent loaded them)
    it reports ebpf and their counters without a trial load of the object."""
    from crossnet import ebpf
    from crossnet.ebpf import host as ebpf_host

    probes = []
    monkeypatch.setattr(ebpf, "problem", lambda: probes.append(1) or None)
    monkeypatch.setattr(datapath, "_why_not", {})
    monkeypatch.setattr(ebpf_host, "loaded", lambda state_dir: True)
    monkeypatch.setattr(ebpf_host, "counters", lambda ctx: {"redirect_to_container": 7})
    ctx, _ = ctx_of("host-gw", datapath="ebpf")
    d = datapath.describe(ctx)
    assert d == {"datapath": "ebpf", "configured": "ebpf", "layout": "routed", "why": None,
                 "counters": {"redirect_to_container": 7}}
    assert probes == []
    monkeypatch.setattr(ebpf_host, "loaded", lambda state_dir: False)  # not pinned: the probe says why not
    monkeypatch.setattr(ebpf, "problem", lambda: probes.append(1) or "no bpftool")
    assert datapath.describe(ctx)["why"] == "no bpftool" and probes == [1]


# ---------------------------------------------------------------- the routed attach's messages


def _attrs(body: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        out[kind] = body[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def test_routed_veth_has_no_master_and_bridged_veth_has_one():
    routed = nlraw.veth_create("cnvabc", 1500, "0a:59:0a:20:00:02", None, "eth0", "0a:58:0a:20:00:02", 7)
    bridged = nlraw.veth_create("cnvabc", 1500, "0a:59:0a:20:00:02", 4, "eth0", "0a:58:0a:20:00:02", 7)
    ifinfo = 16  # struct ifinfomsg
    assert IFLA_MASTER not in _attrs(routed[2], ifinfo)
    assert struct.unpack("=I", _attrs(bridged[2], ifinfo)[IFLA_MASTER]) == (4,)


def test_routed_container_routes():
    _, _, body, _ = nlraw.default_route(datapath.GATEWAY, 3, onlink=True)

    _, _, plain, _ = nlraw.default_route("10.32.0.1", 3)
    assert struct.unpack_from("=I", plain, 8) == (0,)
    assert struct.unpack_from("=I", body, 8) == (RTNH_F_ONLINK,)
    _, _, host, what = nlraw.host_route("10.32.0.2/32", 9)
    assert host[1] == 32 and "10.32.0.2/32" in what
    _, _, neigh, _ = nlraw.neigh_permanent(3, datapath.GATEWAY, "0a:59:0a:20:00:02")
    assert IPv4Address(datapath.GATEWAY).packed in neigh


def test_the_new_veths_program_is_tc_add_clsact_then_a_direct_action_bpf_filter():
    """attach's fast path (crossnet.ebpf.host.attach_new_veth): the messages `tc qdisc add
    dev X clsact` and `tc filter add dev X ingress protocol all pref 1000 handle 1 bpf da
    fd F name N` send; both refuse what exists (EXCL) instead of replacing it."""
    from crossnet.ebpf import host
    from crossnet.netlink.const import (NLM_F_CREATE, NLM_F_EXCL, RTM_NEWQDISC, RTM_NEWTFILTER, TCA_BPF_FD,
                                        TCA_BPF_FLAGS, TCA_BPF_NAME, TCA_KIND, TCA_OPTIONS, TCMSG_SIZE)

    mtype, flags, body, what = nlraw.clsact_add(9, "cnvabc")
    assert (mtype, flags) == (RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL) and "cnvabc" in what
    assert struct.unpack_from("=BxHiIII", body) == (0, 0, 9, 0xFFFF0000, 0xFFFFFFF1, 0)  # handle ffff:, parent clsact
    assert _attrs(body, TCMSG_SIZE) == {TCA_KIND: b"clsact\0"}
    mtype, flags, body, what = nlraw.bpf_filter_add(9, host.TC_INGRESS, host.TC_PREF, host.TC_HANDLE, 42,
                                                    "crossnet:cn_from_container:7", "cnvabc")
    assert (mtype, flags) == (RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL)
    # handle 1, parent ffff:fff2 (clsact ingress), info = pref << 16 | htons(ETH_P_ALL)
    assert struct.unpack_from("=BxHiIII", body) == (0, 0, 9, 1, 0xFFFFFFF2, 1000 << 16 | 0x0300)
    top = _attrs(body, TCMSG_SIZE)
    assert top[TCA_KIND] == b"bpf\0"
    opts = _attrs(top[TCA_OPTIONS], 0)
    assert struct.unpack("=I", opts[TCA_BPF_FD]) == (42,) and struct.unpack("=I", opts[TCA_BPF_FLAGS]) == (1,)
    assert opts[TCA_BPF_NAME] == b"crossnet:cn_from_container:7\0"


def test_cni_result_of_a_routed_attachment():
    from crossnet.cni import plugin
    from crossnet.containers import Attachment

    att = Attachment("c1", "/run/netns/x", "10.32.0.2", 32, datapath.GATEWAY, "eth0", "cnv0123456789", 1500,
                     "0a:58:0a:20:00:02")
    req = plugin.Request({}, b"")
    req.conf = {}
    res = plugin.build_result(req, None, att, "0a:59:0a:20:00:02")
    assert res["ips"] == [{"address": "10.32.0.2/32", "gateway": "169.254.1.1", "interface": 1}]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]


# ---------------------------------------------------------------- crossnet launch --datapath


def test_launch_carries_the_datapath_into_the_store_config():
    from crossnet.mesh.launch import network_config

    n = {"network": "10.32.0.0/12", "backend": "host-gw", "subnet_len": 24, "ttl": 30}
    assert network_config(n).datapath == "kernel"
    assert network_config({**n, "datapath": "ebpf"}).datapath == "ebpf"


@pytest.mark.parametrize("backend,value", [("ovs-gre", "ebpf"), ("vxlan", "xdp")])
def test_launch_refuses_a_bad_datapath_naming_the_option(tmp_path, backend, value):
    from crossnet.mesh.launch import launch_first

    with pytest.raises(ConfigError) as exc:
        launch_first(str(tmp_path), "h1", "eth0", "10.0.0.1", "10.32.0.0/12", 24, backend, 1, 30, spawn=False,
                     datapath=value)
    assert str(exc.value).startswith("--datapath: ") and len(str(exc.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
