"""etcd + agents in the lab (`crossnet lab up --store etcd`), and the process helpers
the end-to-end tests share.

Two lab services (crossnet.lab.services):

* ``etcd`` (order 10): one etcd server for the whole lab, in the switch/router
  namespace, listening on the lab's gateway address (l2: the switch address; l3: the
  router's address towards h1, routed from every host) port 2379, plus a unix socket
  ``<lab_dir>/etcd/localhost:2379`` usable from the root namespace. It writes the
  network config (``crossnet etcd init``) under prefix ``/crossnet``.
* ``agent`` (order 60, after the per-host OVS daemons): ``crossnet agent`` in every host namespace, logging to
  ``<lab_dir>/hosts/<h>/agent.log``; `start` returns once the agent has programmed
  its host, so the lab can attach containers right after.

Both are enabled when the lab plan's ``extra["store"] == "etcd"``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from crossnet.errors import CrossnetError
from crossnet.lab.etcdserver import EtcdServer
from crossnet.lab.netns import host_exec
from crossnet.lab.procs import stop as stop_pid
from crossnet.lab.services import HostService, host_env, register_service

LAB_PREFIX = "/crossnet"
LAB_TTL = 10
ETCD_PORT = 2379
AGENT_READY_TIMEOUT = 60.0


# ---------------------------------------------------------------------- agents


def agent_argv(state_dir: str, etcd: str, name: str, iface: str = "eth0", prefix: str = LAB_PREFIX,
               extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "crossnet", "--state-dir", state_dir, "agent", "--etcd", etcd,
            "--prefix", prefix, "--name", name, "--iface", iface, *extra]


def start_agent(netns: str, state_dir: str, etcd: str, name: str, log_path: str, iface: str = "eth0",
                prefix: str = LAB_PREFIX, extra: list[str] | tuple[str, ...] = (),
                env: dict[str, str] | None = None, plan: object | None = None) -> subprocess.Popen:
    """Start `crossnet agent` in `netns`; output appended to log_path; pid in <state_dir>/../agent.pid."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [*host_exec(netns, plan), *agent_argv(state_dir, etcd, name, iface, prefix, extra)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
    _pid_path(state_dir).write_text(f"{proc.pid}\n")
    return proc


def _pid_path(state_dir: str) -> Path:
    return Path(state_dir).parent / "agent.pid"


def agent_status(state_dir: str, timeout: float = 5.0) -> dict | None:
    """The agent's /v1/status 'agent' part, or None if it does not answer."""
    from crossnet.agent.api import call

    try:
        return call(state_dir, "GET", "/v1/status", timeout=timeout)["agent"]
    except (CrossnetError, KeyError, TypeError):
        return None


def wait_agent_ready(state_dir: str, timeout: float = AGENT_READY_TIMEOUT, proc: subprocess.Popen | None = None,
                     log_path: str | None = None, interval: float = 0.1) -> dict:
    """Wait until the agent answers on its socket having synced; returns its status.
    ``interval``: seconds between polls (the benchmark polls finer, so the moment it
    sees the agent ready is close to the moment the agent got ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CrossnetError(f"agent exited with code {proc.returncode}: {_tail(log_path)}")
        st = agent_status(state_dir, timeout=2.0)
        if st and st.get("synced"):
            return st
        time.sleep(interval)
    raise CrossnetError(f"agent with state dir {state_dir} not ready within {timeout:.0f}s: {_tail(log_path)}")


def _tail(path: str | None, lines: int = 3) -> str:
    if not path:
        return ""
    try:
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])[-500:]
    except OSError:
        return ""


def stop_agent(state_dir: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    try:
        pid = int(_pid_path(state_dir).read_text().strip())
    except (OSError, ValueError):
        return False
    running = stop_pid(pid, sig, timeout)
    with contextlib.suppress(FileNotFoundError):
        _pid_path(state_dir).unlink()
    return running


# ---------------------------------------------------------------------- lab services


def _enabled(plan) -> bool:
    return (plan.extra or {}).get("store") == "etcd"


def lab_etcd(plan) -> EtcdServer:
    if plan.fabric.address:  # l2: the switch's LAN address
        listen = plan.fabric.address.split("/")[0]
    else:  # l3: the router's address towards h1 (every host routes to it)
        listen = plan.hosts[0].gateway
    return EtcdServer(Path(plan.lab_dir) / "etcd", listen=[listen], port=ETCD_PORT, netns=plan.fabric.netns,
                      name=f"{plan.name}-etcd")


_etcd_lock = threading.Lock()


def _start_etcd(plan, host) -> None:
    """Per-host hook, but one etcd per lab: the first call starts it, the others wait."""
    from crossnet.store import NetworkConfig
    from crossnet.store.etcd import EtcdStore

    with _etcd_lock:
        srv = lab_etcd(plan)
        if srv.running():
            return
        if plan.backend.startswith("ovs"):
            _fabric_tx_checksum_off(plan)
        srv.start()
        ttl = int((plan.extra or {}).get("ttl") or LAB_TTL)
        cfg = NetworkConfig(network=plan.network, backend=plan.backend, subnet_len=plan.subnet_len, name=plan.name,
                            ttl=ttl, mtu=plan.mtu,
                            auto={"encrypt": True} if (plan.extra or {}).get("encrypt") else {},
                            datapath=(plan.extra or {}).get("datapath", "kernel"))
        EtcdStore(srv.client(), LAB_PREFIX).init_config(cfg, force=True)


def _fabric_tx_checksum_off(plan) -> None:
    """OVS backends move each host's address onto an OVS userspace (netdev) bridge that
    reads eth0 with AF_PACKET. Frames a veth peer sends with checksum offload arrive
    there with the TCP checksum not filled in, so the host's own TCP (agent -> etcd)
    fails while ICMP works. Real NICs deliver complete checksums; in the lab, make the
    fabric side of every host link compute them in software."""
    for h in plan.hosts:
        subprocess.run(["ip", "netns", "exec", plan.fabric.netns, "ethtool", "-K", h.fabric_ifname, "tx", "off"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)


def _stop_etcd(plan, host) -> None:
    if host.name != plan.hosts[0].name:
        return
    lab_etcd(plan).stop()


def _start_agent(plan, host) -> None:
    srv = lab_etcd(plan)
    log_path = str(Path(plan.lab_dir) / "hosts" / host.name / "agent.log")
    ttl = str(int((plan.extra or {}).get("ttl") or LAB_TTL))
    proc = start_agent(host.netns, host.state_dir, srv.url, host.name, log_path, iface=host.ifname,
                       extra=["--ttl", ttl], env=host_env(plan, host), plan=plan)
    wait_agent_ready(host.state_dir, proc=proc, log_path=log_path)


def _stop_agent(plan, host) -> None:
    stop_agent(host.state_dir)


register_service(HostService("etcd", _start_etcd, _stop_etcd, enabled=_enabled, order=10))
# after the per-host daemons the backends need (ovs: order 50), stopped before them
register_service(HostService("agent", _start_agent, _stop_agent, enabled=_enabled, order=60))
