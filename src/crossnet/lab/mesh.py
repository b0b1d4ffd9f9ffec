"""Service ``mesh`` (`crossnet lab up|demo --store mesh`): every simulated host runs
exactly the user's commands (docs/mesh.md) — `crossnet launch` on h1, then
`crossnet launch --token T <h1's address>` on the others, one join at a time (each
voter added is a `member add` that must be running before the next) — and
`crossnet stop` when the lab goes down. No separate etcd namespace: the etcd members
run in the host namespaces, started and supervised by `crossnet launch`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading

from crossnet.errors import CrossnetError
from crossnet.lab.services import HostService, host_env, register_service

LAB_TTL = 10
LAUNCH_TIMEOUT = 120.0
_JOIN_RE = re.compile(r"crossnet launch --token (\S+) (\S+)")

_lock = threading.Lock()
_first: dict[str, threading.Event] = {}
_join: dict[str, tuple[str, str]] = {}


def _enabled(plan) -> bool:
    return (plan.extra or {}).get("store") == "mesh"


def launch_argv(plan, host, *args: str) -> list[str]:
    env = [f"{k}={v}" for k, v in host_env(plan, host).items()]
    return ["ip", "netns", "exec", host.netns, "env", f"CROSSNET_STATE_DIR={host.state_dir}", *env,
            sys.executable, "-m", "crossnet", *args]


def run(plan, host, *args: str, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_argv(plan, host, *args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise CrossnetError(f"{host.name}: crossnet {' '.join(args[:1])} failed: {err}")
    return proc


def parse_join_line(text: str) -> tuple[str, str]:
    m = _JOIN_RE.search(text)
    if m is None:
        raise CrossnetError(f"crossnet launch printed no join command: {text.strip()[-200:]}")
    return m.group(1), m.group(2)


def _start(plan, host) -> None:
    with _lock:
        first = _first.setdefault(plan.name, threading.Event())
    if host.name == plan.hosts[0].name:
        ttl = str(int((plan.extra or {}).get("ttl") or LAB_TTL))
        try:
            out = run(plan, host, "launch", "--name", host.name, "--network", plan.network,
                      "--subnet-len", str(plan.subnet_len), "--backend", plan.backend, "--ttl", ttl)
            _join[plan.name] = parse_join_line(out.stdout)
        finally:
            first.set()
        return
    if not first.wait(LAUNCH_TIMEOUT):
        raise CrossnetError(f"{host.name}: the first host did not launch")
    if plan.name not in _join:
        raise CrossnetError(f"{host.name}: the first host failed to launch")
    token, addr = _join[plan.name]
    with _lock:  # one join at a time
        run(plan, host, "launch", "--name", host.name, "--token", token, addr)


def _stop(plan, host) -> None:
    subprocess.run(launch_argv(plan, host, "stop"), capture_output=True, text=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    with _lock:
        _first.pop(plan.name, None)
        _join.pop(plan.name, None)


register_service(HostService("mesh", _start, _stop, enabled=_enabled, order=60))
