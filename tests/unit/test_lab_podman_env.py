"""`lab exec` in a podman lab host sets CROSSNET_PODMAN to that host's podman wrapper, so
`crossnet attach podman:NAME` finds NAME (crossnet.lab.podman, crossnet.lab.services)."""

from __future__ import annotations

from crossnet.lab import podman  # noqa: F401 - registers the podman service
from crossnet.lab.services import host_env
from crossnet.lab.topology import LabOptions, plan_lab


def test_podman_lab_host_env_names_the_wrapper():
    plan = plan_lab(LabOptions(name="pq", hosts=2, containers=1, extra={"runtime": "podman"}).validate(), slot=7, lab_dir="/run/crossnet/lab/pq")
    env = host_env(plan, plan.hosts[1])
    assert env["CROSSNET_PODMAN"] == f"{plan.lab_dir}/hosts/h2/podman/podman"


def test_netns_lab_host_env_has_no_podman():
    plan = plan_lab(LabOptions(name="pq", hosts=2, containers=1).validate(), slot=7, lab_dir="/run/crossnet/lab/pq")
    assert "CROSSNET_PODMAN" not in host_env(plan, plan.hosts[0])
