"""The per-host CLI goes through the agent's local API when an agent serves the
state dir: status shows the agent, attach/detach are done by the agent process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")]


def test_cli_uses_agent_api(lab_factory):
    lab = lab_factory(hosts=2, backend="vxlan", containers=1, extra={"store": "etcd"})
    h1 = next(h for h in lab.hosts if h.name == "h1")
    sock = Path(h1.state_dir) / "agent.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    st = lab.status("h1")
    assert "agent" in st and st["backend"] == "vxlan"
    extra = f"{h1.netns}-x"
    subprocess.run(["ip", "netns", "add", extra], check=True)
    try:
        res = lab.crossnet("h1", "attach", extra, "-o", "json")
        att = json.loads(res.stdout)
        assert att["address"] in {c["address"] for c in lab.status("h1")["containers"]}
        # it really works across hosts
        pairs = lab.check()
        assert all(p.ok for p in pairs), [p for p in pairs if not p.ok]
        out = lab.crossnet("h1", "detach", extra, "-o", "json")
        assert json.loads(out.stdout)["detached"] is True
        assert att["address"] not in {c["address"] for c in lab.status("h1")["containers"]}
    finally:
        subprocess.run(["ip", "netns", "del", extra])


@pytest.mark.parametrize("client", ["python", "native"])
def test_cni_plugin_served_by_agent(lab_factory, tmp_path, client):
    """With an agent running, crossnet-cni hands ADD/DEL to the agent's API: no
    warm helper of its own is started, and the container gets a working address.
    Both clients: the Python one and the native one `crossnet cni install` compiles."""
    import shutil
    import sys

    from crossnet.cni.install import install

    lab = lab_factory(hosts=2, backend="vxlan", containers=1, extra={"store": "etcd"})
    h1 = next(h for h in lab.hosts if h.name == "h1")
    if client == "python":
        argv = [sys.executable, "-c", "from crossnet.cni.client import main; main()"]
    else:
        if not shutil.which("cc"):
            pytest.skip("needs a C compiler (cc)")
        info = install(h1.state_dir, conf_dir=str(tmp_path / "net.d"), bin_dir=str(tmp_path / "bin"))
        assert info["client"] == "native"
        argv = [info["plugin"]]
    cname = f"{h1.netns}-cni"
    subprocess.run(["ip", "netns", "add", cname], check=True)
    log = tmp_path / "cni.log"
    conf = json.dumps({"cniVersion": "1.0.0", "name": "crossnet", "type": "crossnet-cni",
                       "stateDir": h1.state_dir, "logFile": str(log)})
    env = {"CNI_CONTAINERID": "f" * 64, "CNI_NETNS": f"/run/netns/{cname}", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"],
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}  # the crossnet under test

    def cni(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", h1.netns, *argv],
            input=conf, text=True, capture_output=True, env={**env, "CNI_COMMAND": command}, timeout=60,
        )

    try:
        add = cni("ADD")
        assert add.returncode == 0, add.stdout + add.stderr
        ip = json.loads(add.stdout)["ips"][0]["address"].split("/")[0]
        assert not (Path(h1.state_dir) / "cni.sock").exists()  # the agent served it
        # the agent writes the call to the network's logFile as the plugin or its helper would
        assert [(x["via"], x["command"], x["rc"]) for x in map(json.loads, log.read_text().splitlines())] == \
            [("agent", "ADD", 0)]
        assert ip in {c["address"] for c in lab.status("h1")["containers"]}
        other = next(h for h in lab.hosts if h.name == "h2").containers[0]
        assert subprocess.run(["ip", "netns", "exec", other, "ping", "-c", "1", "-W", "2", ip],
                              capture_output=True).returncode == 0
        assert cni("DEL").returncode == 0
        assert [json.loads(x)["via"] for x in log.read_text().splitlines()] == ["agent", "agent"]
        assert ip not in {c["address"] for c in lab.status("h1")["containers"]}
    finally:
        subprocess.run(["ip", "netns", "del", cname])
