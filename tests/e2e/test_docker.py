"""A real Docker engine end to end (Debian's docker.io, one dockerd per simulated host).

One lab (module scope, dockerd is slow to start): the tutorial's bridge method,
`lab up --runtime docker --backend bridge`: every host's dockerd configured by
`crossnet docker-config --write` (bridge br0, fixed-cidr = the host's /26 of the LAN,
mtu, default-gateway = the LAN's router), busybox containers started with plain
`docker run`. Checked in it:

- every container pings every other across hosts and the LAN's router, HTTP works;
- `docker-config --write` on the live daemon.json: idempotent, refuses a value the
  user set (exit 2, file untouched), `--force` shows the diff and keeps a backup;
- `crossnet attach docker:NAME` / `detach` of a `--network none` container, also after
  `docker restart` (new netns, same name): attach again works, the old veth is gone;
- `lab down` stops every dockerd and leaves no process, mount or directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import LabFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
    pytest.mark.skipif(not shutil.which("dockerd") or not os.path.exists("/bin/busybox"),
                       reason="needs docker.io (dockerd) and busybox-static"),
]


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    return LabFactory.for_test(request)(hosts=2, backend="bridge", containers=2, extra={"runtime": "docker"})


def dk(lab, host):
    from crossnet.lab.docker import host_docker

    return host_docker(lab.plan, lab.plan.host(host))


def crossnet_in(lab, host, *args, env=None):
    """`crossnet ARGS` in a host namespace (its state dir), with DOCKER_HOST = its dockerd."""
    extra = [f"DOCKER_HOST=unix://{dk(lab, host).socket}"] + [f"{k}={v}" for k, v in (env or {}).items()]
    return lab.run(host, ["env", *extra, sys.executable, "-m", "crossnet", *args], timeout=120)


def test_tutorial_workflow_ping_all_pairs_lan_router_and_http(lab):
    from crossnet.check import all_ok
    from crossnet.lab import docker

    eps = docker.endpoints(lab.plan)
    assert len(eps) == 4
    statuses = lab.statuses()
    for h in lab.hosts:  # Docker's IPAM hands out the host's /26 (fixed-cidr) on the LAN
        subnet = ipaddress.ip_network(statuses[h.name]["subnet"])
        mine = [e for e in eps if e.name in h.containers]
        assert len(mine) == 2 and all(ipaddress.ip_address(e.address) in subnet for e in mine), (subnet, mine)
    shown = {c["id"]: c["address"] for h in lab.summary(statuses)["hosts"] for c in h["containers"]}
    assert shown == {e.name: e.address for e in eps}  # `lab up`'s table: Docker's addresses, not "-"
    pairs = lab.check()  # every container pings every other (from the containers' namespaces)
    assert len(pairs) == 12 and all_ok(pairs), [p for p in pairs if not p.ok]
    router = lab.plan.cluster_dict()["lan"]["gateway"]
    for h in lab.hosts:  # from inside (docker exec): the LAN's router, the default route via it, the MTU
        d = dk(lab, h.name)
        c = h.containers[0]
        proc = d.exec(c, "ping", "-c", "1", "-W", "2", router)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"default via {router}" in d.exec(c, "ip", "route").stdout
        assert f"mtu {statuses[h.name]['mtu']}" in d.exec(c, "ip", "-o", "link", "show", "eth0").stdout
    http = docker.http_check(lab.plan, eps)
    assert len(http) == 2 and all(x["ok"] for x in http), http


def test_docker_config_write_on_the_live_daemon_json(lab):
    d = dk(lab, "h1")
    written = json.loads(d.config.read_text())
    assert written["bridge"] == "br0" and written["fixed-cidr"] == lab.status("h1")["subnet"]
    again = crossnet_in(lab, "h1", "docker-config", "--write", str(d.config))
    assert again.returncode == 0 and again.stdout == "" and "up to date" in again.stderr
    original = d.config.read_text()
    try:
        d.config.write_text(json.dumps({**written, "mtu": 1400, "debug": True}))  # the user's own mtu
        user = d.config.read_text()
        refused = crossnet_in(lab, "h1", "docker-config", "--write", str(d.config))
        assert refused.returncode == 2 and refused.stdout == ""
        assert f"mtu: 1400 (crossnet: {written['mtu']})" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and d.config.read_text() == user
        forced = crossnet_in(lab, "h1", "docker-config", "--write", str(d.config), "--force")
        assert forced.returncode == 0, forced.stderr
        assert '-  "mtu": 1400' in forced.stdout and f'+  "mtu": {written["mtu"]}' in forced.stdout
        assert json.loads((d.base / "daemon.json.crossnet.bak").read_text())["mtu"] == 1400
        assert json.loads(d.config.read_text()) == {**written, "debug": True}
    finally:
        d.config.write_text(original)


def test_attach_detach_docker_container_also_after_restart(lab):
    d = dk(lab, "h1")
    subnet = ipaddress.ip_network(lab.status("h1")["subnet"])
    want = str(subnet.broadcast_address - 1)  # above what Docker's IPAM hands out first
    peer = dk(lab, "h2")
    peer_addr = peer.inspect(lab.plan.host("h2").containers[0])["NetworkSettings"]["IPAddress"]
    d.run("run", "-d", "--name", "att", "--network", "none", "local/crossnet-busybox:1", "sleep", "999999")
    try:
        veths = []
        for round_ in range(2):
            res = crossnet_in(lab, "h1", "attach", "docker:att", "--ip", want, "-o", "json")
            assert res.returncode == 0, res.stderr
            att = json.loads(res.stdout)
            pid = d.inspect("att")["State"]["Pid"]
            assert att["address"] == want and att["netns"] == f"/proc/{pid}/ns/net"
            veths.append(att["host_if"])
            proc = d.exec("att", "ping", "-c", "1", "-W", "2", peer_addr)
            assert proc.returncode == 0, (round_, proc.stdout + proc.stderr)
            if round_ == 0:  # a new netns, same name and id: the old veth died with it
                d.run("restart", "-t", "0", "att")
                assert d.exec("att", "ip", "-o", "link").stdout.count("eth0") == 0
        [rec] = [c for c in lab.status("h1")["containers"] if c.get("name") == "att"]  # one record, the new netns
        assert rec["netns"] == att["netns"] and rec["state"] == "attached" and rec["address"] == want
        links = lab.run("h1", ["ip", "-o", "link"]).stdout
        assert links.count(veths[-1]) == 1
        res = crossnet_in(lab, "h1", "detach", "docker:att", "-o", "json")
        assert res.returncode == 0 and json.loads(res.stdout)["detached"] is True, res.stderr
        assert not [c for c in lab.status("h1")["containers"] if c.get("name") == "att"]
        assert veths[-1] not in lab.run("h1", ["ip", "-o", "link"]).stdout
        again = crossnet_in(lab, "h1", "detach", "docker:att", "-o", "json")
        assert again.returncode == 0 and json.loads(again.stdout)["detached"] is False
        # removed (docker rm) while attached: detach by name finds the record by its recorded name
        res = crossnet_in(lab, "h1", "attach", "docker:att", "--ip", want, "-o", "json")
        assert res.returncode == 0, res.stderr
        cid = json.loads(res.stdout)["id"]
        d.run("rm", "-f", "att")
        res = crossnet_in(lab, "h1", "detach", "docker:att", "-o", "json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["detached"] is True and out["id"] == cid and out["address"] == want, out
        assert not [c for c in lab.status("h1")["containers"] if c["id"] == cid]
    finally:
        d.run("rm", "-f", "att", check=False)


def test_lab_down_stops_dockerd_and_leaves_nothing(lab):
    from crossnet.lab import docker, manager

    pids = [dk(lab, h.name).pid() for h in lab.hosts]
    assert all(pids)
    children = subprocess.run(["pgrep", "-P", ",".join(map(str, pids))], capture_output=True, text=True).stdout.split()
    assert children  # each dockerd started its containerd
    base = lab.plan.lab_dir
    manager.down(lab.name)
    alive = [p for p in [*pids, *map(int, children)] if docker._alive(p)]  # zombies of this process do not count
    assert not alive
    with open("/proc/self/mountinfo") as fh:
        assert not [ln for ln in fh if base in ln]
    assert not os.path.exists(base)
    shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{base}"], capture_output=True, text=True).stdout
    assert shims == ""
