"""Kernel side of the lab: named network namespaces, veths, the switch/router, and
the processes living in lab namespaces.

Links and addresses go through pyroute2 with one ``IPRoute(netns=...)`` socket per
namespace. The only subprocesses are ``sysctl`` inside the switch/router namespace
(one per lab) and whatever a caller spawns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from crossnet.errors import CrossnetError
from crossnet.lab.procs import alive
from crossnet.lab.topology import HostPlan, LabPlan

NETNS_DIR = "/run/netns"

Log = Callable[[str], None]


# ---- namespaces ---------------------------------------------------------------------
def netns_path(name: str) -> str:
    return name if name.startswith("/") else f"{NETNS_DIR}/{name}"


def list_netns() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def create_netns(name: str) -> None:
    """Create a named netns with `lo` up. Fails if it already exists."""
    if netns_exists(name):
        raise CrossnetError(f"network namespace {name!r} already exists")
    try:
        pr_netns.create(name)
    except OSError as exc:
        raise CrossnetError(f"cannot create network namespace {name!r}: {exc.strerror or exc}") from None
    with IPRoute(netns=netns_path(name)) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove_netns(name: str) -> bool:
    """Remove a named netns (unmount + unlink). True if it existed."""
    path = netns_path(name)
    if not os.path.lexists(path):
        return False
    try:
        pr_netns.remove(name)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        # not a mount point (half-created): just drop the file
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(path)
        if os.path.lexists(path):
            raise CrossnetError(f"cannot remove network namespace {name!r}: {exc}") from None
    from crossnet.dns.resolv import remove_named

    # /etc/netns/NAME/resolv.conf crossnet attach wrote (ip netns del leaves it), and the
    # directory when empty: NAME is the lab's (its unique prefix), made by the lab
    remove_named(name, directory=True)
    return True


# ---- processes ----------------------------------------------------------------------
def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def netns_pids(names: Iterable[str]) -> dict[str, list[int]]:
    """pids whose network namespace is one of `names` (what `ip netns pids NS` does,
    for all namespaces in one /proc scan)."""
    wanted: dict[tuple[int, int], str] = {}
    for n in names:
        ident = _ns_id(netns_path(n))
        if ident is not None:
            wanted[ident] = n
    result: dict[str, list[int]] = {n: [] for n in wanted.values()}
    if not wanted:
        return result
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ident = _ns_id(f"/proc/{entry}/ns/net")
        if ident is not None and ident in wanted:
            result[wanted[ident]].append(int(entry))
    return result


def _protected_pids() -> set[int]:
    """This process and its ancestors (never kill the caller, e.g. `lab exec h1 -- crossnet lab down`)."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [p for p in pending if alive(p)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return pending


def kill_netns_processes(names: Iterable[str], term_timeout: float = 3.0,
                         kill_timeout: float = 2.0, rounds: int = 3) -> list[int]:
    """SIGTERM every process in the namespaces, SIGKILL what is left after
    `term_timeout`, wait (bounded) until they are gone. Returns the pids signalled.
    Repeats the scan (bounded) to catch children spawned meanwhile."""
    names = list(names)
    protected = _protected_pids()
    signalled: list[int] = []
    for _ in range(rounds):
        pids = sorted({p for ps in netns_pids(names).values() for p in ps} - protected)
        if not pids:
            break
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        left = _wait_gone(pids, term_timeout)
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        left = _wait_gone(left, kill_timeout)
        signalled += pids
        if left:
            raise CrossnetError(
                f"processes {', '.join(map(str, left))} in lab namespaces survived SIGKILL"
            )
    return signalled


def host_exec(netns: str, plan: object | None = None) -> list[str]:
    """The argv prefix running a command in a lab host's namespace: ``ip netns exec``, or
    for a lab with ``datapath: ebpf`` ``nsenter --net`` (``ip netns exec`` remounts /sys
    in a private mount namespace, so the eBPF pins on /sys/fs/bpf would vanish with the
    command: crossnet.ebpf refuses it and falls back to kernel forwarding)."""
    if ((getattr(plan, "extra", None) or {}).get("datapath") or "kernel") == "ebpf":
        return ["nsenter", f"--net=/run/netns/{netns}"]
    return ["ip", "netns", "exec", netns]


