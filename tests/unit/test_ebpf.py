"""crossnet.ebpf without a kernel: map packing, resource JSON round trip and describe
text, pin-directory validation, bpffs detection, and every problem() path with fakes."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

import crossnet.ebpf as ebpf
from crossnet.backends.base import HostContext
from crossnet.ebpf import bpfsys, build, host, maps
from crossnet.errors import ApplyError, ConfigError
from crossnet.plan.resources import Resource

REAL_FIND_OBJECT = build.find_object


def ctx(backend: str = "host-gw", state_dir: str = "/var/lib/crossnet/h1") -> HostContext:
    return HostContext("c", backend, "h1", ipaddress.IPv4Address("192.168.1.1"), "eth0",
                       ipaddress.IPv4Network("10.1.1.0/24"), ipaddress.IPv4Network("10.1.0.0/16"),
                       ipaddress.IPv4Address("169.254.1.1"), 32, "", 1500, 1450, True, vni=7, state_dir=state_dir)


# ---------------------------------------------------------------- maps


@given(st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**24 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1))
def test_config_round_trip(prefix, addr, underlay, vxlan, vni, local, port):
    net = ipaddress.IPv4Network((addr, prefix), strict=False)
    cfg = maps.Config(net, underlay, vxlan, vni, ipaddress.IPv4Address(local), port)
    raw = cfg.pack()
    assert len(raw) == 28  # sizeof(struct cn_config)
    assert maps.Config.unpack(raw) == cfg


def test_config_layout_is_network_order_addresses_and_native_ifindexes():
    raw = maps.Config(ipaddress.IPv4Network("10.1.0.0/16"), 3, 9, 0x123456, ipaddress.IPv4Address("192.168.1.1"),
                      4789).pack()
    assert raw[:8] == bytes([10, 1, 0, 0, 255, 255, 0, 0])
    assert struct.unpack("=III", raw[8:20]) == (3, 9, 0x123456)  # ifindexes and VNI: host order
    assert raw[20:] == bytes([192, 168, 1, 1, 0x12, 0xB5, 0, 0])  # local address and port: network order
    assert maps.Config(ipaddress.IPv4Network("10.1.0.0/16"), 3).pack()[12:] == bytes(16)  # no vxlan: zeros
    fields = dict(maps.config_fields(raw))  # the same layout, by name
    assert list(fields) == ["net", "mask", "underlay", "vxlan", "vni", "local", "port", "pad"]
    assert b"".join(fields.values()) == raw
    assert struct.unpack("=I", fields["underlay"]) == (3,) and struct.unpack("=I", fields["vxlan"]) == (9,)
    assert fields["port"] == bytes([0x12, 0xB5]) and fields["pad"] == bytes(2)


@pytest.mark.parametrize("kw,field", [({"underlay": -1}, "underlay"), ({"vni": 2**24}, "vni"),
                                      ({"port": 2**16}, "port"), ({"vxlan": 2**32}, "vxlan")])
def test_config_refuses_out_of_range(kw, field):
    with pytest.raises(ValueError, match=field):
        maps.Config(ipaddress.IPv4Network("10.0.0.0/8"), **{"underlay": 1, **kw}).pack()


def test_vtep_entry_layout():
    key = maps.vtep_key(7, ipaddress.IPv4Address("10.32.1.0"))
    assert key == struct.pack("=I", 7) + bytes([10, 32, 1, 0])  # struct cn_vtep_key
    assert maps.vtep_value(ipaddress.IPv4Address("192.168.1.2")) == bytes([192, 168, 1, 2])
    with pytest.raises(ValueError, match="vxlan"):
        maps.vtep_key(0, ipaddress.IPv4Address("10.32.1.0"))


def test_counters_match_the_c_enum():
    src = build.source().read_text()
    enum = src[src.index("enum {"):src.index("CN_NCOUNTERS")]
    names = [w.strip().rstrip(",").removesuffix(" = 0").lower()[3:] for w in enum.splitlines()[1:] if w.strip()]
    assert tuple(names) == maps.COUNTERS
    for name in (*maps.PROGRAMS, maps.CONFIG_MAP, maps.VETHS_MAP, maps.VTEPS_MAP, maps.STATS_MAP):
        assert name in src


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=8))
def test_percpu_sum(values):
    raw = b"".join(struct.pack("=Q", v) for v in values)
    assert maps.percpu_sum(raw, len(values)) == sum(values)


def test_summarise_totals():
    out = maps.summarise({"redirect_peer": 2, "redirect_neigh": 3, "pass_ttl": 1, "pass_outside": 4})
    assert (out["redirect"], out["pass"], out["pass_fib"]) == (5, 5, 0)
    out = maps.summarise({"redirect_encap": 6, "redirect_decap": 7, "redirect_peer": 1})
    assert (out["redirect"], out["pass"]) == (14, 0)  # the programs' own VXLAN is the fast path too


@pytest.mark.parametrize("text,n", [("0-1\n", 2), ("0\n", 1), ("0,2-5\n", 5), ("0-63", 64)])
def test_possible_cpus(text, n):
    assert bpfsys.possible_cpus(text) == n


# ---------------------------------------------------------------- resources


def test_host_resources_json_round_trip_and_describe(monkeypatch, tmp_path):
    obj = tmp_path / "crossnet_tc.o"
    obj.write_bytes(b"\x7fELF")
    monkeypatch.setattr(build, "find_object", lambda build=True: (obj, None))
    res = host.host_resources(ctx("vxlan"))
    kinds = [r.kind for r in res]
    assert kinds == ["ebpf-programs", "ebpf-config", "ebpf-tc", "ebpf-tc"]
    # vxlan: the program on the NIC takes apart the frames of this host's networks, the one
    # on the vxlan device gets what the device decapsulated (frames the NIC's left to the stack)
    assert [r.dev for r in res if r.kind == "ebpf-tc"] == ["eth0", "cnvx7"]
    cfg = res[1]
    assert (cfg.vxlan, cfg.vni, cfg.local, cfg.port) == ("cnvx7", 7, "192.168.1.1", 4789)
    assert "c0 a8 01 01 12 b5 00 00" in cfg.describe()  # local address and port in the slot
    for r in res:
        r.saved["clsact_added"] = True
        back = Resource.from_json(r.to_json())
        assert back == r and back.key() == r.key() and back.saved == r.saved
    pins = host.pin_dir("/var/lib/crossnet/h1", obj)
    assert res[0].describe().endswith(
        f"bpftool prog loadall {obj} {pins}/progs type classifier pinmaps {pins}/maps")
    assert res[3].describe() == (f"tc qdisc add dev cnvx7 clsact 2>/dev/null; tc filter replace dev cnvx7 ingress "
                                 f"pref {host.TC_PREF} handle 1 bpf da pinned {pins}/progs/cn_to_container")
    assert res[1].describe() == (f"bpftool map update pinned {pins}/maps/cn_config key hex 00 00 00 00 value hex "
                                 "0a 01 00 00 ff ff 00 00 <ifindex of eth0, 4 bytes little endian> "
                                 "<ifindex of cnvx7, 4 bytes little endian> 07 00 00 00 c0 a8 01 01 12 b5 00 00  # 10.1.0.0/16")
    hostgw = host.host_resources(ctx("host-gw"))
    assert [(r.kind, getattr(r, "dev", None)) for r in hostgw][2:] == [("ebpf-tc", "eth0")]


def test_host_resources_without_object_says_why(monkeypatch):
    monkeypatch.setattr(build, "find_object", lambda build=True: (None, "no clang to compile the eBPF programs"))
    with pytest.raises(Exception, match="datapath ebpf: no clang"):
        host.host_resources(ctx())


def test_pin_dir_per_state_dir_and_object(tmp_path):
    one, two = tmp_path / "1.o", tmp_path / "2.o"
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    a, b = host.pin_dir("/var/lib/crossnet/h1", one), host.pin_dir("/var/lib/crossnet/h2", one)
    c = host.pin_dir("/var/lib/crossnet/h1", two)
    assert len({a, b, c}) == 3 and a.startswith("/sys/fs/bpf/crossnet/") and host._valid_pin_dir(a) == a
    assert a.rsplit("/", 1)[0] == c.rsplit("/", 1)[0] == str(host.host_dir("/var/lib/crossnet/h1"))


@pytest.mark.parametrize("bad", ["/sys/fs/bpf", "/sys/fs/bpf/crossnet/../../..", "/tmp/x", "/sys/fs/bpf/crossnet/ABC", 3,
                                 "/sys/fs/bpf/crossnet/0123456789abcdef", "/sys/fs/bpf/crossnet/0123456789abcdef/../x",
                                 "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef/x",
                                 "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef\n"])
def test_recorded_pin_dir_is_validated(bad):
    with pytest.raises(ApplyError, match="pin directory"):
        host._valid_pin_dir(bad)
    with pytest.raises(ApplyError, match="pin directory"):
        host.BpfPrograms(bad, "/x.o").remove(None)


def test_private_sysfs_of_ip_netns_exec(tmp_path):
    (tmp_path / "lab-h1").touch()
    info = ("23 1 0:21 / /sys rw - sysfs sysfs rw\n"
            "305 23 0:46 / /sys/fs/bpf rw - bpf bpf rw\n"
            "600 300 0:99 / /sys rw,relatime - sysfs lab-h1 rw\n")
    assert host.private_sysfs(info, str(tmp_path)) == "lab-h1"
    assert host.private_sysfs(info.replace("lab-h1", "other"), str(tmp_path)) is None
    assert host.private_sysfs("23 1 0:21 / /sys rw shared:7 - sysfs sysfs rw\n", str(tmp_path)) is None


def test_ensure_bpffs_refuses_an_ephemeral_mount(monkeypatch):
    monkeypatch.setattr(host, "bpffs_mounted", lambda info=None: False)
    monkeypatch.setattr(host, "private_sysfs", lambda info=None: "lab-h1")
    monkeypatch.setattr(host.ctypes, "CDLL", lambda *a, **k: pytest.fail("mounted"))
    assert "nsenter --net=/run/netns/lab-h1" in host.ensure_bpffs()


def test_bpffs_mounted_reads_mountinfo():
    line = "41 24 0:37 / /sys/fs/bpf rw,nosuid shared:17 - {} bpf rw,mode=700\n"
    assert host.bpffs_mounted(line.format("bpf"))
    assert not host.bpffs_mounted(line.format("sysfs"))
    assert not host.bpffs_mounted("41 24 0:37 / /sys/fs/bpf/x rw - bpf bpf rw\n")


# ---------------------------------------------------------------- problem()


@pytest.fixture
def fresh(monkeypatch):
    ebpf._problem.cache_clear()
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(build, "find_object", lambda build=True: (Path("/x.o"), None))
    monkeypatch.setattr(host, "ensure_bpffs", lambda: None)
    monkeypatch.setattr(host, "trial_load", lambda obj: None)
    yield monkeypatch
    ebpf._problem.cache_clear()


def test_problem_none_when_everything_is_there(fresh):
    assert ebpf.problem() is None


@pytest.mark.parametrize("patch,expect", [
    (("platform.machine", lambda: "aarch64"), "x86_64 only"),
    (("os.geteuid", lambda: 1000), "needs root"),
    (("shutil.which", lambda name: None), "no bpftool"),
])
def test_problem_paths(fresh, patch, expect):
    fresh.setattr(*patch)
    assert expect in ebpf.problem()


def test_problem_no_object_no_clang(fresh, tmp_path):
    fresh.setattr(build, "find_object", REAL_FIND_OBJECT)
    fresh.setattr(build, "prebuilt", lambda prefix=None: None)
    fresh.setattr(build, "CACHE_DIR", tmp_path)
    fresh.setattr("shutil.which", lambda name: None if name == "clang" else f"/usr/bin/{name}")
    assert ebpf.problem() == "no clang to compile the eBPF programs (Debian: apt install clang libbpf-dev)"
    assert not any(tmp_path.iterdir())


def test_problem_bpffs_and_kernel(fresh):
    fresh.setattr(host, "ensure_bpffs", lambda: "cannot mount bpffs on /sys/fs/bpf: Operation not permitted")
    assert ebpf.problem().startswith("cannot mount bpffs")
    ebpf._problem.cache_clear()
    fresh.setattr(host, "ensure_bpffs", lambda: None)
    fresh.setattr(host, "trial_load", lambda obj: "the kernel refuses crossnet's eBPF programs (/x.o): invalid argument")
    assert "kernel refuses" in ebpf.problem()


def test_find_object_prefers_prebuilt_then_cache(monkeypatch, tmp_path):
    pre = tmp_path / "prefix"
    (pre / build.PREBUILT).parent.mkdir(parents=True)
    (pre / build.PREBUILT).write_bytes(b"\x7fELF")
    monkeypatch.setattr("sys.prefix", str(pre))
    assert build.find_object(build=False) == (pre / build.PREBUILT, None)
    monkeypatch.setattr("sys.prefix", str(tmp_path / "none"))
    monkeypatch.setattr(build, "CACHE_DIR", tmp_path / "cache")
    obj, why = build.find_object(build=False)
    assert obj is None and "not built yet" in why
    cached = tmp_path / "cache" / build.source_hash() / build.OBJECT_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x7fELF")
    assert build.find_object(build=False) == (cached, None)


@pytest.mark.parametrize("bad", ["", "a" * 16, "x/y", "../eth0", 3])
def test_container_interface_names_are_checked_before_the_kernel(bad, monkeypatch):
    monkeypatch.setattr(host.nl, "open_ipr", lambda: pytest.fail("reached netlink"))
    for fn in (host.attach_container, host.detach_container):
        with pytest.raises(ConfigError, match="host_ifname"):
            fn(ctx(), bad)


@pytest.mark.parametrize("obj", ["/etc/passwd", "/nonexistent/crossnet_tc.o", 3])
def test_only_a_crossnet_object_is_loaded(obj, monkeypatch):
    monkeypatch.setattr(host, "load", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ApplyError, match="is not a crossnet_tc.o file"):
        host.BpfPrograms("/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef", obj).ensure(None)


def test_a_record_of_ebpf_resources_reads_back_in_a_process_that_never_imported_them():
    """`crossnet status` / `reset` read applied.json before anything imports crossnet.ebpf
    (kept out of the attach path for start-up time): plan.resources.LAZY_KINDS names the
    module of each of its kinds, and from_json imports it."""
    import subprocess
    import sys

    from crossnet.ebpf import host as ebpf_host
    from crossnet.plan.resources import LAZY_KINDS

    kinds = {c.kind for c in (ebpf_host.BpfPrograms, ebpf_host.BpfConfig, ebpf_host.TcProgram)}
    assert {k for k, m in LAZY_KINDS.items() if m == "crossnet.ebpf.host"} == kinds
    record = ebpf_host.TcProgram("eth0", "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef",
                                 "cn_to_container").to_json()
    code = ("import json, sys; from crossnet.plan.resources import Resource; "
            "assert 'crossnet.ebpf.host' not in sys.modules; "
            f"r = Resource.from_json(json.loads({json.dumps(json.dumps(record))})); print(type(r).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "TcProgram"


class _Msg(dict):
    """A tc filter dump message: info = pref << 16 | protocol (network order), handle, attrs."""

    def __init__(self, pref: int, proto: int, handle: int, kind: str, name: str | None = None, chain: int = 0):
        super().__init__(info=pref << 16 | int.from_bytes(proto.to_bytes(2, "big"), "little"), handle=handle)
        self.attrs = {"TCA_KIND": kind, "TCA_OPTIONS": _Msg.Opts(name) if name is not None else None,
                      "TCA_CHAIN": chain}

    def get_attr(self, name):
        return self.attrs.get(name)

    class Opts:
        def __init__(self, name):
            self.name = name

        def get_attr(self, name):
            return self.name if name == "TCA_BPF_NAME" else None


class _Ipr:
    def __init__(self, filters, clsact: bool = False):
        self.filters, self.calls, self.clsact = filters, [], clsact
        self.dumps: list[str] = []

    def get_filters(self, index, parent):
        self.dumps.append("filters")
        return list(self.filters) if parent == host.TC_INGRESS else []

    def get_qdiscs(self, index):
        self.dumps.append("qdiscs")
        return [_Msg(0, 0, 0, "clsact")] if self.clsact else []

    def tc(self, *args, **kw):
        if args[:2] == ("add", "clsact") and self.clsact:
            raise NetlinkError(errno.EEXIST)
        self.calls.append(args)
        if args[:2] == ("add", "clsact"):
            self.clsact = True


OURS = [_Msg(1000, 3, 0, "bpf"), _Msg(1000, 3, 1, "bpf", "crossnet:cn_to_container:42")]


@pytest.mark.parametrize("filters, found", [
    (OURS, []),
    ([_Msg(10, 0x800, 0, "bpf"), _Msg(10, 0x800, 1, "bpf", "adm.o:[drop]"), *OURS], []),  # another pref
    ([_Msg(1000, 3, 0, "bpf"), _Msg(1000, 3, 1, "bpf", "adm.o:[pass]")], ["bpf handle 0x1 protocol 0x0003 'adm.o:[pass]'"]),
    ([*OURS, _Msg(1000, 3, 2, "bpf", "crossnot:x")], ["bpf handle 0x2 protocol 0x0003 'crossnot:x'"]),
    ([_Msg(1000, 0x800, 0, "bpf"), _Msg(1000, 0x800, 7, "bpf", "adm.o:[pass]")],
     ["bpf handle 0x7 protocol 0x0800 'adm.o:[pass]'"]),  # another protocol: the kernel would refuse ours
    ([_Msg(1000, 3, 0, "matchall"), _Msg(1000, 3, 1, "matchall")], ["matchall handle 0x1 protocol 0x0003"]),
    # pref 1000 in another chain: its own priority list, crossnet's replace/del act on chain 0 only
    ([_Msg(1000, 3, 0, "bpf", chain=1), _Msg(1000, 3, 1, "bpf", "adm.o:[pass]", chain=1), *OURS], []),
    ([_Msg(1000, 0x800, 0, "bpf", chain=7), _Msg(1000, 0x800, 7, "bpf", "adm.o:[pass]", chain=7)], []),
    ([_Msg(1000, 3, 1, "bpf", "adm.o:[pass]", chain=1), _Msg(1000, 3, 0, "bpf"), _Msg(1000, 3, 1, "bpf", "adm.o:[drop]")],
     ["bpf handle 0x1 protocol 0x0003 'adm.o:[drop]'"]),
], ids=["ours", "other-pref", "same-handle", "crossnot", "other-protocol", "matchall", "chain-1", "chain-7-ip",
        "chain-0-only"])
def test_foreign_filters_at_crossnets_priority(filters, found):
    assert host.foreign_filters(_Ipr(filters), 5) == found


def test_a_filter_named_like_crossnets_in_another_chain_is_not_crossnets():
    """crossnet's filter is chain 0's pref 1000: one of that name in chain 1 is not it (tc_attached
    false: apply puts crossnet's in place; tc_detach deletes nothing)."""
    ipr = _Ipr([_Msg(1000, 3, 0, "bpf", chain=1), _Msg(1000, 3, 1, "bpf", "crossnet:cn_to_container:42", chain=1)])
    assert not host.tc_attached(ipr, 5, "cn_to_container", 42)
    host.tc_detach(ipr, 5, remove_clsact=False)
    assert ipr.calls == []
    assert host.tc_attached(_Ipr(OURS), 5, "cn_to_container", 42)


def test_a_filters_chain_is_read_from_the_kernels_message():
    """pyroute2 (0.9) does not decode TCA_CHAIN; crossnet reads it from the message's bytes
    (a real dump message built here: nlmsghdr, tcmsg, TCA_KIND, TCA_CHAIN); none: chain 0."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    from crossnet.netlink.const import TCA_CHAIN

    def message(*attrs: tuple[int, bytes]) -> tcmsg:
        body = struct.pack("=BxxxiIII", 0, 5, 1, host.TC_INGRESS, 1000 << 16 | 0x0300)
        for kind, value in attrs:
            body += struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)
        data = struct.pack("=IHHII", 16 + len(body), 44, 2, 1, 0) + body
        msg = tcmsg(b"\0" * 8 + data, offset=8)  # as in a dump: one message of a larger buffer
        msg.decode()
        return msg

    assert host._chain(message((1, b"bpf\0"), (TCA_CHAIN, struct.pack("=I", 3)))) == 3
    assert host._chain(message((TCA_CHAIN, struct.pack("=I", 0)), (1, b"bpf\0"))) == 0
    assert host._chain(message((1, b"bpf\0"))) == 0


def test_tc_attach_dumps_the_filters_once_and_no_qdisc(monkeypatch):
    """tc_attach read the device twice (the ingress filters, then the qdiscs to see whether
    clsact is there): one filter dump is enough, `add clsact` answers EEXIST when it is
    there. Same outcome: clsact added (and said so) only when missing, crossnet's filter
    replaced."""
    monkeypatch.setattr(host, "_pinned", lambda path: contextlib.nullcontext(9))
    monkeypatch.setattr(host.bpfsys, "prog_id", lambda fd: 43)
    for had in (False, True):
        ipr = _Ipr(OURS, clsact=had)
        added = host.tc_attach(ipr, 5, "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef",
                               "cn_to_container", "eth0")
        assert ipr.dumps == ["filters"]
        assert added is (not had) and ipr.clsact
        assert ipr.calls[-1] == ("replace-filter", "bpf", 5, host.TC_HANDLE)
        assert ipr.calls[:-1] == ([] if had else [("add", "clsact", 5)])


def test_tc_attach_refuses_a_foreign_filter_before_any_change(monkeypatch):
    monkeypatch.setattr(host, "_pinned", lambda path: pytest.fail("opened a pin"))
    ipr = _Ipr([_Msg(1000, 3, 1, "bpf", "adm.o:[pass]")])
    with pytest.raises(ApplyError) as err:
        host.tc_attach(ipr, 5, "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef", "cn_to_container", "eth0")
    assert str(err.value).startswith("ebpf: eth0 ingress already has a tc filter crossnet did not create at "
                                     "crossnet's priority (pref 1000): bpf handle 0x1 protocol 0x0003 'adm.o:[pass]'; ")
    assert ipr.calls == []


def test_tc_program_preflight_and_status_drift_name_the_foreign_filter():
    """Recorded or not, a foreign filter at crossnet's priority is refused before anything
    changes (apply, --dry-run), and status' drift line says so instead of promising a repair."""
    from types import SimpleNamespace

    from crossnet.host import drift_line
    from crossnet.plan.env import Env

    res = host.TcProgram("eth0", "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef", "cn_to_container")
    env = Env(_Ipr([_Msg(1000, 3, 0, "bpf"), _Msg(1000, 3, 1, "bpf", "adm.o:[pass]")]))
    env._cache["links"] = {"eth0": SimpleNamespace(index=5)}
    want = ("ebpf: eth0 ingress already has a tc filter crossnet did not create at crossnet's priority (pref 1000): "
            "bpf handle 0x1 protocol 0x0003 'adm.o:[pass]'; crossnet does not replace or delete filters it did not "
            "create: move it to another pref (`tc filter show dev eth0 ingress`), then apply again")
    for owned in (set(), {res.key()}):
        with pytest.raises(ApplyError) as err:
            res.preflight(env, owned)
        assert str(err.value) == want
    assert drift_line(res, env) == f"{res.describe()}  # apply refuses: {want}"
    env.ipr.filters = OURS
    res.preflight(env, set())
    assert res.conflict(env) is None and drift_line(res, env) == res.describe()
    assert env.ipr.calls == []


def test_remove_host_removes_only_that_hosts_pin_directories(monkeypatch, tmp_path):
    """`lab down` frees a host's pins without `reset`: every `<16 hex>` pin directory of
    that host (an upgrade leaves two), nothing else of it, nothing of another host."""
    monkeypatch.setattr(host, "BASE", tmp_path / "crossnet")
    mine, theirs = host.host_dir(str(tmp_path / "a")), host.host_dir(str(tmp_path / "b"))
    for base in (mine, theirs):
        for obj in ("0123456789abcdef", "fedcba9876543210"):
            for sub, pin in (("progs", "cn_from_container"), ("maps", "cn_config")):
                (base / obj / sub).mkdir(parents=True)
                (base / obj / sub / pin).write_text("")
    (mine / "notes").mkdir()  # not a pin directory: stays, and so does the host's directory
    assert host.remove_host(str(tmp_path / "a")) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes"]
    assert sorted(p.name for p in theirs.iterdir()) == ["0123456789abcdef", "fedcba9876543210"]
    (mine / "notes").rmdir()
    assert host.remove_host(str(tmp_path / "a")) == 0 and not mine.exists()
    assert host.remove_host(str(tmp_path / "never")) == 0


# ---------------------------------------------------------------- the programs' own VXLAN (backend vxlan)

VTEP_PIN = "/sys/fs/bpf/crossnet/0123456789abcdef/0123456789abcdef"


def test_vtep_round_trip_and_describe():
    r = host.BpfVtep(VTEP_PIN, "cnvx7", "10.1.2.0", "192.168.1.2")
    back = Resource.from_json(r.to_json())
    assert back == r and back.key() == "ebpf-vtep:cnvx7:10.1.2.0"
    assert r.describe() == (f"bpftool map update pinned {VTEP_PIN}/maps/cn_vteps key hex <ifindex of cnvx7, "
                            "4 bytes little endian> 0a 01 02 00 value hex c0 a8 01 02  # 10.1.2.0 -> 192.168.1.2")


class VtepEnv:
    ipr = None

    def __init__(self, index_of):
        self.index_of = index_of

    def index(self, name):
        return self.index_of.get(name)

    def require_index(self, name):
        return self.index_of[name]


@pytest.fixture
def vtep_map(monkeypatch):
    cells: dict[bytes, bytes] = {}

    @contextlib.contextmanager
    def pinned(path):
        assert path.endswith("/maps/cn_vteps")
        yield 99

    monkeypatch.setattr(host, "_pinned", pinned)
    monkeypatch.setattr(host.bpfsys, "map_lookup", lambda fd, k, size: cells.get(k))
    monkeypatch.setattr(host.bpfsys, "map_update", lambda fd, k, v: cells.__setitem__(k, v))
    monkeypatch.setattr(host.bpfsys, "map_delete", lambda fd, k: cells.pop(k, None))
    monkeypatch.setattr(host.bpfsys, "map_keys", lambda fd, size: list(cells))
    return cells


def test_vtep_ensure_check_remove(vtep_map):
    env = VtepEnv({"cnvx7": 9})
    r = host.BpfVtep(VTEP_PIN, "cnvx7", "10.1.2.0", "192.168.1.2")
    assert not r.check(env)
    r.ensure(env)
    assert r.check(env)
    assert vtep_map == {maps.vtep_key(9, ipaddress.IPv4Address("10.1.2.0")): bytes([192, 168, 1, 2])}
    moved = host.BpfVtep(VTEP_PIN, "cnvx7", "10.1.2.0", "192.168.1.3")  # the peer's new underlay address
    assert not moved.check(env)
    moved.ensure(env)
    assert moved.check(env) and not r.check(env) and len(vtep_map) == 1
    moved.remove(env)
    assert vtep_map == {}
    assert not r.check(VtepEnv({}))  # no device: never in place
    r.remove(VtepEnv({}))  # nothing to do


def test_vteps_of_devices_the_configuration_no_longer_names_are_pruned(vtep_map):
    for idx in (5, 6):
        vtep_map[maps.vtep_key(idx, ipaddress.IPv4Address("10.1.2.0"))] = bytes(4)
    host.prune_vteps(VTEP_PIN, {6})
    assert list(vtep_map) == [maps.vtep_key(6, ipaddress.IPv4Address("10.1.2.0"))]
    host.prune_vteps(VTEP_PIN, set())  # no vxlan device of the programs' own: none left
    assert vtep_map == {}


@pytest.mark.parametrize("dev,nexthop,underlay", [("bad name!", "10.1.2.0", "192.168.1.2"),
                                                  ("cnvx7", "10.1.2.300", "192.168.1.2"),
                                                  ("cnvx7", "10.1.2.0", None), ("cnvx7", 5, "192.168.1.2")])
def test_a_hostile_vtep_record_is_refused_before_the_map(vtep_map, dev, nexthop, underlay):
    r = host.BpfVtep(VTEP_PIN, dev, nexthop, underlay)
    with pytest.raises(ApplyError, match="ebpf: bad VTEP entry"):
        r.ensure(VtepEnv({"cnvx7": 9, "bad name!": 3}))
    assert vtep_map == {} and not r.check(VtepEnv({"cnvx7": 9}))


@pytest.mark.parametrize("local,port", [("192.168.1.300", 4789), ("192.168.1.1", 0), ("192.168.1.1", 70000),
                                        ("192.168.1.1", "4789"), (None, 4789), (3232235777, 4789)])
def test_a_hostile_encapsulation_record_is_refused(local, port):
    cfg = host.BpfConfig(VTEP_PIN, "10.1.0.0/16", "eth0", "cnvx7", vni=7, local=local, port=port)
    with pytest.raises(ApplyError, match="ebpf: bad vxlan encapsulation"):
        cfg.describe()


def test_backend_vxlan_peers_get_a_vtep_only_when_the_programs_run(monkeypatch, tmp_path):
    from crossnet import datapath
    from crossnet.backends.base import Peer
    from crossnet.backends.vxlan import Vxlan

    obj = tmp_path / "crossnet_tc.o"
    obj.write_bytes(b"\x7fELF")
    monkeypatch.setattr(build, "find_object", lambda build=True: (obj, None))
    peer = Peer("h2", ipaddress.IPv4Address("192.168.1.2"), ipaddress.IPv4Network("10.1.2.0/24"), {})
    c = ctx("vxlan")
    for active, want in (("ebpf", [("cnvx7", "10.1.2.0", "192.168.1.2")]), ("kernel", [])):
        monkeypatch.setattr(datapath, "active", lambda ctx, a=active: a)
        vteps = [(r.dev, r.nexthop, r.underlay) for r in Vxlan().peer_resources(c, peer)
                 if isinstance(r, host.BpfVtep)]
        assert vteps == want, active
    monkeypatch.setattr(datapath, "active", lambda ctx: "ebpf")
    assert datapath.vtep_resources(ctx("auto"), "cnvx7", "10.1.2.0", "192.168.1.2") == []  # auto: the device's


@given(st.sets(st.integers(1, 500), max_size=12), st.sets(st.integers(1, 500), max_size=12),
       st.sets(st.integers(501, 600), max_size=4))
def test_stale_veth_entries_go_and_an_attach_meanwhile_keeps_its_entry(entries, live, attached_meanwhile):
    """_prune_veth_entries (detach's forget_veth, apply's prune_veths): an entry whose
    index is not a present veth goes, every other stays; an attach that runs while the
    interfaces are read (its veth made, then its entry written) keeps its entry, which a
    key list read after the interfaces would have taken for stale."""
    cells = {i.to_bytes(4, "little") for i in entries}

    def present() -> set[int]:
        for i in attached_meanwhile:  # a concurrent attach: the veth, then its entry
            cells.add(i.to_bytes(4, "little"))
        return set(live)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpfsys, "map_keys", lambda fd, size: sorted(cells))
        mp.setattr(bpfsys, "map_delete", lambda fd, key: cells.discard(key))
        host._prune_veth_entries(7, present)
    assert {int.from_bytes(k, "little") for k in cells} == (entries & live) | attached_meanwhile
