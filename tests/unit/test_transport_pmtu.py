"""crossnet.transport.pmtu without the kernel: the container MTU from measured paths,
narrow peers, the applied.json record (peers that left or moved do not count, hostile
values ignored), status annotations, and --probe-mtu refused where there is no path."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossnet.backends import get_backend
from crossnet.backends.base import HostContext, Peer
from crossnet.errors import ConfigError
from crossnet.transport import pmtu


def ctx_for(backend: str = "vxlan", underlay: int = 1500, peers=("h2", "h3")) -> HostContext:
    b = get_backend(backend)
    return HostContext(
        cluster_name="c", backend=backend, host="h1", address=IPv4Address("10.0.1.2"), iface="eth0",
        subnet=IPv4Network("10.32.0.0/24"), network=IPv4Network("10.32.0.0/16"), gateway=IPv4Address("10.32.0.1"),
        prefixlen=24, bridge="cn0", underlay_mtu=underlay, mtu=underlay - b.overhead, masquerade=False,
        peers=[Peer(n, IPv4Address(f"10.0.{i + 2}.2"), IPv4Network(f"10.32.{i + 1}.0/24")) for i, n in enumerate(peers)],
    )


def record(**paths) -> dict:
    addr = {"h2": "10.0.2.2", "h3": "10.0.3.2", "h4": "10.0.4.2"}
    return {"measured_at": 1.0, "underlay_mtu": 1500,
            "peers": {n: {"address": addr[n], "path_mtu": m, "error": None} for n, m in paths.items()}}


def test_transport_overheads():
    assert pmtu.transport_overhead(get_backend("vxlan")) == 50
    assert pmtu.transport_overhead(get_backend("wireguard")) == 60  # IPv4 underlay
    assert pmtu.transport_overhead(get_backend("host-gw")) == 0
    assert pmtu.transport_overhead(get_backend("ovs-gre")) == 38
    assert pmtu.probed("vxlan") and pmtu.probed("host-gw") and pmtu.probed("wireguard") and not pmtu.probed("bridge")


@pytest.mark.parametrize(("backend", "want"), [("vxlan", 1350), ("wireguard", 1340), ("host-gw", 1400)])
def test_narrow_peer_sets_the_container_mtu(backend, want):
    ctx = ctx_for(backend)
    kept = pmtu.adjust(ctx, get_backend(backend), record(h2=1400, h3=1500))
    assert ctx.mtu == want and set(kept["peers"]) == {"h2", "h3"}


@given(underlay=st.integers(576, 9000), paths=st.lists(st.one_of(st.none(), st.integers(576, 9000)), max_size=6),
       backend=st.sampled_from(["vxlan", "wireguard", "host-gw", "ovs-gre", "ovs-vxlan"]))
def test_container_mtu_is_the_smallest_path_minus_overhead_never_above_the_underlay(underlay, paths, backend):
    b = get_backend(backend)
    ov = pmtu.transport_overhead(b)
    configured = underlay - b.overhead
    got = pmtu.container_mtu(underlay, configured, {f"p{i}": m for i, m in enumerate(paths)}, ov)
    measured = [m for m in paths if m]
    if not measured:
        assert got == configured
    else:
        assert got == min(underlay, *measured) - ov
        assert got + ov <= underlay and all(got + ov <= m for m in measured)


def test_narrow_peers_are_those_below_the_underlay():
    assert pmtu.narrow_peers(1500, {"h3": 1500, "h2": 1400, "h4": None}) == {"h2": 1400}
    assert pmtu.narrow_peers(1400, {"h2": 1400}) == {}


def test_record_of_a_peer_that_left_or_moved_or_is_hostile_does_not_count():
    ctx = ctx_for()
    rec = record(h2=1400, h3=1500, h4=600)  # h4 is no longer a peer
    rec["peers"]["h3"]["address"] = "10.9.9.9"  # h3 moved: its old measurement is not its path
    assert pmtu.paths_of(rec, ctx) == {"h2": 1400}
    for bad in (True, "1400", 10, 70000, 1400.5, None):
        rec = record(h2=bad)
        assert pmtu.paths_of(rec, ctx) == {"h2": None}
    for junk in (None, {}, {"peers": None}, {"peers": []}, [], "x"):
        assert pmtu.paths_of(junk, ctx) == {}
    ctx2 = ctx_for()
    assert pmtu.adjust(ctx2, get_backend("vxlan"), record(h2=True)) is not None and ctx2.mtu == 1450


def test_no_record_changes_nothing():
    ctx = ctx_for()
    assert pmtu.adjust(ctx, get_backend("vxlan"), None) is None and ctx.mtu == 1450
    assert pmtu.for_apply(ctx, get_backend("vxlan"), {"host": "h1"}, probe=False) is None and ctx.mtu == 1450


def test_the_last_record_is_used_without_probing():
    ctx = ctx_for()
    kept = pmtu.for_apply(ctx, get_backend("vxlan"), {"path_mtu": record(h2=1400, h4=600)}, probe=False)
    assert ctx.mtu == 1350 and set(kept["peers"]) == {"h2"}


def test_probe_mtu_is_refused_for_the_bridge_backend():
    ctx = ctx_for("bridge")
    with pytest.raises(ConfigError, match=r"^--probe-mtu: "):
        pmtu.for_apply(ctx, get_backend("bridge"), None, probe=True)


def test_status_info_flags_narrow_peers_with_the_number():
    ctx = ctx_for()
    rows = [{"name": "h2"}, {"name": "h3"}]
    info = pmtu.status_info({"path_mtu": record(h2=1400, h3=1500)}, ctx, rows)
    assert info == {"path_mtu_measured_at": 1.0, "narrow_peers": [{"name": "h2", "path_mtu": 1400}]}
    assert rows == [{"name": "h2", "path_mtu": 1400, "narrow": True}, {"name": "h3", "path_mtu": 1500, "narrow": False}]
    rows = [{"name": "h2"}]
    assert pmtu.status_info({}, ctx, rows) == {"path_mtu_measured_at": None, "narrow_peers": []} and rows == [{"name": "h2"}]


def test_monitor_measures_calls_changed_once_and_wakes_on_poke(monkeypatch):
    import threading
    import time

    ctx = ctx_for()
    calls: list[int] = []
    paths = iter([{"h2": 1400, "h3": 1500}, {"h2": 1400, "h3": 1500}, {"h2": 1500, "h3": 1500}])

    def fake_measure(c, **kw):
        got = next(paths, None)
        calls.append(1)
        return record(**got) if got else record(h2=1500, h3=1500)

    monkeypatch.setattr(pmtu, "measure", fake_measure)
    mon = pmtu.Monitor(interval=3600)
    stop = threading.Event()
    changed: list[int] = []

    def on_change():
        changed.append(1)
        ctx.mtu = pmtu.container_mtu(ctx.underlay_mtu, 1450, pmtu.paths_of(mon.record, ctx), 50)  # as the agent's resync

    t = threading.Thread(target=mon.run, args=(lambda: ctx, get_backend("vxlan"), on_change, stop), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert calls == [1] and changed == [1] and ctx.mtu == 1350  # first measurement: lower
    mon.poke()  # a peer joined: measured again at once (not after the hour), same paths: no change
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert changed == [1]
    mon.poke()  # the narrow link is gone: back up
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert changed == [1, 1] and ctx.mtu == 1450
    stop.set()
    mon.poke()  # it sleeps until its next round or a poke (no periodic wakeup): stopping pokes
    t.join(timeout=5)
    assert not t.is_alive()


def test_monitor_resumes_from_the_last_record(tmp_path):
    from crossnet.state import StateDir

    state = StateDir(str(tmp_path / "state"))
    assert pmtu.Monitor.resume(state, 60).record is None
    state.save_applied({"host": "h1", "path_mtu": record(h2=1400)})
    assert pmtu.Monitor.resume(state, 60).record == record(h2=1400)


# ---- backend auto: one container MTU for every transport a peer may move to ---------------
def auto_ctx(keys: dict[str, bool], encrypt: bool = False, underlay: int = 1500) -> HostContext:
    from crossnet.wg.keys import generate_private, public_of

    c = ctx_for("vxlan", underlay, peers=tuple(keys))
    c.backend, c.auto, c.mtu = "auto", {"encrypt": encrypt}, underlay - get_backend("auto").overhead
    for p in c.peers:
        p.data = {"wireguard_key": public_of(generate_private())} if keys[p.name] else {}
    return c


@pytest.mark.parametrize(("keys", "encrypt", "paths", "want"), [
    # every peer may fall back to WireGuard (the usual case: every host publishes a key): IPv4 60
    ({"h2": True, "h3": True}, False, {"h2": 1400, "h3": 1500}, 1340),
    ({"h2": True, "h3": True}, False, {"h2": 1500, "h3": 1500}, 1440),
    # no peer has a key: only direct / vxlan possible: 50
    ({"h2": False, "h3": False}, False, {"h2": 1400, "h3": 1500}, 1350),
    # the narrow peer has no key (vxlan at most: 1400 - 50), the wide one may use WireGuard (1500 - 60)
    ({"h2": False, "h3": True}, False, {"h2": 1400, "h3": 1500}, 1350),
    # the narrow peer may use WireGuard: 1400 - 60
    ({"h2": True, "h3": False}, False, {"h2": 1400, "h3": 1500}, 1340),
    # a peer not measured (None) may still use WireGuard up to the underlay: 1500 - 60
    ({"h2": False, "h3": True}, False, {"h2": 1500, "h3": None}, 1440),
    # encrypt: every peer on WireGuard
    ({"h2": True, "h3": True}, True, {"h2": 1400, "h3": 1500}, 1340),
])
def test_auto_sizes_containers_for_every_transport_a_peer_may_use(keys, encrypt, paths, want):
    c = auto_ctx(keys, encrypt)
    pmtu.adjust(c, get_backend("auto"), record(**paths))
    assert c.mtu == want
    # the rule: every candidate transport of every measured peer carries a full container packet
    from crossnet.backends.auto import peer_candidates

    for p in c.peers:
        path = paths[p.name] or c.underlay_mtu
        for t in peer_candidates(c, p, on_link_=True):
            assert c.mtu + pmtu.TRANSPORT_OVERHEAD[t] <= min(path, c.underlay_mtu), (p.name, t)


def test_auto_without_a_measurement_keeps_the_static_overhead():
    c = auto_ctx({"h2": True, "h3": True})
    assert pmtu.adjust(c, get_backend("auto"), None) is None and c.mtu == 1420  # 1500 - 80 (IPv6 worst case)


@given(underlay=st.integers(576, 9000), paths=st.lists(st.one_of(st.none(), st.integers(576, 9000)), min_size=1,
                                                       max_size=3),
       keys=st.lists(st.booleans(), min_size=3, max_size=3), encrypt=st.booleans())
def test_auto_container_mtu_fits_every_candidate_of_every_peer(underlay, paths, keys, encrypt):
    from crossnet.backends.auto import peer_candidates

    names = ("h2", "h3", "h4")[:len(paths)]
    c = auto_ctx(dict(zip(names, keys)), encrypt, underlay)
    pmtu.adjust(c, get_backend("auto"), record(**dict(zip(names, paths))))
    overheads = []
    for p, m in zip(c.peers, paths):
        worst = max(pmtu.TRANSPORT_OVERHEAD[t] for t in peer_candidates(c, p, on_link_=True))
        overheads.append(worst)
        if m:
            assert c.mtu + worst <= max(min(m, underlay), pmtu.MIN_PATH_MTU)
        assert c.mtu + worst <= underlay
    measured = [m for m in paths if m]
    if not measured:
        assert c.mtu == underlay - get_backend("auto").overhead
    else:  # and no smaller than needed: one peer's bound is met exactly
        bounds = [underlay - max(overheads)] + [max(min(m, underlay), pmtu.MIN_PATH_MTU) - o
                                                for m, o in zip(paths, overheads) if m]
        assert c.mtu == min(bounds)


def test_the_probers_full_size_probes_use_the_measured_container_mtu(tmp_path):
    """The agent's full sync sets ctx.mtu from the record (pmtu.adjust); the prober probes
    every candidate of every peer at exactly that size, don't-fragment."""
    import threading

    from crossnet.transport.prober import Prober

    c = auto_ctx({"h2": True, "h3": True})
    pmtu.adjust(c, get_backend("auto"), record(h2=1400, h3=1500))
    sent = []

    def echo(dst, size, *, timeout, df=True, netns=None, src=None):
        sent.append((dst, size, df))
        return 0.0005

    p = Prober(tmp_path, lambda: c, lambda: [IPv4Network("10.0.1.0/24")], lambda s: None, threading.Event(), echo=echo)
    for pe in c.peers:
        p.annotate(pe)
    p.round()
    assert len(sent) == 4 and {(s, df) for _d, s, df in sent} == {(1340, True)}


# ---------------------------------------------------------------- the agent's default


class _ConfigStore:
    def __init__(self, backend: str):
        from crossnet.netmodel import NetworkConfig

        self.cfg = NetworkConfig(network="10.32.0.0/16", backend=backend)

    def get_config(self):
        return self.cfg


@pytest.mark.parametrize("backend,flag,probes", [
    ("auto", None, True), ("auto", False, False), ("auto", True, True),
    ("vxlan", None, False), ("vxlan", True, True), ("wireguard", None, False), ("host-gw", None, False),
])
def test_the_agent_probes_by_default_for_auto_only(tmp_path, backend, flag, probes):
    from ipaddress import IPv4Address

    from crossnet.agent.core import Agent, AgentOptions
    from crossnet.state import StateDir

    agent = Agent(_ConfigStore(backend), StateDir(tmp_path), AgentOptions(name="h1", api=False, probe_mtu=flag))
    agent.address = IPv4Address("192.0.2.1")
    agent._load_config()
    assert (agent.pmtu is not None) is probes
    assert pmtu.probes_by_default(backend) is (backend == "auto")


def test_agent_help_names_the_default():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "crossnet", "agent", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "--probe-mtu / --no-probe-mtu" in out and "on for backend auto" in " ".join(out.split())
