"""A real Prometheus server (Debian's `prometheus`) scrapes the agents of a 3-host lab
(`lab up --store etcd`, backend auto on one l2 segment), and the values are read back
through its HTTP API (/api/v1/query), as an operator's dashboards would:

* every host has its 2 peers programmed, its container attached, a recent full sync,
  the store reachable, its lease's TTL left in (0, TTL];
* per peer: the transport in use (one per peer) and its round-trip time (the prober);
* an attach through the agent (`crossnet attach` with the agent running) and a CNI ADD
  (crossnet-cni hands it to the agent) show in the attach and CNI latency histograms;
* `crossnet status` shows the agent's health in text (running, synced, store reachable,
  lease TTL); once h3's agent is stopped, Prometheus sees its target down and
  `crossnet status` on h3 says the agent is NOT RUNNING.

Prometheus runs inside h1's namespace, listening on 127.0.0.1 there only, with its
configuration and TSDB in the lab's directory (removed with the lab). The test skips
when the binary is missing, except under CI=true where it must run.
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

import pytest

from crossnet.lab.etcd import wait_agent_ready
from crossnet.lab.procs import stop as stop_pid
from tests.e2e.agentlab import LabCluster, crossnet_in, module_factory, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

HOSTS = ["h1", "h2", "h3"]
TTL = 10
PORT = 9100  # the agents' --metrics-address port (on each host's lab address)
PROM = "127.0.0.1:9090"  # inside h1's namespace

QUERY = """
import json, sys, urllib.parse, urllib.request
url = "http://PROM/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[1]})
try:
    with urllib.request.urlopen(url, timeout=10) as r:
        sys.stdout.write(r.read().decode())
except OSError as e:
    print(json.dumps({"status": "unreachable", "error": str(e)}))
