"""Lab orchestration: up / down / exec / check / demo, and the lab manifest.

Lab directory ``<LAB_ROOT>/<name>/`` (LAB_ROOT = /run/crossnet/lab, env
CROSSNET_LAB_ROOT):

    lab.json              manifest (written before any namespace is created)
    cluster.yaml          the cluster file every simulated host applies
    hosts/<h>/state/      CROSSNET_STATE_DIR of host <h>
    hosts/<h>/*.log       logs of that host's lab services

Manifest (lab.json): ``LabPlan.to_dict()`` — name, underlay, backend, slot, block,
network, subnet_len, mtu, containers_per_host, lab_dir, fabric{netns, kind, bridge,
address}, hosts[{name, netns, ifname, address, prefixlen, gateway, subnet,
fabric_ifname, fabric_address, state_dir, containers[]}], namespaces[] (creation
order), cluster_file, extra{}, version — plus phase (creating | topology | applied |
ready | failed), apply (bool), owner_pid, created_at, services[{name, module}], error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from crossnet.check import Endpoint, Pair, all_ok, pairs_to_json, ping_matrix
from crossnet.errors import ConfigError, CrossnetError
from crossnet.lab import netns as ns
from crossnet.lab import procs
from crossnet.lab import services as svc_registry
from crossnet.lab.topology import (
    HostPlan,
    LabOptions,
    LabPlan,
    free_slot,
    plan_lab,
    validate_name,
)
from crossnet.state import read_json, write_json_atomic

DEFAULT_LAB_ROOT = "/run/crossnet/lab"
APPLY_TIMEOUT = 180.0
ATTACH_TIMEOUT = 60.0
STATUS_TIMEOUT = 60.0
PARALLEL_HOSTS = 4

Log = Callable[[str], None]


class LabExistsError(CrossnetError):
    """A lab with that name (directory or namespaces) already exists."""


class LabNotFoundError(CrossnetError):
    """No lab with that name."""


def _quiet(_msg: str) -> None:
    pass


# ---- paths, lock, manifest ----------------------------------------------------------
def lab_root() -> Path:
    return Path(os.environ.get("CROSSNET_LAB_ROOT", DEFAULT_LAB_ROOT))


def lab_dir(name: str) -> Path:
    return lab_root() / name


@contextlib.contextmanager
def _root_lock() -> Iterator[None]:
    root = lab_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(name: str) -> dict[str, Any] | None:
    """The lab's manifest, None if missing or unreadable (a crash may leave it torn)."""
    try:
        data = read_json(lab_dir(name) / "lab.json")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_manifest(manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(manifest["lab_dir"]) / "lab.json", manifest)


def lab_names() -> list[str]:
    root = lab_root()
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _used_slots() -> set[int]:
    used = set()
    for n in lab_names():
        m = read_manifest(n)
        if m and isinstance(m.get("slot"), int):
            used.add(m["slot"])
    return used


def _prefixed_netns(name: str) -> list[str]:
    return [n for n in ns.list_netns() if n.startswith(f"{name}-")]


