"""crossnet's Docker network driver end to end (`crossnet docker-plugin`, real dockerd).

One lab (module scope): 3 hosts in their own /24s behind a router (l3), vxlan,
`lab up --runtime docker-plugin`: per host a dockerd (live-restore) finding its own
`crossnet docker-plugin` at /run/docker/plugins/crossnet.sock (its private mount
namespace), which creates the network `crossnet` itself (--subnet/--gateway of the host),
2 containers per host with `docker run --network crossnet`. Checked in it:

- all 30 pairs ping, addresses from each host's crossnet subnet, `crossnet status`
  lists them with their container names, HTTP across hosts; `docker network inspect`
  shows the host's subnet and gateway;
- the literal `docker network create -d crossnet --ipam-driver crossnet NAME` (no
  --subnet: pool 0.0.0.0/0) works too; `docker run --ip` on the plugin's network;
- errors come back as Docker's one-line `Err` (address in use; hostile requests);
- a dockerd restart keeps the running containers connected and leaks nothing; so does a
  restart of the plugin;
- `docker run --rm` cycles leave no veth and no address (CROSSNET_DOCKER_CYCLES, default 5; the issue's 50 as a soak).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import time

import pytest

from tests.conftest import LabFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
    pytest.mark.skipif(not shutil.which("dockerd") or not os.path.exists("/bin/busybox"),
                       reason="needs docker.io (dockerd) and busybox-static"),
]

IMAGE = "local/crossnet-busybox:1"


@pytest.fixture(scope="module")
def lab(request, lab_sweep):
    return LabFactory.for_test(request)(hosts=3, underlay="l3", backend="vxlan", containers=2,
                                        extra={"runtime": "docker-plugin"})


def dk(lab, host):
    from crossnet.lab.docker import host_docker

    return host_docker(lab.plan, lab.plan.host(host))


def host_state(lab, host) -> dict:
    """(veths on the host, crossnet IPAM entries) of a host."""
    links = sorted(ln.split(":")[1].strip().split("@")[0]
                   for ln in lab.run(host, ["ip", "-o", "link", "show", "type", "veth"]).stdout.splitlines())
    return {"veths": links, "ipam": sorted((c["id"], c["address"]) for c in lab.status(host)["containers"])}


def settled_state(lab, host, timeout: float = 15.0) -> dict:
    """host_state once no veth is marked retired (or at the timeout): the driver deletes
    a removed endpoint's veth right after answering DeleteEndpoint (its writer thread)."""
    from crossnet.runtime.dockerplugin import RETIRED_ALIAS

    deadline = time.monotonic() + timeout
    while (RETIRED_ALIAS in lab.run(host, ["ip", "-o", "link", "show", "type", "veth"]).stdout
           and time.monotonic() < deadline):
        time.sleep(0.1)
    return host_state(lab, host)