""".replace("PROM", PROM)


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (scripts/install installs Debian's `prometheus`); "
                        "under CI=true this test must run")
        pytest.skip("needs Debian's prometheus (apt-get install prometheus)")
    return exe


@pytest.fixture(scope="module")
def scraped(request, lab_sweep):
    from crossnet.lab.etcdserver import etcd_available

    exe = prometheus_binary()
    if not etcd_available():
        pytest.skip("needs etcd (apt-get install etcd-server)")
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        pytest.skip("needs wireguard-go (apt-get install wireguard-go)")
    lab = module_factory(request)(hosts=len(HOSTS), underlay="l2", backend="auto", containers=1,
                                  extra={"store": "etcd", "ttl": TTL})
    c = LabCluster(lab, ttl=TTL)
    t0 = time.time()
    for h in HOSTS:  # the lab's agents again, now with metrics on their lab address (started together)
        c.stop(h)
        c.start(h, "--metrics-address", f"{c.host(h).address}:{PORT}", wait=False)
    for h in HOSTS:
        wait_agent_ready(c.host(h).state_dir, timeout=60, proc=c.procs[h], log_path=c.log(h))
    wait_for(lambda: c.all_programmed(HOSTS), 60, "every agent has both peers programmed", interval=0.3)

    d = Path(lab.plan.lab_dir) / "prometheus"
    d.mkdir()
    jobs = [{"targets": [f"{c.host(h).address}:{PORT}"], "labels": {"host": h}} for h in HOSTS]
    cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
           "scrape_configs": [{"job_name": "crossnet-agent", "static_configs": jobs}]}
    (d / "prometheus.yml").write_text(json.dumps(cfg))  # JSON is YAML
    h1 = c.host("h1")
    log = open(d / "prometheus.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(["ip", "netns", "exec", h1.netns, exe, f"--config.file={d / 'prometheus.yml'}",
                             f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address={PROM}",
                             "--log.level=warn"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield SimpleLab(lab, c, proc, d, t0)
    finally:
        stop_pid(proc.pid, signal.SIGTERM, 20)  # `ip netns exec` execs: the pid is prometheus's
        proc.wait(5)
        log.close()
        for h in list(c.procs):
            c.stop(h, signal.SIGKILL)


class SimpleLab:
    def __init__(self, lab, cluster: LabCluster, proc: subprocess.Popen, d: Path, t0: float):
        self.lab, self.c, self.proc, self.dir, self.t0 = lab, cluster, proc, d, t0

    def query(self, promql: str) -> dict[str, float]:
        """host -> value (or "host/peer/transport" for per-peer series) of an instant query."""
        assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()[-2000:]
        out = subprocess.run(["ip", "netns", "exec", self.c.host("h1").netns, sys.executable, "-c", QUERY, promql],
                             capture_output=True, text=True, timeout=60, check=False)
        data = json.loads(out.stdout or "{}")
        if data.get("status") != "success":
            return {}
        res = {}
        for r in data["data"]["result"]:
            m = r["metric"]
            key = "/".join(x for x in (m.get("host"), m.get("peer"), m.get("transport")) if x)
            res[key] = float(r["value"][1])
        return res

    def wait(self, promql: str, cond, what: str, timeout: float = 60) -> dict[str, float]:
        return wait_for(lambda: (v := self.query(promql)) and cond(v) and v, timeout, f"{what} ({promql})",
                        interval=0.5)

    def status_text(self, h: str, *args: str) -> subprocess.CompletedProcess:
        hp = self.c.host(h)
        return crossnet_in(hp.netns, hp.state_dir, "status", *args, env={"COLUMNS": "300"})


def test_prometheus_reads_every_agents_metrics(scraped):
    s = scraped
    up = s.wait("up", lambda v: v == {h: 1.0 for h in HOSTS}, "every agent scraped")
    assert up
    assert s.wait('crossnet_agent_peers{state="programmed"}', lambda v: v == {h: 2.0 for h in HOSTS},
                  "2 peers programmed on each host")
    assert s.wait("crossnet_agent_containers_attached", lambda v: v == {h: 1.0 for h in HOSTS},
                  "1 container on each host")
    synced = s.query("crossnet_agent_last_sync_timestamp_seconds")
    assert set(synced) == set(HOSTS) and all(s.t0 <= v <= time.time() + 1 for v in synced.values()), synced
    assert s.query("crossnet_agent_synced") == {h: 1.0 for h in HOSTS}
    assert s.query("crossnet_agent_store_reachable") == {h: 1.0 for h in HOSTS}
    left = s.query("crossnet_agent_lease_ttl_left_seconds")
    assert set(left) == set(HOSTS) and all(0 < v <= TTL for v in left.values()), left
    res = s.query('crossnet_agent_resources_programmed{part="peers"}')
    assert set(res) == set(HOSTS) and all(v > 0 for v in res.values()), res
    # per peer: exactly one transport in use, and a round-trip time measured on it
    in_use = s.wait("crossnet_agent_peer_transport == 1", lambda v: len(v) == 6, "one transport per peer")
    assert {k.rsplit("/", 1)[0] for k in in_use} == {f"{h}/{p}" for h in HOSTS for p in HOSTS if p != h}, in_use
    rtt = s.wait("crossnet_agent_peer_rtt_seconds and on(host, peer, transport) crossnet_agent_peer_transport == 1",
                 lambda v: len(v) == 6, "an RTT for each peer's transport")
    assert all(0 < v < 1 for v in rtt.values()), rtt

    # an attach run by h1's agent (`crossnet attach` goes through its API) is timed
    c = s.c
    h1 = c.host("h1")
    out = crossnet_in(h1.netns, h1.state_dir, "attach", h1.containers[0])
    assert out.returncode == 0, out.stderr
    assert s.wait('crossnet_agent_attach_duration_seconds_count{result="ok"}', lambda v: v.get("h1", 0) >= 1,
                  "h1's attach counted")
    # and a CNI ADD that crossnet-cni hands to h1's agent
    cname = f"{h1.netns}-cni"
    subprocess.run(["ip", "netns", "add", cname], check=True)
    try:
        conf = json.dumps({"cniVersion": "1.0.0", "name": "crossnet", "type": "crossnet-cni", "stateDir": h1.state_dir})
        env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "e" * 64, "CNI_NETNS": f"/run/netns/{cname}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        add = subprocess.run(["ip", "netns", "exec", h1.netns, sys.executable, "-c",
                              "from crossnet.cni.client import main; main()"],
                             input=conf, text=True, capture_output=True, env=env, timeout=60, check=False)
        assert add.returncode == 0, add.stdout + add.stderr
        assert s.wait('crossnet_agent_cni_duration_seconds_count{command="ADD", result="ok"}',
                      lambda v: v.get("h1") == 1, "h1's CNI ADD counted")
        assert s.query("crossnet_agent_containers_attached")["h1"] == 2
    finally:
        subprocess.run(["ip", "netns", "del", cname], check=False)

    # crossnet status: the agent's health in text
    st = s.status_text("h1")
    assert st.returncode == 0, st.stderr
    line = next((x for x in st.stdout.splitlines() if x.startswith("agent: ")), "")
    assert line.startswith("agent: running (pid ") and ", synced 20" in line, st.stdout
    assert " reachable, lease ttl 10 s (" in line, line
    ah = json.loads(s.status_text("h1", "-o", "json").stdout)["agent_health"]
    assert (ah["running"], ah["synced"], ah["store_reachable"], ah["lease_ttl"], ah["problem"]) == \
        (True, True, True, TTL, None), ah
    assert 0 < ah["lease_ttl_left"] <= TTL and ah["synced_at"].endswith("Z"), ah

    # h3's agent stops: Prometheus sees the target down, status on h3 says so clearly
    c.stop("h3", signal.SIGTERM)
    s.wait('up{host="h3"}', lambda v: v == {"h3": 0.0}, "h3's agent seen down")
    st = s.status_text("h3")
    assert "agent: NOT RUNNING — the agent is not running: an agent holds this host's lease (agent.json)" \
        in st.stdout, (st.returncode, st.stdout, st.stderr)
    ah = json.loads(s.status_text("h3", "-o", "json").stdout)["agent_health"]
    assert ah["running"] is False and "systemctl start crossnet-agent" in ah["problem"], ah