# ---- running commands in lab namespaces ---------------------------------------------
def crossnet_argv(*args: str) -> list[str]:
    """How to run this crossnet (same interpreter) as a command."""
    return [sys.executable, "-m", "crossnet", *args]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one-line message of a failed crossnet command."""
    err = (proc.stderr or "").strip().splitlines()
    for line in reversed(err):
        if line.startswith("crossnet: error:"):
            return line[len("crossnet: error:"):].strip()
    for text in (err, (proc.stdout or "").strip().splitlines()):
        lines = [ln.strip() for ln in text if ln.strip()]
        if lines:
            return lines[-1]
    return f"exit code {proc.returncode}"


class Lab:
    """Handle on an existing lab (from `up()` or `Lab.open(name)`)."""

    def __init__(self, manifest: dict[str, Any]):
        self.manifest = manifest
        self.plan = LabPlan.from_dict(manifest)

    @classmethod
    def open(cls, name: str) -> "Lab":
        validate_name(name)
        m = read_manifest(name)
        if m is None:
            raise LabNotFoundError(f"no lab named {name!r} (see `crossnet lab list`)")
        try:
            return cls(m)
        except (KeyError, TypeError) as exc:
            raise CrossnetError(f"lab {name!r}: damaged manifest ({exc}); run `crossnet lab down --name {name}`") from None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def hosts(self) -> tuple[HostPlan, ...]:
        return self.plan.hosts

    @property
    def applied(self) -> bool:
        return bool(self.manifest.get("apply"))

    def save(self) -> None:
        _write_manifest(self.manifest)

    # -- commands -------------------------------------------------------------------
    def argv(self, target: str, cmd: Sequence[str]) -> list[str]:
        """argv running `cmd` in a lab namespace; in a host namespace with
        CROSSNET_STATE_DIR set to that host's state dir."""
        netns = self.plan.resolve_netns(target)
        prefix = ["ip", "netns", "exec", netns]
        host = next((h for h in self.hosts if h.netns == netns), None)
        if host is not None:
            prefix = ns.host_exec(netns, self.plan)
            prefix += ["env", f"CROSSNET_STATE_DIR={host.state_dir}"]
            prefix += [f"{k}={v}" for k, v in svc_registry.host_env(self.plan, host).items()]
        return [*prefix, *cmd]

    def run(self, target: str, cmd: Sequence[str], *, timeout: float | None = 120.0,
            check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
        """Run `cmd` in a lab namespace, capturing text output (bounded by `timeout`)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        argv = self.argv(target, cmd)
        try:
            proc = subprocess.run(argv, timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise CrossnetError(f"{target}: {' '.join(cmd[:4])}... timed out after {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            raise CrossnetError(f"{target}: {' '.join(cmd)}: {one_line_error(proc)}")
        return proc

    def crossnet(self, host: str, *args: str, timeout: float = APPLY_TIMEOUT,
                 check: bool = True) -> subprocess.CompletedProcess:
        """Run `crossnet ARGS` (this interpreter) in a host namespace. On failure
        raise CrossnetError('<host>: crossnet <cmd> failed: <its one-line error>')."""
        proc = self.run(host, crossnet_argv(*args), timeout=timeout)
        if check and proc.returncode != 0:
            raise CrossnetError(f"{host}: crossnet {args[0] if args else ''} failed: {one_line_error(proc)}")
        return proc

    def apply(self, host: str) -> None:
        self.crossnet(host, "apply", "-f", self.plan.cluster_file, "--host", self.plan.host(host).name,
                      timeout=APPLY_TIMEOUT)

    def attach(self, host: str, container: str) -> None:
        self.crossnet(host, "attach", container, timeout=ATTACH_TIMEOUT)

    def status(self, host: str) -> dict[str, Any]:
        proc = self.crossnet(host, "status", "-o", "json", timeout=STATUS_TIMEOUT)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise CrossnetError(f"{host}: crossnet status -o json printed no JSON") from None
        if not isinstance(data, dict):
            raise CrossnetError(f"{host}: crossnet status -o json: expected an object")
        return data

    def statuses(self) -> dict[str, dict[str, Any]]:
        return dict(zip([h.name for h in self.hosts], _parallel(lambda h: self.status(h.name), self.hosts)))

    # -- reachability ---------------------------------------------------------------
    def endpoints(self, underlay: bool = False,
                  statuses: dict[str, dict[str, Any]] | None = None) -> list[Endpoint]:
        """Container endpoints from every host's `status -o json`; the hosts' underlay
        addresses when `underlay` or when the lab was built without apply."""
        if underlay or not self.applied:
            return [Endpoint(h.name, h.netns, h.address) for h in self.hosts]
        if self.plan.extra.get("runtime") in ("docker", "docker-plugin"):  # Docker's IPAM: addresses from `docker inspect`
            from crossnet.lab import docker

            return docker.endpoints(self.plan)
        statuses = statuses if statuses is not None else self.statuses()
        eps = []
        for h in self.hosts:
            for c in statuses[h.name].get("containers") or []:
                if c.get("address"):
                    label = c.get("name") or c.get("id") or c.get("netns")  # name: podman containers
                    eps.append(Endpoint(str(label), str(c.get("netns") or c.get("id")),
                                        str(c["address"]).split("/")[0]))
        if not eps:
            raise CrossnetError(f"lab {self.name!r} has no attached containers (use --containers K, or --underlay)")
        return eps

    def check(self, count: int = 1, timeout: float = 1.0, underlay: bool = False,
              statuses: dict[str, dict[str, Any]] | None = None, workers: int = 8) -> list[Pair]:
        return ping_matrix(self.endpoints(underlay, statuses), count=count, timeout=timeout, workers=workers)

    # -- summary --------------------------------------------------------------------
    def _docker_endpoints(self) -> dict[str, Endpoint]:
        """Docker runtimes: each container's address as Docker gave it (`docker inspect`,
        what `lab check` pings), by container name; {} otherwise or when a daemon does not answer."""
        if not self.applied or self.plan.extra.get("runtime") not in ("docker", "docker-plugin"):
            return {}
        from crossnet.lab import docker

        try:
            return {e.name: e for e in docker.endpoints(self.plan)}
        except CrossnetError:
            return {}

    def summary(self, statuses: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        p = self.plan
        hosts = []
        docker_eps = self._docker_endpoints()
        for h in p.hosts:
            st = (statuses or {}).get(h.name) or {}
            by_id = {c.get("name") or c.get("id"): c for c in st.get("containers") or []}
            by_id.update({c: {"netns": docker_eps[c].netns, "address": docker_eps[c].address}
                          for c in h.containers if c in docker_eps})
            hosts.append({
                "name": h.name,
                "netns": h.netns,
                "address": h.address,
                "subnet": st.get("subnet"),
                "underlay_subnet": h.subnet,
                "gateway": h.gateway,
                "state_dir": h.state_dir,
                "containers": [
                    {"id": c, "netns": (by_id.get(c) or {}).get("netns") or f"/run/netns/{c}",
                     "address": (by_id.get(c) or {}).get("address")}
                    for c in h.containers
                ],
            })
        return {
            "name": p.name,
            "underlay": p.underlay,
            "backend": p.backend,
            "phase": self.manifest.get("phase"),
            "applied": self.applied,
            "slot": p.slot,
            "block": p.block,
            "network": p.network if p.backend != "bridge" else None,
            "mtu": p.mtu,
            "dir": p.lab_dir,
            "cluster_file": p.cluster_file,
            "fabric": {"netns": p.fabric.netns, "kind": p.fabric.kind, "address": p.fabric.address},
            "hosts": hosts,
        }

    def down(self, log: Log | None = None) -> dict[str, Any]:
        return down(self.name, log=log)


def _timed(log: Log, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), then `what: ready (1.2s)` on the progress log (each host as it finishes)."""
    t0 = time.monotonic()
    out = fn(*args)
    log(f"{what}: ready ({time.monotonic() - t0:.1f}s)")
    return out