def plugin_call(lab, host, path: str, raw: bytes) -> dict:
    """One raw request to the host's plugin socket (what dockerd sends)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(dk(lab, host).plugin_socket))
    with s:
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(raw)).encode()
                  + b"\r\nConnection: close\r\n\r\n" + raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_all_pairs_status_names_http(lab):
    from crossnet.check import all_ok
    from crossnet.lab import docker

    eps = docker.endpoints(lab.plan)
    assert len(eps) == 6
    pairs = lab.check()
    assert len(pairs) == 30 and all_ok(pairs), [p for p in pairs if not p.ok]
    for h in lab.hosts:  # shared IPAM: status lists Docker's containers by name, in the host's subnet
        deadline = time.monotonic() + 30
        while True:
            st = lab.status(h.name)
            named = {c["name"]: c for c in st["containers"] if c.get("name")}
            if set(h.containers) <= set(named) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert set(h.containers) <= set(named), st["containers"]
        subnet = ipaddress.ip_network(st["subnet"])
        assert all(ipaddress.ip_address(named[c]["address"]) in subnet for c in h.containers)
        assert {named[c]["address"] for c in h.containers} == {e.address for e in eps if e.name in h.containers}
        # the plugin created the network itself, with this host's subnet and crossnet's gateway
        info = json.loads(dk(lab, h.name).run("network", "inspect", "crossnet").stdout)[0]
        gateway = f"{subnet.network_address + 1}"
        assert info["Driver"] == "crossnet" and info["IPAM"]["Config"] == [{"Subnet": str(subnet),
                                                                            "Gateway": gateway}], info["IPAM"]
        assert info["IPAM"]["Driver"] == "crossnet"
        assert "created Docker network 'crossnet'" in (dk(lab, h.name).base / "plugin.log").read_text()
        assert {v["IPv4Address"] for v in info["Containers"].values()} == \
            {f"{named[c]['address'].split('/')[0]}/{subnet.prefixlen}" for c in h.containers}
        mtu = dk(lab, h.name).exec(h.containers[0], "ip", "-o", "link", "show", "eth0").stdout
        assert f"mtu {st['mtu']}" in mtu
    http = docker.http_check(lab.plan, eps)
    assert len(http) == 6 and all(x["ok"] for x in http), http


def test_literal_create_form_and_errors_are_one_line_err(lab):
    d = dk(lab, "h1")
    subnet = ipaddress.ip_network(lab.status("h1")["subnet"])
    # the literal `docker network create -d crossnet --ipam-driver crossnet NAME` (no --subnet) still
    # works: the pool 0.0.0.0/0 (libnetwork's route-overlap loop, docs/docker.md) with crossnet's gateway
    d.run("network", "create", "-d", "crossnet", "--ipam-driver", "crossnet", "xnany")
    try:
        info = json.loads(d.run("network", "inspect", "xnany").stdout)[0]
        assert info["IPAM"]["Config"] == [{"Subnet": "0.0.0.0/0", "Gateway": f"{subnet.network_address + 1}"}], \
            info["IPAM"]
        peer = dk(lab, "h2").inspect(lab.plan.host("h2").containers[0])["NetworkSettings"]["Networks"]["crossnet"]
        proc = d.run("run", "--rm", "--network", "xnany", IMAGE, "ping", "-c", "1", "-W", "2", peer["IPAddress"],
                     check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # `docker run --ip` works on the plugin's network (a user-configured subnet for Docker)
        taken = d.inspect(lab.plan.host("h1").containers[0])["NetworkSettings"]["Networks"]["crossnet"]["IPAddress"]
        before = settled_state(lab, "h1")
        proc = d.run("run", "--rm", "--network", "crossnet", "--ip", taken, IMAGE, "true", check=False)
        assert proc.returncode != 0 and f"{taken} is in use" in proc.stderr, proc.stderr
    finally:
        d.run("network", "rm", "xnany", check=False)
    for path, raw, want in [
        ("/NetworkDriver.Join", b'{"NetworkID": "../../etc", "EndpointID": "x"}', "NetworkID: expected an id"),
        ("/NetworkDriver.CreateEndpoint", b'{"NetworkID": "' + b"f" * 64 + b'", "EndpointID": "e"}',
         "unknown network"),
        ("/IpamDriver.RequestAddress", b'{"PoolID": "crossnet/0.0.0.0/0"}', "PoolID: unknown pool"),
        ("/IpamDriver.RequestPool", b"[1, 2]", "must be a JSON object"),
        ("/IpamDriver.RequestPool", b'{"V6": true}', "IPv4"),
    ]:
        answer = plugin_call(lab, "h1", path, raw)
        err = answer.get("Error" if path.startswith("/Ipam") else "Err", "")
        assert want in err and "\n" not in err, (path, answer)
    assert host_state(lab, "h1") == before


def test_dockerd_and_plugin_restart_keep_containers_connected_and_leak_nothing(lab):
    from crossnet.check import all_ok
    from crossnet.lab import docker

    d = dk(lab, "h1")
    before = settled_state(lab, "h1")
    old_pid = d.pid()
    d.restart_daemon()
    assert d.pid() != old_pid
    eps = docker.endpoints(lab.plan)  # the same containers, same addresses (live-restore)
    pairs = lab.check()
    assert len(eps) == 6 and len(pairs) == 30 and all_ok(pairs), [p for p in pairs if not p.ok]
    assert host_state(lab, "h1") == before
    # and the restarted dockerd still drives the driver
    d.run("run", "--rm", "--network", "crossnet", IMAGE, "ping", "-c", "1", "-W", "2", eps[-1].address)
    assert settled_state(lab, "h1") == before
    # a crossnet restart (the plugin process): networks and addresses are on disk; the
    # plugin's network exists and is left alone (it has containers)
    d.stop_plugin()
    d.start_plugin()
    deadline = time.monotonic() + 30
    while "exists (subnet" not in (d.base / "plugin.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "Docker network 'crossnet' exists (subnet" in (d.base / "plugin.log").read_text()
    d.run("run", "--rm", "--network", "crossnet", IMAGE, "ping", "-c", "1", "-W", "2", eps[-1].address)
    assert settled_state(lab, "h1") == before


def test_docker_run_rm_cycles_leak_nothing(lab):
    from crossnet.lab import docker

    cycles = int(os.environ.get("CROSSNET_DOCKER_CYCLES", "5"))
    d = dk(lab, "h2")
    peer = next(e for e in docker.endpoints(lab.plan) if e.name in lab.plan.host("h3").containers)
    before = settled_state(lab, "h2")
    for i in range(cycles):
        proc = d.run("run", "--rm", "--network", "crossnet", IMAGE, "ping", "-c", "1", "-W", "2", peer.address,
                     check=False)
        assert proc.returncode == 0, (i, proc.stdout + proc.stderr)
    assert settled_state(lab, "h2") == before
