"""End to end: the per-host CLI (apply --dry-run, attach forms, detach, check) and
`crossnet lab demo/check` exit codes and JSON, in lab namespaces.

Every lab gets a unique name starting with ``fc`` and is removed by a finalizer,
pass or fail (labs made through the CLI too). Routes are only ever changed inside
lab host namespaces; nothing here touches the root namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import Lab, crossnet_argv, down, lab_dir, up
from crossnet.lab.topology import LabOptions

from .kstate import diff, snapshot

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]


@pytest.fixture
def labs(request):
    """make(**LabOptions) builds a lab; name() reserves a name for a lab the CLI
    builds. Every one is brought down at the end."""
    names: list[str] = []

    def name() -> str:
        n = "fc" + secrets.token_hex(3)[:5]
        names.append(n)
        return n

    def make(*, apply: bool = True, **kw) -> Lab:
        return up(LabOptions(name=name(), **kw), apply=apply, owner_pid=os.getpid())

    def cleanup() -> None:
        for n in reversed(names):
            down(n)

    request.addfinalizer(cleanup)
    make.name = name
    return make


def host(lab: Lab, name: str):
    return next(h for h in lab.hosts if h.name == name)


def cn(lab: Lab, hname: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`crossnet ARGS` in host `hname` (its state dir), not raising on failure."""
    return lab.crossnet(hname, *args, check=False, timeout=timeout)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`crossnet ARGS` in this (root) namespace: only for `crossnet lab ...`."""
    env = {**os.environ, "CROSSNET_LAB_OWNER_PID": str(os.getpid())}
    return subprocess.run(crossnet_argv(*args), capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def check_json(lab: Lab, hname: str) -> tuple[int, dict]:
    res = cn(lab, hname, "check", "-o", "json")
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout)


def break_route(netns: str, subnet: str) -> None:
    """Delete the route to a peer's container subnet in a lab host namespace."""
    subprocess.run(["ip", "-n", netns, "route", "del", subnet], check=True)


# ---------------------------------------------------------------------- apply --dry-run


DRY_RUN_LINES = {
    "bridge": ["sysctl -w net.ipv4.ip_forward=1", "ip link add br0 type bridge", "ip link set eth0 master br0",
               "ip link set dev br0 type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0",
               "sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0",
               "nft -f -", "masquerade"],
    "host-gw": ["sysctl -w net.ipv4.ip_forward=1", "ip link add cn0 type bridge", "ip addr add 10.32.0.1/24 dev cn0",
                "ip link set dev cn0 type bridge nf_call_iptables 0", "has no bridge but cn0",
                "ip route replace 10.32.1.0/24 via", "nft -f -", "masquerade"],
    "vxlan": ["ip link add cnvx1 type vxlan id 1", "bridge fdb append", "ip neigh replace 10.32.1.0",
              "ip route replace 10.32.1.0/24 via 10.32.1.0 dev cnvx1 onlink proto 151", "nft -f -", "masquerade"],
}


