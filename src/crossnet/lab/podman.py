"""Real podman containers on simulated lab hosts (``crossnet lab up --runtime podman``).

Every simulated host gets its own podman: private ``--root``, ``--runroot``,
``--tmpdir``, network config dir (holding crossnet's conflist, written by
``crossnet cni install``), CNI plugin dirs (crossnet-cni wrapper + the reference
plugins) and a private containers.conf (``CONTAINERS_CONF``) with the settings this VM
needs (see docs/cni.md). Every podman command for a host runs as
``nsenter --net=/run/netns/<host> podman ...`` so the CNI plugins act inside the host's
namespace (``ip netns exec`` does not work: it remounts /sys).

The image is a busybox rootfs built offline from busybox-static (``bin/busybox`` + one
symlink per applet), tarred once per machine (cached) and ``podman import``-ed once per
podman root.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from crossnet.errors import CrossnetError
from crossnet.lab import netns as ns
from crossnet.lab.services import HostService, register_service

IMAGE = "localhost/crossnet-busybox:latest"
BUSYBOX = "/bin/busybox"
REFERENCE_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")
IMAGE_CACHE = Path(os.environ.get("CROSSNET_IMAGE_CACHE", "/var/cache/crossnet"))
NETWORK = "crossnet"
PODMAN_TIMEOUT = 120.0

CONTAINERS_CONF = """\
# written by crossnet (lab / podman per simulated host)
[containers]
# no CAP_SYS_RESOURCE here and a hard nofile limit of 20000
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "private"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
static_dir = "{base}/root/libpod"
volume_path = "{base}/root/volumes"

