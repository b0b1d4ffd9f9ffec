"""Service ``mesh`` (`crossnet lab up|demo --store mesh`): every simulated host runs
exactly the user's commands (docs/mesh.md) — `crossnet launch` on h1, then
`crossnet launch --token T <the previous host's address>` on the others (h1's token; from h5 on
the join goes through a client), one join at a time in host order (each
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
from crossnet.lab.netns import host_exec
from crossnet.lab.services import HostService, host_env, register_service

LAB_TTL = 10
LAUNCH_TIMEOUT = 120.0
_JOIN_RE = re.compile(r"crossnet launch --token (\S+) (\S+)")

_lock = threading.Lock()
_done: dict[str, dict[str, threading.Event]] = {}
_join: dict[str, tuple[str, str]] = {}


def _enabled(plan) -> bool:
    return (plan.extra or {}).get("store") == "mesh"


def launch_argv(plan, host, *args: str) -> list[str]:
    env = [f"{k}={v}" for k, v in host_env(plan, host).items()]
    return [*host_exec(host.netns, plan), "env", f"CROSSNET_STATE_DIR={host.state_dir}", *env,
            sys.executable, "-m", "crossnet", *args]


def run(plan, host, *args: str, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_argv(plan, host, *args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise CrossnetError(f"{host.name}: crossnet {' '.join(args[:1])} failed: {err}")
    return proc


def parse_join_line(text: str) -> tuple[str, str]:
    m = _JOIN_RE.search(text)
    if m is None:
        raise CrossnetError(f"crossnet launch printed no join command: {text.strip()[-200:]}")
    return m.group(1), m.group(2)


def _events(plan) -> dict[str, threading.Event]:
    with _lock:
        return _done.setdefault(plan.name, {h.name: threading.Event() for h in plan.hosts})


def _start(plan, host) -> None:
    """h1 creates the mesh; h<i> joins once h<i-1> is done (in host order, so the first
    hosts are the voters) with h1's token, through h<i-1>'s address: the token names no
    particular host, and from the 5th host on the join goes through a client."""
    done = _events(plan)
    names = [h.name for h in plan.hosts]
    i = names.index(host.name)
    try:
        if i == 0:
            if plan.backend.startswith("ovs"):  # the same lab quirk as for the etcd service
                from crossnet.lab.etcd import _fabric_tx_checksum_off

                _fabric_tx_checksum_off(plan)
            ttl = str(int((plan.extra or {}).get("ttl") or LAB_TTL))
            domain = (plan.extra or {}).get("dns_domain")  # tests: `launch --dns-domain`
            out = run(plan, host, "launch", "--name", host.name, "--network", plan.network,
                      "--subnet-len", str(plan.subnet_len), "--backend", plan.backend, "--ttl", ttl,
                      *(["--dns-domain", str(domain)] if domain else []),
                      *(["--encrypt"] if (plan.extra or {}).get("encrypt") else []),
                      *(["--datapath", str(plan.extra["datapath"])] if (plan.extra or {}).get("datapath") else []))
            _join[plan.name] = parse_join_line(out.stdout)
            return
        if not done[names[i - 1]].wait(LAUNCH_TIMEOUT * i) or plan.name not in _join:
            raise CrossnetError(f"{host.name}: {names[i - 1]} did not launch; not joining")
        token, _ = _join[plan.name]
        run(plan, host, "launch", "--name", host.name, "--token", token, plan.host(names[i - 1]).address)
    except BaseException:
        _join.pop(plan.name, None)  # the hosts after this one give up too
        raise
    finally:
        done[host.name].set()


def _stop(plan, host) -> None:
    subprocess.run(launch_argv(plan, host, "stop"), capture_output=True, text=True, timeout=60,
                   stdin=subprocess.DEVNULL, check=False)
    with _lock:
        _done.pop(plan.name, None)
        _join.pop(plan.name, None)


register_service(HostService("mesh", _start, _stop, enabled=_enabled, order=60))
