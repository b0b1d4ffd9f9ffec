"""End to end: the bridge backend takes over only what it owns, moves the NIC's
configuration faithfully or refuses it, and survives being killed at any point.

Real lab namespaces (the `make_lab` fixture removes them even when a test fails);
nothing here touches the root namespace. The kill tests use crossnet's test hook
CROSSNET_TEST_CRASH_AT=N (the process SIGKILLs itself at its N-th crash point) and
enumerate N until apply runs through.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import Lab

from .kstate import snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]

SYSCTLS = ("net.ipv4.ip_forward",)


def ip_json(netns: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def sh(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


def full_snapshot(netns: str) -> dict:
    """kstate.snapshot plus what it leaves out and a takeover must keep: address
    peers/broadcast/scope, IPv6 (global addresses, non-kernel routes) and sysctls."""
    snap = snapshot(netns)
    snap["addr_detail"] = sorted(
        (a["ifname"], i["local"], i["prefixlen"], i.get("address"), i.get("broadcast"), i.get("scope"))
        for a in ip_json(netns, "-4", "addr", "show") for i in a.get("addr_info", [])
    )
    snap["ipv6_addresses"] = sorted(
        (a["ifname"], i["local"], i["prefixlen"])
        for a in ip_json(netns, "-6", "addr", "show") for i in a.get("addr_info", [])
        if i.get("scope") != "link"
    )
    snap["ipv6_routes"] = sorted(
        json.dumps({k: v for k, v in r.items() if k != "flags"}, sort_keys=True)
        for r in ip_json(netns, "-6", "route", "show", "table", "all") if r.get("protocol") != "kernel"
    )
    snap["sysctls"] = {
        name: subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", name],
                             capture_output=True, text=True, check=True).stdout.strip()
        for name in SYSCTLS
    }
    return snap


def diff(before: dict, after: dict) -> list[str]:
    return [f"{k}: {before[k]!r} -> {after.get(k)!r}" for k in before if before[k] != after.get(k)]


def ping(netns: str, addr: str, count: int = 1) -> bool:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-W", "1", "-i", "0.2", "-q", addr],
        capture_output=True,
    ).returncode == 0


def run(lab: Lab, hname: str, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    return lab.run(hname, ["env", *env, sys.executable, "-m", "crossnet", *args], timeout=60)


def apply(lab: Lab, hname: str = "h1", *extra: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    return run(lab, hname, "apply", "-f", lab.plan.cluster_file, "--host", hname, *extra, crash_at=crash_at)


def state_files(lab: Lab, hname: str = "h1") -> set[str]:
    d = Path(lab.plan.host(hname).state_dir)
    return {p.name for p in d.iterdir() if p.name in ("applied.json", "journal.json")} if d.exists() else set()


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("crossnet: error: "), err
    return err


def bridge_lab(make_lab) -> Lab:
    return make_lab(hosts=2, underlay="l2", backend="bridge", containers=0, apply=False)


# ---------------------------------------------------------------- links crossnet did not create


def _foreign_link(netns: str, backend: str, name: str) -> None:
    if name == "cnvx1":
        sh(netns, "link", "add", name, "type", "vxlan", "id", "77", "dstport", "4790", "local", "127.0.0.1")
        return
    sh(netns, "link", "add", name, "type", "bridge")
    sh(netns, "link", "add", "sbxa", "type", "veth", "peer", "name", "sbxb")
    sh(netns, "link", "set", "sbxa", "master", name, "up")
    sh(netns, "link", "set", name, "up")
    sh(netns, "addr", "add", "10.123.0.1/24", "dev", name)


@pytest.mark.parametrize("backend,name", [("bridge", "br0"), ("vxlan", "cn0"), ("vxlan", "cnvx1")])
def test_a_link_crossnet_did_not_create_is_refused_and_never_touched(make_lab, backend, name):
    lab = make_lab(hosts=2, underlay="l2", backend=backend, containers=0, apply=False)
    h1 = lab.plan.host("h1")
    _foreign_link(h1.netns, backend, name)
    before = full_snapshot(h1.netns)

    for extra in (("--dry-run",), ()):
        res = apply(lab, "h1", *extra)
        assert res.returncode == 1, res.stdout + res.stderr
        err = one_line(res)
        assert f"interface {name} already exists and was not created by crossnet" in err, err
        assert diff(before, full_snapshot(h1.netns)) == []
        assert state_files(lab) == set()
    reset = run(lab, "h1", "reset")
    assert reset.returncode == 0 and "nothing to reset" in reset.stdout
    assert diff(before, full_snapshot(h1.netns)) == []  # links: same MAC, MTU, ports, state


def test_reset_never_deletes_a_link_that_replaced_crossnets(make_lab):
    """crossnet recorded br0; someone replaced it with a non-bridge of the same name:
    reset leaves that alone (and still gives the NIC its address back)."""
    lab = bridge_lab(make_lab)
    h1 = lab.plan.host("h1")
    before = full_snapshot(h1.netns)
    assert apply(lab).returncode == 0
    sh(h1.netns, "link", "del", "br0")  # also releases eth0, drops the address
    sh(h1.netns, "link", "add", "br0", "type", "veth", "peer", "name", "sbxc")
    assert run(lab, "h1", "reset").returncode == 0
    assert ip_json(h1.netns, "link", "show", "br0")
    sh(h1.netns, "link", "del", "br0")
    assert diff(before, full_snapshot(h1.netns)) == []
    assert ping(h1.netns, lab.plan.host("h2").address)


# ---------------------------------------------------------------- faithful move or refusal


def test_takeover_moves_ptp_addresses_and_routes_of_every_table_and_gives_them_back(make_lab):
    lab = bridge_lab(make_lab)
    h1, h2 = lab.plan.host("h1"), lab.plan.host("h2")
    nic = h1.ifname
    sh(h1.netns, "addr", "add", "10.66.0.1", "peer", "10.66.0.2/32", "dev", nic)
    sh(h1.netns, "route", "add", "10.98.0.0/24", "via", h1.gateway, "dev", nic, "table", "100")
    sh(h1.netns, "route", "add", "10.97.0.0/24", "via", h1.gateway, "dev", nic, "metric", "7", "mtu", "1400")
    before = full_snapshot(h1.netns)

    res = apply(lab)
    assert res.returncode == 0, res.stderr
    br0 = {(i["local"], i["prefixlen"], i.get("address")) for a in ip_json(h1.netns, "-4", "addr", "show", "dev", "br0")
           for i in a["addr_info"]}
    assert ("10.66.0.1", 32, "10.66.0.2") in br0, br0
    assert (h1.address, h1.prefixlen, None) in br0 or (h1.address, h1.prefixlen, h1.address) in br0, br0
    assert not [i for a in ip_json(h1.netns, "-4", "addr", "show", "dev", nic) for i in a.get("addr_info", [])]
    t100 = ip_json(h1.netns, "route", "show", "table", "100")
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in t100] == [("10.98.0.0/24", h1.gateway, "br0")]
    mtu = ip_json(h1.netns, "-d", "route", "show", "10.97.0.0/24")
    assert [(r["dev"], r.get("metric"), r.get("metrics")) for r in mtu] == [("br0", 7, [{"mtu": 1400}])], mtu
    assert ping(h1.netns, h2.address)

    assert run(lab, "h1", "reset").returncode == 0
    assert diff(before, full_snapshot(h1.netns)) == []
    assert ping(h1.netns, h2.address)


REFUSED = {
    "multipath": (["route", "add", "10.96.0.0/24", "nexthop", "via", "{gw}", "dev", "{nic}",
                   "nexthop", "via", "{peer}", "dev", "{nic}"], "multipath route 10.96.0.0/24"),
    "ipv6-address": (["-6", "addr", "add", "fd00:66::1/64", "dev", "{nic}", "nodad"], "IPv6 address fd00:66::1/64"),
    "ipv6-route": (["-6", "route", "add", "fd00:77::/64", "via", "fe80::1", "dev", "{nic}"],
                   "IPv6 route fd00:77::/64 via fe80::1"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_takeover_refuses_what_it_cannot_move_before_changing_anything(make_lab, case):
    lab = bridge_lab(make_lab)
    h1, h2 = lab.plan.host("h1"), lab.plan.host("h2")
    argv, named = REFUSED[case]
    sh(h1.netns, *[a.format(gw=h1.gateway, nic=h1.ifname, peer=h2.address) for a in argv])
    before = full_snapshot(h1.netns)
    for extra in (("--dry-run",), ()):
        res = apply(lab, "h1", *extra)
        assert res.returncode == 1, res.stdout + res.stderr
        err = one_line(res)
        assert named in err and h1.ifname in err and "nothing was changed" in err, err
        assert diff(before, full_snapshot(h1.netns)) == []
        assert state_files(lab) == set()


# ---------------------------------------------------------------- killed at every step


def _decorate(lab: Lab) -> None:
    """Give h1's NIC more than one address and route, so the kill lands between them."""
    h1 = lab.plan.host("h1")
    sh(h1.netns, "addr", "add", "10.66.0.1", "peer", "10.66.0.2/32", "dev", h1.ifname)
    sh(h1.netns, "route", "add", "10.98.0.0/24", "via", h1.gateway, "dev", h1.ifname, "table", "100")
    sh(h1.netns, "route", "add", "10.99.0.0/24", "via", "192.0.2.1", "dev", h1.ifname, "onlink")


