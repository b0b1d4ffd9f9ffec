"""Isolated named networks with backend host-gw, end to end (the full matrix is vxlan:
tests/e2e/test_networks.py). 2 hosts, 2 networks (``default`` and ``blue``), one container
of each network per host: every same-network pair pings (on one host and across, routed
by the underlay with no tunnel), every cross-network pair does not, the isolation
counters count the drops, and `crossnet check --isolation` says the same."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_networks import BLUE, apply_all, each, isolated_matrix, members

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def two_network_lab(request, backend: str):
    """A module's lab: 2 hosts of ``backend``, networks ``default`` and ``blue``, one
    container of each per host (also tests/e2e/test_ovs_networks.py)."""
    from tests.conftest import LabFactory

    lab = LabFactory.for_test(request)(hosts=2, underlay="l2", backend=backend, containers=2, apply=False)
    cluster = yaml.safe_load(Path(lab.plan.cluster_file).read_text())
    cluster["networks"] = [{"name": "blue", "network": BLUE}]
    lab.netfile = Path(lab.plan.cluster_file).with_name("networks.yaml")
    lab.netfile.write_text(yaml.safe_dump(cluster))
    apply_all(lab)
    each(lambda h: (lab.crossnet(h.name, "attach", h.containers[0]),
                    lab.crossnet(h.name, "attach", h.containers[1], "--network", "blue")), lab.hosts)
    return lab


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    return two_network_lab(request, "host-gw")


def test_host_gw_networks_matrix(lab):
    nets = members(lab)
    assert len(nets["default"]) == 2 and len(nets["blue"]) == 2
    st = lab.status(lab.hosts[0].name)
    assert st["backend"] == "host-gw" and st["networks"]["blue"]["vni"] is not None
    routes = lab.run(lab.hosts[0].name, ["ip", "-j", "route"], check=True).stdout
    blue_h2 = lab.status(lab.hosts[1].name)["networks"]["blue"]["subnet"]
    assert any(r["dst"] == blue_h2 and r.get("gateway") == lab.hosts[1].address for r in json.loads(routes))
    isolated_matrix(lab, settle=0.0)


def _links(lab, target: str) -> dict[str, tuple]:
    """name -> (kind/master, addresses) of every link in a lab namespace."""
    out = json.loads(lab.run(target, ["ip", "-d", "-j", "addr"], check=True).stdout)
    return {a["ifname"]: (a.get("master"), sorted(f"{i['local']}/{i['prefixlen']}" for i in a.get("addr_info", [])
                                                  if i.get("family") == "inet")) for a in out}


def test_one_container_in_two_networks_by_crossnet_attach(lab):
    """A container attached to ``default`` (eth0) joins ``blue`` too with `attach --network
    blue --ifname eth1`: two interfaces, detached independently. Both networks named the
    host veth cnv+hash(id): blue's attach took default's veth for half of its own pair and
    deleted it (eth1), or moved it to cn-blue and added blue's address to it (eth0). Now
    a named network's veth has its own name; blue's eth0 is refused, nothing changed."""
    from crossnet.lab.manager import one_line_error

    h = lab.hosts[0]
    c = h.containers[0]
    host_before, inside_before = _links(lab, h.name), _links(lab, c)
    route = json.loads(lab.run(c, ["ip", "-j", "route", "show", "default"], check=True).stdout)[0]
    assert route["dev"] == "eth0"
    proc = lab.crossnet(h.name, "attach", c, "--network", "blue", "-o", "json", check=False)
    assert proc.returncode != 0
    assert "eth0" in one_line_error(proc) and "\n" not in one_line_error(proc)
    assert (_links(lab, h.name), _links(lab, c)) == (host_before, inside_before)
    blue_ids = {x["id"] for x in lab.status(h.name)["networks"]["blue"]["containers"]}
    assert c not in blue_ids
    att = json.loads(lab.crossnet(h.name, "attach", c, "--network", "blue", "--ifname", "eth1", "-o", "json").stdout)
    try:
        inside = _links(lab, c)
        assert inside["eth0"] == inside_before["eth0"]  # default's interface untouched
        assert inside["eth1"][1] == [att["cidr"]] and att["cidr"].startswith("10.33.")
        host_now = _links(lab, h.name)
        assert {n: v for n, v in host_now.items() if n in host_before} == host_before  # default's veth, same bridge
        assert host_now[att["host_if"]][0] == "cn-blue"
        # each network's gateway answers through its own interface
        for gw, dev in ((route["gateway"], "eth0"), (att["gateway"], "eth1")):
            ping = lab.run(c, ["ping", "-c1", "-W2", "-I", dev, gw])
            assert ping.returncode == 0, (gw, dev, ping.stdout)
    finally:
        lab.crossnet(h.name, "detach", c, "--network", "blue")
        # the last attach took the default route (eth1's, gone with it): attaching the
        # other network again repairs it (docs/networks.md)
        lab.crossnet(h.name, "attach", c)
    again = json.loads(lab.run(c, ["ip", "-j", "route", "show", "default"], check=True).stdout)
    assert [(r["gateway"], r["dev"]) for r in again] == [(route["gateway"], "eth0")]
    assert (_links(lab, h.name), _links(lab, c)) == (host_before, inside_before)
    assert c in {x["id"] for x in lab.status(h.name)["containers"]}