def _parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """fn over items on a few threads; results in order; the first error (in item
    order) is raised after all finished."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL_HOSTS, len(items))) as pool:
        futures = [pool.submit(fn, it) for it in items]
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
    return [f.result() for f in futures]


# ---- cluster file -------------------------------------------------------------------
def write_cluster_file(plan: LabPlan) -> None:
    """The cluster file every host applies, validated by crossnet.config like any other."""
    from crossnet.config import dump_cluster, parse_cluster

    path = Path(plan.cluster_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = plan.cluster_dict()
    if plan.backend in ("wireguard", "auto"):  # each simulated host makes its key in its own state dir
        from crossnet.wg.keys import ensure_key

        for spec, h in zip(data["hosts"], plan.hosts):
            spec["wireguard_key"] = ensure_key(h.state_dir)[0]
    dump_cluster(parse_cluster(data), path)


# ---- up -----------------------------------------------------------------------------
def up(opts: LabOptions, *, apply: bool = True, keep: bool = False, log: Log | None = None,
       owner_pid: int | None = None) -> Lab:
    """Build a lab: topology, services, cluster file; with `apply`, `crossnet apply`
    in every host, then container namespaces + `crossnet attach`. On failure the lab
    is torn down (unless `keep`) and the error re-raised."""
    log = log or _quiet
    opts.validate()
    name = opts.name
    with _root_lock():
        if lab_dir(name).exists() or _prefixed_netns(name):
            raise LabExistsError(f"lab {name!r} already exists (remove it: crossnet lab down --name {name})")
        slot = free_slot(_used_slots(), opts.network)
        plan = plan_lab(opts, slot, str(lab_dir(name)))
        manifest = plan.to_dict()
        manifest.update(
            phase="creating", apply=apply, error=None, services=[],
            owner_pid=owner_pid or int(os.environ.get("CROSSNET_LAB_OWNER_PID") or os.getpid()),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        _write_manifest(manifest)  # before anything exists: `down` can always clean up
    lab = Lab(manifest)
    try:
        _build(lab, apply, log)
    except BaseException as exc:
        if keep:
            manifest.update(phase="failed", error=str(exc))
            with contextlib.suppress(Exception):
                lab.save()
            log(f"lab {name!r} failed; kept for inspection (crossnet lab down --name {name})")
        else:
            with contextlib.suppress(Exception):
                down(name)
        raise
    return lab


def _build(lab: Lab, apply: bool, log: Log) -> None:
    plan, manifest = lab.plan, lab.manifest
    for h in plan.hosts:
        Path(h.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    write_cluster_file(plan)
    ns.build_topology(plan, log)
    manifest["phase"] = "topology"
    lab.save()
    for svc in svc_registry.services_for(plan):
        manifest["services"].append({"name": svc.name, "module": svc.module})
        lab.save()
        log(f"starting service {svc.name} on {len(plan.hosts)} hosts")
        _parallel(lambda h, svc=svc: _timed(log, f"{svc.name} on {h.name}", svc.start, plan, h), plan.hosts)
    if apply and plan.extra.get("store") in ("etcd", "mesh"):  # the `agent`/`mesh` service programmed them
        log(f"hosts programmed by their crossnet agents (etcd in {plan.fabric.netns})")
    elif apply:
        log(f"crossnet apply ({plan.backend}) on {', '.join(h.name for h in plan.hosts)}")
        _parallel(lambda h: _timed(log, f"apply on {h.name}", lab.apply, h.name), plan.hosts)
        manifest["phase"] = "applied"
        lab.save()
    if plan.containers_per_host:
        log(f"creating {plan.containers_per_host} container(s) per host"
            + (" and attaching them" if apply else ""))

        def containers(h: HostPlan) -> None:
            for c in h.containers:
                ns.create_netns(c)
                if apply:
                    lab.attach(h.name, c)

        if apply and plan.extra.get("runtime") == "podman":  # real containers, attached by crossnet-cni
            from crossnet.lab import podman

            _parallel(lambda h: podman.start_containers(plan, h), plan.hosts)
        elif apply and plan.extra.get("runtime") in ("docker", "docker-plugin"):  # dockerd per host, plain `docker run`
            from crossnet.lab import docker

            _parallel(lambda h: docker.start_containers(plan, h), plan.hosts)
        else:
            _parallel(containers, plan.hosts)
    manifest["phase"] = "ready"
    lab.save()


# ---- down ---------------------------------------------------------------------------
def down(name: str, log: Log | None = None) -> dict[str, Any]:
    """Remove lab `name` completely: stop its services, kill every process in its
    namespaces, delete the namespaces (also stray `name-*` ones) and the lab dir.
    Idempotent; works with a partial or missing manifest."""
    log = log or _quiet
    validate_name(name)
    manifest = read_manifest(name) or {}
    errors: list[str] = []
    listed = [n for n in manifest.get("namespaces") or [] if isinstance(n, str) and n.startswith(f"{name}-")]
    stray = [n for n in _prefixed_netns(name) if n not in listed]
    # containers before hosts before the fabric; strays (deepest names) first
    order = sorted(stray, key=lambda n: (-n.count("-"), n)) + list(reversed(listed))
    if manifest.get("services"):
        errors += _stop_services(manifest)
    killed: list[int] = []
    try:
        killed = ns.kill_netns_processes(order)
    except CrossnetError as exc:
        errors.append(str(exc))
    removed = []
    for n in order:
        try:
            if ns.remove_netns(n):
                removed.append(n)
        except CrossnetError as exc:
            errors.append(str(exc))
    d = lab_dir(name)
    existed = d.exists()
    if existed:
        errors += _remove_bpf_pins(d)
        ns.unmount_under(d)  # storage a runtime (podman) may have left mounted in the lab dir
    shutil.rmtree(d, ignore_errors=True)
    if d.exists():
        errors.append(f"cannot remove {d}")
    if removed or existed:
        log(f"lab {name!r} removed ({len(removed)} namespaces, {len(killed)} processes)")
    result = {"name": name, "existed": bool(removed or existed), "namespaces_removed": removed,
              "processes_killed": len(killed), "errors": errors}
    if errors:
        raise CrossnetError(f"lab {name!r}: down incomplete: {'; '.join(errors)}")
    return result


def _remove_bpf_pins(d: Path) -> list[str]:
    """The eBPF pins of the lab's hosts (`datapath: ebpf`): they live in the machine's
    bpffs, outside the namespaces and the lab dir, so removing those does not free them."""
    from crossnet.ebpf import host as bpf_host

    errors = []
    for state in sorted((d / "hosts").glob("*/state")):
        try:
            bpf_host.remove_host(str(state))
        except OSError as exc:
            errors.append(f"eBPF pins of {state}: {exc}")
    return errors


def _stop_services(manifest: dict[str, Any]) -> list[str]:
    errors = []
    try:
        plan = LabPlan.from_dict(manifest)
    except (KeyError, TypeError):
        return []
    svc_registry.load_service_modules()
    for rec in reversed(manifest.get("services") or []):
        # by name: the recorded module may have moved since the lab was started
        svc = svc_registry.get_service(rec.get("name", ""))
        if svc is None:
            continue
        for h in plan.hosts:
            try:
                svc.stop(plan, h)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"{h.name}: stopping {svc.name}: {exc}")
    return errors


def _owner_alive(name: str) -> bool:
    pid = (read_manifest(name) or {}).get("owner_pid")
    return pid != os.getpid() and procs.exists(pid)


def down_all(log: Log | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Remove every lab, except (unless `force`) labs whose creating process is
    still running — a test or a `lab up` in progress elsewhere."""
    log = log or _quiet
    out = []
    for n in lab_names():
        if not force and _owner_alive(n):
            log(f"skipping lab {n!r}: its owner process is still running (use --force)")
            continue
        out.append(down(n, log=log))
    return out