@pytest.mark.parametrize("then", ["apply", "reset"])
def test_apply_killed_at_every_step_then_apply_completes_or_reset_restores(make_lab, then):
    """For N = 1, 2, ...: `apply` SIGKILLs itself at its N-th crash point (journal
    written, bridge created, NIC enslaved, each address moved, each route replayed,
    sysctl set, record saved); then either `apply` again must reach exactly the state a
    clean apply reaches, or `reset` must restore exactly the original addresses, routes,
    default route and sysctls — and h1 must reach its peer. Ends when apply runs through."""
    lab = bridge_lab(make_lab)
    h1, h2 = lab.plan.host("h1"), lab.plan.host("h2")
    _decorate(lab)
    original = full_snapshot(h1.netns)
    assert original["sysctls"]["net.ipv4.ip_forward"] == "0"
    assert apply(lab).returncode == 0
    applied = full_snapshot(h1.netns)
    assert applied["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert run(lab, "h1", "reset").returncode == 0
    assert diff(original, full_snapshot(h1.netns)) == []

    killed = 0
    for n in range(1, 80):
        res = apply(lab, crash_at=n)
        if res.returncode == 0:
            break
        assert res.returncode == -signal.SIGKILL, (n, res.returncode, res.stderr)
        killed += 1
        if then == "apply":
            again = apply(lab)
            assert again.returncode == 0, (n, again.stderr)
            assert diff(applied, full_snapshot(h1.netns)) == [], f"after a kill at step {n}, apply again"
            assert state_files(lab) == {"applied.json"}
            assert ping(h1.netns, h2.address), n
        reset = run(lab, "h1", "reset")
        assert reset.returncode == 0, (n, reset.stderr)
        assert diff(original, full_snapshot(h1.netns)) == [], f"after a kill at step {n}, {then} then reset"
        assert state_files(lab) == set()
        assert ping(h1.netns, h2.address), n
    else:
        pytest.fail("apply never ran through")
    # journal, bridge, sysctl, enslave, 2 addresses x 2, 3 routes, record: every one was hit
    print(f"apply killed at each of its {killed} steps, then {then}")
    assert killed >= 12, killed


def test_apply_killed_then_an_apply_that_fails_keeps_the_record_so_reset_restores(make_lab, tmp_path):
    """For N = 1, 2, ...: `apply` killed at its N-th crash point, then an `apply` that
    fails (nft refuses the masquerade table: an `nft` on PATH that always fails) and rolls
    back. That apply started from the killed one's journal, so it had created nothing: its
    rollback used to discard the journal, the only record of the bridge and the moved NIC
    configuration -- `reset` then did nothing and every later apply refused br0 as not
    crossnet's. Now the journal stays: `reset` restores the host exactly, h1 reaches h2."""
    lab = bridge_lab(make_lab)
    h1, h2 = lab.plan.host("h1"), lab.plan.host("h2")
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["masquerade"] = True  # an nft table in the desired list
    path = Path(lab.plan.lab_dir) / "masquerade.yaml"
    path.write_text(yaml.safe_dump(cluster))
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "nft").write_text("#!/bin/sh\necho 'Error: injected' >&2\nexit 1\n")
    (broken / "nft").chmod(0o755)
    failing = f"PATH={broken}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    original = full_snapshot(h1.netns)

    def lab_apply(*env: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
        crash = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
        return lab.run("h1", ["env", *crash, *env, sys.executable, "-m", "crossnet", "apply", "-f", str(path),
                              "--host", "h1"], timeout=60)

    took_over = 0
    for n in range(1, 80):
        res = lab_apply(crash_at=n)
        if res.returncode == 0:
            break
        assert res.returncode == -signal.SIGKILL, (n, res.returncode, res.stderr)
        took_over += any(l.get("master") == "br0" for l in ip_json(h1.netns, "link", "show", "dev", "eth0"))
        failed = lab_apply(failing)
        assert failed.returncode != 0 and "rolled back" in failed.stderr, (n, failed.stderr)
        reset = run(lab, "h1", "reset")
        assert reset.returncode == 0, (n, reset.stderr)
        assert diff(original, full_snapshot(h1.netns)) == [], f"after a kill at step {n}, a failed apply, reset"
        assert state_files(lab) == set()
        assert ping(h1.netns, h2.address), n
    else:
        pytest.fail("apply never ran through")
    assert took_over >= 3, took_over  # kills after the NIC was a port of br0 were among them
    assert run(lab, "h1", "reset").returncode == 0


def test_status_after_a_first_apply_killed_half_way_reports_it_and_its_drift(make_lab):
    """The first apply killed once the NIC is a port of br0: `status` used to say "this
    host is not configured yet (no applied.json)" (exit 1) while the host was half taken
    over. It reports the interrupted apply (from its journal) and what differs from it;
    reset then restores the host and status says not configured again."""
    lab = bridge_lab(make_lab)
    h1 = lab.plan.host("h1")
    original = full_snapshot(h1.netns)
    for n in range(1, 40):
        res = apply(lab, crash_at=n)
        assert res.returncode == -signal.SIGKILL, (n, res.returncode, res.stderr)
        if any(l.get("master") == "br0" for l in ip_json(h1.netns, "link", "show", "dev", "eth0")):
            break
        assert run(lab, "h1", "reset").returncode == 0
    else:
        pytest.fail("the NIC never became a port of br0")
    assert state_files(lab) == {"journal.json"}
    st = run(lab, "h1", "status", "-o", "json")
    assert st.returncode == 0, st.stderr
    out = json.loads(st.stdout)
    assert out["interrupted"] is True and out["backend"] == "bridge" and out["host"] == "h1"
    assert any("ip link set eth0 master br0" in d for d in out["drift"]), out["drift"]
    text = run(lab, "h1", "status")
    assert text.returncode == 0 and "interrupted: an apply was killed half-way" in text.stdout, text.stdout
    assert run(lab, "h1", "reset").returncode == 0
    assert diff(original, full_snapshot(h1.netns)) == []
    gone = run(lab, "h1", "status")
    assert gone.returncode == 1 and "not configured yet" in gone.stderr, gone.stderr
    assert apply(lab).returncode == 0
    out = json.loads(run(lab, "h1", "status", "-o", "json").stdout)
    assert out["interrupted"] is False and out["drift"] == []
    assert run(lab, "h1", "reset").returncode == 0
