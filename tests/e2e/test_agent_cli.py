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
