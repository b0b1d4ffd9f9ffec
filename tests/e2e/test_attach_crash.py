"""End to end: `crossnet attach` / `crossnet detach` killed at every step.

attach writes the IPAM entry, makes the veth pair, configures the container end, records
the MACs, then (when this host serves DNS) writes /etc/netns/NAME/resolv.conf and records
that it did; detach undoes it. Killed anywhere (test hook CROSSNET_TEST_CRASH_AT=N: the
process SIGKILLs itself at its N-th crash point), the next attach completes the
attachment, and the next detach -- or reset -- leaves the host exactly as before the first
attach: same links, addresses, routes and nft rules, no IPAM entry, no
/etc/netns/NAME. One host lab (vxlan), one named namespace as the container; DNS is
"served" by the test itself holding the state dir's DNS lock (as `crossnet dns serve` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crossnet.dns import MARKER
from crossnet.dns import resolv as dns_resolv
from crossnet.lab.manager import Lab
from crossnet.state import StateDir

from .crashsteps import killed_at_every_step
from .kstate import diff, snapshot
from .test_datapath_ebpf_runtimes import veth_entries

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

MAX_STEPS = 40


def crossnet(lab: Lab, *args: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = [f"CROSSNET_TEST_CRASH_AT={crash_at}"] if crash_at else []
    return lab.run("h1", ["env", *env, sys.executable, "-m", "crossnet", *args], timeout=60)


def ipam_entries(lab: Lab) -> dict:
    path = Path(lab.plan.host("h1").state_dir) / "ipam.json"
    return json.loads(path.read_text())["allocations"] if path.exists() else {}


def gateway(lab: Lab) -> str:
    """h1's container gateway (where its DNS would listen), as apply recorded it."""
    return json.loads((Path(lab.plan.host("h1").state_dir) / "applied.json").read_text())["context"]["gateway"]


def netns_etc_litter(name: str) -> list[str]:
    """What crossnet may have left for `name` under /etc/netns: its directory, temporaries."""
    if not os.path.isdir(dns_resolv.NETNS_ETC):
        return []
    return sorted(e for e in os.listdir(dns_resolv.NETNS_ETC) if e == name or e.startswith(f".{name}."))


def veth_map(lab: Lab) -> list[int] | None:
    """h1's ifindexes in the eBPF datapath's allowed-veth map, sorted (None: no programs loaded)."""
    from crossnet.ebpf import host as ebpf_host

    state_dir = lab.plan.host("h1").state_dir
    return sorted(veth_entries(state_dir)) if ebpf_host.loaded(state_dir) else None


@pytest.fixture(params=["kernel", "ebpf"])
def attach_lab(make_lab, request):
    """(lab, container netns name, h1 before its apply): h1 applied, DNS "served" for
    h1's state dir. kernel: vxlan, the veth on the bridge; ebpf: host-gw with routed
    veths (a /32 route each, and where the programs load, the from-container program
    and an entry in the allowed-veth map)."""
    if request.param == "kernel":
        lab = make_lab(hosts=1, underlay="l2", backend="vxlan", containers=0, apply=False)
    else:
        lab = make_lab(hosts=1, underlay="l2", backend="host-gw", containers=0, apply=False,
                       extra={"datapath": "ebpf"})
    h1 = lab.plan.host("h1")
    original = snapshot(h1.netns)
    lab.apply("h1")
    name = f"{lab.name}-kc"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=20)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=20)
    state = StateDir(h1.state_dir)
    dns_resolv.write_info(state, {"pid": os.getpid(), "domain": "crossnet.local", "listen": [gateway(lab)],
                                  "scope": "host"})
    held = dns_resolv.hold(state)
    try:
        yield lab, name, original
    finally:
        os.close(held)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)
        shutil.rmtree(f"{dns_resolv.NETNS_ETC}/{name}", ignore_errors=True)
        for e in netns_etc_litter(name):
            with contextlib.suppress(OSError):
                os.unlink(f"{dns_resolv.NETNS_ETC}/{e}")


def assert_attached(lab: Lab, name: str, n: int) -> None:
    entries = ipam_entries(lab)
    assert list(entries) == [name], (n, entries)
    meta = entries[name]["meta"]
    path = f"{dns_resolv.NETNS_ETC}/{name}/resolv.conf"
    assert meta.get("resolv_conf") == path, (n, meta)
    text = Path(path).read_text()
    assert text.startswith(MARKER) and f"nameserver {gateway(lab)}\n" in text, (n, text)
    addrs = json.loads(subprocess.run(["ip", "-n", name, "-j", "-4", "addr", "show", "dev", "eth0"],
                                      capture_output=True, text=True, check=True).stdout)
    assert [i["local"] for a in addrs for i in a["addr_info"]] == [entries[name]["address"]], (n, addrs)
    allowed = veth_map(lab)
    if allowed is not None:  # the eBPF datapath runs: its veth is a redirect target
        host_if = entries[name]["meta"]["host_if"]
        index = json.loads(subprocess.run(["ip", "-n", lab.plan.host("h1").netns, "-j", "link", "show", host_if],
                                          capture_output=True, text=True, check=True).stdout)[0]["ifindex"]
        assert allowed == [index], (n, allowed, index)