@pytest.mark.parametrize("backend", ["bridge", "host-gw", "vxlan"])
def test_apply_dry_run_prints_commands_and_changes_nothing(labs, backend):
    lab = labs(hosts=2, underlay="l2", backend=backend, containers=0, apply=False)
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["masquerade"] = True  # so the nft table is part of the plan
    path = Path(lab.plan.lab_dir) / "dry.yaml"
    path.write_text(yaml.safe_dump(cluster))
    h1 = host(lab, "h1")
    state = Path(lab.plan.lab_dir) / "dry-state"  # does not exist: must not be created
    before = snapshot(h1.netns)
    res = lab.run("h1", crossnet_argv("--state-dir", str(state), "apply", "-f", str(path), "--host", "h1",
                                      "--dry-run"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith(f"# h1: backend {backend}, subnet "), out
    for line in DRY_RUN_LINES[backend]:
        assert line in out, (line, out)
    assert diff(before, snapshot(h1.netns)) == []
    assert not state.exists()
    # the JSON form plans the same and changes nothing either
    res = lab.run("h1", crossnet_argv("--state-dir", str(state), "apply", "-f", str(path), "--host", "h1",
                                      "--dry-run", "-o", "json"))
    data = json.loads(res.stdout)
    assert data["dry_run"] is True and data["changed"] is True and data["changes"]
    assert diff(before, snapshot(h1.netns)) == []
    assert not state.exists()
    # with an existing state dir (after a real apply): "nothing to do", no lock file made
    state.mkdir(mode=0o700)
    res = lab.run("h1", crossnet_argv("--state-dir", str(state), "apply", "-f", str(path), "--host", "h1"))
    assert res.returncode == 0, res.stderr
    (state / "lock").unlink()
    applied = (state / "applied.json").read_bytes()
    after_apply = snapshot(h1.netns)
    res = lab.run("h1", crossnet_argv("--state-dir", str(state), "apply", "-f", str(path), "--host", "h1",
                                      "--dry-run"))
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout
    assert sorted(p.name for p in state.iterdir()) == ["applied.json"]
    assert (state / "applied.json").read_bytes() == applied
    assert diff(after_apply, snapshot(h1.netns)) == []
    lab.run("h1", crossnet_argv("--state-dir", str(state), "reset"), check=True)


# ---------------------------------------------------------------------- attach / detach


def test_attach_by_pid_path_ip_twice_and_detach_after_exit(labs):
    lab = labs(hosts=2, underlay="l2", backend="vxlan", containers=1)
    h1 = host(lab, "h1")
    peer_ns = host(lab, "h2").containers[0]
    subnet = ipaddress.ip_network(lab.status("h1")["subnet"])
    ns_pid, ns_path, ns_ip = (f"{h1.netns}-p", f"{h1.netns}-n", f"{h1.netns}-i")  # lab-prefixed: lab down removes them
    for n in (ns_pid, ns_path, ns_ip):
        subprocess.run(["ip", "netns", "add", n], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns_pid, "sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.2)  # `ip netns exec` has entered the namespace and exec'd sleep (same pid)
        pid = sleeper.pid
        # by pid:N
        res = cn(lab, "h1", "attach", f"pid:{pid}", "-o", "json")
        assert res.returncode == 0, res.stderr
        att = json.loads(res.stdout)
        assert att["id"] == f"pid-{pid}" and att["changed"] is True
        assert ipaddress.ip_address(att["address"]) in subnet
        peer_addr = next(c["address"] for c in lab.status("h2")["containers"])
        assert subprocess.run(["ip", "netns", "exec", ns_pid, "ping", "-c", "1", "-W", "2", peer_addr],
                              capture_output=True, check=False).returncode == 0
        # by netns path
        res = cn(lab, "h1", "attach", f"/run/netns/{ns_path}", "-o", "json")
        assert res.returncode == 0, res.stderr
        by_path = json.loads(res.stdout)
        assert by_path["id"] == f"/run/netns/{ns_path}"
        assert subprocess.run(["ip", "netns", "exec", peer_ns, "ping", "-c", "1", "-W", "2", by_path["address"]],
                              capture_output=True, check=False).returncode == 0
        # with --ip, then twice: idempotent, same address, nothing changed
        want = str(subnet.network_address + 200)
        res = cn(lab, "h1", "attach", ns_ip, "--ip", want, "-o", "json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["address"] == want
        again = cn(lab, "h1", "attach", ns_ip, "-o", "json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["address"] == want and json.loads(again.stdout)["changed"] is False
        again = cn(lab, "h1", "attach", ns_ip)
        assert "already attached, nothing changed" in again.stdout
        ids = {c["id"]: c["address"] for c in lab.status("h1")["containers"]}
        assert ids[f"pid-{pid}"] == att["address"] and ids[ns_ip] == want
        # detach pid:N after the process exited: the same id, the address is released
        sleeper.kill()
        sleeper.wait(timeout=10)
        res = cn(lab, "h1", "detach", f"pid:{pid}")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"pid-{pid}: detached, released {att['address']}"
        assert f"pid-{pid}" not in {c["id"] for c in lab.status("h1")["containers"]}
        res = cn(lab, "h1", "detach", f"pid:{pid}", "-o", "json")
        assert json.loads(res.stdout) == {"id": f"pid-{pid}", "detached": False}
        for spec in (f"/run/netns/{ns_path}", ns_ip):
            assert json.loads(cn(lab, "h1", "detach", spec, "-o", "json").stdout)["detached"] is True
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=10)
        for n in (ns_pid, ns_path, ns_ip):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


# ---------------------------------------------------------------------- check


def test_check_static_local_pairs_and_peer_gateways(labs):
    """Cluster file (no channel between hosts): h1's containers ping each other and
    h2's container gateway; a deleted peer route in h1 makes check (and lab check) fail."""
    lab = labs(hosts=2, underlay="l2", backend="host-gw", containers=2)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    rc, data = check_json(lab, "h1")
    assert rc == 0, data
    assert data["ok"] is True and data["host"] == "h1" and data["peer_containers"] == "unknown"
    pairs = {(p["src"], p["dst"]): p for p in data["pairs"]}
    c1, c2 = h1.containers
    assert set(pairs) == {(c1, c2), (c2, c1), (c1, "h2 (gateway)"), (c2, "h2 (gateway)")}
    assert all(p["ok"] and p["rtt_ms"] is not None for p in pairs.values())
    gw = pairs[(c1, "h2 (gateway)")]
    h2_subnet = ipaddress.ip_network(lab.status("h2")["subnet"])
    assert (gw["kind"], gw["dst_host"], gw["dst_address"]) == ("gateway", "h2", str(h2_subnet.network_address + 1))
    assert pairs[(c1, c2)]["kind"] == "container"
    text = cn(lab, "h1", "check")
    assert text.returncode == 0 and "h2 (gateway)" in text.stdout and "OK: all 4 pairs reachable" in text.stdout
    assert "run `crossnet check` on every host" in text.stdout
    # break h1's route to h2's containers: exit 1, the gateway pairs fail, the local ones do not
    break_route(h1.netns, str(h2_subnet))
    rc, data = check_json(lab, "h1")
    assert rc == 1 and data["ok"] is False
    assert sorted((p["dst"], p["ok"]) for p in data["pairs"]) == [
        (c1, True), (c2, True), ("h2 (gateway)", False), ("h2 (gateway)", False)]
    text = cn(lab, "h1", "check")
    assert text.returncode == 1 and "FAILED: 2 of 4 pairs unreachable" in text.stdout
    # the lab's whole matrix says so too (`lab demo` uses the same verdict)
    res = cli("lab", "check", "--name", lab.name, "-o", "json")
    assert res.returncode == 1, res.stderr
    whole = json.loads(res.stdout)
    assert whole["ok"] is False
    bad = {(p["src"], p["dst"]) for p in whole["pairs"] if not p["ok"]}
    assert bad == {(s, d) for s in h1.containers for d in h2.containers} | {
        (s, d) for s in h2.containers for d in h1.containers}
    assert cli("lab", "check", "--name", lab.name).returncode == 1


def test_check_etcd_lists_peer_containers(labs):
    """With agents on etcd, check on h1 pings h2's containers (published by h2's
    agent), and follows attach/detach on h2."""
    lab = labs(hosts=2, underlay="l2", backend="vxlan", containers=1, extra={"store": "etcd"})
    h2 = host(lab, "h2")
    rc, data = check_json(lab, "h1")
    assert rc == 0, data
    assert data["peer_containers"] == "published" and data["ok"] is True
    dsts = {p["dst"]: p for p in data["pairs"]}
    assert set(dsts) == {f"h2/{h2.containers[0]}"}
    d = dsts[f"h2/{h2.containers[0]}"]
    assert (d["kind"], d["dst_host"]) == ("container", "h2")
    assert d["dst_address"] == lab.status("h2")["containers"][0]["address"]
    assert "(gateway)" not in cn(lab, "h1", "check").stdout
    # a new container on h2 is a destination at once; detached, it is gone
    extra = f"{h2.netns}-x"
    subprocess.run(["ip", "netns", "add", extra], check=True)
    try:
        att = json.loads(cn(lab, "h2", "attach", extra, "-o", "json").stdout)
        rc, data = check_json(lab, "h1")
        assert rc == 0, data
        assert {p["dst"]: p["dst_address"] for p in data["pairs"]}[f"h2/{extra}"] == att["address"]
        assert json.loads(cn(lab, "h2", "detach", extra, "-o", "json").stdout)["detached"] is True
        rc, data = check_json(lab, "h1")
        assert rc == 0 and f"h2/{extra}" not in {p["dst"] for p in data["pairs"]}
    finally:
        subprocess.run(["ip", "netns", "del", extra], capture_output=True, check=False)
    # h2's containers detached: h2 is covered by its gateway again
    cn(lab, "h2", "detach", h2.containers[0])
    rc, data = check_json(lab, "h1")
    assert rc == 0, data
    assert {(p["dst"], p["kind"]) for p in data["pairs"]} == {("h2 (gateway)", "gateway")}


# ---------------------------------------------------------------------- lab demo


def test_lab_demo_json_with_apply(labs):
    name = labs.name()
    res = cli("lab", "demo", "--name", name, "--hosts", "2", "--containers", "1", "--backend", "vxlan",
              "-o", "json")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["applied"] is True and data["lab"] == name
    assert [h["name"] for h in data["hosts"]] == ["h1", "h2"]
    assert all(ipaddress.ip_network(h["subnet"]) for h in data["hosts"])
    assert len(data["pairs"]) == 2 and all(p["ok"] for p in data["pairs"])
    assert not lab_dir(name).exists()  # demo took its lab down


def test_lab_demo_exits_1_when_a_pair_fails(labs, monkeypatch):
    """A real demo whose h1 loses its route to h2 right after its container is
    attached (between up and the check): JSON ok false, exit 1."""
    from click.testing import CliRunner

    from crossnet.cli.main import cli as crossnet_cli
    from crossnet.lab import manager

    attach = manager.Lab.attach

    def attach_then_break(self, hname, container):
        attach(self, hname, container)
        if hname == "h1":
            peer = next(h for h in self.hosts if h.name == "h2")
            routes = json.loads(subprocess.run(["ip", "-n", host(self, "h1").netns, "-j", "route"],
                                               capture_output=True, text=True, check=True).stdout)
            for r in routes:
                if r.get("gateway") == peer.address:
                    break_route(host(self, "h1").netns, r["dst"])

    monkeypatch.setattr(manager.Lab, "attach", attach_then_break)
    monkeypatch.setenv("CROSSNET_LAB_OWNER_PID", str(os.getpid()))
    name = labs.name()
    res = CliRunner().invoke(crossnet_cli, ["lab", "demo", "--name", name, "--hosts", "2", "--containers", "1",
                                            "--backend", "host-gw", "-o", "json"])
    assert res.exit_code == 1, (res.output, res.exception)
    data = json.loads(res.stdout)
    assert data["ok"] is False
    assert sorted(p["ok"] for p in data["pairs"]) == [False, False]
    assert not lab_dir(name).exists()


def test_lab_demo_json_when_up_fails(labs):
    """host-gw cannot work over an L3 underlay: apply refuses, demo -o json prints one
    JSON object saying so, exit 1, and leaves nothing behind."""
    name = labs.name()
    res = cli("lab", "demo", "--name", name, "--hosts", "2", "--underlay", "l3", "--backend", "host-gw",
              "--containers", "1", "-o", "json")
    assert res.returncode == 1
    data = json.loads(res.stdout)  # exactly one JSON document on stdout
    assert data["ok"] is False and data["lab"] == name and data["pairs"] == []
    assert "one L2 segment" in data["error"]["message"] and data["error"]["kind"] == "failed"
    errors = [x for x in res.stderr.splitlines() if not x.startswith("· ")]  # "· ": progress (stderr)
    assert len(errors) == 1 and errors[0].startswith("crossnet: error: ")
    assert not lab_dir(name).exists()
