"""The agent as a service, end to end (docs/production.md): two agents on a cluster file
in a lab (vxlan), each started with `--metrics-address <its lab address>:9100
--log-format json` and a NOTIFY_SOCKET the test listens on (as systemd's, for
crossnet-agent.service's Type=notify):

* READY=1 arrives once the agent has synced, STOPPING=1 when it is stopped;
* /metrics, fetched from inside the host's namespace on its lab address, shows the
  peer programmed and the full sync counted; /healthz and /readyz answer 200 `ok`;
  nothing listens on the namespace's other addresses;
* every line of the agent's log is one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.e2e.agentlab import FgLabFactory, wait_for
from tests.e2e.test_agent_stores import StaticCluster

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]

HOSTS = ["h1", "h2"]
PORT = 9100

FETCH = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


@pytest.fixture
def fg_lab_factory(request: pytest.FixtureRequest, lab_sweep: None) -> FgLabFactory:
    return FgLabFactory.for_test(request)


def fetch(netns: str, url: str) -> tuple[int, str]:
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", FETCH, url],
                         check=False, capture_output=True, text=True, timeout=60)
    code, _, body = out.stdout.partition("\n")
    return int(code or 0), body


def value(body: str, line_start: str) -> float:
    for line in body.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics:\n{body[:3000]}")


def test_agent_metrics_health_notify_and_json_logs(fg_lab_factory, tmp_path, monkeypatch):
    lab = fg_lab_factory(hosts=2, backend="vxlan", containers=1, apply=False)
    c = StaticCluster(lab, os.path.join(lab.plan.lab_dir, "agents-cluster.yaml"))
    c.write_file(HOSTS)
    notify = {}
    try:
        for h in HOSTS:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(tmp_path / f"notify-{h}"))
            sock.settimeout(60)
            notify[h] = sock
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / f"notify-{h}"))  # the agent's environment
            hp = c.host(h)
            c.start(h, "--metrics-address", f"{hp.address}:{PORT}", "--log-format", "json", wait=False)
        for h in HOSTS:
            msg = notify[h].recv(4096).decode()  # sent once the first full sync is done
            assert msg.startswith("READY=1\nSTATUS=synced"), msg
            assert c.status(h)["synced"] is True
        wait_for(lambda: c.all_programmed(HOSTS), 30, "both agents have the other host programmed")

        hp = c.host("h1")
        base = f"http://{hp.address}:{PORT}"
        code, body = fetch(hp.netns, base + "/metrics")
        assert code == 200, body
        assert value(body, 'crossnet_agent_peers{state="programmed"}') == 1
        assert value(body, "crossnet_agent_synced") == 1 and value(body, "crossnet_agent_healthy") == 1
        assert value(body, "crossnet_agent_sync_duration_seconds_count") >= 1
        assert value(body, "process_resident_memory_bytes") > 0
        assert fetch(hp.netns, base + "/healthz") == (200, "ok\n")
        assert fetch(hp.netns, base + "/readyz") == (200, "ok\n")
        code, _ = fetch(hp.netns, f"http://127.0.0.1:{PORT}/metrics")  # only on the address given
        assert code == 0

        c.stop("h1", signal.SIGTERM)
        assert notify["h1"].recv(4096).decode() == "STOPPING=1"
        with open(c.log("h1")) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
        assert any(r["msg"] == "ready" for r in records)
        assert any(r["msg"].startswith("metrics on http://") for r in records)
    finally:
        for h in list(c.procs):
            c.stop(h, signal.SIGKILL)
        for s in notify.values():
            s.close()


def _links(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def test_boot_unit_command_brings_back_the_same_container_addresses(fg_lab_factory):
    """crossnet-apply.service's ExecStart, run in a lab host whose kernel state is gone as
    after a reboot (crossnet's links, the containers' veths, nft, ip_forward), programs the
    host again; the containers re-attached get the addresses they had and every pair pings."""
    import shlex
    import shutil

    from crossnet import units

    lab = fg_lab_factory(hosts=2, backend="vxlan", containers=1)
    hp = lab.plan.host("h1")
    before = {c["id"]: c["address"] for c in lab.status("h1")["containers"]}
    assert before
    # "reboot" h1: nothing crossnet made in the kernel survives; the state dir and the cluster file do
    for c in hp.containers:
        if "eth0" in _links(c):
            subprocess.run(["ip", "-n", c, "link", "del", "eth0"], check=True)
    for name in _links(hp.netns):
        if name not in ("lo", hp.ifname):
            subprocess.run(["ip", "-n", hp.netns, "link", "del", name], check=True)
    subprocess.run(["ip", "netns", "exec", hp.netns, "nft", "flush", "ruleset"], check=True)
    subprocess.run(["ip", "netns", "exec", hp.netns, "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    assert sorted(_links(hp.netns)) == sorted(["lo", hp.ifname])

    exe = shutil.which("crossnet")
    assert exe, "the crossnet console script is not on PATH"
    text = units.render(["apply"], units.UnitOptions(exe=exe, state_dir=hp.state_dir,
                                                     cluster_file=lab.plan.cluster_file))["crossnet-apply.service"]
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    boot = subprocess.run(["ip", "netns", "exec", hp.netns, *shlex.split(exec_start)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert boot.returncode == 0, boot.stderr
    for c in hp.containers:  # the runtime starts its containers again (CNI ADD / attach)
        lab.attach("h1", c)
    assert {c["id"]: c["address"] for c in lab.status("h1")["containers"]} == before
    failed = [p for p in lab.check() if not p.ok]
    assert failed == [], failed
