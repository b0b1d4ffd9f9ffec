"""End to end, in lab namespaces: apply refuses to renumber a host, and refuses a
container network that overlaps one of the host's own routes -- both before changing
anything. Labs come from the make_lab fixture (tests/e2e/conftest.py: unique names,
brought down by its finalizer)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from crossnet.lab.manager import Lab

from .kstate import diff, snapshot
from .test_foundation import crossnet, host

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
]


def unused_underlay_address(lab: Lab) -> str:
    """An address of the lab's underlay subnet that no host uses."""
    h1 = host(lab, "h1")
    used = {h.address for h in lab.hosts} | {h.gateway for h in lab.hosts}
    base = h1.address.rsplit(".", 1)[0]
    return next(f"{base}.{i}" for i in range(200, 250) if f"{base}.{i}" not in used)


def test_apply_refuses_a_host_whose_subnet_moved_and_changes_nothing(make_lab):
    lab = make_lab(hosts=2, underlay="l2", backend="host-gw", containers=0)
    h1 = host(lab, "h1")
    state = Path(h1.state_dir) / "applied.json"
    recorded = state.read_bytes()
    old = json.loads(recorded)["context"]["subnet"]
    good = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    assert [h["name"] for h in good["hosts"]] == ["h1", "h2"]
    newcomer = {"name": "h0", "address": unused_underlay_address(lab)}
    before = snapshot(h1.netns)

    # a host inserted first: h1 would move to the next subnet
    inserted = dict(good, hosts=[newcomer, *good["hosts"]])
    path = Path(lab.plan.lab_dir) / "inserted.yaml"
    path.write_text(yaml.safe_dump(inserted))
    for extra in ((), ("--dry-run",)):
        res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1", *extra)
        err = res.stderr.strip()
        assert res.returncode == 2, err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("crossnet: error: hosts[1].subnet: the cluster file now gives host h1 ")
        assert f"applied with {old}" in err and f"'subnet: {old}'" in err and "crossnet reset" in err
    new = err.split("gives host h1 ")[1].split(",")[0]
    assert new != old
    assert diff(before, snapshot(h1.netns)) == []
    assert state.read_bytes() == recorded

    # pinning h1's old subnet while the unpinned newcomer still comes first: the pin
    # collides with the newcomer's subnet, a validation error, still nothing changed
    pinned = json.loads(json.dumps(inserted))
    pinned["hosts"][1]["subnet"] = old
    path.write_text(yaml.safe_dump(pinned))
    res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1")
    assert res.returncode == 2 and f"hosts[1].subnet: {old} is already the subnet of hosts[0] 'h0'" in res.stderr
    assert diff(before, snapshot(h1.netns)) == [] and state.read_bytes() == recorded

    # the way out the error names: append the new host instead -- nothing moves
    appended = dict(good, hosts=[*good["hosts"], newcomer])
    path.write_text(yaml.safe_dump(appended))
    res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1", "-o", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["subnet"] == old
    [change] = out["changes"]  # only the route to h0's subnet is new
    assert change["action"] == "create" and change["command"].startswith("ip route ")
    assert f"via {newcomer['address']}" in change["command"]
    assert lab.status("h1")["subnet"] == old


def test_apply_refuses_a_container_network_overlapping_a_host_route(make_lab):
    lab = make_lab(hosts=1, underlay="l2", backend="vxlan", containers=0, apply=False)
    h1 = host(lab, "h1")
    network = yaml.safe_load(Path(lab.plan.cluster_file).read_text())["network"]
    inside = network.split("/")[0].rsplit(".", 2)[0] + ".200.0/24"  # a /24 inside the /16
    subprocess.run(["ip", "-n", h1.netns, "route", "add", inside, "dev", "eth0"], check=True)
    try:
        before = snapshot(h1.netns)
        res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
        err = res.stderr.strip()
        assert res.returncode == 2, err
        assert err == (
            f"crossnet: error: network: container network {network} overlaps this host's route {inside} dev eth0"
        )
        assert diff(before, snapshot(h1.netns)) == []
        assert not (Path(h1.state_dir) / "applied.json").exists()
    finally:
        subprocess.run(["ip", "-n", h1.netns, "route", "del", inside, "dev", "eth0"], check=True)
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert res.returncode == 0, res.stderr


