"""`crossnet agent` on the two other ways to reach its store, end to end:

* the static store, `crossnet agent -f CLUSTER_FILE` (agents on 2 of 3 hosts, vxlan, no etcd in the
  lab): it programs the peers, serves the local API (`crossnet status`, `attach`,
  `check` go through it), follows the file when a host is added to it and removed
  again, and leaves exactly what `crossnet apply` of the same file
  leaves (apply after it changes nothing, and the agent started again adopts it);
* etcd with client-certificate auth (`--client-cert-auth`, certificates made with
  openssl as in tests/unit/test_store_tls.py), run in the lab's switch namespace:
  `crossnet etcd init` and the agents over TLS, a host without a client certificate
  refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from crossnet.agent import api as agentapi
from crossnet.lab.etcd import wait_agent_ready
from tests.e2e import kstate
from tests.e2e.agentlab import FgLabFactory, crossnet_in, synced_changes, wait_for
from tests.e2e.test_agent import Cluster, _route_dsts
from tests.unit.test_store_tls import _openssl

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

HOSTS = ["h1", "h2"]


@pytest.fixture
def fg_lab_factory(request: pytest.FixtureRequest, lab_sweep: None) -> FgLabFactory:
    return FgLabFactory.for_test(request)


class StaticCluster(Cluster):
    """test_agent's Cluster with agents on a cluster file instead of etcd."""

    def __init__(self, lab, cluster_file: str):
        super().__init__(lab, None)
        self.cluster_file = cluster_file

    def write_file(self, hosts: list[str]) -> None:
        """The lab's cluster with only `hosts` (replaced atomically: a new mtime)."""
        import yaml

        data = self.plan.cluster_dict()
        data["hosts"] = [x for x in data["hosts"] if x["name"] in hosts]
        tmp = f"{self.cluster_file}.tmp"
        Path(tmp).write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, self.cluster_file)

    def start(self, h, *extra, wait: bool = True):
        hp = self.host(h)
        Path(hp.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = ["ip", "netns", "exec", hp.netns, sys.executable, "-m", "crossnet", "--state-dir", hp.state_dir, "agent",
                "-f", self.cluster_file, "--name", h, "--iface", hp.ifname, "--resync", "20", *extra]
        with open(self.log(h), "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[h] = proc
        if wait:
            return wait_agent_ready(hp.state_dir, timeout=60, proc=proc, log_path=self.log(h))
        return proc


def test_static_store_agent_programs_like_apply_and_serves_the_api(fg_lab_factory):
    """Agents on h1 and h2 with a cluster file naming h1 and h2; h3 (no agent) is added
    to the file and removed again: both agents follow the file."""
    lab = fg_lab_factory(hosts=3, backend="vxlan", containers=1, apply=False)
    c = StaticCluster(lab, os.path.join(lab.plan.lab_dir, "agents-cluster.yaml"))
    c.write_file(HOSTS)
    try:
        for h in HOSTS:
            st = c.start(h)
            assert st["store"] == f"cluster file {c.cluster_file}", st
            assert st["lease"] is None
            c.attach(h)
        wait_for(lambda: c.all_programmed(HOSTS), 15, "both agents have the other host programmed")
        assert c.mesh(HOSTS) == []
        subnets = {h: c.status(h)["subnet"] for h in HOSTS}
        assert subnets["h2"] in _route_dsts(c.host("h1").netns)

        # the CLI goes through the agent's API
        st = json.loads(lab.crossnet("h1", "status", "-o", "json").stdout)
        assert st["agent"]["store"] == f"cluster file {c.cluster_file}"
        assert [(p["name"], p["subnet"], p["programmed"]) for p in st["agent"]["peers"]] == [
            ("h2", subnets["h2"], True)]
        assert st["subnet"] == subnets["h1"] and [ct["address"].split("/")[0] for ct in st["containers"]] == [
            c.containers["h1"]]
        known = agentapi.call(c.state("h1"), "GET", "/v1/containers")
        assert known["store"] == "static" and known["known"] is False
        check = lab.crossnet("h1", "check", "-o", "json", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert {p["dst_host"] for p in json.loads(check.stdout)["pairs"]} >= {"h2"}

        # the file changes: h3 appended (h1's and h2's subnets stay), then removed again
        c.write_file(["h1", "h2", "h3"])
        wait_for(lambda: all("h3" in {p["name"] for p in c.status(h)["peers"] if p["programmed"]} for h in HOSTS),
                 15, "h3 programmed by both agents")
        sub3 = next(p["subnet"] for p in c.status("h1")["peers"] if p["name"] == "h3")
        assert {h: c.status(h)["subnet"] for h in HOSTS} == subnets
        assert all(sub3 in _route_dsts(c.host(h).netns) for h in HOSTS)
        c.write_file(HOSTS)
        wait_for(lambda: not any(sub3 in _route_dsts(c.host(h).netns) for h in HOSTS), 15, f"route {sub3} removed")
        assert [p["name"] for p in c.status("h1")["peers"]] == ["h2"]
        assert c.mesh(HOSTS) == []

        # what the agent made is what apply makes: apply of the same file changes nothing ...
        netns = c.host("h1").netns
        c.stop("h1", signal.SIGTERM)  # the data plane stays
        before = kstate.snapshot(netns)
        applied = json.loads(lab.crossnet("h1", "apply", "-f", c.cluster_file, "--host", "h1",
                                          "-o", "json").stdout)
        assert applied["changes"] == [], applied["changes"]
        assert kstate.diff(before, kstate.snapshot(netns)) == []
        # ... and the agent started again adopts what apply left: zero changes
        offset = os.path.getsize(c.log("h1"))
        c.start("h1")
        with open(c.log("h1"), "rb") as fh:
            fh.seek(offset)
            assert synced_changes(fh.read().decode()) == [0]
        assert c.mesh(HOSTS) == []
    finally:
        for h in list(c.procs):
            c.stop(h, signal.SIGKILL)


# ---- TLS ------------------------------------------------------------------------------
def _certs(d: Path, ip: str) -> None:
    d.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fg-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.cnf").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=fg-{name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem", cwd=d)


def _tls_etcd(lab, d: Path) -> tuple[subprocess.Popen, str]:
    """etcd in the switch namespace, https with --client-cert-auth on the LAN address."""
    gw = lab.plan.fabric.address.split("/")[0]
    url = f"https://{gw}:2379"
    peer = "http://127.0.0.1:2380"
    with open(d / "etcd.log", "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.plan.fabric.netns, "etcd", "--name", f"{lab.name}-tls",
             "--data-dir", str(d / "data"), "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{lab.name}-tls={peer}", "--cert-file", str(d / "server.pem"),
             "--key-file", str(d / "server.key"), "--client-cert-auth", "--trusted-ca-file", str(d / "ca.pem")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, url


def test_tls_etcd_init_and_agents(fg_lab_factory, request):
    from crossnet.lab.etcdserver import etcd_available

    if not etcd_available() or not shutil.which("openssl"):
        pytest.skip("needs etcd and openssl")
    lab = fg_lab_factory(hosts=len(HOSTS), backend="vxlan", containers=1, apply=False)
    d = Path(lab.plan.lab_dir) / "tls"
    gw = lab.plan.fabric.address.split("/")[0]
    _certs(d, gw)
    proc, url = _tls_etcd(lab, d)

    def stop_etcd():
        from crossnet.lab.procs import stop

        stop(proc.pid, signal.SIGTERM, timeout=10)
        proc.wait(5)

    request.addfinalizer(stop_etcd)  # before the lab goes (finalizers run in reverse)
    tls = ["--cert", str(d / "client.pem"), "--key", str(d / "client.key"), "--cacert", str(d / "ca.pem")]
    h1 = lab.plan.host("h1")

    def etcd_cmd(*args):
        return crossnet_in(h1.netns, h1.state_dir, "etcd", *args, "--etcd", url, "--timeout", "2")

    wait_for(lambda: etcd_cmd("show", *tls).returncode == 0, 30, "etcd over TLS ready", interval=0.3)
    # no client certificate: refused, one line, nothing written
    bare = etcd_cmd("init", "--cacert", str(d / "ca.pem"), "--network", lab.plan.network, "--ttl", "5")
    assert bare.returncode != 0 and len(bare.stderr.strip().splitlines()) == 1, bare.stderr
    assert "TLS error" in bare.stderr, bare.stderr
    assert "not initialised" in etcd_cmd("show", *tls).stdout
    init = etcd_cmd("init", *tls, "--network", lab.plan.network, "--ttl", "5", "--name", lab.name, "-o", "json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["result"] == "created", init.stdout
    again = etcd_cmd("init", *tls, "--network", lab.plan.network, "--ttl", "5", "--name", lab.name)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr

    c = Cluster(lab, SimpleNamespace(url=url))
    try:
        for h in HOSTS:
            st = c.start(h, *tls)
            assert st["healthy"] and url in st["store"], st
            c.attach(h)
        wait_for(lambda: c.all_programmed(HOSTS), 15, "h2 a programmed peer of h1 (and back)")
        peers = c.status("h1")["peers"]
        assert [(p["name"], p["address"]) for p in peers] == [("h2", lab.plan.host("h2").address)]
        assert c.mesh(HOSTS) == []
        shown = json.loads(etcd_cmd("show", *tls, "-o", "json").stdout)
        assert sorted(x["name"] for x in shown["hosts"]) == HOSTS
        # an agent without the client certificate does not get in (gives up, one clear line)
        t0 = time.monotonic()
        bad = crossnet_in(lab.plan.host("h2").netns, str(Path(lab.plan.lab_dir) / "hosts" / "h2" / "nocert"),
                          "agent", "--etcd", url, "--cacert", str(d / "ca.pem"), "--name", "h9", "--iface", "eth0",
                          "--retries", "2", "--backoff-max", "0.2", "--timeout", "2")
        assert bad.returncode == 1, bad.stderr
        last = bad.stderr.strip().splitlines()[-1]
        assert "TLS error" in last and last.endswith("(gave up after 2 attempts)"), bad.stderr
        assert time.monotonic() - t0 < 30
    finally:
        for h in list(c.procs):
            c.stop(h, signal.SIGKILL)
