"""crossnet.trace.ebpf: the eBPF programs' counters as trace hops (pure part, fakes)."""

from __future__ import annotations

from types import SimpleNamespace

from crossnet.ebpf import host as ebpf_host
from crossnet.ebpf.maps import summarise
from crossnet.trace import ebpf as trace_ebpf
from crossnet.trace.model import Hop


def pairs(**values: int) -> dict[str, tuple[int, int]]:
    return {k: (v, 0) for k, v in summarise(values).items()}


def test_one_hop_per_host_after_its_last_hop():
    hops = [Hop("h1", "veth1", "veth", "a"), Hop("h1", "eth0", "nic", "b"), Hop("h2", "eth0", "nic", "c"),
            Hop("h2", "veth9", "veth", "d")]
    before = {"ebpf:h1": pairs(redirect_neigh=10, pass_ttl=1), "ebpf:h2": pairs()}
    after = {"ebpf:h1": pairs(redirect_neigh=13, redirect_peer=3, pass_ttl=2),
             "ebpf:h2": pairs(redirect_peer=3, redirect_neigh=3), "h1-view": {}}
    trace_ebpf.add_hops(hops, before, after)
    assert [(h.host, h.kind) for h in hops] == [("h1", "veth"), ("h1", "nic"), ("h1", "ebpf"), ("h2", "nic"),
                                                ("h2", "veth"), ("h2", "ebpf")]
    h1 = hops[2]
    assert h1.detail == "tc eBPF: 6 redirected (neigh 3, peer 3), 1 passed to the stack"
    assert h1.note == "passed to the stack: ttl 1"
    assert h1.extra["ebpf"]["redirect"] == 6 and h1.moved is None and h1.expect is None
    assert hops[5].note is None and hops[5].detail.startswith("tc eBPF: 6 redirected")


def test_host_without_hops_or_before_reading():
    hops = [Hop("h1", "eth0", "nic", "b")]
    trace_ebpf.add_hops(hops, {}, {"ebpf:h3": pairs(redirect_peer=1)})
    assert len(hops) == 1  # no reading before the probe: no delta, no hop
    trace_ebpf.add_hops(hops, {"ebpf:h3": pairs()}, {"ebpf:h3": pairs(redirect_peer=1)})
    assert [(h.host, h.kind) for h in hops] == [("h1", "nic"), ("h3", "ebpf")]


def test_counter_sources_only_for_hosts_with_programs(monkeypatch):
    monkeypatch.setattr(ebpf_host, "loaded", lambda sd: sd == "/s/h1")
    monkeypatch.setattr(ebpf_host, "counters_at", lambda sd: summarise({"redirect_peer": 4}))
    hosts = {"h1": SimpleNamespace(name="h1", state_dir=None, ctx=SimpleNamespace(state_dir="/s/h1")),
             "h2": SimpleNamespace(name="h2", state_dir="/s/h2", ctx=SimpleNamespace(state_dir="/s/h2"))}
    sources = trace_ebpf.counter_sources(hosts)
    assert list(sources) == ["ebpf:h1"]
    assert sources["ebpf:h1"]()["redirect_peer"] == (4, 0)


def test_a_veth_the_fast_path_bypassed_is_not_a_failure_when_the_program_counted_the_probe():
    """bpf_redirect_peer puts a packet straight into the container: the host side of its
    veth never transmits it. With the probe's 5 requests redirected into containers on h2,
    h2's host-side veth hop (expect tx, not moved) is noted as bypassed, not failed; with
    fewer redirects (the probe did not take the fast path) it stays a failure."""
    def path() -> list[Hop]:
        return [Hop("h2", "eth0", "nic", "n", expect="rx", moved=True),
                Hop("h2", "cnv1", "veth", "host side", expect="tx", moved=False, note="tx counter did not move"),
                Hop("h2", "eth0", "veth", "container", expect="rx", moved=True)]

    hops = path()
    trace_ebpf.add_hops(hops, {"ebpf:h2": pairs()}, {"ebpf:h2": pairs(redirect_peer=5)}, sent=5)
    assert hops[1].expect is None and hops[1].moved is None and "bypassed" in hops[1].note
    assert hops[0].expect == "rx" and hops[2].expect == "rx"  # the others still count
    short = path()
    trace_ebpf.add_hops(short, {"ebpf:h2": pairs()}, {"ebpf:h2": pairs(redirect_peer=2)}, sent=5)
    assert short[1].expect == "tx" and short[1].moved is False


def test_vxlan_hops_the_programs_own_encapsulation_bypassed():
    """Backend vxlan with datapath ebpf: the sender's program wraps the probe itself and
    hands it to the NIC (the vxlan device's tx stays), the receiver's NIC program takes the
    header off and puts it into the container (the device's rx and the container veth's
    host side stay). With the probe's 5 requests counted so, those hops are bypassed; the
    NIC hops still count; with fewer, they stay failures."""
    def path() -> list[Hop]:
        return [Hop("h1", "cnvx1", "vxlan", "encap", expect="tx", moved=False),
                Hop("h1", "eth0", "nic", "out", expect="tx", moved=True),
                Hop("h2", "eth0", "nic", "in", expect="rx", moved=True),
                Hop("h2", "cnvx1", "vxlan", "decap", expect="rx", moved=False),
                Hop("h2", "cnv1", "veth", "host side", expect="tx", moved=False)]

    hops = path()
    trace_ebpf.add_hops(hops, {"ebpf:h1": pairs(), "ebpf:h2": pairs()},
                        {"ebpf:h1": pairs(redirect_encap=5), "ebpf:h2": pairs(redirect_decap=5)}, sent=5)
    real = [h for h in hops if h.kind != "ebpf"]
    assert [h.expect for h in real] == [None, "tx", "rx", None, None]
    assert "encapsulated" in real[0].note and "VXLAN header" in real[3].note and "straight into" in real[4].note
    h2 = next(h for h in hops if h.kind == "ebpf" and h.host == "h2")
    assert "decap 5" in h2.detail and h2.extra["ebpf"]["redirect"] == 5
    short = path()
    trace_ebpf.add_hops(short, {"ebpf:h1": pairs(), "ebpf:h2": pairs()},
                        {"ebpf:h1": pairs(redirect_encap=4), "ebpf:h2": pairs(redirect_decap=4)}, sent=5)
    assert [h.expect for h in short if h.kind != "ebpf"] == ["tx", "tx", "rx", "rx", "tx"]