# ---- list ---------------------------------------------------------------------------
def list_labs() -> list[dict[str, Any]]:
    present = set(ns.list_netns())
    out = []
    for n in lab_names():
        m = read_manifest(n) or {}
        names = m.get("namespaces") or []
        out.append({
            "name": n,
            "phase": m.get("phase", "unknown"),
            "underlay": m.get("underlay"),
            "backend": m.get("backend"),
            "hosts": len(m.get("hosts") or []),
            "containers_per_host": m.get("containers_per_host"),
            "block": m.get("block"),
            "applied": m.get("apply"),
            "namespaces": f"{sum(1 for x in names if x in present)}/{len(names)}",
            "created_at": m.get("created_at"),
            "dir": str(lab_dir(n)),
        })
    return out


# ---- demo ---------------------------------------------------------------------------
def reachable(pairs: Sequence[Pair]) -> bool:
    """The verdict of `lab check` and `lab demo`: at least one pair, every pair ok."""
    return bool(pairs) and all_ok(pairs)


def demo(opts: LabOptions, *, count: int = 1, timeout: float = 1.0, apply: bool = True,
         keep: bool = False, log: Log | None = None) -> dict[str, Any]:
    """up, reachability matrix, down (always, unless `keep`). Returns the demo result."""
    log = log or _quiet
    t0 = time.monotonic()
    lab = up(opts, apply=apply, keep=keep, log=log)  # tears itself down on failure
    try:
        statuses = lab.statuses() if lab.applied else {}
        log(f"checking reachability ({'containers' if lab.applied else 'hosts, underlay'})")
        pairs = lab.check(count=count, timeout=timeout, statuses=statuses)
        summary = lab.summary(statuses)
        http = None
        if lab.applied and lab.plan.extra.get("runtime") in ("docker", "docker-plugin"):
            from crossnet.lab import docker

            log("fetching http:// from a docker container on every host to one on every other host")
            http = docker.http_check(lab.plan, lab.endpoints())
        elif lab.applied and lab.plan.extra.get("runtime") == "podman":
            from crossnet.lab import podman

            log("fetching http:// from a podman container on every host to one on every other host")
            http = podman.http_check(lab.plan, statuses)
        return {
            "lab": lab.name,
            "backend": lab.plan.backend,
            "underlay": lab.plan.underlay,
            "applied": lab.applied,
            "hosts": [{"name": h["name"], "address": h["address"], "subnet": h["subnet"]} for h in summary["hosts"]],
            "endpoints": [
                {"name": c["id"], "host": h["name"], "address": c["address"]}
                for h in summary["hosts"] for c in h["containers"]
            ] if lab.applied else [{"name": h["name"], "host": h["name"], "address": h["address"]} for h in summary["hosts"]],
            "pairs": pairs_to_json(pairs),
            "runtime": lab.plan.extra.get("runtime") or "netns",
            "http": http,
            "ok": reachable(pairs) and all(x["ok"] for x in http or []),
            "elapsed_s": round(time.monotonic() - t0, 2),
        }
    finally:
        if keep:
            log(f"lab {lab.name!r} kept (crossnet lab down --name {lab.name})")
        else:
            down(lab.name, log=log)


def require_root() -> None:
    if os.geteuid() != 0:
        raise CrossnetError("the lab needs root (network namespaces); run with sudo")


__all__ = [
    "Lab", "LabExistsError", "LabNotFoundError", "LabOptions", "up", "down", "down_all",
    "list_labs", "demo", "reachable", "lab_root", "lab_dir", "read_manifest", "crossnet_argv", "ConfigError",
]