def spawn(netns: str, argv: list[str], log_path: str | os.PathLike[str],
          env: dict[str, str] | None = None, prefix: list[str] | tuple[str, ...] | None = None) -> subprocess.Popen:
    """Start a long-running process (a daemon for a lab service) inside `netns`,
    output appended to `log_path`. `lab down` kills it with the namespace.
    ``prefix``: the argv prefix entering `netns` (host_exec's), ``ip netns exec`` by default."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*(prefix or ("ip", "netns", "exec", netns)), *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )


def set_sysctl(netns: str, key: str, value: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"],
        capture_output=True, text=True, timeout=20,
    )
    if proc.returncode != 0:
        raise CrossnetError(f"{netns}: sysctl {key}={value} failed: {proc.stderr.strip() or proc.returncode}")


# ---- topology -----------------------------------------------------------------------
def _idx(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise CrossnetError(f"interface {ifname!r} not found")
    return found[0]


def _nl(what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as exc:
        raise CrossnetError(f"{what}: {os.strerror(exc.code) if exc.code else exc}") from None


def build_topology(plan: LabPlan, log: Log | None = None) -> None:
    """Create the fabric and host namespaces and wire them (no containers)."""
    log = log or (lambda _msg: None)
    fab = plan.fabric
    log(f"creating {fab.kind} {fab.netns} and {len(plan.hosts)} hosts ({plan.underlay}, {plan.block})")
    create_netns(fab.netns)
    for h in plan.hosts:
        create_netns(h.netns)
    mtu = {"mtu": plan.mtu} if plan.mtu else {}
    with IPRoute(netns=netns_path(fab.netns)) as ipr:
        if fab.bridge:
            _nl(f"{fab.netns}: add bridge {fab.bridge}",
                lambda: ipr.link("add", ifname=fab.bridge, kind="bridge"))
            br = _idx(ipr, fab.bridge)
        for h in plan.hosts:
            _nl(f"{fab.netns}: add veth {h.fabric_ifname}",
                lambda h=h: ipr.link("add", ifname=h.fabric_ifname, kind="veth",
                                     peer={"ifname": h.ifname, "net_ns_fd": netns_path(h.netns)}))
            idx = _idx(ipr, h.fabric_ifname)
            if fab.bridge:
                _nl(f"{fab.netns}: enslave {h.fabric_ifname}",
                    lambda idx=idx: ipr.link("set", index=idx, master=br))
            else:
                addr, plen = h.fabric_address.split("/")
                _nl(f"{fab.netns}: address {h.fabric_address}",
                    lambda idx=idx, addr=addr, plen=plen: ipr.addr("add", index=idx, address=addr, prefixlen=int(plen)))
            _nl(f"{fab.netns}: up {h.fabric_ifname}",
                lambda idx=idx: ipr.link("set", index=idx, state="up", **mtu))
        if fab.bridge:
            addr, plen = fab.address.split("/")
            _nl(f"{fab.netns}: address {fab.address}",
                lambda: ipr.addr("add", index=br, address=addr, prefixlen=int(plen)))
            _nl(f"{fab.netns}: up {fab.bridge}", lambda: ipr.link("set", index=br, state="up", **mtu))
    set_sysctl(fab.netns, "net.ipv4.ip_forward", "1")
    for h in plan.hosts:
        _setup_host(plan, h, mtu)


def _setup_host(plan: LabPlan, h: HostPlan, mtu: dict) -> None:
    with IPRoute(netns=netns_path(h.netns)) as ipr:
        idx = _idx(ipr, h.ifname)
        _nl(f"{h.netns}: address {h.address}/{h.prefixlen}",
            lambda: ipr.addr("add", index=idx, address=h.address, prefixlen=h.prefixlen))
        _nl(f"{h.netns}: up {h.ifname}", lambda: ipr.link("set", index=idx, state="up", **mtu))
        _nl(f"{h.netns}: default route via {h.gateway}",
            lambda: ipr.route("add", dst="0.0.0.0/0", gateway=h.gateway, oif=idx))


def create_containers(plan: LabPlan, host: HostPlan) -> None:
    for name in host.containers:
        create_netns(name)


def remove_namespaces(names: Iterable[str]) -> list[str]:
    """Remove namespaces (containers first when given in creation order reversed)."""
    removed = []
    for n in names:
        if remove_netns(n):
            removed.append(n)
    return removed


def unmount_under(base: str | os.PathLike[str]) -> list[str]:
    """Lazy-unmount whatever is mounted at or below ``base`` (podman's overlay storage,
    containers' shm...), deepest first; returns the mount points it unmounted. Only
    paths below ``base`` are touched, which the lab owns."""
    path = os.path.realpath(base) if os.path.exists(base) else os.fspath(base)
    try:
        with open("/proc/self/mountinfo") as fh:
            points = [line.split()[4] for line in fh]
    except OSError:
        return []
    done = []
    for mp in sorted((p for p in points if p == path or p.startswith(path + "/")), key=len, reverse=True):
        if subprocess.run(["umount", "-l", mp], capture_output=True, timeout=20).returncode == 0:
            done.append(mp)
    return done
