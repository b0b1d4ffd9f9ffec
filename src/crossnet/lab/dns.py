"""Lab service ``dns`` (`lab up --dns`, extra ``{"dns": true}``): in a lab on the cluster
file (no store, no agent), `crossnet dns serve` in every host namespace — each host
answers for its own containers (docs/dns.md). Labs on etcd or the mesh need nothing:
their agents serve DNS themselves."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

from crossnet.lab.netns import spawn
from crossnet.lab.procs import stop
from crossnet.lab.services import HostService, host_env, register_service


def _enabled(plan) -> bool:
    extra = plan.extra or {}
    return bool(extra.get("dns")) and extra.get("store") in (None, "", "static")


def _pid_path(plan, host) -> Path:
    return Path(plan.lab_dir) / "hosts" / host.name / "dns.pid"


def _start(plan, host) -> None:
    log = Path(plan.lab_dir) / "hosts" / host.name / "dns.log"
    argv = [sys.executable, "-m", "crossnet", "--state-dir", host.state_dir, "dns", "serve", "--wait",
            "-f", plan.cluster_file]
    proc = spawn(host.netns, argv, log, env=host_env(plan, host))
    _pid_path(plan, host).write_text(f"{proc.pid}\n")


def _stop(plan, host) -> None:
    path = _pid_path(plan, host)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    stop(pid, signal.SIGTERM, timeout=5)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


register_service(HostService("dns", _start, _stop, enabled=_enabled, order=70))