def assert_clean(lab: Lab, name: str, before: dict, container_before: dict, n: int, after: str) -> None:
    h1 = lab.plan.host("h1")
    assert diff(before, snapshot(h1.netns)) == [], f"killed at step {n}, then {after}"
    assert diff(container_before, snapshot(name)) == [], f"killed at step {n}, then {after}: the container"
    assert ipam_entries(lab) == {}, (n, after)
    assert netns_etc_litter(name) == [], (n, after)
    assert veth_map(lab) in (None, []), (n, after)


@pytest.mark.parametrize("then", ["attach", "detach", "reset"])
def test_attach_killed_at_every_step_then_completed_or_removed(attach_lab, then):
    """attach killed at its N-th crash point (N = 1, 2, ... until it runs through), then
    `attach` again (the attachment complete, resolv.conf crossnet's and recorded) and
    `detach`, or `detach` at once, or `reset`: the host and the container exactly as
    before. A resolv.conf created but not yet written (empty) used to stay forever (taken
    for the admin's), one written but not yet recorded survived detach."""
    lab, name, original = attach_lab
    h1 = lab.plan.host("h1")
    before, container_before = snapshot(h1.netns), snapshot(name)

    def recover(n: int) -> None:
        if then == "attach":
            again = crossnet(lab, "attach", name)
            assert again.returncode == 0, (n, again.stderr)
            assert_attached(lab, name, n)
        if then in ("attach", "detach"):
            out = crossnet(lab, "detach", name)
            assert out.returncode == 0, (n, out.stderr)
            assert_clean(lab, name, before, container_before, n, then)
        else:  # the host as before its apply
            assert crossnet(lab, "reset").returncode == 0, n
            assert_clean(lab, name, original, container_before, n, then)
            lab.apply("h1")

    n = killed_at_every_step(lambda n: crossnet(lab, "attach", name, crash_at=n), recover, MAX_STEPS, "attach")
    assert_attached(lab, name, n)
    assert n >= 6, n  # the crash points were passed: IPAM, veth, inside, MACs, resolv.conf (x2)


def test_detach_killed_at_every_step_then_detach_again_or_attach(attach_lab):
    """detach killed at its N-th crash point: `detach` again leaves the host as before the
    attach; `attach` again makes the attachment whole. Killed after the IPAM entry went,
    the resolv.conf attach wrote used to stay (nothing recorded it any more)."""
    lab, name, _ = attach_lab
    h1 = lab.plan.host("h1")
    before, container_before = snapshot(h1.netns), snapshot(name)

    def detach(n: int) -> subprocess.CompletedProcess:
        assert crossnet(lab, "attach", name).returncode == 0
        return crossnet(lab, "detach", name, crash_at=n)

    def recover(n: int) -> None:
        if n % 2:
            again = crossnet(lab, "attach", name)
            assert again.returncode == 0, (n, again.stderr)
            assert_attached(lab, name, n)
        out = crossnet(lab, "detach", name)
        assert out.returncode == 0, (n, out.stderr)
        assert_clean(lab, name, before, container_before, n, "detach")

    n = killed_at_every_step(detach, recover, MAX_STEPS, "detach")
    assert_clean(lab, name, before, container_before, n, "nothing")
    assert n >= 3, n


def test_an_attach_killed_after_its_ipam_write_shows_incomplete_until_completed(attach_lab):
    """attach killed at its first crash point (the IPAM entry written, no veth yet): status
    listed it `attached`. It says `incomplete`, what is missing and how to complete it (text
    and JSON); the attach it names completes it, and a detach removes it."""
    lab, name, _ = attach_lab
    assert crossnet(lab, "attach", name, crash_at=1).returncode == -signal.SIGKILL
    host_if = ipam_entries(lab)[name]["meta"]["host_if"]
    res = crossnet(lab, "status", "-o", "json")
    assert res.returncode == 0, res.stderr
    [row] = json.loads(res.stdout)["containers"]
    assert (row["id"], row["state"]) == (name, "incomplete"), row
    assert row["missing"].startswith(f"the veth {host_if} ")
    assert row["complete"] == f"crossnet attach {name} (or crossnet detach {name} to remove it)"
    text = crossnet(lab, "status")
    assert text.returncode == 0 and f"{name}: incomplete, missing the veth {host_if}" in text.stdout, text.stdout
    chk = crossnet(lab, "check")  # not probed (its pairs could only fail): named, with where to look
    assert chk.returncode == 1 and "no containers attached on this host" in chk.stderr, (chk.stdout, chk.stderr)
    assert f"1 incomplete (no veth yet, not probed; `crossnet status` says how to complete or remove them): {name}" \
        in chk.stderr, chk.stderr
    assert crossnet(lab, "attach", name).returncode == 0  # the command it names
    [row] = json.loads(crossnet(lab, "status", "-o", "json").stdout)["containers"]
    assert row["state"] == "attached" and "missing" not in row, row
    assert_attached(lab, name, 1)
    # killed again, then removed by the detach it names
    assert crossnet(lab, "detach", name).returncode == 0
    assert crossnet(lab, "attach", name, crash_at=1).returncode == -signal.SIGKILL
    [row] = json.loads(crossnet(lab, "status", "-o", "json").stdout)["containers"]
    assert row["state"] == "incomplete", row
    assert crossnet(lab, "detach", name).returncode == 0
    assert ipam_entries(lab) == {}
    assert json.loads(crossnet(lab, "status", "-o", "json").stdout)["containers"] == []