def test_apply_refuses_a_route_of_the_admins_to_a_peers_subnet_instead_of_taking_it_over(make_lab):
    """h1 already routes h2's container subnet, through a gateway of the admin's. The
    overlap check let it pass (its destination is one crossnet routes): apply replaced it
    with crossnet's route and reset deleted that -- the admin's route gone. Now apply
    refuses it, one line, nothing changed. The very route crossnet makes, made by hand
    before the first apply, used to pass as crossnet's own: apply recorded it and reset
    deleted it. It is refused the same way; crossnet's own routes carry its protocol
    number (151), and reset removes only those."""
    lab = make_lab(hosts=2, underlay="l2", backend="host-gw", containers=0, apply=False)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "--dry-run", "-o", "json")
    assert res.returncode == 0, res.stderr
    [peer_route] = [c["command"] for c in json.loads(res.stdout)["changes"] if f"via {h2.address}" in c["command"]]
    subnet = peer_route.split()[3]  # ip route replace SUBNET via H2 dev eth0
    admins = unused_underlay_address(lab)
    subprocess.run(["ip", "-n", h1.netns, "route", "add", subnet, "via", admins, "dev", "eth0"], check=True)
    before = snapshot(h1.netns)
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    err = res.stderr.strip()
    assert res.returncode == 2, err
    network = yaml.safe_load(Path(lab.plan.cluster_file).read_text())["network"]
    assert err == (f"crossnet: error: network: container network {network} overlaps this host's route "
                   f"{subnet} via {admins} dev eth0")
    assert diff(before, snapshot(h1.netns)) == []
    assert not (Path(h1.state_dir) / "applied.json").exists()
    # the route crossnet makes, made by hand: refused the same way, never adopted
    subprocess.run(["ip", "-n", h1.netns, "route", "replace", subnet, "via", str(h2.address), "dev", "eth0"],
                   check=True)
    before = snapshot(h1.netns)
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    err = res.stderr.strip()
    assert res.returncode == 2, err
    assert err == (f"crossnet: error: network: container network {network} overlaps this host's route "
                   f"{subnet} via {h2.address} dev eth0")
    assert diff(before, snapshot(h1.netns)) == []
    assert not (Path(h1.state_dir) / "applied.json").exists()
    # gone: apply makes crossnet's own (proto 151), reset removes it and nothing else
    subprocess.run(["ip", "-n", h1.netns, "route", "del", subnet], check=True)
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert res.returncode == 0, res.stderr
    shown = subprocess.run(["ip", "-n", h1.netns, "route", "show", subnet], capture_output=True, text=True,
                           check=True).stdout.split()
    assert shown[:6] == [subnet, "via", str(h2.address), "dev", "eth0", "proto"] and shown[6] == "151", shown
    assert crossnet(lab, "h1", "reset").returncode == 0
    assert subprocess.run(["ip", "-n", h1.netns, "route", "show", subnet], capture_output=True, text=True,
                          check=True).stdout == ""


def test_the_route_dry_run_prints_typed_by_hand_is_crossnets(make_lab):
    """--dry-run prints the commands apply runs. Since crossnet's routes carry its protocol
    number, the route line must say so: typed from a dry-run without it, the route was
    refused by the next apply as an admin's. With it, apply takes it as its own (no change,
    no drift) and reset removes it."""
    lab = make_lab(hosts=2, underlay="l2", backend="host-gw", containers=0, apply=False)
    h1, h2 = host(lab, "h1"), host(lab, "h2")
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1", "--dry-run", "-o", "json")
    assert res.returncode == 0, res.stderr
    [peer_route] = [c["command"] for c in json.loads(res.stdout)["changes"] if f"via {h2.address}" in c["command"]]
    assert peer_route.endswith(" proto 151"), peer_route
    subprocess.run(["ip", "-n", h1.netns, *peer_route.split()[1:]], check=True)
    res = crossnet(lab, "h1", "apply", "-f", lab.plan.cluster_file, "--host", "h1")
    assert res.returncode == 0, res.stderr
    status = json.loads(crossnet(lab, "h1", "status", "-o", "json").stdout)
    assert status["drift"] == [], status["drift"]
    subnet = peer_route.split()[3]
    assert crossnet(lab, "h1", "reset").returncode == 0
    assert subprocess.run(["ip", "-n", h1.netns, "route", "show", subnet], capture_output=True, text=True,
                          check=True).stdout == ""


def test_an_nft_table_crossnet_did_not_create_is_refused_and_never_replaced_or_deleted(make_lab):
    """The admin's own `table ip crossnet` (crossnet's masquerade table's name): apply used
    to replace it atomically with crossnet's and reset then deleted it. Now apply refuses it
    (one line naming it, exit 1, nothing changed) like a link crossnet did not create;
    reset leaves it; once it is gone, apply goes through and reset removes crossnet's own."""
    lab = make_lab(hosts=2, underlay="l2", backend="host-gw", containers=0, apply=False)
    h1 = host(lab, "h1")
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["masquerade"] = True
    path = Path(lab.plan.lab_dir) / "masquerade.yaml"
    path.write_text(yaml.safe_dump(cluster))
    nft = ["ip", "netns", "exec", h1.netns, "nft"]
    subprocess.run([*nft, "add table ip crossnet; add chain ip crossnet mine { type filter hook output priority 0; }; "
                    "add rule ip crossnet mine counter"], check=True)
    before = snapshot(h1.netns)
    assert "chain mine" in before["nft"]
    for extra in (("--dry-run",), ()):
        res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1", *extra)
        err = res.stderr.strip()
        assert res.returncode == 1, err
        assert err == ("crossnet: error: nftables table ip crossnet already exists and was not created by crossnet; "
                       "crossnet does not replace or delete tables it did not create: delete it, then apply again"), err
        assert diff(before, snapshot(h1.netns)) == []
        assert not (Path(h1.state_dir) / "applied.json").exists()
    res = crossnet(lab, "h1", "reset")
    assert res.returncode == 0, res.stderr
    assert diff(before, snapshot(h1.netns)) == []
    subprocess.run([*nft, "delete table ip crossnet"], check=True)
    res = crossnet(lab, "h1", "apply", "-f", str(path), "--host", "h1")
    assert res.returncode == 0, res.stderr
    assert "masquerade" in subprocess.run([*nft, "list table ip crossnet"], capture_output=True, text=True).stdout
    assert crossnet(lab, "h1", "reset").returncode == 0
    assert subprocess.run([*nft, "list table ip crossnet"], capture_output=True).returncode != 0