[network]
network_backend = "cni"
cni_plugin_dirs = {plugin_dirs}
network_config_dir = "{base}/net.d"
default_network = "{network}"
"""


def _tar_rootfs(busybox: str = BUSYBOX) -> bytes:
    """A rootfs tarball: /bin/busybox, a symlink per applet, a few dirs and files."""
    if not os.path.exists(busybox):
        raise CrossnetError(f"{busybox} not found: install busybox-static (apt-get install busybox-static)")
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, timeout=10, check=True)
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "var",
                  "var/www", "run"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            info.mtime = now
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for path in sorted(set(applets.stdout.split())):
            path = path.lstrip("/")
            if path == "bin/busybox" or not path:
                continue
            info = tarfile.TarInfo(path)
            info.type = tarfile.SYMTYPE
            info.linkname = "/bin/busybox"
            info.mtime = now
            tar.addfile(info)
        files = {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            "etc/group": "root:x:0:\nnogroup:x:65534:\n",
            "var/www/index.html": "hello from crossnet\n",
        }
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_tarball(cache_dir: Path | None = None) -> Path:
    """The busybox rootfs tarball, built once and cached (rebuilt when busybox changes)."""
    cache_dir = cache_dir or IMAGE_CACHE
    st = os.stat(BUSYBOX) if os.path.exists(BUSYBOX) else None
    tag = f"{st.st_size}-{int(st.st_mtime)}" if st else "none"
    path = cache_dir / f"busybox-rootfs-{tag}.tar"
    if path.exists():
        return path
    data = _tar_rootfs()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


@dataclass
class RuntimeHost:
    """A container runtime of one simulated host (podman here, dockerd in lab.docker)."""

    netns: str  # host namespace name (or /run/netns path)
    base: Path  # per-host directory of the runtime
    state_dir: str  # the host's crossnet state dir

    def __post_init__(self) -> None:
        self.base = Path(self.base)

    @property
    def netns_path(self) -> str:
        return self.netns if self.netns.startswith("/") else f"/run/netns/{self.netns}"

    def run(self, *args: str, timeout: float = 120.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """The runtime's CLI with `args` (podman / docker, same command line)."""
        raise NotImplementedError

    def container_ids(self) -> list[str]:
        proc = self.run("ps", "-aq", "--no-trunc", check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    def exec(self, name: str, *cmd: str, timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
        return self.run("exec", name, *cmd, timeout=timeout, check=check)

    def inspect(self, name: str) -> dict[str, Any]:
        data = json.loads(self.run("inspect", "--type", "container", name).stdout)
        return data[0] if isinstance(data, list) else data


@dataclass
class HostPodman(RuntimeHost):
    """podman of one simulated host."""

    network: str = NETWORK

    @property
    def conf_path(self) -> Path:
        return self.base / "containers.conf"

    @property
    def bin_dir(self) -> Path:
        return self.base / "cni-bin"

    @property
    def net_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def plugin_dirs(self) -> list[str]:
        return [str(self.bin_dir)] + [d for d in REFERENCE_PLUGIN_DIRS if os.path.isdir(d)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.conf_path)
        env.pop("CONTAINERS_STORAGE_CONF", None)
        return env

    def argv(self, *args: str) -> list[str]:
        return [
            "nsenter", f"--net={self.netns_path}", "podman",
            "--root", str(self.base / "root"),
            "--runroot", str(self.base / "runroot"),
            "--tmpdir", str(self.base / "tmp"),
            "--network-config-dir", str(self.net_dir),
            "--storage-driver", "overlay",
            "--cgroup-manager", "cgroupfs",
            "--runtime", "runc",
            "--events-backend", "file",
            *args,
        ]

    def run(self, *args: str, timeout: float = PODMAN_TIMEOUT, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env=self.env(), input=input)
        if check and proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise CrossnetError(f"{self.netns}: podman {' '.join(args[:2])} failed: {err[-1] if err else proc.returncode}")
        return proc

    # ---- setup / teardown
    def setup(self, portmap: bool = True, log_file: str | None = None) -> None:
        """Directories, containers.conf and crossnet's conflist + plugin wrapper.
        The host must already be applied (the conflist points at its state dir)."""
        from crossnet.cni.install import install

        for d in ("root", "runroot", "tmp", "net.d", "cni-bin"):
            (self.base / d).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conf_path.write_text(
            CONTAINERS_CONF.format(base=self.base, plugin_dirs=json.dumps(self.plugin_dirs), network=self.network)
        )
        install(self.state_dir, conf_dir=str(self.net_dir), bin_dir=str(self.bin_dir), name=self.network,
                portmap=portmap, log_file=log_file, require_state=False, helper="spawn")  # no systemd in a simulated host
        # `<base>/podman ARGS` runs this host's podman by hand (same namespace and config)
        import shlex

        script = self.base / "podman"
        script.write_text(
            "#!/bin/sh\n# podman of simulated host " + self.netns + " (written by crossnet lab)\n"
            f"export CONTAINERS_CONF={shlex.quote(str(self.conf_path))}\n"
            f"exec {' '.join(shlex.quote(a) for a in self.argv())} \"$@\"\n"
        )
        script.chmod(0o755)

    def ensure_image(self) -> None:
        proc = self.run("image", "exists", IMAGE, check=False)
        if proc.returncode == 0:
            return
        self.run("import", "--change", 'CMD ["/bin/sh"]', str(image_tarball()), IMAGE, timeout=300)

    def start(self, name: str, *, ip: str | None = None, publish: Sequence[str] = (),
              command: Sequence[str] = ("sleep", "1000000"), extra: Sequence[str] = ()) -> str:
        args = ["run", "-d", "--name", name, "--hostname", name, "--network", self.network, "--cap-add", "NET_RAW"]
        if ip:
            args += ["--ip", ip]
        for p in publish:
            args += ["-p", p]
        proc = self.run(*args, *extra, IMAGE, *command)
        return proc.stdout.strip().splitlines()[-1]

    def remove_all(self) -> None:
        """Remove every container of this podman (CNI DEL runs inside the host netns)."""
        ids = self.container_ids()
        if ids:
            self.run("rm", "-f", "-t", "0", *ids, check=False, timeout=180)

    def teardown(self) -> None:
        """Remove containers (CNI DEL inside the host), unmount storage, delete the
        per-host directory. Idempotent."""
        if os.path.exists(self.netns_path) and (self.base / "root").exists():
            with contextlib.suppress(Exception):
                self.remove_all()
        ns.unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


# ---- lab integration ------------------------------------------------------------------
RUNTIMES = ("netns", "podman", "docker", "docker-plugin")
SERVE = "httpd -p 80 -h /var/www && exec sleep 999999999"  # every container serves HTTP


def runtime_of(plan: Any) -> str:
    return str((plan.extra or {}).get("runtime") or "netns")


def host_podman(plan: Any, host: Any) -> HostPodman:
    return HostPodman(host.netns, Path(plan.lab_dir) / "hosts" / host.name / "podman", host.state_dir)


def _start_service(plan: Any, host: Any) -> None:
    p = host_podman(plan, host)
    p.setup(log_file=str(Path(plan.lab_dir) / "hosts" / host.name / "cni.log"))
    p.ensure_image()


def _stop_service(plan: Any, host: Any) -> None:
    host_podman(plan, host).teardown()


def start_containers(plan: Any, host: Any) -> dict[str, str]:
    """Run the host's lab containers (names = the lab's container names) with podman on
    crossnet's network; returns {name: container id}."""
    p = host_podman(plan, host)
    return {name: p.start(name, command=("sh", "-c", SERVE)) for name in host.containers}


def http_check(plan: Any, statuses: dict[str, dict[str, Any]], timeout: float = 5.0) -> list[dict[str, Any]]:
    """From the first container of every host, `wget` the page served by the first
    container of every other host (busybox httpd), addressed by its crossnet address."""
    firsts = []
    for h in plan.hosts:
        by_name = {c.get("name"): c for c in (statuses.get(h.name) or {}).get("containers") or []}
        if h.containers and by_name.get(h.containers[0], {}).get("address"):
            firsts.append((h, h.containers[0], str(by_name[h.containers[0]]["address"]).split("/")[0]))
    return http_matrix(firsts, lambda host, name, *cmd, timeout: host_podman(plan, host).exec(
        name, *cmd, timeout=timeout), timeout=timeout)


def http_matrix(firsts: Sequence[tuple[Any, str, str]], exec_fn: Callable[..., subprocess.CompletedProcess],
                timeout: float = 5.0) -> list[dict[str, Any]]:
    """firsts: (host, container, address) per host; from every one `wget` every other
    one's page; exec_fn(host, container, *cmd, timeout=) runs a command in a container."""
    out = []
    for src_host, src, _ in firsts:
        for dst_host, dst, addr in firsts:
            if dst_host is src_host:
                continue
            t0 = time.monotonic()
            # busybox wget -T crashes (Debian busybox-static); bound it with timeout(1)
            proc = exec_fn(src_host, src, "timeout", str(int(timeout)), "wget", "-qO-", f"http://{addr}/",
                           timeout=timeout + 30)
            ok = proc.returncode == 0 and "hello from crossnet" in proc.stdout
            out.append({"src": src, "dst": dst, "url": f"http://{addr}/", "ok": ok,
                        "ms": round((time.monotonic() - t0) * 1000, 1),
                        "error": None if ok else (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}")[-200:]})
    return out


def _env(plan: Any, host: Any) -> dict[str, str]:
    """`lab exec HOST -- crossnet attach podman:NAME` finds NAME through this host's podman wrapper."""
    return {"CROSSNET_PODMAN": str(host_podman(plan, host).base / "podman")}


SERVICE = register_service(HostService("podman", _start_service, _stop_service,
                                       enabled=lambda plan: runtime_of(plan) == "podman", env=_env))

