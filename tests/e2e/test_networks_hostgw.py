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
